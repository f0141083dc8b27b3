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
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.compress.structured import (
    channel_masks,
    mask_outputs,
    structured_prune,
)
from deepliflow_jax.data.dataset import Dataset
from deepliflow_jax.model.channels import (
    widths_of,
)
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.model.widths import freeze_widths
from deepliflow_jax.profile.environment import environment
from deepliflow_jax.scalars import check_number, check_numbers
from deepliflow_jax.search.finetune import fine_tune, fine_tune_pruned
from deepliflow_jax.search.measure import (
    Candidate,
    evaluate_outputs,
    make_candidate,
    time_candidates,
)
from deepliflow_jax.train.trainer import Trainer

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


def run_tradeoff(cfg: TradeoffConfig, data: Dataset, baseline: Any,
                 workdir: str | os.PathLike | None = None, log=print) -> dict[str, Any]:
    """The whole trade-off measurement (see module docstring).

    Args:
      cfg: settings.
      data: the training batches and the validation batch (``Dataset.val_batch``).
      baseline: trained dense params (bare tree).
      workdir: scratch folder (default: a temporary one).
      log: progress printer.

    Returns:
      ``{"rows": [...], "target": {...}, "config": {...}, "structures": {...}}``.
    """
    scratch = Path(workdir or tempfile.mkdtemp(prefix="structured_tradeoff_"))
    scratch.mkdir(parents=True, exist_ok=True)
    n, val = data.num_samples, data.val_batch()
    calib = [data.train_batch(10_000 + i, n)["frames"] for i in range(cfg.calib_batches)]

    def batches(pos):
        return data.train_batch(pos, n)

    start = time.perf_counter()
    cands: list[Candidate] = []
    structures: dict[str, Any] = {}

    def measure(name, ratio, params, widths):
        cands.append(make_candidate(name, ratio, params, widths, val, scratch, log=log))
        if cfg.int8:
            cands.append(make_candidate(f"{name}+int8", ratio, params, widths, val, scratch,
                                        quant=True, calib=calib, log=log))

    masked = cfg.finetune_mode == "masked"
    refine = int(round(cfg.finetune_steps * (1 - cfg.refine_fraction)))
    shared = Trainer(seed=cfg.seed, channel_masked=masked)  # compiles on first use
    val_frames = jnp.asarray(val["frames"])
    val_size = tuple(val["gt"].shape[1:3])
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
            return lambda p: evaluate_outputs(np.asarray(fwd(p, val_frames)), val["gt"])
        return lambda p: evaluate_outputs(np.asarray(masked_forward(p, masks, val_frames)),
                                          val["gt"])

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
            run, small = fine_tune_pruned(shared, baseline, res.keep, batches,
                                          cfg.finetune_steps, cfg.lr, refine,
                                          evaluate=validator(masks), eval_every=cfg.eval_every,
                                          log=log)
            params = small["params"]
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
        "timed_input": list(np.shape(val["frames"])),
    }
