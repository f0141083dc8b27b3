"""Convolution layers with the original release's conventions.

* ``Conv``: ``tf.layers.conv2d`` as wrapped by the original ``utils/tf_utils.py``
  (``convolution``): TF 'SAME' padding (for stride 2 the odd extra row/column of
  padding goes bottom/right, which is also what ``lax`` 'SAME' does), optional
  dilation, bias, and leaky ReLU with slope 0.1 unless ``activation=False``.
* ``ConvTranspose``: ``tf.layers.conv2d_transpose`` as wrapped by
  ``upconvolution`` (4x4, stride 2, 'SAME', output exactly twice the input). The
  kernel is stored in TF's transposed-conv layout ``[kh, kw, out, in]`` and
  applied as the gradient of a forward conv (``transpose_kernel=True``), which is
  what TF computes; ``lax`` 'SAME' padding for k=4, s=2 is (2, 2) = TF's.

Initialisers follow TF1's ``xavier_initializer(uniform=False)``: a truncated
normal with fan-average variance scaling; biases start at zero.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepliflow_jax.model.config import LEAKY_SLOPE

XAVIER_NORMAL = nn.initializers.variance_scaling(1.0, "fan_avg", "truncated_normal")


def leaky_relu(x: jnp.ndarray, slope: float = LEAKY_SLOPE) -> jnp.ndarray:
    """``tf.nn.leaky_relu``: ``max(x, slope * x)`` for slope < 1."""
    return jnp.where(x >= 0, x, slope * x)


class Conv(nn.Module):
    """3x3 (or ``ksize``) conv, TF 'SAME', bias, leaky ReLU 0.1 (``activation``)."""

    features: int
    ksize: int = 3
    stride: int = 1
    dilation: int = 1
    activation: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param(
            "kernel", XAVIER_NORMAL, (self.ksize, self.ksize, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding="SAME",
            rhs_dilation=(self.dilation, self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = y + bias.astype(self.dtype)
        return leaky_relu(y) if self.activation else y


class ConvTranspose(nn.Module):
    """4x4 stride-2 'SAME' transposed conv with TF's kernel layout ``[kh, kw, out, in]``."""

    features: int
    ksize: int = 4
    stride: int = 2
    activation: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param(
            "kernel", XAVIER_NORMAL, (self.ksize, self.ksize, self.features, x.shape[-1])
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jax.lax.conv_transpose(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            strides=(self.stride, self.stride),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            transpose_kernel=True,
        )
        y = y + bias.astype(self.dtype)
        return leaky_relu(y) if self.activation else y
