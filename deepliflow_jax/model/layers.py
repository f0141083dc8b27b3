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

Implementations (``conv_impl``): the same function and the same parameters,
computed another way. ``"xla"`` (default) is the plain ``lax`` call above;
otherwise a ``+``-joined set of

* ``subpixel``: a 4x4 stride-2 transposed conv as one stride-1 2x2 conv with
  4x the output channels (one 2x2 phase kernel per output-pixel parity) and a
  depth-to-space. ``lax`` computes the transposed conv on the input dilated
  with zeros, multiplying the zeros: 4x the multiply-adds of this form. Other
  kernel sizes and strides keep the ``lax`` call.
* ``s2b``: a stride-1 dilated conv with an odd kernel as an undilated conv on
  the ``d * d`` sub-grids of pixels ``d`` apart (space-to-batch, the image
  zero-padded to a multiple of ``d``, then batch-to-space).
* ``pad8``: input and output channel counts zero-padded to multiples of 8
  (XLA pads them for float16 convs on GPU only; meant for bfloat16 compute).
* ``banded``: not a conv layer but the correlation of the cost volume, as tiled
  row matmuls (``deepliflow_jax.model.cost_volume.cost_volume_banded``; on a
  2-core CPU 1.5x to 1.9x faster whole forwards at batch 1).
* ``tiled``: the cost volume's correlation as one matmul per 8x8 pixel tile against
  its 16x16 search window, the displacements cut out by pad/reshape/slice
  (``deepliflow_jax.model.cost_volume.cost_volume_tiled``; no gather or scatter,
  forward and backward). ``banded`` and ``tiled`` exclude each other.

Each is exact up to float summation order (float32 relative error ~1e-7, see
``tests/test_conv_impl.py``), gradients included.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.model.config import LEAKY_SLOPE

XAVIER_NORMAL = nn.initializers.variance_scaling(1.0, "fan_avg", "truncated_normal")
#: the reference implementation and the tokens an alternative is built from
CONV_IMPL_DEFAULT = "xla"
CONV_IMPL_TOKENS = ("subpixel", "s2b", "pad8", "banded", "tiled")
#: the implementations tests and the block profile compare with the reference
CONV_IMPLS = ("xla", "subpixel", "subpixel+s2b", "subpixel+s2b+pad8")
_DN = ("NHWC", "HWIO", "NHWC")


def check_conv_impl(conv_impl: str) -> str:
    """Validates a ``conv_impl`` and returns its canonical spelling (tokens in order).

    Args:
      conv_impl: ``"xla"`` or a ``+``-joined set of :data:`CONV_IMPL_TOKENS`,
        e.g. ``"subpixel+s2b"``.

    Returns:
      ``"xla"`` or the tokens in the order of :data:`CONV_IMPL_TOKENS`.

    Raises:
      ValueError: not a string, empty, an unknown or repeated token, or
        ``"xla"`` combined with tokens.
    """
    if not isinstance(conv_impl, str) or not conv_impl:
        raise ValueError(f"conv_impl={conv_impl!r}: expected 'xla' or a '+'-joined set of "
                         f"{CONV_IMPL_TOKENS}")
    if conv_impl == CONV_IMPL_DEFAULT:
        return conv_impl
    tokens = conv_impl.split("+")
    unknown = [t for t in tokens if t not in CONV_IMPL_TOKENS]
    if unknown or len(set(tokens)) != len(tokens):
        raise ValueError(f"conv_impl={conv_impl!r}: expected 'xla' or a '+'-joined set of "
                         f"{CONV_IMPL_TOKENS} without repeats ('xla' stands alone)")
    return "+".join(t for t in CONV_IMPL_TOKENS if t in tokens)


def _tokens(conv_impl: str) -> frozenset[str]:
    canonical = check_conv_impl(conv_impl)
    return frozenset() if canonical == CONV_IMPL_DEFAULT else frozenset(canonical.split("+"))


def uses_impl(conv_impl: str, token: str) -> bool:
    """Whether ``conv_impl`` (validated) includes ``token`` (one of :data:`CONV_IMPL_TOKENS`)."""
    return token in _tokens(conv_impl)


def leaky_relu(x: jnp.ndarray, slope: float = LEAKY_SLOPE) -> jnp.ndarray:
    """``tf.nn.leaky_relu``: ``max(x, slope * x)`` for slope < 1."""
    return jnp.where(x >= 0, x, slope * x)


def _pad_to(n: int, multiple: int = 8) -> int:
    return -(-n // multiple) * multiple - n


def _pad_axis(x: jnp.ndarray, axis: int, extra: int) -> jnp.ndarray:
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def _pad_channels(x: jnp.ndarray, kernel: jnp.ndarray, in_axis: int, out_axis: int):
    """Zero channels: ``x``'s and the kernel's input axis, the kernel's output axis, to x8."""
    extra_in = _pad_to(x.shape[-1])
    kernel = _pad_axis(kernel, in_axis, extra_in)
    return _pad_axis(x, -1, extra_in), _pad_axis(kernel, out_axis, _pad_to(kernel.shape[out_axis]))


def dilated_conv_space_to_batch(x: jnp.ndarray, kernel: jnp.ndarray, dilation: int) -> jnp.ndarray:
    """Stride-1 'SAME' conv with ``rhs_dilation=dilation`` as an undilated conv on sub-grids.

    Output pixel ``(d q + r, d p + s)`` only sees input pixels of the same residues
    ``(r, s)`` mod ``d``: each of the ``d * d`` sub-grids is an image of its own,
    convolved without dilation. Padding the image with zeros to a multiple of
    ``d`` adds only pixels the dilated 'SAME' conv reads as zero padding anyway.

    Args:
      x: ``[B, H, W, C]``.
      kernel: ``[k, k, C, O]`` with ``k`` odd (symmetric 'SAME' padding).
      dilation: ``d >= 1``.

    Returns:
      ``[B, H, W, O]``, equal to ``lax.conv_general_dilated(x, kernel, (1, 1),
      'SAME', rhs_dilation=(d, d))``.

    Raises:
      ValueError: an even kernel size.
    """
    if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"space-to-batch needs an odd kernel size, got {kernel.shape[:2]}")
    d = dilation
    b, h, w, c = x.shape
    q, p = -(-h // d), -(-w // d)
    x = jnp.pad(x, ((0, 0), (0, q * d - h), (0, p * d - w), (0, 0)))
    x = x.reshape(b, q, d, p, d, c).transpose(0, 2, 4, 1, 3, 5).reshape(b * d * d, q, p, c)
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DN)
    o = y.shape[-1]
    y = y.reshape(b, d, d, q, p, o).transpose(0, 3, 1, 4, 2, 5).reshape(b, q * d, p * d, o)
    return y[:, :h, :w]


# Sub-pixel taps: output row 2 q + py of the 4x4 stride-2 'SAME' transposed conv is
# sum over ty in {0, 1} of kernel row 3 - py - 2 ty applied to input row q + py + ty - 1.
_SUBPIXEL_TAPS = np.array([[3 - p - 2 * t for p in range(2)] for t in range(2)])  # [t, p]


def transposed_conv_subpixel(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """4x4 stride-2 'SAME' transposed conv (TF layout) as a stride-1 conv + depth-to-space.

    With the input padded by one pixel on every side, a 2x2 stride-1 conv gives
    ``z`` of size ``(H + 1, W + 1)`` with channels ``(py, px, out)``; output pixel
    ``(2 q + py, 2 p + px)`` is ``z[q + py, p + px, (py, px)]``.

    Args:
      x: ``[B, H, W, C]``.
      kernel: ``[4, 4, O, C]``, TF's ``conv2d_transpose`` layout.

    Returns:
      ``[B, 2H, 2W, O]``, equal to ``lax.conv_transpose(x, kernel, (2, 2), 'SAME',
      transpose_kernel=True)``.
    """
    b, h, w, c = x.shape
    o = kernel.shape[2]
    t = _SUBPIXEL_TAPS
    taps = kernel[t[:, None, :, None], t[None, :, None, :]]  # [ty, tx, py, px, O, C]
    taps = taps.transpose(0, 1, 5, 2, 3, 4).reshape(2, 2, c, 4 * o)
    z = jax.lax.conv_general_dilated(x, taps, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN)
    z = z.reshape(b, h + 1, w + 1, 2, 2, o)
    rows = [jnp.stack([z[:, py:py + h, px:px + w, py, px] for px in range(2)], axis=3)
            for py in range(2)]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, o)  # [B, H, py, W, px, O]


class Conv(nn.Module):
    """3x3 (or ``ksize``) conv, TF 'SAME', bias, leaky ReLU 0.1 (``activation``).

    ``conv_impl``: see the module docstring (``s2b``, ``pad8`` apply here).
    """

    features: int
    ksize: int = 3
    stride: int = 1
    dilation: int = 1
    activation: bool = True
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param(
            "kernel", XAVIER_NORMAL, (self.ksize, self.ksize, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        impl = _tokens(self.conv_impl)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if "pad8" in impl:
            x, kernel = _pad_channels(x, kernel, in_axis=2, out_axis=3)
        if "s2b" in impl and self.dilation > 1 and self.stride == 1 and self.ksize % 2:
            y = dilated_conv_space_to_batch(x, kernel, self.dilation)
        else:
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(self.stride, self.stride),
                padding="SAME",
                rhs_dilation=(self.dilation, self.dilation),
                dimension_numbers=_DN,
            )
        if y.shape[-1] != self.features:  # pad8
            y = y[..., : self.features]
        y = y + bias.astype(self.dtype)
        return leaky_relu(y) if self.activation else y


class ConvTranspose(nn.Module):
    """4x4 stride-2 'SAME' transposed conv with TF's kernel layout ``[kh, kw, out, in]``.

    ``conv_impl``: see the module docstring (``subpixel``, ``pad8`` apply here).
    """

    features: int
    ksize: int = 4
    stride: int = 2
    activation: bool = True
    dtype: Any = jnp.float32
    conv_impl: str = CONV_IMPL_DEFAULT

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param(
            "kernel", XAVIER_NORMAL, (self.ksize, self.ksize, self.features, x.shape[-1])
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        impl = _tokens(self.conv_impl)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if "pad8" in impl:
            x, kernel = _pad_channels(x, kernel, in_axis=3, out_axis=2)
        if "subpixel" in impl and (self.ksize, self.stride) == (4, 2):
            y = transposed_conv_subpixel(x, kernel)
        else:
            y = jax.lax.conv_transpose(
                x,
                kernel,
                strides=(self.stride, self.stride),
                padding="SAME",
                dimension_numbers=_DN,
                transpose_kernel=True,
            )
        if y.shape[-1] != self.features:  # pad8
            y = y[..., : self.features]
        y = y + bias.astype(self.dtype)
        return leaky_relu(y) if self.activation else y
