"""Bilinear backward warping, as ``utils/warping_utils.bilinear_warp_2d``.

For a pixel (y, x) with flow (u, v) the four taps are at
``(y + floor(v) + {0, 1}, x + floor(u) + {0, 1})``, each index *clamped* to the
image (not zero-padded), while the bilinear weights come from the unclamped
fractional parts. Near a border two taps therefore land on the same edge pixel
and their weights add up, so the warp replicates edge values.
"""

from __future__ import annotations

import jax.numpy as jnp


def bilinear_warp(x: jnp.ndarray, flow: jnp.ndarray) -> jnp.ndarray:
    """Samples ``x`` at ``(y + flow_v, x + flow_u)``.

    Args:
      x: ``[B, H, W, C]`` features (of frame t+1).
      flow: ``[B, H, W, 2]`` displacement ``(u, v)`` in pixels of this level.

    Returns:
      ``[B, H, W, C]`` warped features.
    """
    b, h, w, c = x.shape
    fx, fy = flow[..., 0], flow[..., 1]
    fx0, fy0 = jnp.floor(fx), jnp.floor(fy)
    gy = jnp.arange(h, dtype=fx.dtype)[None, :, None]
    gx = jnp.arange(w, dtype=fx.dtype)[None, None, :]

    def idx(g, off, lim):
        return jnp.clip(g + off, 0, lim).astype(jnp.int32)

    y0, y1 = idx(gy, fy0, h - 1), idx(gy, fy0 + 1, h - 1)
    x0, x1 = idx(gx, fx0, w - 1), idx(gx, fx0 + 1, w - 1)
    flat = x.reshape(b, h * w, c)

    def tap(yy, xx):
        lin = (yy * w + xx).reshape(b, h * w, 1)
        return jnp.take_along_axis(flat, lin, axis=1).reshape(b, h, w, c)

    wx1, wy1 = fx - fx0, fy - fy0
    wx0, wy0 = (fx0 + 1) - fx, (fy0 + 1) - fy
    return (
        (wy0 * wx0)[..., None] * tap(y0, x0)
        + (wy0 * wx1)[..., None] * tap(y0, x1)
        + (wy1 * wx0)[..., None] * tap(y1, x0)
        + (wy1 * wx1)[..., None] * tap(y1, x1)
    ).astype(x.dtype)
