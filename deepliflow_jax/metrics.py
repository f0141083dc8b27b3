"""Scene-flow metrics: the original evaluation (``deeplidarflow.get_eval``) and the devkit's.

With ``e = |pred - gt|`` per channel (u, v, d0, d1):

* EPE: mean of the 4D norm ``||e||`` (px).
* D0 / D1 outlier: ``e_d > 3`` and ``e_d / gt_d > 0.05`` (disparity at t / t+1).
* Fl outlier: ``||e_uv|| > 3`` and ``||e_uv|| / ||gt_uv|| > 0.05``.
* The ratios are float32. At an exact tie (error exactly 5 % of the truth, > 3 px) the
  modes differ as their references do: the original compares with float32 0.05 (not an
  outlier), the devkit's float ratio with the double 0.05 (an outlier); ``outlier_maps``.
* SF outlier: D0 or D1 or Fl. Rates are in percent.
* A pixel whose prediction has a non-finite channel is an outlier in every rate (a
  comparison with NaN is False, which would count it as an inlier); ``nonfinite`` counts
  those pixels among the evaluated ones. Its EPE is NaN or inf and so is the mean.

Which pixels count (``validity``):

* ``"original"`` (default, what the paper's numbers mean): every quantity on the pixels
  with ``gt[..., 2] > 0`` (a valid first-frame disparity). The ratios are computed by
  division as the original does (``x / 0`` is ``inf``, ``0 / 0`` is NaN and fails the
  test), so a pixel whose ``d1`` ground truth is 0 counts as a D1 outlier whenever its
  error exceeds 3 px, and a pixel whose flow is invalid keeps the decoded (-512, -512).
* ``"devkit"`` (the KITTI scene-flow devkit, ``evaluate_scene_flow.cpp``): each quantity
  on its own ground truth's valid pixels, given by the loader's ``valid`` masks
  ``[..., H, W, 3]`` (d0, d1, flow valid; ``SceneFlowSample.gt_valid``): D0 where d0 is
  valid, D1 where d1 is valid, Fl where the flow is valid, SF and EPE where all three are.

Pixels that do not count are selected out (not multiplied by a zero mask): whatever their
ground truth holds (NaN, inf, 1e30) reaches neither the metrics nor their gradients
(``evaluated_gt``); the same holds for ``losses.kitti_loss``.

Scoring a submission (``as_submission=True`` of ``evaluate_np`` / ``batch_metrics_np``,
``"devkit"`` only): the devkit scores the PNGs, not the float prediction. Each frame is
scored as its submission files would be (``data.submission``): disparities rounded to
1/256 px and flows to 1/64 px, and missing values (a disparity <= 0, non-finite or
rounding to 0; a non-finite flow) filled by the devkit's ``interpolateBackground``. A
non-finite prediction is then no longer an outlier by itself (the devkit never sees it).

Aggregation over a set: ``get_eval`` pools the pixels of one batch and ``evaluation.py``
averages those batch values over the set (batch size 1 there, so a mean over frames:
``aggregate="frame"``); the devkit divides the total outlier count by the total number of
valid pixels (``aggregate="pixel"``), the default of ``evaluate_np`` under ``"devkit"``.

Uncertainty: ``bootstrap_interval`` resamples the evaluated frames (seeded), pools each
resample's counts with the same rule and gives a percentile interval per metric, or the
paired interval of the difference between two models on the same frames.

``frame_counts`` / ``batch_metrics`` are jittable ``jnp`` functions (``validity`` static);
``*_np`` functions are a NumPy version written with boolean masks like the original.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

# the modes live with the reader that builds each mode's ground truth
from deepliflow_jax.data.kitti import VALIDITY_MODES, check_validity  # noqa: F401
from deepliflow_jax.data.submission import devkit_estimate

ABS_THRESH = 3.0
REL_THRESH = 0.05
# float32 ratios against 0.05: the original compares with float32(0.05); the devkit's float
# ratio is promoted and compared with the double 0.05, i.e. ratio >= the smallest float32
# above the double (float32(0.05) = 0.0500000007... is above it)
_REL_F32 = np.float32(REL_THRESH)
DEVKIT_REL_MIN = _REL_F32 if float(_REL_F32) > REL_THRESH else np.nextafter(
    _REL_F32, np.float32(np.inf))
METRIC_NAMES = ("epe", "d0", "d1", "fl", "sf")
AGGREGATIONS = ("frame", "pixel")
# per-frame sums besides the METRIC_NAMES numerators: SF/EPE, D0, D1, Fl denominators
COUNT_KEYS = ("count", "count_d0", "count_d1", "count_fl", "nonfinite")
_RATES = ("d0", "d1", "fl", "sf")


def _check_pair(pred, gt) -> None:
    if pred.shape != gt.shape or pred.shape[-1] != 4:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be "
                         "[..., H, W, 4]")


def default_aggregate(validity: str) -> str:
    """The aggregation each mode's reference uses: ``"frame"`` (original), ``"pixel"`` (devkit)."""
    return "pixel" if check_validity(validity) == "devkit" else "frame"


def valid_mask(gt):
    """The original's validity rule: ``gt[..., 2] > 0`` (works on NumPy and jax arrays)."""
    return gt[..., 2] > 0


def validity_masks(gt, valid=None, mask=None, validity: str = "original") -> dict:
    """The pixels each quantity is evaluated on (NumPy or jax arrays).

    Args:
      gt: ``[..., H, W, 4]`` ground truth.
      valid: bool ``[..., H, W, 3]``, the loader's validity of (d0, d1, flow); needed by
        ``"devkit"``, unused by ``"original"``.
      mask: bool ``[..., H, W]``; ``"original"``: replaces ``gt[..., 2] > 0``;
        ``"devkit"``: restricts every quantity's pixels further (e.g. a region).
      validity: ``"original"`` or ``"devkit"`` (module docstring).

    Returns:
      dict of bool ``[..., H, W]``: ``d0``, ``d1``, ``fl``, ``sf`` (SF and EPE pixels).

    Raises:
      ValueError: unknown ``validity``; ``"devkit"`` without ``valid`` or with a ``valid``
        of another shape than ``gt.shape[:-1] + (3,)``.
    """
    xp = np if isinstance(gt, np.ndarray) else jnp
    if check_validity(validity) == "original":
        keep = valid_mask(gt) if mask is None else xp.asarray(mask, bool)
        return {name: keep for name in _RATES}
    if valid is None:
        raise ValueError("validity='devkit' needs valid, the loader's [..., H, W, 3] validity "
                         "of (d0, d1, flow) (SceneFlowSample.gt_valid, batch['valid'])")
    valid = xp.asarray(valid, bool)
    if tuple(valid.shape) != tuple(gt.shape[:-1]) + (3,):
        raise ValueError(f"valid {tuple(valid.shape)} must be gt's [..., H, W] + (3,), got gt "
                         f"{tuple(gt.shape)}")
    out = {"d0": valid[..., 0], "d1": valid[..., 1], "fl": valid[..., 2]}
    if mask is not None:
        region = xp.asarray(mask, bool)
        out = {k: v & region for k, v in out.items()}
    out["sf"] = out["d0"] & out["d1"] & out["fl"]
    return out


def evaluated_gt(gt, masks: dict):
    """``gt`` with every channel zeroed where no evaluated quantity reads it (NumPy or jax).

    The flow (u, v) is read on the Fl pixels, d0 on the D0 pixels, d1 on the D1 pixels
    (SF / EPE pixels are in all three). Selecting (not multiplying by a mask) keeps NaN,
    inf or huge values at the other pixels out of the metrics and their gradients.

    Args:
      gt: ``[..., H, W, 4]`` ground truth.
      masks: ``validity_masks(...)`` of ``gt``.

    Returns:
      Array like ``gt``.
    """
    xp = np if isinstance(gt, np.ndarray) else jnp
    read = xp.stack([masks["fl"], masks["fl"], masks["d0"], masks["d1"]], axis=-1)
    return xp.where(read, gt, xp.zeros((), gt.dtype))


def _safe_sqrt(x: jnp.ndarray) -> jnp.ndarray:
    # sqrt with a zero (not NaN) gradient at 0; the value is sqrt's, NaN and inf included
    zero = x == 0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, x)))


def outlier_maps(pred, gt, validity: str = "original") -> dict:
    """Per-pixel errors and outlier flags (not yet masked), NumPy or jax (jittable).

    The one computation behind the jitted and the NumPy paths, so they agree pixel for
    pixel. Ratios are float32 divisions; the flow magnitude passes through an optimization
    barrier so XLA cannot rewrite ``x / sqrt(y)`` into ``x * rsqrt(y)``, which is not
    correctly rounded and moves pixels at the threshold.

    Args:
      pred, gt: ``[..., H, W, 4]`` scene flow (u, v, d0, d1) in pixels, float32; NumPy
        arrays give NumPy results, anything else jax arrays.
      validity: the relative test at an exact tie: ``"original"`` compares the float32
        ratio with float32 0.05 (``get_eval``: ``tf.div(...) > 0.05``); ``"devkit"`` with
        the double 0.05 (``evaluate_scene_flow.cpp``: ``fabs(d_gt - d_est) / fabs(d_gt) >
        REL_THRESH`` in float), so an error of exactly 5 % (and > 3 px) is an outlier.

    Returns:
      dict: ``epe`` (4D error norm), ``d0``, ``d1``, ``fl``, ``sf`` (bool outliers; a
      non-finite prediction is an outlier in each), ``nonfinite`` (bool) and ``valid``
      (the original's rule), each ``[..., H, W]``.

    Raises:
      ValueError: shapes of ``pred`` and ``gt``; unknown ``validity``.
    """
    _check_pair(pred, gt)
    devkit = check_validity(validity) == "devkit"
    xp = np if isinstance(pred, np.ndarray) and isinstance(gt, np.ndarray) else jnp
    err = xp.abs(pred - gt)
    epe = xp.sqrt(xp.sum(err * err, axis=-1))
    flow_err = xp.sqrt(err[..., 0] * err[..., 0] + err[..., 1] * err[..., 1])
    flow_mag = xp.sqrt(gt[..., 0] * gt[..., 0] + gt[..., 1] * gt[..., 1])
    if xp is jnp:
        flow_mag = jax.lax.optimization_barrier(flow_mag)
    bad = ~xp.all(xp.isfinite(pred), axis=-1)

    def outlier(error, magnitude):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = error / magnitude
        relative = ratio >= DEVKIT_REL_MIN if devkit else ratio > _REL_F32
        return ((error > ABS_THRESH) & relative) | bad

    # the devkit divides a disparity error by fabs(d_gt); the original by d_gt itself
    d0 = outlier(err[..., 2], xp.abs(gt[..., 2]) if devkit else gt[..., 2])
    d1 = outlier(err[..., 3], xp.abs(gt[..., 3]) if devkit else gt[..., 3])
    fl = outlier(flow_err, flow_mag)
    return {"epe": epe, "d0": d0, "d1": d1, "fl": fl, "sf": d0 | d1 | fl, "nonfinite": bad,
            "valid": valid_mask(gt)}


def frame_counts(pred: jnp.ndarray, gt: jnp.ndarray, mask: jnp.ndarray | None = None,
                 valid: jnp.ndarray | None = None, validity: str = "original"
                 ) -> dict[str, jnp.ndarray]:
    """Per-frame sums from which every aggregation follows, jittable (``validity`` static).

    Args:
      pred, gt: ``[B, H, W, 4]``.
      mask: optional bool ``[B, H, W]`` (see ``validity_masks``).
      valid: bool ``[B, H, W, 3]`` validity of (d0, d1, flow), for ``"devkit"``.
      validity: ``"original"`` or ``"devkit"``.

    Returns:
      dict of float32 ``[B]``: ``count`` (SF / EPE pixels), ``count_d0``, ``count_d1``,
      ``count_fl`` (their pixels; all equal ``count`` under ``"original"``), ``epe`` (sum
      of 4D error norms), ``d0``, ``d1``, ``fl``, ``sf`` (outlier counts) and
      ``nonfinite`` (evaluated pixels with a non-finite prediction).

    Raises:
      ValueError: see ``validity_masks``; shapes of ``pred`` and ``gt``.
    """
    masks = validity_masks(gt, valid, mask, validity)
    gt = evaluated_gt(jnp.asarray(gt), masks)
    maps = outlier_maps(pred, gt, validity)
    axes = (-2, -1)

    def total(flags):
        return jnp.sum(flags, axis=axes).astype(jnp.float32)

    epe = _safe_sqrt(jnp.sum((pred - gt) ** 2, axis=-1))
    out = {"count": total(masks["sf"]),
           "epe": jnp.sum(jnp.where(masks["sf"], epe, 0.0), axis=axes)}
    for name in _RATES:
        out[name] = total(maps[name] & masks[name])
    for name in ("d0", "d1", "fl"):
        out[f"count_{name}"] = total(masks[name])
    out["nonfinite"] = total(maps["nonfinite"] & (masks["d0"] | masks["d1"] | masks["fl"]))
    return out


_frame_counts_jit = jax.jit(frame_counts, static_argnames="validity")


def metrics_from_counts(counts, aggregate: str = "frame") -> dict:
    """Set-level metrics from per-frame counts.

    Args:
      counts: dict as ``frame_counts`` (``[N]`` arrays, NumPy or jax; or ``[..., N]``:
        each row a set of its own, e.g. bootstrap resamples); without the ``count_*``
        keys every rate is over ``count``.
      aggregate: ``"frame"`` (mean over frames of each frame's EPE and rates, as the
        original evaluation with batch size 1) or ``"pixel"`` (totals over all valid
        pixels, as the KITTI devkit).

    Returns:
      dict with ``epe`` (px), ``d0``, ``d1``, ``fl``, ``sf`` (percent) and ``nonfinite``
      (total pixels with a non-finite prediction), scalars (``[...]`` for ``[..., N]``
      counts). A frame without valid pixels gives NaN under ``"frame"``, as the
      original's empty mean.

    Raises:
      ValueError: unknown ``aggregate``.
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    xp = jnp if any(not isinstance(v, np.ndarray | float | int) for v in counts.values()) \
        else np

    def get(key):
        return xp.asarray(counts[key], xp.float32)

    den = {k: get(f"count_{k}") if f"count_{k}" in counts else get("count") for k in
           ("d0", "d1", "fl")}
    den["epe"] = den["sf"] = get("count")
    scale = {"epe": 1.0, "d0": 100.0, "d1": 100.0, "fl": 100.0, "sf": 100.0}
    # over the last axis: [N] counts give scalars, [R, N] (bootstrap resamples) [R] values
    if aggregate == "frame":
        out = {k: xp.mean(get(k) / den[k], axis=-1) * scale[k] for k in METRIC_NAMES}
    else:
        out = {k: xp.sum(get(k), axis=-1) / xp.sum(den[k], axis=-1) * scale[k]
               for k in METRIC_NAMES}
    out["nonfinite"] = xp.sum(get("nonfinite"), axis=-1) if "nonfinite" in counts else \
        xp.zeros(get("count").shape[:-1], xp.float32)
    return out


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def bootstrap_metrics(counts, aggregate: str = "frame", *, baseline=None,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
                      ) -> dict[str, np.ndarray]:
    """The set-level metrics of ``resamples`` bootstrap resamples of the evaluated frames.

    Each resample draws ``N`` of the ``N`` frames with replacement and pools *their
    counts* with the evaluation's own rule (``metrics_from_counts``: under ``"pixel"``
    the devkit's counts summed over the frames, then divided; under ``"frame"`` the
    mean of per-frame values), so a frame with many valid pixels weighs in a resample
    as it does in the pooled number. The draws depend on ``seed`` and ``N`` only: every
    configuration evaluated on the same frames gets the same resamples.

    Args:
      counts: per-frame counts, ``frame_counts``' keys, ``[N]`` each (NumPy, lists).
      aggregate: ``"frame"`` or ``"pixel"`` (``metrics_from_counts``).
      baseline: per-frame counts of another model on the same ``N`` frames, or None.
        Given: the values are ``metric(counts) - metric(baseline)`` on the same
        resampled frames (a paired difference).
      resamples: how many resamples (>= 1).
      seed: seed of the draws (``np.random.default_rng``).

    Returns:
      dict ``epe``, ``d0``, ``d1``, ``fl``, ``sf``: float64 ``[resamples]`` (px,
      percent); NaN where a resample's value is (``"frame"`` with a frame without
      valid pixels).

    Raises:
      ValueError: no frames, ``baseline`` of another frame count, ``resamples`` < 1,
        unknown ``aggregate``.
    """
    counts = {k: np.asarray(v, np.float64) for k, v in counts.items()}
    n = len(counts["count"])
    if n == 0:
        raise ValueError("bootstrap_metrics: counts has no frames")
    if baseline is not None:
        baseline = {k: np.asarray(v, np.float64) for k, v in baseline.items()}
        if len(baseline["count"]) != n:
            raise ValueError(f"bootstrap_metrics: baseline has {len(baseline['count'])} "
                             f"frames, counts {n}: a paired difference needs the same frames")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"bootstrap_metrics: resamples must be an integer >= 1, got "
                         f"{resamples!r}")
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))

    def pooled(c):
        with np.errstate(divide="ignore", invalid="ignore"):
            out = metrics_from_counts({k: v[rows] for k, v in c.items()}, aggregate)
        return {k: np.asarray(out[k], np.float64) for k in METRIC_NAMES}

    values = pooled(counts)
    if baseline is not None:
        base = pooled(baseline)
        values = {k: values[k] - base[k] for k in METRIC_NAMES}
    return values


def bootstrap_interval(counts, aggregate: str = "frame", *, baseline=None,
                       confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric over the evaluated frames.

    The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of
    ``bootstrap_metrics`` (frames resampled, their counts pooled as the evaluation
    pools them); seeded, so a rerun gives the same interval. With ``baseline`` (the
    same frames, another model) it is the paired interval of the difference
    ``metric - baseline's metric``: "better" is supported only where it excludes 0,
    and two identical models give exactly ``(0, 0)``. It covers the sampling of
    validation frames only, not the training's randomness (see the study's seeds).

    Args:
      counts, aggregate, baseline, resamples, seed: see ``bootstrap_metrics``.
      confidence: the interval's level, in (0, 1).

    Returns:
      dict ``epe``, ``d0``, ``d1``, ``fl``, ``sf``: ``(low, high)`` floats (px,
      percent; NaN if a resample's value is NaN).

    Raises:
      ValueError: ``confidence`` outside (0, 1); see ``bootstrap_metrics``.

    Example:
      >>> c = {"count": [100, 100, 100], "epe": [100.0, 200.0, 300.0],
      ...      "d0": [0, 0, 0], "d1": [0, 0, 0], "fl": [0, 0, 0], "sf": [10, 20, 30]}
      >>> low, high = bootstrap_interval(c, "pixel")["epe"]
      >>> bool(1.0 <= low < 2.0 < high <= 3.0)
      True
      >>> bootstrap_interval(c, "pixel", baseline=c)["sf"]
      (0.0, 0.0)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_interval: confidence must be in (0, 1), got {confidence}")
    values = bootstrap_metrics(counts, aggregate, baseline=baseline, resamples=resamples,
                               seed=seed)
    tails = [(1 - confidence) / 2, (1 + confidence) / 2]
    out = {}
    for k, v in values.items():
        low, high = np.quantile(v, tails) if np.all(np.isfinite(v)) else (np.nan, np.nan)
        out[k] = (float(low), float(high))
    return out


def batch_metrics(pred: jnp.ndarray, gt: jnp.ndarray, mask: jnp.ndarray | None = None,
                  valid: jnp.ndarray | None = None, validity: str = "original") -> dict:
    """``get_eval`` of one batch: pixels of all frames pooled, jittable (``validity`` static).

    Args:
      pred, gt: ``[B, H, W, 4]`` (or ``[H, W, 4]``).
      mask, valid, validity: see ``validity_masks``.

    Returns:
      dict ``epe``, ``d0``, ``d1``, ``fl``, ``sf`` (scalars; rates in percent) and
      ``nonfinite`` (pixel count).
    """
    if pred.ndim == 3:
        pred, gt = pred[None], gt[None]
        mask = None if mask is None else jnp.asarray(mask)[None]
        valid = None if valid is None else jnp.asarray(valid)[None]
    return metrics_from_counts({k: jnp.sum(v, keepdims=True)
                                for k, v in frame_counts(pred, gt, mask, valid,
                                                         validity).items()}, "pixel")


def check_as_submission(as_submission: bool, validity: str) -> bool:
    """``as_submission`` is a devkit score: refuses it with ``validity="original"``.

    Raises:
      ValueError: ``as_submission`` with a validity other than ``"devkit"``.
    """
    if as_submission and check_validity(validity) != "devkit":
        raise ValueError("as_submission=True scores a prediction as the KITTI devkit scores "
                         f"its submission files: it needs validity='devkit', got {validity!r}")
    return bool(as_submission)


def as_submitted(pred) -> np.ndarray:
    """``pred`` ``[..., H, W, 4]`` as the devkit sees it once submitted, frame by frame.

    Each frame goes through the KITTI PNG encoding (1/256 px disparities, 1/64 px flow)
    and the devkit's ``interpolateBackground`` of missing values
    (``data.submission.devkit_estimate``).
    """
    pred = np.asarray(pred, np.float32)
    frames = pred.reshape((-1,) + pred.shape[-3:])
    return np.stack([devkit_estimate(f) for f in frames]).reshape(pred.shape)


def batch_metrics_np(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                     valid: np.ndarray | None = None, validity: str = "original",
                     as_submission: bool = False) -> dict:
    """NumPy ``get_eval``: boolean-mask the valid pixels of the batch, then reduce.

    Args:
      pred, gt: ``[..., H, W, 4]``.
      mask, valid, validity: see ``validity_masks``.
      as_submission: score ``pred`` as its submission files would be scored
        (``as_submitted``; ``"devkit"`` only).

    Returns:
      dict ``epe``, ``d0``, ``d1``, ``fl``, ``sf`` (floats; rates in percent) and
      ``nonfinite`` (pixel count).

    Raises:
      ValueError: see ``validity_masks``; shapes of ``pred`` and ``gt``;
        ``as_submission`` without ``"devkit"``.
    """
    pred = np.asarray(pred, np.float32)
    gt = np.asarray(gt, np.float32)
    _check_pair(pred, gt)
    if check_as_submission(as_submission, validity):
        pred = as_submitted(pred)
    masks = validity_masks(gt, None if valid is None else np.asarray(valid), mask, validity)
    gt = evaluated_gt(gt, masks)
    out = {}
    for name in _RATES:
        keep = masks[name]
        out[name] = _percent(outlier_maps(pred[keep], gt[keep], validity)[name])
    keep = masks["sf"]
    err = np.abs(pred[keep] - gt[keep])
    with np.errstate(invalid="ignore"):
        out["epe"] = float(np.mean(np.linalg.norm(err, axis=-1))) if len(err) else np.nan
    evaluated = masks["d0"] | masks["d1"] | masks["fl"]
    out["nonfinite"] = int(np.count_nonzero(~np.isfinite(pred[evaluated]).all(axis=-1)))
    return out


def _percent(flags: np.ndarray) -> float:
    return float(np.mean(flags) * 100.0) if flags.size else np.nan


def evaluate_np(pairs: Iterable[tuple], aggregate: str | None = None,
                validity: str = "original", as_submission: bool = False) -> dict:
    """Set-level metrics over (pred, gt) or (pred, gt, valid) frames.

    Args:
      pairs: iterable of ``(pred, gt)`` ``[H, W, 4]`` frames, or ``(pred, gt, valid)``
        with ``valid`` ``[H, W, 3]`` (needed by ``"devkit"``).
      aggregate: ``"frame"`` (mean of per-frame ``get_eval`` values, as the original
        evaluation) or ``"pixel"`` (devkit: all valid pixels of the set pooled); None =
        ``default_aggregate(validity)``.
      validity: ``"original"`` or ``"devkit"`` (module docstring).
      as_submission: score each prediction as its submission files would be scored
        (``as_submitted``; ``"devkit"`` only).

    Returns:
      dict ``epe``, ``d0``, ``d1``, ``fl``, ``sf``, ``nonfinite`` and ``frames`` (their
      number).

    Raises:
      ValueError: unknown ``aggregate`` or ``validity``; see ``validity_masks``;
        ``as_submission`` without ``"devkit"``.
    """
    submitted = check_as_submission(as_submission, validity)
    aggregate = default_aggregate(validity) if aggregate is None else aggregate
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    acc = MetricAccumulator()
    for item in pairs:
        pred, gt, valid = (*item, None) if len(item) == 2 else item
        pred = as_submitted(pred) if submitted else np.asarray(pred)
        acc.add(pred[None], np.asarray(gt)[None],
                valid=None if valid is None else np.asarray(valid)[None], validity=validity)
    out = acc.result(aggregate)
    out["frames"] = acc.num_frames
    return out


class MetricAccumulator:
    """Collects per-frame counts over an evaluation and reports either aggregation."""

    def __init__(self):
        self._counts: dict[str, list[np.ndarray]] = {k: [] for k in COUNT_KEYS + METRIC_NAMES}

    @property
    def num_frames(self) -> int:
        """Frames added so far."""
        return int(sum(len(c) for c in self._counts["count"]))

    def add(self, pred, gt, mask=None, valid=None, validity: str = "original") -> None:
        """Adds a batch ``[B, H, W, 4]`` (frames are kept apart); see ``frame_counts``."""
        counts = _frame_counts_jit(jnp.asarray(pred), jnp.asarray(gt),
                                   None if mask is None else jnp.asarray(mask),
                                   None if valid is None else jnp.asarray(valid),
                                   validity=check_validity(validity))
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
            return as_floats(metrics_from_counts(self.counts(), aggregate))


def as_floats(metrics: dict) -> dict:
    """Host numbers of a ``metrics_from_counts`` result (``nonfinite`` as an int)."""
    return {k: int(v) if k == "nonfinite" else float(v) for k, v in metrics.items()}
