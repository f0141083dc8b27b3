"""The arithmetic of uniform quantization: code range, scale, encode, decode.

One set of formulas for NumPy and ``jax.numpy``: each function computes with the array
namespace of its arguments (``jax.numpy`` if any argument is a ``jax.Array``, a tracer
included, else NumPy), so the fake quantizer (:mod:`.quantize`, traced inside a train
step), the packed checkpoints (:mod:`.export`, NumPy on the host) and the int8 model
(:mod:`.int8`) share the rounding, the clipping and the scale computation operation for
operation and give the same codes and values bit for bit (``tests/test_compress_codec.py``).

The scheme (see :mod:`.quantize` for why it is the paper's quantizer):

* symmetric (mid-tread): ``qmax = 2**(bits-1) - 1``, codes in ``[-qmax, qmax]``,
  ``scale = max|x| * (1 / qmax)``, zero point 0;
* affine: codes in ``[0, 2**bits - 1]``, the range ``[min(x, 0), max(x, 0)]``,
  ``scale = (hi - lo) * (1 / (qmax - qmin))``, zero point ``round(-lo * (1 / scale))``
  clipped to the code range;
* a range of zero width gives scale 1 (nothing divides by zero);
* ``codes = clip(round(x * (1 / scale)) + zero_point, qmin, qmax)`` (int32), rounding
  half to even; ``value = (codes - zero_point) * scale`` (the int32 difference makes zero
  +0.0).

Everything is float32 and only multiplies by explicit reciprocals: XLA turns ``x / c``
into ``x * (1 / c)`` under ``jit`` but not eagerly (nor does NumPy), which would change
the last bit between the paths.

The domain of that bit-for-bit agreement: finite inputs whose scale and its reciprocal are
normal float32 numbers (``max|x| / qmax`` within about ``[1.2e-38, 8.5e37]``), and no
subnormal inputs. XLA on CPU flushes subnormal floats to zero and NumPy does not, so a
tensor whose ``1 / scale`` or whose entries are subnormal can get other codes on the two
paths; trained weights are nowhere near that.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ONE = np.float32(1)
ZERO = np.float32(0)


def namespace(*arrays: Any):
    """``jax.numpy`` if any of ``arrays`` is a ``jax.Array`` (a tracer too), else ``numpy``."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def qrange(bits: Any, symmetric: bool = True) -> tuple[Any, Any]:
    """Integer code range ``(qmin, qmax)``; ``bits`` may be a traced int scalar.

    Symmetric: ``(-(2**(b-1) - 1), 2**(b-1) - 1)``; affine: ``(0, 2**b - 1)``. Python
    ints for a concrete width, int32 arrays for a traced one.
    """
    if isinstance(bits, int | np.integer):
        if symmetric:
            q = 2 ** (int(bits) - 1) - 1
            return -q, q
        return 0, 2 ** int(bits) - 1
    bits = jnp.asarray(bits, jnp.int32)
    if symmetric:
        q = jnp.left_shift(1, bits - 1) - 1
        return -q, q
    return jnp.zeros_like(bits), jnp.left_shift(1, bits) - 1


def reciprocal(q: Any) -> Any:
    """``1 / q`` in float32 (correctly rounded), for an int or an array (traced or not)."""
    if isinstance(q, int | np.integer):
        return ONE / np.float32(q)
    xp = namespace(q)
    return ONE / xp.asarray(q, xp.float32)


def symmetric_scale(amax: Any, qmax: Any) -> Any:
    """``amax * (1 / qmax)`` in float32, 1 where ``amax`` is 0 (an all-zero range).

    Args:
      amax: ``max |x|`` (a scalar, or one per channel).
      qmax: the largest code (int or int array).

    Returns:
      The scale, float32, of ``amax``'s shape.
    """
    xp = namespace(amax, qmax)
    amax = xp.asarray(amax, xp.float32)
    return xp.asarray(xp.where(amax > 0, amax * reciprocal(qmax), ONE), xp.float32)


def _reduce_axes(ndim: int, axis: int | None) -> tuple[int, ...] | None:
    if axis is None or ndim < 2:
        return None  # per tensor
    axis = axis % ndim
    return tuple(a for a in range(ndim) if a != axis)


def compute_scale(x: Any, bits: Any, *, axis: int | None = None,
                  symmetric: bool = True) -> tuple[Any, Any]:
    """Scale and integer zero point of ``x``'s range (see the module docstring).

    Args:
      x: the tensor (computed in float32).
      bits: bit width (int, or a traced int scalar with ``jax.numpy`` arrays).
      axis: channel axis for per-channel scales; None (or a tensor with fewer than 2
        dimensions, e.g. a bias) gives one scale per tensor.
      symmetric: symmetric mid-tread codes or affine min/max codes.

    Returns:
      ``(scale, zero_point)``, float32 and int32, broadcastable against ``x`` (the
      channel axis kept, the others of size 1), in ``x``'s array namespace.
    """
    xp = namespace(x, bits)
    x = xp.asarray(x, xp.float32)
    red = _reduce_axes(x.ndim, axis)
    keep = red is not None
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = symmetric_scale(xp.max(xp.abs(x), axis=red, keepdims=keep), qmax)
        return scale, xp.zeros(scale.shape, xp.int32)
    lo = xp.minimum(xp.min(x, axis=red, keepdims=keep), ZERO)
    hi = xp.maximum(xp.max(x, axis=red, keepdims=keep), ZERO)
    scale = xp.asarray(xp.where(hi > lo, (hi - lo) * reciprocal(qmax - qmin), ONE), xp.float32)
    zero_point = xp.clip(xp.round(-lo * (ONE / scale)), qmin, qmax).astype(xp.int32)
    return scale, zero_point


def encode(x: Any, scale: Any, zero_point: Any, qmin: Any, qmax: Any,
           inv_scale: Any = None) -> Any:
    """Integer codes ``clip(round(x * (1 / scale)) + zero_point, qmin, qmax)`` (int32).

    Args:
      x: values (computed in float32).
      scale, zero_point: as :func:`compute_scale` gives them (broadcastable to ``x``).
      qmin, qmax: the code range (:func:`qrange`).
      inv_scale: ``1 / scale`` where the caller computed it already (the same bits).

    Returns:
      int32 codes of ``x``'s shape; rounding half to even, values beyond the range clipped.
    """
    xp = namespace(x, scale, zero_point, qmin, qmax, inv_scale)
    x = xp.asarray(x, xp.float32)
    inv = ONE / xp.asarray(scale, xp.float32) if inv_scale is None else inv_scale
    codes = xp.round(x * inv) + xp.asarray(zero_point).astype(xp.float32)
    return xp.clip(codes, qmin, qmax).astype(xp.int32)


def decode(codes: Any, scale: Any, zero_point: Any) -> Any:
    """Dequantized float32 values ``(codes - zero_point) * scale``.

    The int32 difference makes zero always +0.0, so fake quantization and a decoded
    packed checkpoint agree bit for bit.
    """
    xp = namespace(codes, scale, zero_point)
    diff = xp.asarray(codes).astype(xp.int32) - xp.asarray(zero_point, xp.int32)
    return diff.astype(xp.float32) * xp.asarray(scale, xp.float32)


def encode_tensor(x: Any, bits: Any, *, axis: int | None = None,
                  symmetric: bool = True) -> tuple[Any, Any, Any]:
    """Codes of a whole tensor with the scale of its own range.

    Args:
      x: the tensor.
      bits: bit width in [2, 16] (not validated here: ``quantize.check_bits``).
      axis: output-channel axis for per-channel scales, None for per tensor.
      symmetric: symmetric or affine codes.

    Returns:
      ``(codes int32, scale float32, zero_point int32)`` in ``x``'s array namespace;
      ``decode(codes, scale, zero_point)`` is the fake-quantized tensor
      (``quantize.fake_quant``) bit for bit.
    """
    scale, zero_point = compute_scale(x, bits, axis=axis, symmetric=symmetric)
    qmin, qmax = qrange(bits, symmetric)
    return encode(x, scale, zero_point, qmin, qmax), scale, zero_point
