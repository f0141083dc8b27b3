"""Scene-flow metrics exactly as the original evaluation (``deeplidarflow.get_eval``).

On the pixels with ``gt[..., 2] > 0`` (the original's validity rule, see
``data.kitti``), with ``e = |pred - gt|`` per channel (u, v, d0, d1):

* EPE: mean over valid pixels of the 4D norm ``||e||``.
* D0 / D1 outlier: ``e_d > 3`` and ``e_d / gt_d > 0.05`` (disparity at t / t+1).
* Fl outlier: ``||e_uv|| > 3`` and ``||e_uv|| / ||gt_uv|| > 0.05``.
* SF outlier: D0 or D1 or Fl. Rates are in percent.

The ratios are computed by division as the original does (``x / 0`` is ``inf``, ``0 / 0``
is NaN and fails the test), so a valid pixel whose ``d1`` ground truth is 0 counts as a
D1 outlier whenever its error exceeds 3 px. ``get_eval`` pools the pixels of one batch,
and ``evaluation.py`` averages those batch values over the set (batch size 1 there, so a
mean over frames: ``aggregate="frame"``). The official KITTI devkit instead divides the
total outlier count by the total number of valid pixels (``aggregate="pixel"``).

``frame_counts`` / ``batch_metrics`` are jittable ``jnp`` functions; ``*_np`` functions
are a NumPy version written with boolean masks like the original.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

ABS_THRESH = 3.0
REL_THRESH = 0.05
METRIC_NAMES = ("epe", "d0", "d1", "fl", "sf")
AGGREGATIONS = ("frame", "pixel")


def _check_pair(pred, gt) -> None:
    if pred.shape != gt.shape or pred.shape[-1] != 4:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be "
                         "[..., H, W, 4]")


def valid_mask(gt):
    """The original's validity rule: ``gt[..., 2] > 0`` (works on NumPy and jax arrays)."""
    return gt[..., 2] > 0


def outlier_maps(pred: jnp.ndarray, gt: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Per-pixel errors and outlier flags (not yet masked), jittable.

    Args:
      pred, gt: ``[..., H, W, 4]`` scene flow (u, v, d0, d1) in pixels.

    Returns:
      dict: ``epe`` (4D error norm), ``d0``, ``d1``, ``fl``, ``sf`` (bool outliers) and
      ``valid`` (bool), each ``[..., H, W]``.
    """
    _check_pair(pred, gt)
    err = jnp.abs(pred - gt)
    epe = jnp.sqrt(jnp.sum(err**2, axis=-1))
    flow_err = jnp.sqrt(jnp.sum(err[..., :2] ** 2, axis=-1))
    flow_mag = jnp.sqrt(jnp.sum(gt[..., :2] ** 2, axis=-1))
    d0 = (err[..., 2] > ABS_THRESH) & (err[..., 2] / gt[..., 2] > REL_THRESH)
    d1 = (err[..., 3] > ABS_THRESH) & (err[..., 3] / gt[..., 3] > REL_THRESH)
    fl = (flow_err > ABS_THRESH) & (flow_err / flow_mag > REL_THRESH)
    return {"epe": epe, "d0": d0, "d1": d1, "fl": fl, "sf": d0 | d1 | fl,
            "valid": valid_mask(gt)}


def frame_counts(pred: jnp.ndarray, gt: jnp.ndarray, mask: jnp.ndarray | None = None
                 ) -> dict[str, jnp.ndarray]:
    """Per-frame sums from which every aggregation follows, jittable.

    Args:
      pred, gt: ``[B, H, W, 4]``.
      mask: optional bool ``[B, H, W]`` replacing the original's ``gt[..., 2] > 0``.

    Returns:
      dict of float32 ``[B]``: ``count`` (valid pixels), ``epe`` (sum of 4D error norms)
      and ``d0``, ``d1``, ``fl``, ``sf`` (outlier counts).
    """
    maps = outlier_maps(pred, gt)
    valid = maps["valid"] if mask is None else jnp.asarray(mask, bool)
    w = valid.astype(jnp.float32)
    axes = (-2, -1)
    out = {"count": jnp.sum(w, axis=axes),
           "epe": jnp.sum(jnp.where(valid, maps["epe"], 0.0), axis=axes)}
    for name in ("d0", "d1", "fl", "sf"):
        out[name] = jnp.sum(maps[name] & valid, axis=axes).astype(jnp.float32)
    return out


_frame_counts_jit = jax.jit(frame_counts)


def metrics_from_counts(counts, aggregate: str = "frame") -> dict:
    """Set-level metrics from per-frame counts.

    Args:
      counts: dict as ``frame_counts`` (``[N]`` arrays, NumPy or jax).
      aggregate: ``"frame"`` (mean over frames of each frame's EPE and rates, as the
        original evaluation with batch size 1) or ``"pixel"`` (totals over all valid
        pixels, as the KITTI devkit).

    Returns:
      dict with ``epe`` (px) and ``d0``, ``d1``, ``fl``, ``sf`` (percent). A frame without
      valid pixels gives NaN under ``"frame"``, as the original's empty mean.
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    xp = jnp if any(not isinstance(v, np.ndarray | float | int) for v in counts.values()) \
        else np
    count = xp.asarray(counts["count"], xp.float32)
    scale = {"epe": 1.0, "d0": 100.0, "d1": 100.0, "fl": 100.0, "sf": 100.0}
    if aggregate == "frame":
        return {k: xp.mean(xp.asarray(counts[k], xp.float32) / count) * scale[k]
                for k in METRIC_NAMES}
    total = xp.sum(count)
    return {k: xp.sum(xp.asarray(counts[k], xp.float32)) / total * scale[k]
            for k in METRIC_NAMES}


def batch_metrics(pred: jnp.ndarray, gt: jnp.ndarray, mask: jnp.ndarray | None = None) -> dict:
    """``get_eval`` of one batch: pixels of all frames pooled, jittable.

    Args:
      pred, gt: ``[B, H, W, 4]`` (or ``[H, W, 4]``).
      mask: optional bool mask replacing ``gt[..., 2] > 0``.

    Returns:
      dict ``epe``, ``d0``, ``d1``, ``fl``, ``sf`` (scalars; rates in percent).
    """
    if pred.ndim == 3:
        pred, gt = pred[None], gt[None]
        mask = None if mask is None else jnp.asarray(mask)[None]
    return metrics_from_counts({k: jnp.sum(v, keepdims=True)
                                for k, v in frame_counts(pred, gt, mask).items()}, "pixel")


def batch_metrics_np(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """NumPy ``get_eval``: boolean-mask the valid pixels of the batch, then reduce.

    Args:
      pred, gt: ``[..., H, W, 4]``.
      mask: optional bool mask replacing ``gt[..., 2] > 0``.

    Returns:
      dict ``epe``, ``d0``, ``d1``, ``fl``, ``sf`` (floats; rates in percent).
    """
    pred = np.asarray(pred, np.float32)
    gt = np.asarray(gt, np.float32)
    _check_pair(pred, gt)
    keep = valid_mask(gt) if mask is None else np.asarray(mask, bool)
    p, g = pred[keep], gt[keep]
    err = np.abs(p - g)
    with np.errstate(divide="ignore", invalid="ignore"):
        flow_err = np.linalg.norm(err[:, :2], axis=-1)
        d0 = (err[:, 2] > ABS_THRESH) & (err[:, 2] / g[:, 2] > REL_THRESH)
        d1 = (err[:, 3] > ABS_THRESH) & (err[:, 3] / g[:, 3] > REL_THRESH)
        fl = (flow_err > ABS_THRESH) & (flow_err / np.linalg.norm(g[:, :2], axis=-1)
                                        > REL_THRESH)
    with np.errstate(invalid="ignore"):
        return {"epe": float(np.mean(np.linalg.norm(err, axis=-1))) if len(err) else np.nan,
                "d0": _percent(d0), "d1": _percent(d1), "fl": _percent(fl),
                "sf": _percent(d0 | d1 | fl)}


def _percent(flags: np.ndarray) -> float:
    return float(np.mean(flags) * 100.0) if flags.size else np.nan


def evaluate_np(pairs: Iterable[tuple[np.ndarray, np.ndarray]], aggregate: str = "frame"
                ) -> dict:
    """Set-level metrics over (pred, gt) frames, NumPy.

    Args:
      pairs: iterable of ``(pred, gt)`` ``[H, W, 4]`` frames.
      aggregate: ``"frame"`` (mean of per-frame ``get_eval`` values, as the original
        evaluation) or ``"pixel"`` (devkit: all valid pixels of the set pooled).

    Returns:
      dict ``epe``, ``d0``, ``d1``, ``fl``, ``sf`` and ``frames`` (their number).
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    acc = MetricAccumulator()
    for pred, gt in pairs:
        acc.add(np.asarray(pred)[None], np.asarray(gt)[None])
    out = acc.result(aggregate)
    out["frames"] = acc.num_frames
    return out


class MetricAccumulator:
    """Collects per-frame counts over an evaluation and reports either aggregation."""

    def __init__(self):
        self._counts: dict[str, list[np.ndarray]] = {k: [] for k in ("count",) + METRIC_NAMES}

    @property
    def num_frames(self) -> int:
        """Frames added so far."""
        return int(sum(len(c) for c in self._counts["count"]))

    def add(self, pred, gt, mask=None) -> None:
        """Adds a batch ``[B, H, W, 4]`` (frames are kept apart)."""
        counts = _frame_counts_jit(jnp.asarray(pred), jnp.asarray(gt),
                                   None if mask is None else jnp.asarray(mask))
        self.add_counts(counts)

    def add_counts(self, counts) -> None:
        """Adds per-frame counts computed elsewhere (e.g. inside a jitted eval step)."""
        for k in self._counts:
            self._counts[k].append(np.asarray(counts[k], np.float64).reshape(-1))

    def counts(self) -> dict[str, np.ndarray]:
        """All per-frame counts so far, ``[N]`` each."""
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in self._counts.items()}

    def result(self, aggregate: str = "frame") -> dict[str, float]:
        """Metrics over the frames added (see ``metrics_from_counts``)."""
        if self.num_frames == 0:
            raise ValueError("MetricAccumulator.result: no frames were added")
        with np.errstate(divide="ignore", invalid="ignore"):
            return {k: float(v) for k, v in metrics_from_counts(self.counts(), aggregate).items()}
