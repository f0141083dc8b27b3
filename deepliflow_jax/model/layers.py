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
computed another way. ``"xla"`` is the plain ``lax`` call above (the reference);
``"auto"`` (the default) is resolved when the model is traced, to the form that
measured fastest on the backend (:func:`resolve_conv_impl`); otherwise a
``+``-joined set of

* ``subpixel``: a 4x4 stride-2 transposed conv as one stride-1 2x2 conv with
  4x the output channels (one 2x2 phase kernel per output-pixel parity) and a
  depth-to-space. ``lax`` computes the transposed conv on the input dilated
  with zeros, multiplying the zeros: 4x the multiply-adds of this form. Other
  kernel sizes and strides keep the ``lax`` call.
* ``phase``: the same transposed conv as four stride-1 2x2 convs, one per
  output-pixel parity, each with its own padding so that its output is exactly
  the input's size (``subpixel``'s one conv has an ``(H + 1) x (W + 1)`` output,
  which XLA:CPU's library path refuses), interleaved into the ``2H x 2W`` output.
* ``s2b``: a stride-1 dilated conv with an odd kernel as an undilated conv on
  the ``d * d`` sub-grids of pixels ``d`` apart (space-to-batch, the image
  zero-padded to a multiple of ``d``, then batch-to-space).
* ``pad8``: input and output channel counts zero-padded to multiples of 8
  (XLA pads them for float16 convs on GPU only; meant for bfloat16 compute).
* ``widen``: a conv (or transposed conv) with at most :data:`YNN_MIN_CHANNELS`
  output channels gets zero output channels up to ``YNN_MIN_CHANNELS + 1``,
  sliced off again. XLA:CPU (jaxlib 0.10) runs a conv in YNNPACK only when one
  side has more than 16 channels, and a weight gradient only when the conv has
  more than 16 output channels; the rest run on Eigen's spatial convolution.
* ``s2grad``: a strided conv whose input gradient is computed as one stride-1
  conv per input-pixel phase (a ``custom_vjp``): ``lax`` writes it as a conv of
  the output gradient dilated with zeros, which XLA:CPU's library path refuses.
  The forward and the weight gradient are the ``lax`` ones.
* ``wgrad``: the weight gradient of every conv with at least
  :data:`WGRAD_MIN_CHANNELS` input and output channels (the phase convs' included) as
  one matmul per kernel tap of the strided input slice it reads against the output gradient
  (:func:`conv_weight_grad`, a ``custom_vjp``); ``lax`` writes it as a conv with an
  ``Ho x Wo`` "kernel", which XLA:CPU runs several times slower per multiply-add.
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

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.model.config import LEAKY_SLOPE

XAVIER_NORMAL = nn.initializers.variance_scaling(1.0, "fan_avg", "truncated_normal")
#: the reference implementation and the tokens an alternative is built from
CONV_IMPL_REFERENCE = "xla"
#: resolved per backend when the model is traced (:func:`resolve_conv_impl`)
CONV_IMPL_AUTO = "auto"
CONV_IMPL_DEFAULT = CONV_IMPL_AUTO
CONV_IMPL_TOKENS = ("subpixel", "phase", "s2b", "pad8", "widen", "s2grad", "wgrad",
                    "banded", "tiled")
#: what ``"auto"`` runs on each backend; a backend not listed runs the reference
#: (see resolve_conv_impl's docstring for the measurements behind each entry)
CONV_IMPL_BY_BACKEND = {"cpu": "phase+widen+s2grad+wgrad+tiled"}
#: the implementations tests and the block profile compare with the reference
CONV_IMPLS = ("xla", "subpixel", "subpixel+s2b", "subpixel+s2b+pad8")
#: XLA:CPU's YNNPACK path takes convs with more channels than this on one side
YNN_MIN_CHANNELS = 16
_DN = ("NHWC", "HWIO", "NHWC")


def check_conv_impl(conv_impl: str) -> str:
    """Validates a ``conv_impl`` and returns its canonical spelling (tokens in order).

    Args:
      conv_impl: ``"auto"``, ``"xla"`` or a ``+``-joined set of
        :data:`CONV_IMPL_TOKENS`, e.g. ``"subpixel+s2b"``.

    Returns:
      ``"auto"``, ``"xla"`` or the tokens in the order of :data:`CONV_IMPL_TOKENS`.

    Raises:
      ValueError: not a string, empty, an unknown or repeated token, or
        ``"xla"``/``"auto"`` combined with tokens.
    """
    expected = (f"expected 'auto', 'xla' or a '+'-joined set of {CONV_IMPL_TOKENS}")
    if not isinstance(conv_impl, str) or not conv_impl:
        raise ValueError(f"conv_impl={conv_impl!r}: {expected}")
    if conv_impl in (CONV_IMPL_REFERENCE, CONV_IMPL_AUTO):
        return conv_impl
    tokens = conv_impl.split("+")
    unknown = [t for t in tokens if t not in CONV_IMPL_TOKENS]
    if unknown or len(set(tokens)) != len(tokens):
        raise ValueError(f"conv_impl={conv_impl!r}: {expected} without repeats "
                         "('xla' and 'auto' stand alone)")
    return "+".join(t for t in CONV_IMPL_TOKENS if t in tokens)


def resolve_conv_impl(conv_impl: str = CONV_IMPL_AUTO, backend: str | None = None) -> str:
    """The concrete implementation ``conv_impl`` stands for on ``backend``.

    ``"auto"`` becomes :data:`CONV_IMPL_BY_BACKEND`'s entry for the backend
    (``jax.default_backend()`` unless given), resolved when the model is traced:

    * CPU: ``"phase+widen+s2grad+wgrad+tiled"``, every conv, input gradient and weight
      gradient in XLA:CPU's YNNPACK library (the weight gradients of the wide convs as
      matmuls) and the gather-free cost volume. ``wgrad``: the loss gradient at 384x1216
      took 18.0 s of CPU time with it, 26.2 s without (interleaved, a loaded machine;
      ``experiments/results/runtime_train_cpu*.md`` has the idle train steps). Measured
      on an idle 2-core AMD EPYC (jaxlib 0.10.2), whole network, batch 1, interleaved,
      median ms: forward at 128x256 ``xla`` 297, ``subpixel+banded`` 218, this 231,
      the same without ``widen`` 220; at 384x1216 ``xla`` 3477, ``subpixel+banded``
      2341, this 2300, without ``widen`` 2257; loss gradient at 128x256 ``xla`` 849,
      this 689 (the fastest), without ``widen`` 703, with ``banded`` 702, without
      ``s2grad`` 694. ``widen`` costs ~2-5 % in the forward and gains as much in the
      backward; this keeps one form for inference and training.
    * GPU and TPU: the plain ``"xla"`` reference, until ``experiments.gpu_check`` has
      timed the alternatives there (no accelerator measurement exists yet).

    Any other value is returned canonical and unchanged: an explicit choice always wins.

    Args:
      conv_impl: as :func:`check_conv_impl`.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``...; default the JAX default backend.

    Returns:
      ``"xla"`` or a canonical ``+``-joined set of tokens (never ``"auto"``).

    Raises:
      ValueError: an invalid ``conv_impl``.
    """
    canonical = check_conv_impl(conv_impl)
    if canonical != CONV_IMPL_AUTO:
        return canonical
    backend = jax.default_backend() if backend is None else backend
    return CONV_IMPL_BY_BACKEND.get(backend, CONV_IMPL_REFERENCE)


def _tokens(conv_impl: str) -> frozenset[str]:
    resolved = resolve_conv_impl(conv_impl)
    return frozenset() if resolved == CONV_IMPL_REFERENCE else frozenset(resolved.split("+"))


def uses_impl(conv_impl: str, token: str) -> bool:
    """Whether ``conv_impl`` (validated; ``"auto"`` resolved) includes ``token``."""
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


def _padded_operands(impl: frozenset[str], x: jnp.ndarray, kernel: jnp.ndarray, in_axis: int,
                     out_axis: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``x`` and the kernel with the zero channels ``pad8`` and ``widen`` ask for."""
    if "pad8" in impl:
        x, kernel = _pad_channels(x, kernel, in_axis=in_axis, out_axis=out_axis)
    if "widen" in impl:
        kernel = _widen(kernel, out_axis=out_axis)
    return x, kernel


def _widen(kernel: jnp.ndarray, out_axis: int) -> jnp.ndarray:
    """Zero output channels up to ``YNN_MIN_CHANNELS + 1`` (``widen``); no-op above."""
    return _pad_axis(kernel, out_axis, max(YNN_MIN_CHANNELS + 1 - kernel.shape[out_axis], 0))


def _same_padding(size: int, ksize: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """``lax``/TF 'SAME' padding of one spatial axis (the odd extra goes last)."""
    extent = dilation * (ksize - 1) + 1
    total = max((-(-size // stride) - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def _lax_conv(x, kernel, stride=1, padding="SAME", dilation=1):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=padding,
        rhs_dilation=(dilation, dilation), dimension_numbers=_DN)


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
    y = _lax_conv(x, kernel)
    o = y.shape[-1]
    y = y.reshape(b, d, d, q, p, o).transpose(0, 3, 1, 4, 2, 5).reshape(b, q * d, p * d, o)
    return y[:, :h, :w]


def _interleave(phases: list[list[jnp.ndarray]]) -> jnp.ndarray:
    """``phases[py][px]`` ``[B, M, N, C]`` -> ``[B, s M, s N, C]`` with pixel
    ``(s q + py, s p + px)`` taken from ``phases[py][px][:, q, p]``."""
    s = len(phases)
    b, m, n, c = phases[0][0].shape
    rows = [jnp.stack(row, axis=3) for row in phases]  # [B, M, N, px, C]
    return jnp.stack(rows, axis=2).reshape(b, s * m, s * n, c)  # [B, M, py, N, px, C]


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
    z = _lax_conv(x, taps, padding=((1, 1), (1, 1)))
    z = z.reshape(b, h + 1, w + 1, 2, 2, o)
    return _interleave([[z[:, py:py + h, px:px + w, py, px] for px in range(2)]
                        for py in range(2)])


def transposed_conv_phases(x: jnp.ndarray, kernel: jnp.ndarray,
                           impl: frozenset[str] = frozenset()) -> jnp.ndarray:
    """4x4 stride-2 'SAME' transposed conv (TF layout) as four HxW stride-1 2x2 convs.

    Output pixel ``(2 q + py, 2 p + px)`` sums kernel taps ``(3 - py - 2 ty,
    3 - px - 2 tx)`` over input pixels ``(q + py + ty - 1, p + px + tx - 1)``: for
    each parity ``(py, px)`` a 2x2 conv padded ``(1 - py, py)`` by ``(1 - px, px)``,
    whose output is exactly ``H x W``. The phase kernels are static slices of the
    kernel (no gather), so the weight gradient is four slices' transposes.

    Args:
      x: ``[B, H, W, C]``.
      kernel: ``[4, 4, O, C]``, TF's ``conv2d_transpose`` layout.

    Returns:
      ``[B, 2H, 2W, O]``, equal to ``lax.conv_transpose(x, kernel, (2, 2), 'SAME',
      transpose_kernel=True)``.
    """
    def phase(py, px):
        taps = jnp.stack([jnp.stack([kernel[3 - py - 2 * ty, 3 - px - 2 * tx]
                                     for tx in range(2)]) for ty in range(2)])
        return _conv(impl, x, jnp.swapaxes(taps, 2, 3),  # [ty, tx, C, O]
                     padding=((1 - py, py), (1 - px, px)))

    return _interleave([[phase(py, px) for px in range(2)] for py in range(2)])


def _phase_taps(size: int, ksize: int, stride: int, low: int, phase: int):
    """One axis of a strided conv's input gradient, for input positions ``s m + phase``.

    Returns ``(taps, pad_low, pad_high, m)``: the kernel taps in the order the
    correlation over the output gradient reads them, its padding, and the number
    of positions ``m`` (``ceil(size / stride)``, the last ones cropped later).
    """
    first = (phase + low) % stride
    taps = list(range(first, ksize, stride))[::-1]
    m = -(-size // stride)
    if not taps:
        return taps, 0, 0, m
    offset = (phase + low - first) // stride  # output position of the last tap
    out_size = -(-size // stride) if size else 0
    pad_low = len(taps) - 1 - offset
    pad_high = m - 1 + offset - (out_size - 1)
    return taps, pad_low, pad_high, m


def strided_conv_input_grad(dy: jnp.ndarray, kernel: jnp.ndarray, x_shape, stride: int
                            ) -> jnp.ndarray:
    """The input gradient of a stride-``s`` 'SAME' conv as ``s * s`` stride-1 convs.

    Input pixel ``(s m + ry, s n + rx)`` receives ``dy`` through the kernel taps
    ``k`` with ``k = ry + pad_low (mod s)``: for each phase ``(ry, rx)`` a stride-1
    correlation of ``dy`` with those taps (reversed, in/out channels swapped;
    built from static slices), then the phases interleaved and cropped to ``x``.

    Args:
      dy: ``[B, ceil(H / s), ceil(W / s), O]``, the output's cotangent.
      kernel: ``[kh, kw, C, O]``.
      x_shape: ``(B, H, W, C)``.
      stride: ``s >= 1``.

    Returns:
      ``[B, H, W, C]``, equal to the input gradient of
      ``lax.conv_general_dilated(x, kernel, (s, s), 'SAME')``.
    """
    b, h, w, c = x_shape
    kh, kw = kernel.shape[:2]
    low_h, _ = _same_padding(h, kh, stride)
    low_w, _ = _same_padding(w, kw, stride)
    phases = []
    for ry in range(stride):
        ty, lo_y, hi_y, m = _phase_taps(h, kh, stride, low_h, ry)
        row = []
        for rx in range(stride):
            tx, lo_x, hi_x, n = _phase_taps(w, kw, stride, low_w, rx)
            if not ty or not tx:
                row.append(jnp.zeros((b, m, n, c), dy.dtype))
                continue
            taps = jnp.stack([jnp.stack([kernel[i, j] for j in tx]) for i in ty])
            pads = ((lo_y, hi_y), (lo_x, hi_x))
            # negative padding crops: lax.pad, then a VALID conv
            src = jax.lax.pad(dy, jnp.zeros((), dy.dtype),
                              ((0, 0, 0), (min(lo_y, 0), min(hi_y, 0), 0),
                               (min(lo_x, 0), min(hi_x, 0), 0), (0, 0, 0)))
            row.append(_lax_conv(src, jnp.swapaxes(taps, 2, 3),  # [ty, tx, O, C]
                                 padding=tuple((max(a, 0), max(z, 0)) for a, z in pads)))
        phases.append(row)
    return _interleave(phases)[:, :h, :w]


def conv_weight_grad(x: jnp.ndarray, dy: jnp.ndarray, kernel_shape, stride: int = 1,
                     padding: Any = "SAME", dilation: int = 1) -> jnp.ndarray:
    """The weight gradient of a conv as one matmul per kernel tap (``wgrad``).

    ``dK[ty, tx] = X_t^T dY``: ``X_t`` holds the padded input pixels that tap
    ``(ty, tx)`` reads (a static strided slice, ``[B Ho Wo, C]``), ``dY`` the output's
    cotangent (``[B Ho Wo, O]``). ``lax`` writes this gradient as a conv whose "kernel"
    is the whole ``Ho x Wo`` cotangent, which XLA:CPU runs several times slower per
    multiply-add than a matmul (a 96x304 128->128 3x3 conv: 5.1x the forward's CPU
    time, this form 1.45x).

    Args:
      x: ``[B, H, W, C]``, the conv's input.
      dy: ``[B, Ho, Wo, O]``, the output's cotangent.
      kernel_shape: ``(kh, kw, C, O)``.
      stride, dilation: the conv's window stride and kernel dilation.
      padding: ``"SAME"`` (TF's rule) or ``((low, high), (low, high))``.

    Returns:
      ``[kh, kw, C, O]`` in ``x``'s dtype, equal to the weight gradient of
      ``lax.conv_general_dilated(x, kernel, (stride,) * 2, padding,
      rhs_dilation=(dilation,) * 2)`` up to float summation order.
    """
    b, h, w, c = x.shape
    kh, kw = kernel_shape[:2]
    _, ho, wo, o = dy.shape
    if padding == "SAME":
        padding = (_same_padding(h, kh, stride, dilation), _same_padding(w, kw, stride, dilation))
    (lo_h, hi_h), (lo_w, hi_w) = padding
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype),
                     ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))
    g = dy.reshape(b * ho * wo, o)
    taps = [[jax.lax.dot_general(
        jax.lax.slice(xp, (0, ty * dilation, tx * dilation, 0),
                      (b, ty * dilation + stride * (ho - 1) + 1,
                       tx * dilation + stride * (wo - 1) + 1, c),
                      (1, stride, stride, 1)).reshape(b * ho * wo, c),
        g, (((0,), (0,)), ((), ()))) for tx in range(kw)] for ty in range(kh)]
    return jnp.stack([jnp.stack(row) for row in taps]).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_custom_grad(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: Any,
                     dilation: int, grads: tuple[str, ...]) -> jnp.ndarray:
    """``lax``'s conv whose gradients are computed as ``grads`` says (a ``custom_vjp``).

    ``grads`` holds ``"s2grad"`` (the input gradient of a strided, undilated 'SAME' conv
    as :func:`strided_conv_input_grad`) and/or ``"wgrad"`` (the weight gradient as
    :func:`conv_weight_grad`); a gradient not named is ``lax``'s. ``padding``:
    ``"SAME"`` or a hashable ``((low, high), (low, high))``.
    """
    return _lax_conv(x, kernel, stride, padding, dilation)


def _conv_custom_grad_fwd(x, kernel, stride, padding, dilation, grads):
    return _lax_conv(x, kernel, stride, padding, dilation), (x, kernel)


def _conv_custom_grad_bwd(stride, padding, dilation, grads, residuals, dy):
    x, kernel = residuals
    if "s2grad" in grads and stride > 1 and dilation == 1 and padding == "SAME":
        dx = strided_conv_input_grad(dy, kernel, x.shape, stride)
    else:
        dx = jax.vjp(lambda v: _lax_conv(v, kernel, stride, padding, dilation), x)[1](dy)[0]
    if "wgrad" in grads:
        dk = conv_weight_grad(x, dy, kernel.shape, stride, padding, dilation)
    else:
        dk = jax.vjp(lambda k: _lax_conv(x, k, stride, padding, dilation), kernel)[1](dy)[0]
    return dx, dk.astype(kernel.dtype)


conv_custom_grad.defvjp(_conv_custom_grad_fwd, _conv_custom_grad_bwd)


#: ``wgrad`` takes convs with at least this many input and output channels: on a 2-core
#: AMD EPYC (jaxlib 0.10.2, CPU time of one 3x3 conv's weight gradient, lax vs taps) 128->128
#: gains at 32x64 (28.6 vs 22.7 ms), 64x128 (142 vs 108) and 96x304 (1403 vs 380 ms), 32->32
#: loses at all three (2.4 vs 2.7, 8.2 vs 10.1, 24 vs 38 ms)
WGRAD_MIN_CHANNELS = 64


def _grad_forms(impl: frozenset[str], stride: int, dilation: int, kernel_shape
                ) -> tuple[str, ...]:
    """The custom gradients (:func:`conv_custom_grad`) ``impl`` asks for on this conv."""
    s2grad = "s2grad" in impl and stride > 1 and dilation == 1
    wgrad = "wgrad" in impl and min(kernel_shape[2:]) >= WGRAD_MIN_CHANNELS
    return tuple(t for t, on in (("s2grad", s2grad), ("wgrad", wgrad)) if on)


def _conv(impl: frozenset[str], x, kernel, stride=1, padding="SAME", dilation=1):
    """``_lax_conv``, behind :func:`conv_custom_grad` when ``impl`` names a gradient form."""
    grads = _grad_forms(impl, stride, dilation, kernel.shape)
    if grads:
        return conv_custom_grad(x, kernel, stride, padding, dilation, grads)
    return _lax_conv(x, kernel, stride, padding, dilation)


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 1, dilation: int = 1,
           conv_impl: str = CONV_IMPL_DEFAULT) -> jnp.ndarray:
    """'SAME' conv (no bias, no activation) computed as ``conv_impl`` says.

    Args:
      x: ``[B, H, W, C]``.
      kernel: ``[k, k, C, O]`` (HWIO), already in the compute dtype.
      stride: window stride.
      dilation: kernel dilation.
      conv_impl: see the module docstring (``s2b``, ``pad8``, ``widen``, ``s2grad``,
        ``wgrad`` apply here).

    Returns:
      ``[B, ceil(H / stride), ceil(W / stride), O]``, equal to
      ``lax.conv_general_dilated(x, kernel, (stride,) * 2, 'SAME',
      rhs_dilation=(dilation,) * 2)`` up to float summation order.

    Raises:
      ValueError: an invalid ``conv_impl``.
    """
    impl = _tokens(conv_impl)
    features = kernel.shape[3]
    x, kernel = _padded_operands(impl, x, kernel, in_axis=2, out_axis=3)
    odd = kernel.shape[0] % 2 == 1 and kernel.shape[1] % 2 == 1
    if "s2b" in impl and dilation > 1 and stride == 1 and odd:
        y = dilated_conv_space_to_batch(x, kernel, dilation)
    else:
        y = _conv(impl, x, kernel, stride, dilation=dilation)
    return y if y.shape[-1] == features else y[..., :features]


def conv_transpose2d(x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 2,
                     conv_impl: str = CONV_IMPL_DEFAULT) -> jnp.ndarray:
    """'SAME' transposed conv (no bias, no activation), TF layout, as ``conv_impl`` says.

    Args:
      x: ``[B, H, W, C]``.
      kernel: ``[k, k, O, C]`` (TF's ``conv2d_transpose`` layout), in the compute dtype.
      stride: the upsampling factor.
      conv_impl: see the module docstring (``subpixel``, ``phase``, ``pad8``,
        ``widen`` apply here, ``wgrad`` to ``phase``'s convs; ``subpixel`` and ``phase``
        to 4x4 stride 2 only).

    Returns:
      ``[B, stride H, stride W, O]``, equal to ``lax.conv_transpose(x, kernel,
      (stride,) * 2, 'SAME', transpose_kernel=True)`` up to float summation order.

    Raises:
      ValueError: an invalid ``conv_impl``.
    """
    impl = _tokens(conv_impl)
    features = kernel.shape[2]
    x, kernel = _padded_operands(impl, x, kernel, in_axis=3, out_axis=2)
    four_by_two = kernel.shape[:2] == (4, 4) and stride == 2
    if "phase" in impl and four_by_two:
        y = transposed_conv_phases(x, kernel, impl)
    elif "subpixel" in impl and four_by_two:
        y = transposed_conv_subpixel(x, kernel)
    else:
        y = jax.lax.conv_transpose(x, kernel, strides=(stride, stride), padding="SAME",
                                   dimension_numbers=_DN, transpose_kernel=True)
    return y if y.shape[-1] == features else y[..., :features]


class Conv(nn.Module):
    """3x3 (or ``ksize``) conv, TF 'SAME', bias, leaky ReLU 0.1 (``activation``).

    ``conv_impl``: see the module docstring and :func:`conv2d`.
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
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.dilation,
                   self.conv_impl)
        y = y + bias.astype(self.dtype)
        return leaky_relu(y) if self.activation else y


class ConvTranspose(nn.Module):
    """4x4 stride-2 'SAME' transposed conv with TF's kernel layout ``[kh, kw, out, in]``.

    ``conv_impl``: see the module docstring and :func:`conv_transpose2d`.
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
        y = conv_transpose2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                             self.conv_impl)
        y = y + bias.astype(self.dtype)
        return leaky_relu(y) if self.activation else y
