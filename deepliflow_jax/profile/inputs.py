"""Benchmark inputs: sizes, deterministic frames and ground truth, weights.

Every timing job (the run-time harness, the per-block profile, the precision
check, the structured trade-off) runs on these, so contenders see the same input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepliflow_jax.scalars import check_number, check_numbers

SIZE_MULTIPLE = 64


def check_sizes(height: int, width: int, batch_sizes: Sequence[int] = (1,),
                train_batch: int = 1) -> None:
    """Validates the benchmark sizes.

    Raises:
      ValueError: naming ``--height``/``--width``/``--batch_sizes``/``--train_batch``.
    """
    for flag, value in (("--height", height), ("--width", width)):
        value = check_number(value, flag, f"a positive multiple of {SIZE_MULTIPLE}",
                             integer=True, minimum=1)
        if value % SIZE_MULTIPLE:
            raise ValueError(f"{flag}={value}: DeepLiDARFlow needs a positive multiple of "
                             f"{SIZE_MULTIPLE} (e.g. 384x1216 for KITTI; 64x128 for tests)")
    if not check_numbers(batch_sizes, "--batch_sizes", integer=True, minimum=1):
        raise ValueError("--batch_sizes=[]: need one or more sizes >= 1")
    check_number(train_batch, "--train_batch", integer=True, minimum=1)


def random_frames(batch: int, height: int, width: int, seed: int = 0,
                  lidar_fraction: float = 0.05) -> np.ndarray:
    """Random (seeded) benchmark frames ``[B, 2, H, W, 4]`` (float32) that look preprocessed.

    RGB in [0, 1] minus a mean of 0.4, and a sparse normalised disparity with
    ``lidar_fraction`` of the pixels set (the rest exactly 0 = no point), so the
    sparse-depth branch sees KITTI-like sparsity.
    """
    rng = np.random.default_rng(seed)
    rgb = rng.uniform(0.0, 1.0, (batch, 2, height, width, 3)) - 0.4
    disp = rng.standard_normal((batch, 2, height, width, 1))
    disp *= rng.uniform(size=disp.shape) < lidar_fraction
    return np.concatenate([rgb, disp], axis=-1).astype(np.float32)


def make_ground_truth(batch: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    """Sparse KITTI-style ground truth ``[B, H, W, 4]`` in pixels (d0 > 0 = valid)."""
    rng = np.random.default_rng(seed)
    gt = rng.normal(0.0, 5.0, (batch, height, width, 4)).astype(np.float32)
    gt[..., 2:] = np.abs(gt[..., 2:]) + 1.0
    gt *= (rng.uniform(size=(batch, height, width, 1)) < 0.2)
    return gt


def make_train_batch(batch: int, height: int, width: int, seed: int = 0) -> dict:
    """One fine-tuning batch: ``{"frames": random_frames(...), "gt": make_ground_truth(...)}``.

    The input every train-step contender (the JAX step, the PyTorch steps) times.
    """
    return {"frames": random_frames(batch, height, width, seed),
            "gt": make_ground_truth(batch, height, width)}


def load_variables(weights: str | None = None, seed: int = 0) -> dict:
    """Parameters: ``weights`` (``.npz`` of '/'-joined paths) or the numpy init.

    Args:
      weights: optional path to an ``.npz`` whose keys are the parameter paths
        (``params/guidance_network/...``, as :func:`compress.select.flatten`).
      seed: init seed (random weights; biases N(0, 0.1) so they matter).

    Returns:
      ``{'params': ...}`` of float32 numpy-backed jax arrays.
    """
    from deepliflow_jax.model.build import init_params

    if not weights:
        return init_params(seed, bias_std=0.1)
    from deepliflow_jax.compress.select import unflatten

    with np.load(weights) as data:
        flat = {k: np.asarray(data[k], np.float32) for k in data.files}
    return unflatten(flat)
