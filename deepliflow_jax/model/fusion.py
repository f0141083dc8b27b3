"""Fusion module: depth refinement and RGB+depth fusion per pyramid level.

Reproduces the loops at the end of ``networks.final_network``: four 3x3 convs
to 16 channels on the decoded depth data (``convdepth_refine_{a,b,c,d}{i}``),
then four 3x3 convs to 64 channels on [RGB features, refined depth]
(``convconcat_refine_{a,b,c,d}{i}``), for the five levels i = 0 (level 6) .. 4
(level 2). ``widths`` (see :mod:`deepliflow_jax.model.widths`) overrides the
channel counts; None is the original network.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deepliflow_jax.model.config import DEPTH_REFINE_FILTERS, FUSED_FILTERS
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, Conv
from deepliflow_jax.model.widths import Widths, lookup

__all__ = ["DEPTH_REFINE_FILTERS", "FUSED_FILTERS", "Fusion"]


class Fusion(nn.Module):
    widths: Widths = None
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, rgb_pyramid, depth_pyramid) -> list[jnp.ndarray]:
        fused = []
        for i, (rgb, (depth, _)) in enumerate(zip(rgb_pyramid, depth_pyramid)):
            x = depth
            for s in "abcd":
                name = f"convdepth_refine_{s}{i}"
                f = lookup(self.widths, name, DEPTH_REFINE_FILTERS)
                x = Conv(f, dtype=self.dtype, conv_impl=self.conv_impl, name=name)(x)
            x = jnp.concatenate([rgb, x], axis=-1)
            for s in "abcd":
                name = f"convconcat_refine_{s}{i}"
                f = lookup(self.widths, name, FUSED_FILTERS)
                x = Conv(f, dtype=self.dtype, conv_impl=self.conv_impl, name=name)(x)
            fused.append(x)
        return fused
