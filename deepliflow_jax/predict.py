"""Public prediction: validated inputs, the original's resize policy, one jit.

Resize policy (original ``inference.py``): KITTI frames are resized inside the
network to 384x1216 (legacy nearest) and the output back to the frame size
(legacy bilinear); FlyingThings3D frames are center-cropped to 512x960 by the
caller (``deepliflow_jax.data``) and run at that size. For any other size the
network runs at the frame size, which must be a multiple of 64 in both
dimensions (six stride-2 levels whose transposed convs must double exactly),
unless ``interp_size`` is given.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.model.api import forward
from deepliflow_jax.model.deeplidarflow import SIZE_MULTIPLE

KITTI_INTERP_SIZE = (384, 1216)
FT3D_CROP_SIZE = (512, 960)


def check_network_size(height: int, width: int, what: str = "network input") -> None:
    """Raises ``ValueError`` unless both sizes are positive multiples of 64."""
    if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(
            f"{what} is {height}x{width}, but DeepLiDARFlow needs height and width that are "
            f"multiples of {SIZE_MULTIPLE} (e.g. 384x1216 for KITTI, 512x960 for "
            f"FlyingThings3D); pass interp_size=(h, w) to resize inside the network "
            f"(legacy nearest, as the original does for KITTI)"
        )


def validate_frames(frames: Any) -> np.ndarray:
    """Checks a ``[B, 2, H, W, 4]`` (or ``[2, H, W, 4]``) float frame stack.

    Returns:
      The frames as a float32 numpy array with a batch axis.
    """
    arr = np.asarray(frames)
    if arr.ndim == 4:
        arr = arr[None]
    if arr.ndim != 5 or arr.shape[1] != 2 or arr.shape[-1] != 4:
        raise ValueError(
            f"frames must have shape [B, 2, H, W, 4] (two frames of RGB minus mean + "
            f"normalised sparse disparity), got {tuple(np.shape(frames))}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"frames must be floating point, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr)
    if bad.any():
        b, f, y, x, c = np.argwhere(bad)[0]
        raise ValueError(
            f"frames contain {int(bad.sum())} NaN/inf values (first at batch {b}, frame {f}, "
            f"pixel ({y}, {x}), channel {c}); fill missing LiDAR with 0, not NaN"
        )
    return arr.astype(np.float32, copy=False)


def predict(variables: dict, frames: Any, dataset: str | None = None,
            interp_size: tuple[int, int] | None = None,
            out_size: tuple[int, int] | None = None, dtype: Any = jnp.float32):
    """Scene flow for preprocessed frame pairs, at the frame resolution.

    Args:
      variables: ``{'params': ...}``.
      frames: ``[B, 2, H, W, 4]`` or ``[2, H, W, 4]``: RGB in [0, 1] minus the
        dataset mean and the normalised sparse disparity (0 = no point), for
        frames t and t+1.
      dataset: ``'kitti'`` resizes to 384x1216 inside the network as the
        original; ``'ft3d'`` expects the 512x960 crop; None runs at the frame
        size (or ``interp_size``).
      interp_size: network input size, overriding the dataset default.
      out_size: output size; default the frame size.
      dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``).

    Returns:
      ``(sceneflow, aux)``: ``[B, H, W, 4]`` (u, v, d0, d1) in pixels, and the
      per-level outputs (see ``DeepLiDARFlow``).

    Raises:
      ValueError: for a wrong shape, non-finite values or an unusable size.
    """
    arr = validate_frames(frames)
    h, w = arr.shape[2:4]
    if dataset is not None and dataset.lower() not in ("kitti", "ft3d"):
        raise ValueError(f"dataset must be 'kitti', 'ft3d' or None, got {dataset!r}")
    if interp_size is None and dataset is not None and dataset.lower() == "kitti":
        interp_size = KITTI_INTERP_SIZE
    if dataset is not None and dataset.lower() == "ft3d" and (h, w) != FT3D_CROP_SIZE:
        raise ValueError(f"FlyingThings3D frames must be the {FT3D_CROP_SIZE} center crop, "
                         f"got {h}x{w} (see deepliflow_jax.data preprocessing)")
    net = tuple(interp_size) if interp_size is not None else (h, w)
    check_network_size(*net, what="network input" if interp_size else "frame size")
    return forward(variables, jax.device_put(arr), interp_size=interp_size,
                   out_size=out_size or (h, w), dtype=dtype)
