"""Accuracy of reduced-precision compute: EPE and outlier rates per compute dtype.

The run-time harness times bf16; this says what it costs in accuracy, measured the same
way for every dtype (one forward per validation batch through
:func:`deepliflow_jax.predict.predict`, the original's frame-averaged metrics), so the
float32 row is the reference and the others differ only by the compute dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.metrics import METRIC_NAMES, frame_counts, metrics_from_counts
from deepliflow_jax.predict import predict

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_counts = jax.jit(frame_counts)


def _dtype_name(dtype: Any) -> str:
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"compute dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return name


def precision_metrics(variables: Mapping, batches: Sequence[Mapping[str, np.ndarray]],
                      dtypes: Sequence[Any] = ("float32", "bfloat16"), *,
                      interp_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """EPE and outlier rates of one model at each compute dtype, on the same batches.

    Args:
      variables: ``{'params': ...}``.
      batches: ``{'frames': [B, 2, H, W, 4], 'gt': [B, H, W, 4]}`` dicts (e.g.
        ``Dataset.val_batches(n)``).
      dtypes: compute dtypes; the first is the reference (float32 by default).
      interp_size: network input size (None: the frame size).

    Returns:
      ``{'metrics': {dtype: {'epe', 'd0', 'd1', 'fl', 'sf'}}, 'change': {dtype:
      {'epe_percent': relative EPE change vs the reference in %, 'sf_points': SF outlier
      change in percentage points, 'max_abs_diff_px': largest output difference}},
      'reference': name, 'frames': n}``.

    Raises:
      ValueError: an unknown dtype, or no batches.

    Example:
      >>> out = precision_metrics(init_params(0), data.val_batches(data.num_samples))
      >>> sorted(out["metrics"]), out["reference"]
      (['bfloat16', 'float32'], 'float32')
    """
    names = [_dtype_name(d) for d in dtypes]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"dtypes must be distinct and non-empty, got {list(dtypes)}")
    if not batches:
        raise ValueError("no batches to evaluate")
    counts = {n: [] for n in names}
    outputs = {n: [] for n in names}
    for batch in batches:
        gt = jnp.asarray(batch["gt"], jnp.float32)
        for name in names:
            sf, _ = predict(variables, batch["frames"], interp_size=interp_size,
                            out_size=tuple(gt.shape[1:3]), dtype=DTYPES[name])
            sf = jnp.asarray(sf, jnp.float32)
            counts[name].append(jax.device_get(_counts(sf, gt)))
            outputs[name].append(np.asarray(sf))
    metrics = {}
    for name in names:
        merged = {k: np.concatenate([c[k] for c in counts[name]]) for k in counts[name][0]}
        metrics[name] = {k: float(v) for k, v in metrics_from_counts(merged, "frame").items()}
    ref = names[0]
    change = {}
    for name in names[1:]:
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(outputs[name], outputs[ref]))
        change[name] = {
            "epe_percent": 100.0 * (metrics[name]["epe"] / metrics[ref]["epe"] - 1.0),
            "sf_points": metrics[name]["sf"] - metrics[ref]["sf"],
            "max_abs_diff_px": diff,
        }
    return {"metrics": metrics, "change": change, "reference": ref,
            "frames": int(sum(len(b["gt"]) for b in batches))}


def output_difference(variables: Mapping, frames: np.ndarray, dataset: str | None = None,
                      dtype: Any = "bfloat16") -> dict[str, float]:
    """How far a reduced-precision prediction is from float32 where there is no ground truth.

    Args:
      variables: ``{'params': ...}``.
      frames: ``[2, H, W, 4]`` or ``[B, 2, H, W, 4]``.
      dataset: as :func:`deepliflow_jax.predict.predict`.
      dtype: the compute dtype compared with float32.

    Returns:
      ``{'mean_flow_diff_px', 'mean_flow_px', 'relative_percent', 'max_abs_diff_px'}``:
      mean endpoint distance of the optical flows, mean float32 flow magnitude, their
      ratio in %, and the largest difference of any output channel.
    """
    name = _dtype_name(dtype)
    ref, _ = predict(variables, frames, dataset=dataset, dtype=jnp.float32)
    low, _ = predict(variables, frames, dataset=dataset, dtype=DTYPES[name])
    ref, low = np.asarray(ref, np.float32), np.asarray(low, np.float32)
    dist = float(np.mean(np.linalg.norm(low[..., :2] - ref[..., :2], axis=-1)))
    mag = float(np.mean(np.linalg.norm(ref[..., :2], axis=-1)))
    return {"mean_flow_diff_px": dist, "mean_flow_px": mag,
            "relative_percent": 100.0 * dist / mag if mag else float("nan"),
            "max_abs_diff_px": float(np.max(np.abs(low - ref)))}


def markdown(result: Mapping[str, Any], title: str, notes: Sequence[str] = ()) -> str:
    """A Markdown report of :func:`precision_metrics` (and notes below the table)."""
    ref = result["reference"]
    lines = [f"# {title}", "", "| compute dtype | EPE (px) | " +
             " | ".join(f"{k.upper()} %" for k in METRIC_NAMES if k != "epe") +
             " | EPE change | SF change (points) | max output diff (px) |",
             "|---" * 9 + "|"]
    for name, m in result["metrics"].items():
        c = result["change"].get(name)
        tail = ("reference | - | - |" if c is None else
                f"{c['epe_percent']:+.3f} % | {c['sf_points']:+.3f} | "
                f"{c['max_abs_diff_px']:.3g} |")
        lines.append(f"| {name} | {m['epe']:.4f} | " +
                     " | ".join(f"{m[k]:.3f}" for k in METRIC_NAMES if k != "epe") +
                     f" | {tail}")
    lines += ["", f"{result['frames']} frames; reference: {ref}.", *notes, ""]
    return "\n".join(lines)
