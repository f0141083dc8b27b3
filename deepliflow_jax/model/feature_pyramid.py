"""RGB feature pyramid: encoder and confidence-guided decoder.

Reproduces ``get_features_encoder_rgb`` and ``get_decoded_features_rgb`` of the
original ``networks.py``. Layer names are the original's (``conv1a`` ...,
``conv_pyr_top``, ``deconv_upsample5to4``, ``conv_refine4``).

``widths`` (see :mod:`deepliflow_jax.model.widths`, keys relative to the module)
overrides output channel counts; None is the original network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deepliflow_jax.model.config import PYRAMID_FILTERS
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, Conv, ConvTranspose
from deepliflow_jax.model.widths import Widths, lookup

__all__ = ["PYRAMID_FILTERS", "RGBDecoder", "RGBEncoder"]


class RGBEncoder(nn.Module):
    """Six levels of (stride-2 conv ``conv{i}a``, stride-1 conv ``conv{i}b``)."""

    filters: Sequence[int] = PYRAMID_FILTERS
    widths: Widths = None
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, rgb: jnp.ndarray) -> list[jnp.ndarray]:
        feats, x = [], rgb
        for i, f in enumerate(self.filters, start=1):
            fa, fb = (lookup(self.widths, f"conv{i}{s}", f) for s in "ab")
            x = Conv(fa, stride=2, dtype=self.dtype, conv_impl=self.conv_impl, name=f"conv{i}a")(x)
            x = Conv(fb, dtype=self.dtype, conv_impl=self.conv_impl, name=f"conv{i}b")(x)
            feats.append(x)
        return feats


class RGBDecoder(nn.Module):
    """Top-down decoder from level 6 to level 2, fed with depth confidences.

    ``conv_pyr_top`` is a 1x1 conv on [level-6 features, level-6 confidence];
    each lower level adds a 4x4 stride-2 transposed conv of the level above to
    the encoder features, appends that level's confidence and refines with a
    3x3 conv. Returns features for levels 6, 5, 4, 3, 2. The transposed convs
    have the width of the encoder features they are added to.
    """

    widths: Widths = None
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, encoder: list[jnp.ndarray], confidences: list[jnp.ndarray]):
        top = jnp.concatenate([encoder[-1], confidences[0]], axis=-1)
        top_ch = lookup(self.widths, "conv_pyr_top", encoder[-1].shape[-1])
        pyramid = [Conv(top_ch, ksize=1, dtype=self.dtype, conv_impl=self.conv_impl,
                        name="conv_pyr_top")(top)]
        for i in range(4, 0, -1):
            feature = encoder[i]
            ch = feature.shape[-1]
            up = ConvTranspose(ch, dtype=self.dtype, conv_impl=self.conv_impl,
                               name=f"deconv_upsample{i + 1}to{i}")(
                pyramid[-1]
            )
            x = jnp.concatenate([up + feature, confidences[5 - i]], axis=-1)
            out_ch = lookup(self.widths, f"conv_refine{i}", ch)
            pyramid.append(Conv(out_ch, dtype=self.dtype, conv_impl=self.conv_impl,
                                 name=f"conv_refine{i}")(x))
        return pyramid
