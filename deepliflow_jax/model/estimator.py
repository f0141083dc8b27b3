"""Per-level scene-flow estimator, as ``modules.SceneFlowEstimator`` (non-dense).

Convs ``conv1`` (128), ``conv2`` (128), ``conv3`` (96), ``conv4`` (64),
``conv_f`` (32) with leaky ReLU 0.1, then ``conv_w`` (4, linear) = the scene
flow of this level (network units, pixels / 20). Except at the output level,
4x4 stride-2 transposed convs (linear, 4 channels each) upsample the flow
(``deconv_up_flow``) and the 32-channel features (``deconv_up_feature``) for
the level below. ``widths`` overrides the widths of ``conv1`` .. ``conv_f``
(the 4-channel outputs are fixed).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deepliflow_jax.model.config import ESTIMATOR_FILTERS, SF_CHANNELS
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, Conv, ConvTranspose
from deepliflow_jax.model.widths import Widths, lookup

__all__ = ["ESTIMATOR_FILTERS", "SF_CHANNELS", "SceneFlowEstimator"]


class SceneFlowEstimator(nn.Module):
    """Returns ``(flow, features, up_flow, up_feature)``; the ups are None at the output."""

    is_output: bool = False
    widths: Widths = None
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, x: jnp.ndarray):
        dt, impl = self.dtype, self.conv_impl
        for name, f in ESTIMATOR_FILTERS:
            x = Conv(lookup(self.widths, name, f), dtype=dt, conv_impl=impl, name=name)(x)
        flow = Conv(SF_CHANNELS, activation=False, dtype=dt, conv_impl=impl, name="conv_w")(x)
        if self.is_output:
            return flow, x, None, None
        up_flow = ConvTranspose(SF_CHANNELS, activation=False, dtype=dt, conv_impl=impl,
                                name="deconv_up_flow")(flow)
        up_feature = ConvTranspose(SF_CHANNELS, activation=False, dtype=dt, conv_impl=impl,
                                   name="deconv_up_feature")(x)
        return flow, x, up_flow, up_feature
