"""Guidance network: the feature pyramid of both branches plus fusion.

Reproduces ``networks.final_network``. It runs once on both frames stacked on
the batch axis (``[2B, ...]``, frame t first): every weight is shared between
the frames, as in the original, except the normalized-conv biases (see
``normalized_conv``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deepliflow_jax.model.feature_pyramid import RGBDecoder, RGBEncoder
from deepliflow_jax.model.fusion import Fusion
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT
from deepliflow_jax.model.sparse_depth import DepthDecoder, DepthEncoder
from deepliflow_jax.model.widths import Widths, scoped


class GuidanceNetwork(nn.Module):
    """Returns (fused features of levels 6..2, depth-decoder confidences 6..2).

    ``widths``: channel widths keyed relative to this module (None = original).
    """

    widths: Widths = None
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, rgb: jnp.ndarray, depth: jnp.ndarray, conf: jnp.ndarray):
        w, dt, impl = self.widths, self.dtype, self.conv_impl
        rgb_enc = RGBEncoder(widths=scoped(w, "rgb_encoder"), dtype=dt, conv_impl=impl,
                             name="rgb_encoder")(rgb)
        depth_enc = DepthEncoder(widths=scoped(w, "depth_encoder"), dtype=dt, conv_impl=impl,
                                 name="depth_encoder")(depth, conf)
        depth_dec = DepthDecoder(widths=scoped(w, "depth_decoder"), dtype=dt, conv_impl=impl,
                                 name="depth_decoder")(depth_enc)
        confidences = [c for _, c in depth_dec]
        rgb_dec = RGBDecoder(widths=scoped(w, "rgb_decoder"), dtype=dt, conv_impl=impl,
                             name="rgb_decoder")(rgb_enc, confidences)
        fused = Fusion(widths=scoped(w, "fusion"), dtype=dt, conv_impl=impl, name="fusion")(
            rgb_dec, depth_dec)
        return fused, confidences
