"""Normalized convolution and confidence-guided pooling of the sparse-depth branch.

Reproduces ``networks.normal_convolution`` and ``tf_utils.max_pool_normalized`` of
the original release:

* kernels are ``softplus``-ed before use (non-negative weights);
* ``data' = conv(data * conf, W) / (conv(conf, W) + eps) + bias``, then leaky ReLU
  with TF's *default* slope 0.2 (the original calls ``tf.nn.leaky_relu(nconv)``
  without ``alpha``; every other layer uses 0.1);
* ``conf' = conv(conf, W) / sum(W over kh, kw, in)`` per output channel;
* pooling picks, per channel and 2x2 window, the confidence maximum and the data
  at the position of that maximum; ties go to the first position in raster order
  (TF ``max_pool_with_argmax`` keeps the first strictly greater value), so a
  window with no LiDAR point at all returns its top-left entry.

Parameter sharing between the two frames: the original creates ``kernels`` with
``tf.get_variable`` (shared when the guidance network is called again under
``scope.reuse_variables()``) but the biases with a plain ``tf.Variable``, which
ignores reuse: the second frame gets biases of its own (``..._1/biases<num>`` in
the checkpoint). Here both frames run as one batch ``[2B, ...]`` (frame t first,
then frame t+1) and the module holds ``biases`` (frame t) and ``biases_1``
(frame t+1).

Structured (channel-pruned) models: the confidence normaliser ``sum(W)`` runs
over *all* input channels of the original layer, also those whose confidence
is zero. When pruning removes input channels, their softplus weight mass is kept
per output channel in a parameter ``conf_mass`` (``conf_mass=True``; never
trained: it enters through ``stop_gradient``), and ``conf' = conv(conf, W) /
(sum(W) + conf_mass)``. With ``conf_mass = 0`` (an unpruned layer) this is the
original formula, and a pruned layer reproduces the full layer exactly when
the removed channels carry zero data and zero confidence.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepliflow_jax.model.config import NCONV_EPS, NCONV_SLOPE, NUM_FRAMES
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, conv2d, leaky_relu


def confidence_max_pool(data: jnp.ndarray, conf: jnp.ndarray):
    """2x2/2 VALID max pool of ``conf``; ``data`` taken where ``conf`` is maximal.

    Ties go to the first maximum in raster order (TF ``max_pool_with_argmax``'s
    rule, also ``jnp.argmax``'s; a NaN counts as the maximum, as in ``jnp.argmax``),
    and so does the gradient: both outputs are a ``where`` chain over the four
    strided window positions, so the backward routes each cotangent to that one
    position (a plain ``max`` would split it between tied maxima). No gather, so
    no scatter in the backward. An odd last row or column is dropped.

    Args:
      data: ``[B, H, W, C]``.
      conf: ``[B, H, W, C]`` confidences (same shape as ``data``).

    Returns:
      ``(pooled_data, pooled_conf)``, each ``[B, H // 2, W // 2, C]``.
    """
    h2, w2 = conf.shape[1] // 2, conf.shape[2] // 2

    def positions(x):
        # the window positions in raster order: (0,0), (0,1), (1,0), (1,1)
        return [x[:, i:2 * h2:2, j:2 * w2:2] for i in (0, 1) for j in (0, 1)]

    cs, ds = positions(conf), positions(data)
    top = jnp.maximum(jnp.maximum(cs[0], cs[1]), jnp.maximum(cs[2], cs[3]))
    pooled_data, pooled_conf = ds[3], cs[3]
    for c, d in zip(cs[2::-1], ds[2::-1], strict=True):  # the first winner is chosen last
        wins = (c == top) | jnp.isnan(c)
        pooled_data = jnp.where(wins, d, pooled_data)
        pooled_conf = jnp.where(wins, c, pooled_conf)
    return pooled_data, pooled_conf


def _per_frame_bias(x: jnp.ndarray, biases: jnp.ndarray) -> jnp.ndarray:
    """Adds ``biases[f]`` to frame ``f`` of a ``[F * B, ...]`` batch."""
    fb = x.shape[0]
    if fb % NUM_FRAMES:
        raise ValueError(
            f"normalized conv expects both frames stacked on the batch axis, got batch {fb}"
        )
    x = x.reshape((NUM_FRAMES, fb // NUM_FRAMES) + x.shape[1:])
    x = x + biases.reshape((NUM_FRAMES, 1, 1, 1, -1))
    return x.reshape((fb,) + x.shape[2:])


class NormalizedConv(nn.Module):
    """3x3 stride-1 'SAME' normalized convolution on ``(data, conf)``.

    Attributes:
      features: output channels.
      ksize: kernel size.
      conf_mass: hold the ``conf_mass`` parameter of structured models (see module
        docstring); False (the original) has no such parameter.
      dtype: compute dtype.
      conv_impl: how the conv is computed (:func:`deepliflow_jax.model.layers.conv2d`).
    """

    features: int
    ksize: int = 3
    conf_mass: bool = False
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, data: jnp.ndarray, conf: jnp.ndarray):
        kernels = self.param(
            "kernels",
            nn.initializers.xavier_uniform(),
            (self.ksize, self.ksize, data.shape[-1], self.features),
        )
        biases = self.param("biases", nn.initializers.zeros, (self.features,))
        biases_1 = self.param("biases_1", nn.initializers.zeros, (self.features,))

        w = jax.nn.softplus(kernels)
        n = data.shape[0]
        # numerator and denominator share the kernel: one conv over a 2x batch
        both = jnp.concatenate([data * conf, conf], axis=0).astype(self.dtype)
        out = conv2d(both, w.astype(self.dtype), conv_impl=self.conv_impl)
        numerator, denominator = out[:n], out[n:]
        nconv = numerator / (denominator + NCONV_EPS)
        nconv = _per_frame_bias(nconv, jnp.stack([biases, biases_1]).astype(self.dtype))
        nconv = leaky_relu(nconv, NCONV_SLOPE)
        mass = jnp.sum(w, axis=(0, 1, 2))
        if self.conf_mass:
            removed = self.param("conf_mass", nn.initializers.zeros, (self.features,))
            mass = mass + jax.lax.stop_gradient(removed)
        cout = denominator / mass.astype(self.dtype)
        return nconv, cout
