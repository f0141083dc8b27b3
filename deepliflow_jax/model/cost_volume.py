"""Cost volume, as ``modules.CostVolumeLayer`` (2d) of the original release.

Channel ``k = (dy + r) * (2r + 1) + (dx + r)`` holds the correlation of ``x``
at (y, x) with ``warped`` at (y + dy, x + dx), zero outside the image: the
original builds the shifts with pad+crop and sorts them by the key (dy, dx), so
dy varies slowest. Each correlation is the *mean* over channels, and the whole
stack is divided once more by ``(2r + 1) ** 2``. The leaky ReLU (0.1) that
follows is applied by the caller, as in ``DeepLiDARFlowNet``.
"""

from __future__ import annotations

import jax.numpy as jnp


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
    # fold both normalisations into one scale
    scale = jnp.asarray(1.0 / (c * d * d), x.dtype)
    out = [
        jnp.sum(x * padded[:, dy : dy + h, dx : dx + w], axis=-1)
        for dy in range(d)
        for dx in range(d)
    ]
    return jnp.stack(out, axis=-1) * scale
