"""Fusion module: depth refinement and RGB+depth fusion per pyramid level.

Reproduces the loops at the end of ``networks.final_network``: four 3x3 convs
to 16 channels on the decoded depth data (``convdepth_refine_{a,b,c,d}{i}``),
then four 3x3 convs to 64 channels on [RGB features, refined depth]
(``convconcat_refine_{a,b,c,d}{i}``), for the five levels i = 0 (level 6) .. 4
(level 2).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deepliflow_jax.model.layers import Conv

DEPTH_REFINE_FILTERS = 16
FUSED_FILTERS = 64


class Fusion(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, rgb_pyramid, depth_pyramid) -> list[jnp.ndarray]:
        fused = []
        for i, (rgb, (depth, _)) in enumerate(zip(rgb_pyramid, depth_pyramid)):
            x = depth
            for s in "abcd":
                x = Conv(DEPTH_REFINE_FILTERS, dtype=self.dtype, name=f"convdepth_refine_{s}{i}")(x)
            x = jnp.concatenate([rgb, x], axis=-1)
            for s in "abcd":
                x = Conv(FUSED_FILTERS, dtype=self.dtype, name=f"convconcat_refine_{s}{i}")(x)
            fused.append(x)
        return fused
