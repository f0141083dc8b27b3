"""Dilated context network, as ``modules.ContextNetwork``.

Seven 3x3 convs ``conv1`` .. ``conv7`` with 128, 128, 128, 96, 64, 32, 4
filters and dilations 1, 2, 4, 8, 16, 1, 1; leaky ReLU 0.1 except the last.
Its output is a residual added to the level-2 flow. ``widths`` overrides the
widths of ``conv1`` .. ``conv6`` (``conv7``, the flow residual, is fixed).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deepliflow_jax.model.config import CONTEXT_LAYERS
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, Conv
from deepliflow_jax.model.widths import Widths, lookup

__all__ = ["CONTEXT_LAYERS", "ContextNetwork"]


class ContextNetwork(nn.Module):
    widths: Widths = None
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        last = len(CONTEXT_LAYERS)
        for i, (f, d) in enumerate(CONTEXT_LAYERS, start=1):
            f = lookup(self.widths, f"conv{i}", f) if i < last else f
            x = Conv(f, dilation=d, activation=i < last, dtype=self.dtype,
                     conv_impl=self.conv_impl, name=f"conv{i}")(x)
        return x
