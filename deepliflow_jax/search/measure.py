"""Measuring whole models: EPE, FLOPs, size on disk and interleaved latency."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.compress import int8 as int8_lib
from deepliflow_jax.compress.structured import (
    count_params,
)
from deepliflow_jax.metrics import frame_counts, metrics_from_counts
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.model.widths import freeze_widths
from deepliflow_jax.profile.table1 import conv_eq3_flops
from deepliflow_jax.profile.timer import aot_compile, time_interleaved
from deepliflow_jax.search.size import (
    disk_bytes,
)


def evaluate_outputs(sf: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Frame-averaged EPE / D0 / D1 / Fl / SF outlier rates."""
    counts = jax.device_get(frame_counts(jnp.asarray(sf), jnp.asarray(gt)))
    return {k: float(v) for k, v in metrics_from_counts(counts, "frame").items()}


@dataclasses.dataclass
class Candidate:
    """One model to measure: a compiled forward and what it needs."""

    name: str
    ratio: float
    int8: bool
    params: int
    disk_bytes: int
    compiled: Any
    args: tuple
    info: dict
    extra: dict = dataclasses.field(default_factory=dict)
    #: ``profile.timer.summarize`` statistics of its forward (set by :func:`time_candidates`)
    stats: dict = dataclasses.field(default_factory=dict)


def _conv_gflops(fn, *args) -> float:

    return conv_eq3_flops(fn, *args)[0] / 1e9


def make_candidate(name: str, ratio: float, params: Any, widths: Any, val: dict,
                   workdir: Path, *, quant: bool = False, calib: Sequence[np.ndarray] = (),
                   disk: int | None = None, log=print) -> Candidate:
    """Compiles the forward of one model on the validation batch and evaluates it.

    The one measurement of a whole model, for the search and the trade-off alike: the
    AOT-compiled forward (``profile.timer.aot_compile``: its XLA FLOPs) evaluates the
    validation batch and is what :func:`time_candidates` times; eq. (3) conv FLOPs
    beside.

    Args:
      name: label.
      ratio: pruning ratio (0 = dense).
      params: float params (bare tree).
      widths: channel widths (None = the original network).
      val: ``{"frames", "gt"}`` validation batch.
      workdir: scratch folder for size measurements.
      quant: measure the int8 model instead (post-training, calibrated on ``calib``).
      calib: training frame batches for the activation ranges.
      disk: bytes of the model's saved checkpoint when the caller saved it; None: the
        model is saved in ``workdir`` to measure it (:func:`.size.disk_bytes`).

    Returns:
      A :class:`Candidate` with metrics in ``extra``.
    """

    frames = jax.device_put(jnp.asarray(val["frames"]))
    out_size = tuple(val["gt"].shape[1:3])
    frozen = freeze_widths(widths)
    if quant:
        ranges = int8_lib.calibrate({"params": params}, calib, widths=widths)
        qmodel = int8_lib.quantize_int8({"params": params}, ranges)
        disk = disk_bytes(qmodel, workdir) if disk is None else disk
        qmodel = jax.device_put(qmodel)

        def fn(q, f):
            return int8_lib.int8_apply(q, f, None, out_size, frozen)[0]

        args = (qmodel, frames)
        n_params = count_params({k: v for k, v in qmodel.items()})
    else:
        model = DeepLiDARFlow(widths=frozen)

        def fn(p, f):
            return model.apply({"params": p}, f, None, out_size)[0]

        args = (jax.device_put(params), frames)
        disk = disk_bytes({"params": params}, workdir) if disk is None else disk
        n_params = count_params(params)
    t0 = time.perf_counter()
    compiled, info = aot_compile(fn, *args)
    info["conv_gflops_eq3"] = _conv_gflops(fn, *args)
    sf = np.asarray(jax.block_until_ready(compiled(*args)))
    metrics = evaluate_outputs(sf, val["gt"])
    extra = {"metrics": metrics}
    if quant:
        report = int8_lib.hlo_conv_report(compiled.as_text())
        report["selected_layers"] = len(qmodel["convs"])
        report["integer_convs_ran"] = report["integer_convolutions"] >= len(qmodel["convs"])
        extra["hlo"] = report
    log(f"  {name}: compiled in {time.perf_counter() - t0:.0f} s; EPE {metrics['epe']:.3f}, "
        f"SF {metrics['sf']:.2f} %, {n_params:,} params, {disk / 1e6:.2f} MB")
    return Candidate(name, ratio, quant, n_params, disk, compiled, args, info, extra)


def time_candidates(cands: Sequence[Candidate], repeats: int, warmup: int, log=print) -> None:
    """Interleaved timing (:func:`profile.timer.time_interleaved`): every model once per
    round, round order rotated."""
    stats = time_interleaved({c.name: functools.partial(c.compiled, *c.args) for c in cands},
                             repeats, warmup)
    for c in cands:
        c.stats = stats[c.name]
    log(f"  timed {len(cands)} models x {repeats} rounds")
