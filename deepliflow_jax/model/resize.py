"""TF1 legacy image resizes, as pure jnp functions on NHWC arrays.

The original release calls ``tf.image.resize`` of TF 1.14, whose v1 behaviour is
``align_corners=False, half_pixel_centers=False`` (the "legacy" sampling grid):

* nearest: ``src = min(floor(dst * scale), in - 1)``
* bilinear: ``src = dst * scale``, lerp between ``floor(src)`` and
  ``min(floor(src) + 1, in - 1)``

with ``scale = in / out`` computed in float32, exactly as TF's
``CalculateResizeScale``. It is used on the network input (nearest, KITTI
375x1242 -> 384x1216), on the output (bilinear, back to the input size) and in
the KITTI loss (bilinear, predictions to the ground-truth size).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _legacy_src(out_size: int, in_size: int) -> np.ndarray:
    # float32 on purpose: TF computes the scale and the product in float.
    scale = np.float32(in_size) / np.float32(out_size)
    return np.arange(out_size, dtype=np.float32) * scale


def legacy_nearest_indices(out_size: int, in_size: int) -> np.ndarray:
    """Source index of each output row/column for TF1 legacy nearest resize."""
    src = np.floor(_legacy_src(out_size, in_size)).astype(np.int64)
    return np.minimum(src, in_size - 1)


def legacy_bilinear_weights(out_size: int, in_size: int):
    """(lower index, upper index, upper weight) for TF1 legacy bilinear resize."""
    src = _legacy_src(out_size, in_size)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, frac


def resize_nearest_legacy(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """TF1 ``resize_nearest_neighbor(align_corners=False)`` on ``[B, H, W, C]``."""
    h, w = size
    if (h, w) == tuple(x.shape[1:3]):
        return x
    iy = legacy_nearest_indices(h, x.shape[1])
    ix = legacy_nearest_indices(w, x.shape[2])
    return x[:, iy][:, :, ix]


def resize_bilinear_legacy(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """TF1 ``resize_bilinear(align_corners=False)`` on ``[B, H, W, C]``.

    TF computes ``top + (bottom - top) * y_lerp`` after the same for x; the
    separable form below is the same arithmetic up to float rounding.
    """
    h, w = size
    if (h, w) == tuple(x.shape[1:3]):
        return x
    y0, y1, fy = legacy_bilinear_weights(h, x.shape[1])
    x0, x1, fx = legacy_bilinear_weights(w, x.shape[2])
    fx = jnp.asarray(fx, x.dtype)[None, None, :, None]
    fy = jnp.asarray(fy, x.dtype)[None, :, None, None]
    top = x[:, y0]
    bottom = x[:, y1]
    top = top[:, :, x0] + (top[:, :, x1] - top[:, :, x0]) * fx
    bottom = bottom[:, :, x0] + (bottom[:, :, x1] - bottom[:, :, x0]) * fx
    return top + (bottom - top) * fy


def upsample_nearest2x(x: jnp.ndarray) -> jnp.ndarray:
    """Legacy nearest resize to exactly twice the size: a plain repeat."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
