"""Measured latency saving of each (group, ratio) from per-block timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.compress.structured import (
    plan_pruning,
    shrink,
)
from deepliflow_jax.model.build import forward
from deepliflow_jax.model.channels import (
    architecture_widths,
    unwrap_params,
)
from deepliflow_jax.profile.blocks import block_calls
from deepliflow_jax.profile.timer import aot_compile, time_interleaved
from deepliflow_jax.search.sensitivity import (
    progress,
)


def _signature(block) -> tuple:
    """A block's name with the shapes and dtypes of its parameters and inputs.

    ``conf_mass`` is left out: every structured model has it, pruned there or not.
    """
    params = block.params
    if isinstance(params, Mapping):
        flat = flax.traverse_util.flatten_dict(dict(params), sep="/")
        params = {k: v for k, v in flat.items() if not k.endswith("conf_mass")}
    leaves, tree = jax.tree.flatten((params, block.args))
    return (block.name, str(tree), tuple((tuple(np.shape(x)), str(x.dtype)) for x in leaves))


def whole_forward(variables: Mapping[str, Any], frames: Any) -> Callable[[], Any]:
    """A no-argument call of the forward ``predict_sceneflow`` runs (one jit per shape)."""
    widths = architecture_widths(variables)
    out_size = tuple(np.shape(frames)[2:4])
    return lambda: forward(variables, frames, out_size=out_size, widths=widths)[0]


def measure_costs(params: Any, frames: Any, groups: Sequence[tuple[str, str]],
                  ratios: Mapping[str, Sequence[float]], *, multiple: int = 8,
                  scorer: str = "l1", whole: Mapping[str, Mapping[str, Any]] | None = None,
                  repeats: int = 5, warmup: int = 1, log: Callable[[str], None] = print
                  ) -> dict[str, Any]:
    """Measured latency saving of each (group, ratio), and whole models, in the same rounds.

    Args:
      params: bare parameter tree of the model searched from.
      frames: the timed input ``[B, 2, H, W, 4]``.
      groups: the layer groups.
      ratios: ``{group: ratios}`` to measure.
      multiple, scorer: channel rounding and ranking.
      whole: ``{name: variables}`` of whole models timed in the same rounds (the
        dense model is always timed, as ``"dense"``).
      repeats, warmup: see :func:`~deepliflow_jax.profile.timer.time_interleaved`.
      log: progress printer.

    Returns:
      ``{"dense_ms", "whole": {name: timer statistics}, "blocks": {block: dense
      statistics + "gflops"}, "saved_ms": {group: {ratio: ms}}, "saved_gflops": ...,
      "changed_blocks": {group: {ratio: [blocks]}}, "compile_s"}``.
    """
    params = jax.tree.map(np.asarray, unwrap_params(params)[0])
    variables = {"params": params}
    regex = dict(groups)
    b, _, h, w, _ = np.shape(frames)
    base = {blk.name: blk for blk in block_calls(variables, b, h, w)}
    base_sig = {name: _signature(blk) for name, blk in base.items()}
    jobs: dict[tuple, Any] = {}  # signature -> block
    changed: dict[str, dict[float, list[tuple[str, tuple]]]] = {}
    for g, rs in ratios.items():
        for r in rs:
            keep = plan_pruning(variables, {regex[g]: r}, multiple=multiple, scorer=scorer)
            small, widths = shrink(variables, keep)
            diff = []
            for blk in block_calls(small, b, h, w, widths=widths):
                sig = _signature(blk)
                if sig != base_sig[blk.name]:
                    diff.append((blk.name, sig))
                    jobs.setdefault(sig, blk)
                    jobs.setdefault(base_sig[blk.name], base[blk.name])
            changed.setdefault(g, {})[float(r)] = diff
    t0 = time.perf_counter()
    compiled: dict[tuple, tuple[Any, float]] = {}
    for sig, blk in progress(list(jobs.items()), len(jobs), "compile blocks"):
        exe, info = aot_compile(blk.fn, blk.params, *blk.args)
        compiled[sig] = (exe, float("nan") if info["flops"] is None else info["flops"], blk)
    calls = {("block",) + sig: (lambda e=exe, blk=blk: e(blk.params, *blk.args))
             for sig, (exe, _, blk) in compiled.items()}
    models = {"dense": variables, **dict(whole or {})}
    device_frames = jax.device_put(jnp.asarray(frames))
    for name, v in models.items():
        calls[("whole", name)] = whole_forward(jax.device_put(v), device_frames)
    log(f"cost: compiled {len(compiled)} blocks in {time.perf_counter() - t0:.0f} s; timing "
        f"{len(calls)} contenders x {repeats} rounds (whole models compile in the warm-up)")
    stats = time_interleaved(calls, repeats, max(1, warmup))
    saved_ms: dict[str, dict[float, float]] = {}
    saved_gflops: dict[str, dict[float, float]] = {}
    option_ms: dict[str, dict[float, dict[str, float]]] = {}
    for g, per in changed.items():
        for r, diff in per.items():
            ms = sum(stats[("block",) + base_sig[n]]["median_ms"]
                     - stats[("block",) + sig]["median_ms"] for n, sig in diff)
            fl = sum(compiled[base_sig[n]][1] - compiled[sig][1] for n, sig in diff)
            saved_ms.setdefault(g, {})[r] = ms
            saved_gflops.setdefault(g, {})[r] = fl / 1e9
            option_ms.setdefault(g, {})[r] = {n: stats[("block",) + sig]["median_ms"]
                                              for n, sig in diff}
    blocks = {}
    for name, sig in base_sig.items():
        if sig in compiled:
            blocks[name] = {**stats[("block",) + sig], "gflops": compiled[sig][1] / 1e9}
    return {"dense_ms": stats[("whole", "dense")]["median_ms"],
            "whole": {n: stats[("whole", n)] for n in models},
            "blocks": blocks, "saved_ms": saved_ms, "saved_gflops": saved_gflops,
            "option_ms": option_ms,
            "changed_blocks": {g: {r: [n for n, _ in d] for r, d in per.items()}
                               for g, per in changed.items()},
            "compile_s": time.perf_counter() - t0}


def predicted_latency(costs: Mapping[str, Any], ratios: Mapping[str, float]) -> float | None:
    """A plan's latency from the per-group block times (None: a ratio was not measured).

    The dense forward's measured time minus, per block, the dense block time times
    ``1 - prod(option time / dense time)`` over the groups whose pruning changes that
    block: a conv pruned on its input channels by one group and on its outputs by
    another costs the product of both fractions (additive savings would count the
    overlap twice). For a single group this is its measured saving.

    Args:
      costs: ``{"dense_ms", "blocks": {block: {"median_ms"}}, "option_ms": {group:
        {ratio: {block: ms}}}}`` (:func:`measure_costs`).
      ratios: ``{group: ratio}`` (0: not pruned).
    """
    factors: dict[str, float] = {}
    for g, r in ratios.items():
        if not r:
            continue
        per = costs["option_ms"].get(g, {}).get(float(r))
        if per is None:
            return None
        for name, ms in per.items():
            factors[name] = factors.get(name, 1.0) * ms / costs["blocks"][name]["median_ms"]
    return costs["dense_ms"] - sum(costs["blocks"][n]["median_ms"] * (1.0 - f)
                                   for n, f in factors.items())
