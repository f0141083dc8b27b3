"""Sparse-depth branch: normalized-convolution encoder and decoder.

Reproduces ``get_features_encoder_depth`` and ``get_decoded_features_depth`` of
the original ``networks.py``. Names follow the original variables:
encoder ``nconv{i}b`` (``kernels_{i}b``), decoder ``nconv_pyr_top``,
``upsampling{i+1}to{i}`` (``kernels_{i+2}to{i+1}``) and ``refine{i}``
(``kernels_refinement``).

``widths`` (see :mod:`deepliflow_jax.model.widths`) overrides output channel
counts; any widths mapping (not None) also gives every normalized conv its
``conf_mass`` parameter (a structured model).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deepliflow_jax.model.feature_pyramid import PYRAMID_FILTERS
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT
from deepliflow_jax.model.normalized_conv import NormalizedConv, confidence_max_pool
from deepliflow_jax.model.resize import upsample_nearest2x
from deepliflow_jax.model.widths import Widths, lookup


class DepthEncoder(nn.Module):
    """Six levels of (confidence max pool, normalized conv)."""

    filters: Sequence[int] = PYRAMID_FILTERS
    widths: Widths = None
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, depth: jnp.ndarray, conf: jnp.ndarray):
        levels, data = [], depth
        mass = self.widths is not None
        nconv = functools.partial(NormalizedConv, conf_mass=mass, dtype=self.dtype,
                                  conv_impl=self.conv_impl)
        for i, f in enumerate(self.filters):
            data, conf = confidence_max_pool(data, conf)
            f = lookup(self.widths, f"nconv{i}b", f)
            data, conf = nconv(f, name=f"nconv{i}b")(data, conf)
            levels.append((data, conf))
        return levels


class DepthDecoder(nn.Module):
    """Top-down normalized-conv decoder; nearest 2x upsampling of data and conf.

    Returns ``[(data, conf)]`` for levels 6, 5, 4, 3, 2. ``upsampling{i+1}to{i}``
    has the width of the encoder level it is added to.
    """

    widths: Widths = None
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, encoder):
        top_data, top_conf = encoder[-1]
        mass = self.widths is not None
        top_ch = lookup(self.widths, "nconv_pyr_top", top_data.shape[-1])
        nconv = functools.partial(NormalizedConv, conf_mass=mass, dtype=self.dtype,
                                  conv_impl=self.conv_impl)
        decoder = [nconv(top_ch, name="nconv_pyr_top")(top_data, top_conf)]
        for i in range(4, 0, -1):
            data, conf = encoder[i]
            ch = data.shape[-1]
            up_d, up_c = nconv(ch, name=f"upsampling{i + 1}to{i}")(*decoder[-1])
            up_d, up_c = upsample_nearest2x(up_d), upsample_nearest2x(up_c)
            out_ch = lookup(self.widths, f"refine{i}", ch)
            decoder.append(nconv(out_ch, name=f"refine{i}")(up_d + data, up_c + conf))
        return decoder
