"""Cost volume, as ``modules.CostVolumeLayer`` (2d) of the original release.

Channel ``k = (dy + r) * (2r + 1) + (dx + r)`` holds the correlation of ``x``
at (y, x) with ``warped`` at (y + dy, x + dx), zero outside the image: the
original builds the shifts with pad+crop and sorts them by the key (dy, dx), so
dy varies slowest. Each correlation is the *mean* over channels, and the whole
stack is divided once more by ``(2r + 1) ** 2``. The leaky ReLU (0.1) that
follows is applied by the caller, as in ``DeepLiDARFlowNet``.

:func:`cost_volume_banded` computes the same numbers as tiled row matmuls (the
``conv_impl`` token ``"banded"``): XLA:CPU runs the 81 shifted products and
channel reductions of :func:`cost_volume` as memory-bound loops, a quarter of the
whole forward at level 2 (``experiments/results/profile_blocks_cpu_128x256.md``).
"""

from __future__ import annotations

import jax.numpy as jnp

BAND_TILE = 16  # pixels per row tile of cost_volume_banded



def correlation_scale(channels: int, search_range: int, dtype) -> jnp.ndarray:
    """The original's two normalisations in one factor: the mean over ``channels``,
    then the division by ``(2r + 1) ** 2``."""
    return jnp.asarray(1.0 / (channels * (2 * search_range + 1) ** 2), dtype)

def cost_volume(x: jnp.ndarray, warped: jnp.ndarray, search_range: int = 4) -> jnp.ndarray:
    """Correlation of ``x`` with shifted ``warped`` over a (2r+1)^2 window.

    Args:
      x: ``[B, H, W, C]`` features of frame t.
      warped: ``[B, H, W, C]`` (warped) features of frame t+1.
      search_range: r; the output has ``(2r + 1) ** 2`` channels.

    Returns:
      ``[B, H, W, (2r+1)^2]``.
    """
    r = search_range
    _, h, w, c = x.shape
    d = 2 * r + 1
    padded = jnp.pad(warped, ((0, 0), (r, r), (r, r), (0, 0)))
    out = [
        jnp.sum(x * padded[:, dy : dy + h, dx : dx + w], axis=-1)
        for dy in range(d)
        for dx in range(d)
    ]
    return jnp.stack(out, axis=-1) * correlation_scale(c, r, x.dtype)


def cost_volume_banded(x: jnp.ndarray, warped: jnp.ndarray, search_range: int = 4,
                       tile: int = BAND_TILE) -> jnp.ndarray:
    """:func:`cost_volume` as tiled row matmuls, keeping the band (the same numbers).

    W is cut into tiles of ``tile`` pixels (zero-padded at the right); per tile and
    ``dy`` one ``[tile, C] x [C, tile + 2r]`` matmul gives every product of a row tile
    of ``x`` with the ``tile + 2r`` columns of ``warped`` it can meet, of which the band
    of ``2r + 1`` diagonals (``dx = -r..r``) is kept: ``(tile + 2r) / (2r + 1)`` times
    the FLOPs of :func:`cost_volume`, but dense matmuls instead of 81 reductions over
    the minor axis. Only the summation order differs (relative error ~1e-7 in float32).

    Args:
      x: ``[B, H, W, C]`` features of frame t.
      warped: ``[B, H, W, C]`` (warped) features of frame t+1.
      search_range: r; the output has ``(2r + 1) ** 2`` channels.
      tile: row tile width in pixels (any W works; the padding is cut off).

    Returns:
      ``[B, H, W, (2r+1)^2]``, channel ``(dy + r) * (2r + 1) + (dx + r)``.

    Raises:
      ValueError: ``tile`` below 1.
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got {tile}")
    r, (b, h, w, c) = search_range, x.shape
    d = 2 * r + 1
    nt = -(-w // tile)
    wp = nt * tile
    xt = jnp.pad(x, ((0, 0), (0, 0), (0, wp - w), (0, 0))).reshape(b, h, nt, tile, c)
    padded = jnp.pad(warped, ((0, 0), (r, r), (r, r + wp - w), (0, 0)))
    cols = jnp.arange(nt)[:, None] * tile + jnp.arange(tile + 2 * r)[None, :]
    tiles = padded[:, :, cols]  # [B, H + 2r, nt, tile + 2r, C]
    band = jnp.arange(tile)[:, None] + jnp.arange(d)[None, :]  # [tile, d]: column t + dx
    rows = []
    for dy in range(d):
        m = jnp.einsum("bhjtc,bhjsc->bhjts", xt, tiles[:, dy:dy + h])
        rows.append(jnp.take_along_axis(m, jnp.broadcast_to(band, m.shape[:-1] + (d,)),
                                        axis=-1))
    out = jnp.stack(rows, axis=-2).reshape(b, h, wp, d * d)[:, :, :w]  # [.., (dy, dx)]
    return out * correlation_scale(c, r, x.dtype)
