"""Measured trade-offs of structured pruning and int8 (the ``structured_tradeoff`` experiment).

For a trained dense model and each pruning ratio: prune channels (L1 by
default, ``compress.structured``), fine-tune the smaller model with the one
trainer (:class:`deepliflow_jax.train.trainer.Trainer`: KITTI loss and the
original's L2 term), then measure, with and without int8 (post-training,
calibrated on a few training batches, ``compress.int8``):

* parameters, FLOPs (XLA ``cost_analysis`` and eq. (3) conv FLOPs of the
  forward that is timed), size on disk (the model's checkpoint: kind ``float``,
  or ``int8`` for int8 models);
* latency: one AOT-compiled executable per model (``profile.timer.aot_compile``)
  evaluates the validation set *and* is timed on the validation batch; all
  models are timed in interleaved rounds (``profile.timer.time_interleaved``) so
  that the load of a shared machine hits them alike;
* EPE and outlier rates on the synthetic validation set (frame-averaged).

The dense model fine-tuned for the same number of steps is measured too: a
briefly pre-trained model still improves with any extra training, so it is
the fair reference for the pruned models' accuracy.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from deepliflow_jax.compress import int8 as int8_lib
from deepliflow_jax.compress.structured import (
    channel_masks,
    count_params,
    mask_outputs,
    shrink,
    structured_prune,
)
from deepliflow_jax.fileio import discard, savefig_atomic
from deepliflow_jax.metrics import frame_counts, metrics_from_counts
from deepliflow_jax.model.api import init_params
from deepliflow_jax.model.channels import widths_of
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.model.widths import freeze_widths
from deepliflow_jax.profile.environment import environment
from deepliflow_jax.profile.table1 import conv_eq3_flops
from deepliflow_jax.profile.timer import aot_compile, time_interleaved
from deepliflow_jax.scalars import check_number, check_numbers
from deepliflow_jax.study.config import make_config
from deepliflow_jax.study.data import load_study_data, make_synthetic
from deepliflow_jax.train.trainer import Phase, Trainer

TARGET_EPE_INCREASE = 0.05
TARGET_SPEEDUP = 1.3
TARGET_DISK_REDUCTION = 0.5


@dataclasses.dataclass(frozen=True)
class TradeoffConfig:
    """Settings of one trade-off run.

    Attributes:
      ratios: fractions of channels removed per layer (0.1 .. 0.7).
      plans: extra named per-layer plans ``((name, ((regex, ratio), ...)), ...)``
        (see :func:`.structured.plan_pruning`); their rows' ``ratio`` is the
        fraction of all channels removed.
      finetune_steps: fine-tuning steps of every pruned model (and the dense reference).
      lr: Adam learning rate of the fine-tuning.
      refine_fraction: the last fraction of the steps runs at ``lr / 10``.
      eval_every: validate every this many fine-tuning steps and keep the best
        by validation SF outlier rate (the original's and the study's protocol),
        for the pruned models and ``dense_ft`` alike; 0 keeps the last step.
      scope, multiple, scorer, exclude: see :func:`.structured.plan_pruning`.
      int8: also measure each model in int8.
      calib_batches: training batches for the int8 activation ranges.
      repeats: timed rounds (each model once per round).
      warmup: untimed calls per model before timing.
      dense_finetune: also fine-tune the dense model (the fair accuracy reference).
      finetune_mode: ``"masked"`` (one compiled step for every ratio: the full
        model under channel masks, then shrunk; see :class:`Trainer`) or
        ``"shrunk"`` (each smaller model compiles and trains its own step).
      pretrain_steps, pretrain_lr: pre-training when no baseline checkpoint exists.
      seed: training seed.
    """

    ratios: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    plans: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    finetune_steps: int = 120
    lr: float = 3e-4
    refine_fraction: float = 0.25
    eval_every: int = 0
    scope: str = "layer"
    multiple: int = 8
    scorer: str = "l1"
    exclude: str | None = None
    int8: bool = True
    calib_batches: int = 4
    repeats: int = 7
    warmup: int = 1
    dense_finetune: bool = True
    finetune_mode: str = "masked"
    pretrain_steps: int = 300
    pretrain_lr: float = 3e-4
    seed: int = 0

    def __post_init__(self):
        numbers = {
            "ratios": check_numbers(self.ratios, "ratios", "a pruning ratio in (0, 1)",
                                    above=0, below=1),
            "lr": check_number(self.lr, "lr", "a positive number", above=0),
            "pretrain_lr": check_number(self.pretrain_lr, "pretrain_lr", "a positive number",
                                        above=0),
            "refine_fraction": check_number(self.refine_fraction, "refine_fraction", minimum=0,
                                            below=1),
            "multiple": check_number(self.multiple, "multiple", integer=True, minimum=1),
            **{name: check_number(getattr(self, name), name, integer=True, minimum=0)
               for name in ("finetune_steps", "eval_every", "calib_batches", "repeats",
                            "warmup", "pretrain_steps", "seed")},
        }
        for name, value in numbers.items():  # Python numbers (a frozen dataclass)
            object.__setattr__(self, name, value)
        if self.finetune_mode not in ("masked", "shrunk"):
            raise ValueError(f"finetune_mode must be 'masked' or 'shrunk', got "
                             f"{self.finetune_mode!r}")
        if self.int8 and self.calib_batches < 1:
            raise ValueError("int8 needs calib_batches >= 1")


def parse_plan(spec: str) -> tuple[str, tuple[tuple[str, float], ...]]:
    """A named per-layer pruning plan from ``NAME:REGEX=RATIO[;REGEX=RATIO]``.

    Example: ``"g70h10:guidance_network=0.7;scene_flow_estimator|context_network=0.1"``
    (the regexes go over channel-group names, see :func:`.structured.plan_pruning`).

    Returns:
      ``(name, ((regex, ratio), ...))``.

    Raises:
      ValueError: a spec without a name, ``:`` or ``REGEX=RATIO`` pair, or a ratio that
        is not a number in (0, 1).
    """
    name, sep, body = str(spec).partition(":")
    try:
        if not sep or not name:
            raise ValueError("expected NAME:REGEX=RATIO[;REGEX=RATIO]")
        pairs = tuple((p.rsplit("=", 1)[0], float(p.rsplit("=", 1)[1]))
                      for p in body.split(";") if p)
        if not pairs:
            raise ValueError("no REGEX=RATIO pair")
    except (ValueError, IndexError) as err:
        raise ValueError(f"plan {spec!r}: {err}") from err
    for _, ratio in pairs:
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"plan {spec!r}: ratio {ratio} outside (0, 1)")
    return name, pairs


@dataclasses.dataclass
class FineTuned:
    """A fine-tuning run of the trade-off: the params it selected and how it went.

    Attributes:
      params: bare parameter tree on the host (best by validation, or the last).
      losses: the loss of every step.
      selected_step: the step count of ``params``.
      history: ``[{"step", **validation metrics}]``.
    """

    params: Any
    losses: list[float]
    selected_step: int
    history: list[dict]

    def selection(self) -> dict[str, Any]:
        return {"selected_step": self.selected_step, "validation_history": self.history}


def fine_tune(trainer: Trainer, params: Any, batch_fn: Callable[[int], dict], steps: int,
              lr: float, refine_after: int | None = None, refine_factor: float = 0.1,
              log: Callable[[str], None] = print, channel_masks: Any = None,
              evaluate: Callable[[Any], dict] | None = None, eval_every: int = 0,
              select: str = "sf", masks: Any = None, bits: Any = 0) -> FineTuned:
    """``steps`` Adam steps from ``params`` with the one trainer (:meth:`Trainer.fit`).

    Two ways to fine-tune a pruned model:

    * ``Trainer(widths=...)`` trains the smaller model itself (its own compiled step);
    * ``Trainer(channel_masked=True)`` trains the *full* model with the removed
      channels zeroed at every producer (``structured.mask_outputs``; the masks
      travel in the batch, so one compiled step serves every pruning ratio and
      the dense model), and :func:`.structured.shrink` is applied afterwards.
      Both train the same function: the kept weights get the same gradients and
      Adam updates, and shrinking the fine-tuned full model reproduces it
      exactly (the removed normalized-conv inputs' weight mass, which the masked
      run keeps training, becomes the shrunken layer's ``conf_mass``).

    Args:
      trainer: the trainer of the architecture.
      params: bare parameter tree.
      batch_fn: position -> ``{"frames", "gt"}``.
      steps: number of steps.
      lr: Adam learning rate.
      refine_after: from this step on the rate is ``lr * refine_factor`` (the
        paper's "fine-tune, then refine at a 10x lower rate"); None: constant.
      refine_factor: see ``refine_after``.
      log: progress printer.
      channel_masks: ``{group: 0/1 [width]}`` for a channel-masked trainer (default
        all ones).
      evaluate: params -> validation metrics; with ``eval_every`` > 0 the params are
        evaluated every ``eval_every`` steps of a phase and after its last step, and
        the best by ``select`` are returned (the original's and the study's protocol:
        best validation SF outlier rate). The starting point is not a candidate:
        something fine-tuned is always returned.
      eval_every: see ``evaluate``; 0 returns the last step's params.
      select: the metric minimised by the selection.
      masks, bits: unstructured pruning masks and weight bit widths (one, or a tree
        like ``params``) held in the train state (:meth:`Trainer.new_state`).

    Returns:
      :class:`FineTuned`.

    Raises:
      DivergenceError: a non-finite loss or parameters.
    """
    if steps == 0:
        return FineTuned(params, [], 0, [])
    if trainer.channel_masked and channel_masks is None:
        channel_masks = {k: np.ones(v, np.float32) for k, v in widths_of(params).items()}
    refine = steps if refine_after is None else min(int(refine_after), steps)
    phases = [Phase("lr", lr, refine), Phase("refine", lr * refine_factor, steps - refine)]
    losses: list[float] = []
    t0 = time.perf_counter()

    def batch(pos: int) -> dict:
        b = batch_fn(pos)
        return {**b, "channel_masks": channel_masks} if trainer.channel_masked else b

    def on_step(pos: int, metrics: dict) -> None:
        losses.append(float(metrics["loss"]))
        if pos == 0:
            log(f"  first step (compile) {time.perf_counter() - t0:.0f} s, loss {losses[0]:.3f}")

    validate = None
    if evaluate is not None and eval_every:
        def validate(state):
            return evaluate(jax.device_get(state.params))
    state = trainer.new_state(jax.tree.map(jnp.asarray, params), lr=lr, masks=masks, bits=bits)
    fit = trainer.fit(state, batch, [p for p in phases if p.steps], evaluate=validate,
                      eval_every=eval_every, select=select, on_step=on_step)
    summary = ""
    if fit.history:
        best = min(h[select] for h in fit.history)
        summary = f"; kept step {fit.selected_step} (best validation {select} {best:.2f})"
    log(f"  {steps} steps in {time.perf_counter() - t0:.0f} s; loss "
        f"{np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f}{summary}")
    history = [{k: v for k, v in h.items() if k != "phase"} for h in fit.history]
    return FineTuned(jax.device_get(fit.state.params), losses, fit.selected_step, history)


def pretrain(data, steps: int, lr: float, seed: int, log=print) -> Any:
    """Pre-trains the dense model from the initialisation (no baseline checkpoint)."""
    params = init_params(seed)["params"]
    n = data.samples
    return fine_tune(Trainer(seed=seed), params, lambda p: data.train_batch(p, n), steps, lr,
                     log=log).params


# ----------------------------------------------------------------------------- measuring


def dir_size(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path`` (or of the file)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# a fixed name: a call replaces what an interrupted one left, so scratch never fills up
SIZE_PROBE = "size_probe_checkpoint"


def disk_bytes(model: Any, workdir: Path) -> int:
    """Size of the model's checkpoint (``save_checkpoint``), measured in ``workdir``.

    Args:
      model: ``{'params': ...}`` (a float checkpoint) or an int8 model (``int8``).
      workdir: scratch folder.

    Raises:
      FileExistsError: ``workdir/size_probe_checkpoint`` exists and is not a checkpoint.
    """

    out = Path(workdir) / SIZE_PROBE
    save_checkpoint(out, model, overwrite=True)
    size = dir_size(out)
    discard(out)
    return size


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


def evaluate_outputs(sf: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Frame-averaged EPE / D0 / D1 / Fl / SF outlier rates."""
    counts = jax.device_get(frame_counts(jnp.asarray(sf), jnp.asarray(gt)))
    return {k: float(v) for k, v in metrics_from_counts(counts, "frame").items()}


def make_candidate(name: str, ratio: float, params: Any, widths: Any, val: dict,
                   workdir: Path, *, quant: bool = False, calib: Sequence[np.ndarray] = (),
                   log=print) -> Candidate:
    """Compiles the forward of one model on the validation batch and evaluates it.

    Args:
      name: label.
      ratio: pruning ratio (0 = dense).
      params: float params (bare tree).
      widths: channel widths (None = the original network).
      val: ``{"frames", "gt"}`` validation batch.
      workdir: scratch folder for size measurements.
      quant: measure the int8 model instead (post-training, calibrated on ``calib``).
      calib: training frame batches for the activation ranges.

    Returns:
      A :class:`Candidate` with metrics in ``extra``.
    """

    frames = jax.device_put(jnp.asarray(val["frames"]))
    out_size = tuple(val["gt"].shape[1:3])
    frozen = freeze_widths(widths)
    if quant:
        ranges = int8_lib.calibrate({"params": params}, calib, widths=widths)
        qmodel = int8_lib.quantize_int8({"params": params}, ranges)
        disk = disk_bytes(qmodel, workdir)
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
        disk = disk_bytes({"params": params}, workdir)
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


def _row(c: Candidate, dense: Candidate, references: dict[str, Candidate]) -> dict[str, Any]:

    t, td = c.stats, dense.stats
    m = c.extra["metrics"]
    row = {
        "name": c.name, "ratio": c.ratio, "int8": c.int8, "params": c.params,
        "param_fraction": c.params / dense.params,
        "disk_bytes": c.disk_bytes, "disk_fraction": c.disk_bytes / dense.disk_bytes,
        "gflops_xla": (c.info["flops"] or float("nan")) / 1e9,
        "conv_gflops_eq3": c.info["conv_gflops_eq3"],
        "compile_s": c.info["compile_s"],
        "latency_ms": t["median_ms"], "latency_p10_ms": t["p10_ms"],
        "latency_p90_ms": t["p90_ms"], "latency_n": t["n"],
        "speedup": td["median_ms"] / t["median_ms"],
        **{k: m[k] for k in ("epe", "d0", "d1", "fl", "sf")},
        "plan": c.extra.get("plan", "uniform"),
    }
    for key, ref in references.items():
        row[f"epe_change_vs_{key}"] = m["epe"] / ref.extra["metrics"]["epe"] - 1.0
    if "hlo" in c.extra:
        row["hlo"] = c.extra["hlo"]
    return row


def target_check(rows: list[dict], reference: str) -> dict[str, Any]:
    """The trade-off target: EPE <= +5 %, >= 1.3x faster, >= 50 % smaller on disk.

    Args:
      rows: result rows (the first is the dense model).
      reference: which dense row the EPE is compared with (``dense`` or ``dense_ft``).

    Returns:
      ``{"met": bool, "best": row name or None, "candidates": [...]}``.
    """
    key = f"epe_change_vs_{reference}"
    ok = [r for r in rows if r["ratio"] > 0 and r[key] <= TARGET_EPE_INCREASE
          and r["speedup"] >= TARGET_SPEEDUP and r["disk_fraction"] <= 1 - TARGET_DISK_REDUCTION]
    best = max(ok, key=lambda r: r["speedup"]) if ok else None
    return {"met": bool(ok), "reference": reference, "best": best["name"] if best else None,
            "candidates": [r["name"] for r in ok]}


@dataclasses.dataclass
class TradeoffData:
    """What the run needs from the data: training batches, the validation batch, calibration."""

    train_batch: Callable[[int, int], dict]
    val: dict
    samples: int
    description: str


def run_tradeoff(cfg: TradeoffConfig, data: TradeoffData, baseline: Any,
                 workdir: str | os.PathLike | None = None, log=print) -> dict[str, Any]:
    """The whole trade-off measurement (see module docstring).

    Args:
      cfg: settings.
      data: data access.
      baseline: trained dense params (bare tree).
      workdir: scratch folder (default: a temporary one).
      log: progress printer.

    Returns:
      ``{"rows": [...], "target": {...}, "config": {...}, "structures": {...}}``.
    """
    scratch = Path(workdir or tempfile.mkdtemp(prefix="structured_tradeoff_"))
    scratch.mkdir(parents=True, exist_ok=True)
    n = data.samples
    calib = [data.train_batch(10_000 + i, n)["frames"] for i in range(cfg.calib_batches)]

    def batches(pos):
        return data.train_batch(pos, n)

    start = time.perf_counter()
    cands: list[Candidate] = []
    structures: dict[str, Any] = {}

    def measure(name, ratio, params, widths):
        cands.append(make_candidate(name, ratio, params, widths, data.val, scratch, log=log))
        if cfg.int8:
            cands.append(make_candidate(f"{name}+int8", ratio, params, widths, data.val, scratch,
                                        quant=True, calib=calib, log=log))

    masked = cfg.finetune_mode == "masked"
    refine = int(round(cfg.finetune_steps * (1 - cfg.refine_fraction)))
    shared = Trainer(seed=cfg.seed, channel_masked=masked)  # compiles on first use
    val_frames = jnp.asarray(data.val["frames"])
    val_size = tuple(data.val["gt"].shape[1:3])
    full_model = DeepLiDARFlow()

    @jax.jit
    def masked_forward(p, m, f):
        with mask_outputs(m):
            return full_model.apply({"params": p}, f, None, val_size)[0]

    def validator(masks=None, widths=None):
        """params -> validation metrics (masked full model, or the smaller model)."""
        if not cfg.eval_every:
            return None
        if masks is None:
            masks = {k: np.ones(v, np.float32) for k, v in widths_of(baseline).items()}
        if widths is not None:
            small = DeepLiDARFlow(widths=freeze_widths(widths))
            fwd = jax.jit(lambda p, f: small.apply({"params": p}, f, None, val_size)[0])
            return lambda p: evaluate_outputs(np.asarray(fwd(p, val_frames)), data.val["gt"])
        return lambda p: evaluate_outputs(np.asarray(masked_forward(p, masks, val_frames)),
                                          data.val["gt"])

    log("dense baseline")
    measure("dense", 0.0, baseline, None)
    if cfg.dense_finetune and cfg.finetune_steps:
        log(f"dense + {cfg.finetune_steps} fine-tuning steps (reference)")
        run = fine_tune(shared, baseline, batches, cfg.finetune_steps, cfg.lr, refine, log=log,
                        evaluate=validator(), eval_every=cfg.eval_every)
        measure("dense_ft", 0.0, run.params, None)
        structures["dense_ft"] = {"losses": run.losses, **run.selection()}
    jobs = [(f"pruned{int(round(r * 100))}", r) for r in cfg.ratios]
    jobs += [(name, dict(spec)) for name, spec in cfg.plans]
    total_channels = sum(widths_of(baseline).values())
    for name, ratio in jobs:
        what = f"{ratio:.0%} of the channels per layer" if isinstance(ratio, float) else \
            f"per-layer ratios {ratio}"
        log(f"{name}: structured pruning {what} ({cfg.scope}, multiple {cfg.multiple}, "
            f"{cfg.scorer}); fine-tuning {cfg.finetune_mode}")
        res = structured_prune({"params": baseline}, ratio, scope=cfg.scope,
                               multiple=cfg.multiple, scorer=cfg.scorer, exclude=cfg.exclude)
        if masked:
            masks = channel_masks(widths_of(baseline), res.keep)
            run = fine_tune(shared, baseline, batches, cfg.finetune_steps, cfg.lr, refine,
                            log=log, channel_masks=masks, evaluate=validator(masks),
                            eval_every=cfg.eval_every)
            params = shrink({"params": run.params}, res.keep)[0]["params"]
        else:
            run = fine_tune(Trainer(seed=cfg.seed, widths=res.widths), res.variables["params"],
                            batches, cfg.finetune_steps, cfg.lr, refine, log=log,
                            evaluate=validator(widths=res.widths), eval_every=cfg.eval_every)
            params = run.params
        structures[name] = {**res.summary(), "losses": run.losses, **run.selection(),
                            "plan": ratio}
        removed = 1.0 - sum(res.widths.values()) / total_channels
        measure(name, ratio if isinstance(ratio, float) else removed, params, res.widths)
        if not isinstance(ratio, float):
            for c in cands[-2:]:
                c.extra["plan"] = name
    log("timing")
    time_candidates(cands, cfg.repeats, cfg.warmup, log)
    by_name = {c.name: c for c in cands}
    refs = {"dense": by_name["dense"]}
    if "dense_ft" in by_name:
        refs["dense_ft"] = by_name["dense_ft"]
    rows = [_row(c, by_name["dense"], refs) for c in cands]
    reference = "dense_ft" if "dense_ft" in refs else "dense"

    return {
        "config": dataclasses.asdict(cfg),
        "data": data.description,
        "rows": rows,
        "target": {"vs_" + k: target_check(rows, k) for k in refs},
        "primary_reference": reference,
        "structures": structures,
        "environment": environment(),
        "wall_s": time.perf_counter() - start,
        "timed_input": list(np.shape(data.val["frames"])),
    }


def synthetic_data(data_dir: str | os.PathLike, seed: int = 0) -> TradeoffData:
    """The study's synthetic KITTI-format world (``demo`` preset: 80 scenes, 64x192).

    Generated into ``data_dir`` if missing (as the study does); split 9:1.
    """

    cfg = make_config("demo", seed=seed)
    root = Path(data_dir)
    make_synthetic(cfg, root, progress=False)
    data = load_study_data(cfg, root)
    n = data.samples_for(cfg)
    val = data.val_batches(n)
    if len(val) != 1:
        raise ValueError(f"expected one validation batch of equal-size frames, got {len(val)}")
    desc = (f"synthetic KITTI-format world ({root}): {len(data.train)} training / "
            f"{len(data.val)} validation frames at {cfg.height}x{cfg.width}, {n} LiDAR points "
            "per frame")
    return TradeoffData(data.train_batch, val[0], n, desc)


def data_beside(checkpoint: str | os.PathLike, data_dir: str | os.PathLike | None,
                workdir: str | os.PathLike, seed: int = 0) -> TradeoffData:
    """:func:`synthetic_data` from ``data_dir``; None: the world next to ``checkpoint`` (a
    study's ``synthetic_kitti``) when there is one, else ``workdir/synthetic_kitti``."""
    if data_dir is None:
        sibling = Path(checkpoint).parent / "synthetic_kitti"
        data_dir = sibling if sibling.is_dir() else Path(workdir) / "synthetic_kitti"
    return synthetic_data(data_dir, seed)


def baseline_params(checkpoint: str | os.PathLike | None, data: TradeoffData,
                    cfg: TradeoffConfig, save_to: str | os.PathLike, log=print) -> Any:
    """The trained dense model: ``checkpoint`` if it exists, else pre-trained here and saved.

    Raises:
      ValueError: the checkpoint is not the original (dense) architecture.
    """
    for path in (checkpoint, save_to):
        if path and checkpoint_exists(path):  # also settles an interrupted save there
            log(f"baseline: {path}")
            return jax.device_get(load_checkpoint(path, widths=None)["params"])
    log(f"baseline: no checkpoint; pre-training {cfg.pretrain_steps} steps at lr "
        f"{cfg.pretrain_lr}")
    params = pretrain(data, cfg.pretrain_steps, cfg.pretrain_lr, cfg.seed, log)
    save_checkpoint(save_to, {"params": params}, {"source": "structured_tradeoff pre-training",
                                                  "pretrain_steps": cfg.pretrain_steps})
    return params


# ----------------------------------------------------------------------------- reporting


def to_markdown(result: dict[str, Any]) -> str:
    """The trade-off table (and the target verdicts) as Markdown."""
    env = result["environment"]
    shape = result["timed_input"]
    lines = [
        "# Structured pruning + int8: measured trade-offs "
        f"({env.get('platform', '?').upper()}; GPU pending)",
        "",
        f"Device: {env.get('platform', '?')} ({env.get('cpu', '?')}, {env.get('cpu_count')} "
        f"cores visible), jax {env.get('versions', {}).get('jax', '?')}. "
        f"Latency: median (p10-p90) of "
        f"{result['config']['repeats']} interleaved rounds of one AOT-compiled forward on the "
        f"validation batch {shape} (B x frames x H x W x C); shared 2-core machine, other jobs "
        "running: compare rows with each other, not with other runs.",
        f"Data: {result['data']}.",
        f"Fine-tuning ({result['config']['finetune_mode']}): "
        f"{result['config']['finetune_steps']} Adam steps at lr {result['config']['lr']}, the "
        f"last {result['config']['refine_fraction']:.0%} at a 10x lower rate, for every pruned "
        "model and for `dense_ft`"
        + (f"; validated every {result['config']['eval_every']} steps, the best validation "
           "SF outlier rate kept (the original's and the study's protocol; selection on the "
           "reported set)" if result["config"].get("eval_every") else "; the last step kept")
        + "; int8 = post-training, calibrated on "
        f"{result['config']['calib_batches']} training batches.",
        "",
        "| model | ratio | int8 | params | disk MB | GFLOPs (XLA) | conv GFLOPs eq.3 | "
        "latency ms | speedup | EPE | vs dense | vs dense_ft | D1 % | Fl % | SF % |",
        "|---" * 15 + "|",
    ]
    for r in result["rows"]:
        ft = r.get("epe_change_vs_dense_ft")
        lines.append(
            f"| {r['name']} | {r['ratio']:.0%} | {'yes' if r['int8'] else 'no'} | "
            f"{r['params']:,} ({r['param_fraction']:.0%}) | {r['disk_bytes'] / 1e6:.2f} "
            f"({r['disk_fraction']:.0%}) | {r['gflops_xla']:.2f} | {r['conv_gflops_eq3']:.2f} | "
            f"{r['latency_ms']:.0f} ({r['latency_p10_ms']:.0f}-{r['latency_p90_ms']:.0f}) | "
            f"{r['speedup']:.2f}x | {r['epe']:.3f} | {r['epe_change_vs_dense']:+.1%} | "
            f"{'-' if ft is None else f'{ft:+.1%}'} | {r['d1']:.1f} | {r['fl']:.1f} | "
            f"{r['sf']:.1f} |")
    lines += ["", "Target: EPE at most +5 %, at least 1.3x faster (here: CPU, "
              "labelled), at least 50 % smaller on disk."]
    for key, t in result["target"].items():
        verdict = f"met by {', '.join(t['candidates'])} (fastest: {t['best']})" if t["met"] \
            else "not met"
        lines.append(f"* EPE {key.replace('_', ' ')}: {verdict}.")
    plans = result["config"].get("plans") or []
    if plans:
        lines += ["", "Per-layer plans (ratio column = fraction of all channels removed): "
                  + "; ".join(f"`{name}` = {dict(spec)}" for name, spec in plans) + ". "
                  "Caveat: such plans come from a sensitivity check (each module pruned "
                  "without fine-tuning) and from the uniform rows, measured on the same "
                  "validation frames as the table (there is no separate test split), so their "
                  "EPE comparison is optimistic; with 8 validation frames, EPE differences of "
                  "a few percent are within the noise of fine-tuning."]
    hlo = [r for r in result["rows"] if "hlo" in r]
    if hlo:
        h = hlo[0]["hlo"]
        lines += ["", f"Integer convolutions in the compiled HLO ({env.get('platform', '?')}): "
                  f"{h['integer_convolutions']} of {h['selected_layers']} selected convs "
                  f"are integer ({h['int8_convolutions']} with s8 operands, "
                  f"{h['int32_convolutions']} whose s8 codes XLA widened to s32 before the "
                  f"convolution); {h['float_convolutions']} float convolutions (the normalized "
                  f"convs: weight-only int8, dequantized in the step). Operand types: "
                  f"{h['operand_types']}."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str | os.PathLike) -> None:
    """EPE vs latency (the paper's Fig. 4 layout): float and int8 per pruning ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for quant, marker, label in ((False, "o", "float32"), (True, "s", "int8")):
        rows = [r for r in result["rows"] if r["int8"] == quant]
        if not rows:
            continue
        pruned = sorted((r for r in rows if r["ratio"] > 0 and r.get("plan", "uniform")
                         == "uniform"), key=lambda r: r["ratio"])
        line = ax.plot([r["latency_ms"] for r in pruned], [r["epe"] for r in pruned],
                       marker=marker, label=f"{label}, pruned")[0]
        dense_rows = [r for r in rows if r["ratio"] == 0]
        ax.plot([r["latency_ms"] for r in dense_rows], [r["epe"] for r in dense_rows],
                marker=marker, linestyle="", color=line.get_color(), markerfacecolor="none")
        plans = [r for r in rows if r.get("plan", "uniform") != "uniform"]
        ax.plot([r["latency_ms"] for r in plans], [r["epe"] for r in plans], marker="*",
                markersize=11, linestyle="", color=line.get_color())
        for r in rows:
            ax.annotate(r["name"].replace("+int8", "").replace("pruned", "p"),
                        (r["latency_ms"], r["epe"]), textcoords="offset points",
                        xytext=(4, 4 if quant else -10), fontsize=7)
    dense = result["rows"][0]
    ax.axhline(dense["epe"] * (1 + TARGET_EPE_INCREASE), color="gray", linestyle="--",
               linewidth=0.8, label="dense EPE +5 %")
    ft = [r for r in result["rows"] if r["name"] == "dense_ft"]
    if ft:
        ax.axhline(ft[0]["epe"] * (1 + TARGET_EPE_INCREASE), color="tab:green",
                   linestyle="--", linewidth=0.8, label="dense_ft EPE +5 %")
    ax.axvline(dense["latency_ms"] / TARGET_SPEEDUP, color="gray", linestyle=":",
               linewidth=0.8, label="dense latency / 1.3")
    backend = result["environment"].get("platform", "cpu").upper()
    ax.set_xlabel(f"latency per validation batch [ms] ({backend}, shared machine)")
    ax.set_ylabel("EPE [px] (synthetic validation)")
    ax.set_title("Structured pruning (+ int8): EPE vs latency (hollow: dense, star: per-layer "
                 "plan)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=120)
    plt.close(fig)
