"""Stand-ins shared by tests that script a study's trainer."""

from __future__ import annotations

import numpy as np

from deepliflow_jax.metrics import COUNT_KEYS


def evaluated(metrics: dict, with_counts: bool):
    """A scripted ``Trainer.evaluate``'s return: ``metrics``, or with ``with_counts`` also
    the per-frame counts of one 100-pixel frame that pool to them (the study records them)."""
    if not with_counts:
        return metrics
    counts = {k: np.zeros(1) for k in COUNT_KEYS}
    counts.update(count=np.full(1, 100.0), count_d0=np.full(1, 100.0),
                  count_d1=np.full(1, 100.0), count_fl=np.full(1, 100.0))
    for name in ("d0", "d1", "fl", "sf"):  # percent of 100 pixels: the outlier count
        counts[name] = np.full(1, float(metrics.get(name, 0.0)))
    counts["epe"] = np.full(1, 100.0 * float(metrics["epe"]))
    return metrics, counts
