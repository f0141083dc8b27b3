"""Simulated sparse LiDAR: sample N of the valid disparities, reproducibly.

The original ``dense_to_sparse`` keeps each valid pixel independently with probability
``N / n_valid`` (so about N points, different on every call because it draws from the
global NumPy state). Here the draw comes from an explicit generator, seeded per
(seed, epoch, frame, time step) so that an evaluation is reproducible.
"""

from __future__ import annotations

import numpy as np

# The number of LiDAR points swept in the paper (Figs. 1-3).
LIDAR_SWEEP = (2048, 4096, 5000, 8192, 16384)
# The per-sample choices of the original's training script (train.py SAMPLES).
TRAIN_SAMPLES = (100, 500, 1000, 5000, 10000)
SAMPLING_METHODS = ("bernoulli", "exact")


def frame_rng(seed: int, index: int, epoch: int = 0) -> np.random.Generator:
    """Independent generator for one frame of one epoch.

    Args:
      seed: run seed.
      index: frame index in its dataset.
      epoch: pass over the dataset (0 for an evaluation).

    Returns:
      A ``numpy.random.Generator`` that depends only on (seed, epoch, index).
    """
    for label, value in (("seed", seed), ("index", index), ("epoch", epoch)):
        if int(value) < 0:
            raise ValueError(f"{label} must be >= 0, got {value}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


def sample_lidar_mask(valid: np.ndarray, num_samples: int, rng: np.random.Generator,
                      method: str = "bernoulli") -> np.ndarray:
    """Chooses the simulated LiDAR points among the valid pixels.

    Args:
      valid: bool ``[H, W]``, pixels with a disparity.
      num_samples: wanted number of points N (> 0).
      rng: random generator (see ``frame_rng``).
      method: ``"bernoulli"`` as the original (each valid pixel kept with probability
        ``N / n_valid``, so about N points; all of them when ``n_valid <= N``) or
        ``"exact"`` (exactly ``min(N, n_valid)`` points, uniformly without replacement).

    Returns:
      float32 ``[H, W]`` mask, 1 at sampled points.

    Raises:
      ValueError: bad ``num_samples`` or ``method``.
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"method must be one of {SAMPLING_METHODS}, got {method!r}")
    if int(num_samples) <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    valid = np.asarray(valid, bool)
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        return np.zeros(valid.shape, np.float32)
    if method == "bernoulli":
        keep = rng.uniform(size=valid.shape) < num_samples / n_valid
        return (keep & valid).astype(np.float32)
    flat = np.flatnonzero(valid)
    chosen = rng.choice(flat, size=min(int(num_samples), n_valid), replace=False)
    mask = np.zeros(valid.size, np.float32)
    mask[chosen] = 1.0
    return mask.reshape(valid.shape)
