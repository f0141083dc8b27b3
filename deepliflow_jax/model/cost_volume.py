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

:func:`cost_volume_tiled` (token ``"tiled"``) goes one step further: per square
tile of pixels one dense matmul against the tile's whole search window, the
displacements picked out by pad/reshape/slice (no gather, so no scatter in the
backward). :func:`correlation_for` picks the form a ``conv_impl`` selects.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from deepliflow_jax.model.layers import uses_impl

BAND_TILE = 16  # pixels per row tile of cost_volume_banded
TILE = 8  # tile side in pixels of cost_volume_tiled


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


def _skew_diagonals(m: jnp.ndarray, i_axis: int, a_axis: int, count: int) -> jnp.ndarray:
    """``out[..., i, ..., k, ...] = m[..., i, ..., i + k, ...]`` for ``k < count``, by pad/reshape.

    Axis ``a_axis`` (of size S, after ``i_axis`` of size T) is replaced by ``k``.
    With ``K`` the size of one ``i`` block and ``P`` that of the axes after
    ``a_axis``, element ``(i, .., a, p)`` sits at ``i K + .. + a P + p``; with ``a = i +
    k`` that is ``i (K + P) + .. + k P + p``: padding the flat blocks by ``T P`` and
    reading them in rows of ``K + P`` shifts row ``i`` by ``i`` along ``a``. Needs
    ``T - 1 + count <= S`` (no row wraps into the next).
    """
    shape = m.shape
    t, s = shape[i_axis], shape[a_axis]
    if t - 1 + count > s:
        raise ValueError(f"_skew_diagonals: {count} diagonals of a {t} x {s} pair wrap around")
    pre, block = shape[:i_axis], int(np.prod(shape[i_axis + 1:]))
    post = int(np.prod(shape[a_axis + 1:]))
    flat = m.reshape(pre + (t * block,))
    flat = jnp.pad(flat, [(0, 0)] * len(pre) + [(0, t * post)])
    rows = flat.reshape(pre + (t, block + post))[..., :block].reshape(shape)
    return jnp.moveaxis(jnp.moveaxis(rows, a_axis, -1)[..., :count], -1, a_axis)


def _search_windows(padded: jnp.ndarray, axis: int, tiles: int, tile: int,
                    size: int) -> jnp.ndarray:
    """Overlapping windows ``size`` long, ``tile`` apart, along ``axis`` of ``padded``.

    ``padded``'s ``axis`` holds at least ``(tiles - 1) * tile + size`` entries, in
    whole tiles; the result has ``axis`` split into ``(tiles, size)``. Built from
    ``ceil(size / tile)`` shifted block slices (no gather).
    """
    blocks = -(-size // tile)
    n = padded.shape[axis] // tile
    split = padded.reshape(padded.shape[:axis] + (n, tile) + padded.shape[axis + 1:])
    parts = [jnp.moveaxis(split, axis, 0)[u:u + tiles] for u in range(blocks)]
    win = jnp.moveaxis(jnp.concatenate(parts, axis=axis + 1), 0, axis)
    return jnp.moveaxis(jnp.moveaxis(win, axis + 1, -1)[..., :size], -1, axis + 1)


def cost_volume_tiled(x: jnp.ndarray, warped: jnp.ndarray, search_range: int = 4,
                      tile: int = TILE) -> jnp.ndarray:
    """:func:`cost_volume` as one matmul per square tile (the same numbers).

    The image is cut into ``tile x tile`` pixel tiles (zero-padded at the bottom and
    right, cropped after). Per tile one ``[tile^2, C] x [C, (tile + 2r)^2]`` matmul
    gives every product of the tile's pixels of ``x`` with the ``(tile + 2r)^2``
    pixels of ``warped`` they can meet (the tile's search window, zero outside the
    image); the ``(2r + 1)^2`` displacements of each pixel are picked out of it by
    pad/reshape/slice (:func:`_skew_diagonals`), so the jaxpr has no gather and
    the backward no scatter. ``((tile + 2r) / (2r + 1))^2`` times the
    multiply-adds of :func:`cost_volume` (3.2x at ``tile = 8``, ``r = 4``), as
    one dense batched matmul instead of 81 reductions over the minor axis. Only
    the summation order differs (relative error ~1e-7 in float32).

    Args:
      x: ``[B, H, W, C]`` features of frame t.
      warped: ``[B, H, W, C]`` (warped) features of frame t+1.
      search_range: r; the output has ``(2r + 1) ** 2`` channels.
      tile: tile side in pixels (any H, W work; the padding is cut off).

    Returns:
      ``[B, H, W, (2r+1)^2]``, channel ``(dy + r) * (2r + 1) + (dx + r)``.

    Raises:
      ValueError: ``tile`` below 1 or ``search_range`` below 0.
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got {tile}")
    if search_range < 0:
        raise ValueError(f"search_range must be >= 0, got {search_range}")
    r, (b, h, w, c) = search_range, x.shape
    d, s = 2 * r + 1, tile + 2 * r
    nty, ntx = -(-h // tile), -(-w // tile)
    xt = jnp.pad(x, ((0, 0), (0, nty * tile - h), (0, ntx * tile - w), (0, 0)))
    xt = xt.reshape(b, nty, tile, ntx, tile, c).transpose(0, 1, 3, 2, 4, 5)
    # whole tiles of warped, r of zeros before the image and at least r after it
    blocks = -(-s // tile)
    padded = jnp.pad(warped, ((0, 0), (r, (nty + blocks - 1) * tile - h - r),
                              (r, (ntx + blocks - 1) * tile - w - r), (0, 0)))
    win = _search_windows(padded, 1, nty, tile, s)  # [B, nty, s, W', C]
    win = _search_windows(win, 3, ntx, tile, s)  # [B, nty, s, ntx, s, C]
    win = win.transpose(0, 1, 3, 2, 4, 5)  # [B, nty, ntx, s, s, C]
    m = jnp.einsum("bpqijc,bpqklc->bpqijkl", xt, win)
    # pixel (i, j) meets window pixel (i + dy + r, j + dx + r) at displacement (dy, dx)
    m = _skew_diagonals(m, 4, 6, d)  # [.., i, j, s, dx]
    m = _skew_diagonals(m, 3, 5, d)  # [.., i, j, dy, dx]
    out = m.reshape(b, nty, ntx, tile, tile, d * d).transpose(0, 1, 3, 2, 4, 5)
    out = out.reshape(b, nty * tile, ntx * tile, d * d)[:, :h, :w]
    return out * correlation_scale(c, r, x.dtype)


def correlation_for(conv_impl: str) -> Callable[..., jnp.ndarray]:
    """The cost-volume form a ``conv_impl`` selects: ``"tiled"`` -> :func:`cost_volume_tiled`,
    ``"banded"`` -> :func:`cost_volume_banded`, neither -> :func:`cost_volume`.

    Raises:
      ValueError: an invalid ``conv_impl``, or one naming both ``"tiled"`` and ``"banded"``.
    """
    tiled, banded = uses_impl(conv_impl, "tiled"), uses_impl(conv_impl, "banded")
    if tiled and banded:
        raise ValueError(f"conv_impl={conv_impl!r}: 'tiled' and 'banded' are both cost-volume "
                         "forms; name one")
    return cost_volume_tiled if tiled else cost_volume_banded if banded else cost_volume
