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
from deepliflow_jax.model.sparse_depth import DepthDecoder, DepthEncoder


class GuidanceNetwork(nn.Module):
    """Returns (fused features of levels 6..2, depth-decoder confidences 6..2)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, rgb: jnp.ndarray, depth: jnp.ndarray, conf: jnp.ndarray):
        rgb_enc = RGBEncoder(dtype=self.dtype, name="rgb_encoder")(rgb)
        depth_enc = DepthEncoder(dtype=self.dtype, name="depth_encoder")(depth, conf)
        depth_dec = DepthDecoder(dtype=self.dtype, name="depth_decoder")(depth_enc)
        confidences = [c for _, c in depth_dec]
        rgb_dec = RGBDecoder(dtype=self.dtype, name="rgb_decoder")(rgb_enc, confidences)
        fused = Fusion(dtype=self.dtype, name="fusion")(rgb_dec, depth_dec)
        return fused, confidences
