"""Uniform fake quantization of weights (and optionally activations), 2..16 bits.

The paper's quantizer (Alhimdiat et al. 2023, sec. III-C) takes the value range
from the data ("the minimum and maximum values"), splits it into ``2**bits``
equal intervals and replaces each value by its interval's representative. Read
literally (representatives at interval *midpoints*) that is a mid-rise quantizer
with no zero level, so no weight could become exactly zero; yet the paper reports
that quantization zeroes 0.07 %, 0.29 %, 1.17 %, 4.69 %, 15.48 %, 33.8 % of the
weights at 16, 14, 12, 10, 8, 6 bits and counts that as pruning. Those numbers
are ``48 / 2**bits`` to the printed precision down to 10 bits, i.e. exactly the
growth of a zero bin whose width is proportional to ``2**-bits`` on a weight
density that is flat near zero. So the levels must include zero (a mid-tread
quantizer). What we implement:

* ``symmetric=True`` (default; the choice documented for the study): per tensor
  (as the paper) or per output channel, ``scale = max|w| / qmax`` with
  ``qmax = 2**(bits-1) - 1`` and integer codes in ``[-qmax, qmax]`` (``2**bits - 1``
  levels, zero among them, codes fit a signed ``bits``-bit integer). A weight
  becomes zero iff ``|w| < scale / 2`` (ties round to even, i.e. to zero), so on a
  distribution with CDF of magnitudes ``F`` the expected zero fraction is
  ``F(max|w| / (2 * qmax))`` (:func:`expected_zero_fraction`).
* ``symmetric=False``: the paper's min/max range, ``2**bits`` levels, range widened
  to contain 0 and the zero point rounded to an integer code so that zero is
  still exactly a level (the usual affine/TFLite scheme).

Fake quantization uses a straight-through estimator: the forward value is the
dequantized value exactly, the gradient is the identity inside the clip range
and zero outside. For weights the clip range is the tensor's own range
(``[-max|w|, max|w|]``, or ``[min(w, 0), max(w, 0)]`` affine), recomputed every
forward pass and not differentiated through, so every weight gets gradient 1;
activations can use a fixed range ``[-clip, clip]`` beyond which they saturate.
Where the range is the data's own, the identity gradient is written as such
(:func:`straight_through`, a ``custom_jvp``): the backward pass of a train step
then holds no quantizer at all (float weights pass through it alike), which
leaves XLA less to compile.

The arithmetic itself (code range, scale, rounding, clipping, decoding) lives in
:mod:`.codec`, shared with the packed checkpoints and the int8 model.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.compress import codec
from deepliflow_jax.compress.codec import decode, encode, qrange, reciprocal, symmetric_scale
from deepliflow_jax.compress.select import (
    Pattern,
    flatten,
    map_with_path,
    matches,
    module_path,
    select,
)
from deepliflow_jax.model.channels import kernel_out_axes
from deepliflow_jax.scalars import check_number

MIN_BITS, MAX_BITS = 2, 16

# DeepLiDARFlow's kernels whose output channels are not last: the 12 transposed convs,
# TF's ``[kh, kw, out, in]`` layout (model.channels.out_axis). Matches the path with or
# without the ``params/`` prefix. Every other kernel is HWIO (outputs on axis -1).
DEEPLIDARFLOW_CHANNEL_AXES = tuple(
    (rf"(^|/){re.escape(path)}$", axis) for path, axis in kernel_out_axes().items() if axis != -1
)


def channel_axis(path: str, ndim: int, channel_axes: Sequence[tuple[str, int]] = ()
                 ) -> int | None:
    """Output-channel axis of the leaf at ``path``: the axis per-channel scales run over.

    The one rule of every per-channel quantizer (:class:`QuantConfig`, :func:`quantize`,
    quantization-aware training, packed checkpoints, the compression search): the first
    of the declared ``channel_axes`` whose regex matches ``path`` (a user tree's layout),
    else DeepLiDARFlow's own layout (:data:`DEEPLIDARFLOW_CHANNEL_AXES`: -2 for its
    transposed-conv kernels ``[kh, kw, out, in]``), else -1 (HWIO conv and flax
    ``Dense``/``ConvTranspose`` kernels). The int8 model uses the same layouts
    (``model.channels.out_axis``).

    Args:
      path: the leaf's '/'-joined parameter path (see :mod:`.select`).
      ndim: the leaf's number of dimensions.
      channel_axes: declared ``((regex, axis), ...)`` (``re.search`` on ``path``).

    Returns:
      The axis (negative or as declared), or None for a leaf of fewer than 2
      dimensions (a bias: one scale per tensor).

    Raises:
      ValueError: a declared axis outside ``[-ndim, ndim)`` for the leaf it matches.
    """
    if ndim < 2:
        return None
    for regex, axis in (*channel_axes, *DEEPLIDARFLOW_CHANNEL_AXES):
        if re.search(regex, path):
            if not -ndim <= axis < ndim:
                raise ValueError(f"channel_axes entry ({regex!r}, {axis}) matches {path}, "
                                 f"which has {ndim} dimensions: the axis must be in "
                                 f"[{-ndim}, {ndim})")
            return axis
    return -1


def check_bits(bits: Any, name: str = "bits") -> int:
    """Validates a concrete bit width; returns it as int.

    Raises:
      ValueError: if ``bits`` is not an integer in [2, 16] (a bool or a string is
        refused, as for every numeric argument: :func:`deepliflow_jax.scalars.check_number`).
    """
    return check_number(bits, name, integer=True, minimum=MIN_BITS, maximum=MAX_BITS)


def compute_scale(
    x: jnp.ndarray, bits: Any, *, axis: int | None = None, symmetric: bool = True
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Scale and integer zero point for ``x`` (:func:`.codec.compute_scale` in jax.numpy).

    Args:
      x: the tensor.
      bits: bit width (int or traced int scalar).
      axis: channel axis for per-channel scales; None (or a tensor with fewer
        than 2 dims, e.g. a bias) gives one scale per tensor.
      symmetric: see module docstring.

    Returns:
      ``(scale, zero_point)`` float32/int32, broadcastable against ``x``; not
      differentiable (stop_gradient).
    """
    x = jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
    return codec.compute_scale(x, bits, axis=axis, symmetric=symmetric)


def straight_through(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Value ``y`` exactly, gradient the identity to ``x`` (none to ``y``).

    The straight-through estimator of a quantizer whose range is the data's own,
    so that no entry of ``x`` is clipped.

    Args:
      x: the input of the quantizer.
      y: its output, of ``x``'s shape and dtype.

    Returns:
      ``y``, bit for bit.
    """
    return _identity_gradient(x, jax.lax.stop_gradient(y))


@jax.custom_jvp
def _identity_gradient(x, y):
    return y


@_identity_gradient.defjvp
def _identity_gradient_jvp(primals, tangents):
    return primals[1], tangents[0]


def _ste(x: jnp.ndarray, q: jnp.ndarray, lo, hi) -> jnp.ndarray:
    """Value ``q`` exactly; gradient 1 where ``lo <= x <= hi``, else 0."""
    inside = (x >= lo) & (x <= hi)
    # x - x is exactly +0.0, so the forward value is q bit for bit; `where` rather
    # than clip, whose gradient is 1/2 at the range ends (x = max|x| is one).
    return q + jnp.where(inside, x - jax.lax.stop_gradient(x), 0.0)


def fake_quant(
    x: jnp.ndarray, bits: Any, *, axis: int | None = None, symmetric: bool = True
) -> jnp.ndarray:
    """Quantize-dequantize ``x`` with a straight-through gradient.

    Args:
      x: tensor (computed in float32, returned in ``x.dtype``).
      bits: bit width (int in [2, 16] or traced int scalar).
      axis: output-channel axis for per-channel scales, None for per tensor.
      symmetric: symmetric mid-tread (default) or affine min/max levels.

    Returns:
      The fake-quantized tensor, whose values lie on the grid ``k * scale``.
    """
    dtype = jnp.asarray(x).dtype
    x32 = jnp.asarray(x, jnp.float32)
    # the data's own range: nothing is clipped, every entry gets gradient 1
    scale, zp = compute_scale(x32, bits, axis=axis, symmetric=symmetric)
    qmin, qmax = qrange(bits, symmetric)
    q = decode(encode(x32, scale, zp, qmin, qmax), scale, zp)
    return straight_through(x32, q).astype(dtype)


def fake_quant_activation(
    x: jnp.ndarray, bits: Any, *, clip: float | None = None, symmetric: bool = True
) -> jnp.ndarray:
    """Fake-quantizes an activation tensor per tensor, straight-through gradient.

    Args:
      x: activation.
      bits: bit width.
      clip: fixed range ``[-clip, clip]`` (values beyond saturate and get zero
        gradient); None takes the range from the tensor itself (batch min/max).
      symmetric: as in :func:`fake_quant` (ignored when ``clip`` is given).

    Returns:
      The fake-quantized activation in ``x.dtype``.
    """
    if clip is None:
        return fake_quant(x, bits, axis=None, symmetric=symmetric)
    dtype = jnp.asarray(x).dtype
    x32 = jnp.asarray(x, jnp.float32)
    qmin, qmax = qrange(bits, True)
    scale = jnp.asarray(clip, jnp.float32) * reciprocal(qmax)
    zp = jnp.zeros((), jnp.int32)
    q = decode(encode(x32, scale, zp, qmin, qmax), scale, zp)
    return _ste(x32, q, -jnp.asarray(clip, jnp.float32), jnp.asarray(clip, jnp.float32)).astype(
        dtype
    )


def _as_tuple(p: Pattern) -> Pattern:
    return p if p is None or isinstance(p, str) else tuple(p)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Static quantizer settings (hashable, JSON-serialisable via ``to_dict``).

    Attributes:
      bits: weight bit width in [2, 16].
      per_channel: one scale per *output* channel (else per tensor, as the paper),
        on the axis :func:`channel_axis` gives: -2 for DeepLiDARFlow's transposed-conv
        kernels (TF layout ``[kh, kw, out, in]``), -1 for every other kernel (HWIO).
        Tensors with fewer than 2 dims (biases) always use one scale.
      channel_axes: a user tree's declared layout, ``((regex, axis), ...)`` over
        parameter paths, first match wins, checked before DeepLiDARFlow's own layout;
        e.g. ``((r"upconv/kernel$", -2),)`` for a TF-layout transposed conv. Only
        leaves whose output channels are not last need declaring.
      symmetric: symmetric mid-tread levels (default) or affine min/max.
      include, exclude: regexes over parameter paths of the leaves to quantize.
      act_bits: activation bit width, or None for float activations.
      act_include: regex over module paths whose outputs are quantized (only
        modules that own a ``kernel``/``kernels`` parameter: conv, dense and
        normalized-conv layers; all their float outputs).
      act_clip: fixed activation range ``[-act_clip, act_clip]``; None = dynamic.
    """

    bits: int = 8
    per_channel: bool = False
    channel_axes: tuple[tuple[str, int], ...] = ()
    symmetric: bool = True
    include: Pattern = r".*"
    exclude: Pattern = None
    act_bits: int | None = None
    act_include: str = r".*"
    act_clip: float | None = None

    def __post_init__(self):
        check_bits(self.bits)
        if self.act_bits is not None:
            check_bits(self.act_bits, "act_bits")
        if self.act_clip is not None and not float(self.act_clip) > 0:
            raise ValueError(f"act_clip must be positive, got {self.act_clip!r}")
        object.__setattr__(self, "include", _as_tuple(self.include))
        object.__setattr__(self, "exclude", _as_tuple(self.exclude))
        object.__setattr__(
            self, "channel_axes", tuple((str(r), int(a)) for r, a in self.channel_axes)
        )

    def axis_for(self, path: str, ndim: int) -> int | None:
        """Channel axis used for the leaf at ``path`` (None = per tensor).

        :func:`channel_axis` with the declared ``channel_axes`` when ``per_channel``.
        """
        if not self.per_channel:
            return None
        return channel_axis(path, ndim, self.channel_axes)

    def selected(self, path: str) -> bool:
        return matches(path, self.include, self.exclude)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_axes"] = [list(x) for x in self.channel_axes]
        for key in ("include", "exclude"):
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantConfig:
        d = dict(d)
        d["channel_axes"] = tuple(tuple(x) for x in d.get("channel_axes", ()))
        return cls(**d)


def quantize_tree(params: Any, config: QuantConfig, bits: Any = None) -> Any:
    """Fake-quantizes the leaves ``config`` selects (straight-through gradient).

    Args:
      params: parameter pytree.
      config: quantizer settings.
      bits: optional pytree of per-leaf bit widths (e.g. traced, from optimizer
        state) overriding ``config.bits`` on selected leaves; 0 keeps a leaf
        in float.

    Returns:
      The pytree with selected leaves quantized and the rest unchanged.
    """

    def leaf(path, x, b):
        if not config.selected(path):
            return x
        return fake_quant(x, b, axis=config.axis_for(path, jnp.ndim(x)), symmetric=config.symmetric)

    if bits is None:
        return map_with_path(lambda p, x: leaf(p, x, config.bits), params)

    # per-tensor symmetric leaves with traced widths (a train step's, an evaluation's)
    # take their scales from one vector computation below
    batched: dict[str, tuple[Any, Any]] = {}

    def leaf_or_float(path, x, b):
        if not config.selected(path):
            return x
        if isinstance(b, int | np.integer):
            return leaf(path, x, b) if b else x
        axis = config.axis_for(path, jnp.ndim(x))
        if axis is None and config.symmetric:
            batched[path] = (x, b)
            return x
        return _fake_quant_or_float(x, b, axis=axis, symmetric=config.symmetric)

    out = map_with_path(leaf_or_float, params, bits)
    if not batched:
        return out
    done = dict(zip(batched, _per_tensor_traced(*zip(*batched.values(), strict=True)),
                    strict=True))
    return map_with_path(lambda path, x: done.get(path, x), out)


def _per_tensor_traced(xs: Sequence[Any], bits: Sequence[Any]) -> list[jnp.ndarray]:
    """``_fake_quant_or_float`` of per-tensor symmetric leaves, bit for bit, with the
    scalar work (each leaf's ``qmax``, scale and its reciprocal) done on one vector.

    Per leaf that leaves XLA one reduction and one element-wise kernel; scalar by
    scalar it compiled two more tiny kernels per leaf, ~500 in a train step.
    """
    amax = jnp.stack([_max_abs(x) for x in xs])
    b = jnp.stack([jnp.asarray(v, jnp.int32) for v in bits])
    _, qmax = qrange(jnp.maximum(b, 2))
    scale = symmetric_scale(amax, qmax)
    inv = 1.0 / scale  # here, not per leaf: a leaf's scalar division is a kernel of its own
    return [_on_grid_or_float(x, b[i], scale[i], inv[i], qmax[i]) for i, x in enumerate(xs)]


@jax.jit
def _max_abs(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.max(jnp.abs(jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))))


@jax.jit
def _on_grid_or_float(x: jnp.ndarray, bits: Any, scale: Any, inv: Any, qmax: Any) -> jnp.ndarray:
    # fake_quant's grid with its per-tensor symmetric scale (zero point 0)
    x32 = jnp.asarray(x, jnp.float32)
    zero = jnp.zeros((), jnp.int32)
    q = decode(encode(x32, scale, zero, -qmax, qmax, inv_scale=inv), scale, zero)
    return straight_through(x, jnp.where(bits > 0, straight_through(x32, q).astype(x.dtype), x))


@functools.partial(jax.jit, static_argnames=("axis", "symmetric"))
def _fake_quant_or_float(x: jnp.ndarray, bits: Any, axis: int | None,
                         symmetric: bool) -> jnp.ndarray:
    # Per-channel or affine leaves (per-tensor symmetric ones: _per_tensor_traced). A
    # (traced) width of 0 keeps the leaf in float, so one compiled step serves float
    # and quantized runs alike; either way the gradient is 1. Jitted: each leaf shape
    # is traced once, not each leaf.
    return straight_through(x, jnp.where(bits > 0, fake_quant(x, jnp.maximum(bits, 2),
                                                              axis=axis, symmetric=symmetric),
                                         x))


def quantize(
    params: Any,
    bits: int,
    *,
    per_channel: bool = False,
    channel_axes: Sequence[tuple[str, int]] = (),
    symmetric: bool = True,
    include: Pattern = r".*",
    exclude: Pattern = None,
) -> Any:
    """Post-training uniform quantization (returns dequantized float params).

    Args:
      params: parameter pytree.
      bits: bit width in [2, 16].
      per_channel, channel_axes, symmetric: see :class:`QuantConfig`.
      include, exclude: regexes over parameter paths (default: everything,
        weights and biases).

    Returns:
      Params whose selected leaves lie on their quantization grid; the values
      are identical to the forward pass of quantization-aware training.

    Raises:
      ValueError: bits outside [2, 16] or a selection that is empty.

    Example:
      >>> import numpy as np
      >>> params = {"w": np.array([0.3, -1.5, 0.8, 0.1])}
      >>> q = quantize(params, 3)  # codes -3..3, scale max|w| / 3 = 0.5
      >>> np.asarray(q["w"]).tolist()
      [0.5, -1.5, 1.0, 0.0]
      >>> quantize(params, 1)
      Traceback (most recent call last):
      ...
      ValueError: bits must be an integer in [2, 16], got 1
    """
    config = QuantConfig(
        bits=check_bits(bits),
        per_channel=per_channel,
        channel_axes=tuple(channel_axes),
        symmetric=symmetric,
        include=include,
        exclude=exclude,
    )
    select(params, config.include, config.exclude, what="parameters to quantize")
    return _quantize_jit(params, config)


# Bit-identical to the eager and in-step results (see `codec`: explicit reciprocals), just faster.
_quantize_jit = jax.jit(quantize_tree, static_argnums=1)


def expected_zero_fraction(bits: int, abs_cdf, max_abs: float, symmetric: bool = True) -> float:
    """Fraction of entries a per-tensor quantizer sets to zero.

    Args:
      bits: bit width.
      abs_cdf: CDF of ``|w|`` (callable).
      max_abs: ``max |w|`` of the tensor (sets the scale).
      symmetric: symmetric levels (``scale = max_abs / qmax``) or affine levels
        on a distribution symmetric about 0 (``scale = 2 max_abs / (2**b - 1)``).

    Returns:
      ``abs_cdf(scale / 2)``: entries with ``|w| < scale / 2`` round to code 0.
      For the paper's weights (flat density ``p0`` near 0) this is about
      ``2 * p0 * max_abs / 2**bits``: 4x more zeros per 2 bits fewer.
    """
    qmin, qmax = qrange(check_bits(bits), symmetric)
    scale = max_abs / qmax if symmetric else 2.0 * max_abs / (qmax - qmin)
    return float(abs_cdf(scale / 2.0))


def zero_report(
    params: Any,
    bits_levels: Sequence[int] = (16, 14, 12, 10, 8, 6),
    **quant_kwargs: Any,
) -> dict[int, dict[str, Any]]:
    """Zeros that quantization creates at each bit level (the paper's Table II).

    Args:
      params: parameter pytree (float).
      bits_levels: bit widths to evaluate.
      **quant_kwargs: passed to :func:`quantize` (per_channel, include, ...).

    Returns:
      ``{bits: {"size", "zeros_before", "zeros_after", "created",
      "created_fraction", "zero_fraction", "layers": {path: created_fraction}}}``
      over the selected leaves.
    """
    include = quant_kwargs.get("include", r".*")
    exclude = quant_kwargs.get("exclude")
    sel = flatten(select(params, include, exclude, what="parameters to quantize"))
    before = {p: np.asarray(x) for p, x in flatten(params).items() if sel[p]}
    report = {}
    for b in bits_levels:
        after = flatten(quantize(params, b, **quant_kwargs))
        layers, size, z0, z1 = {}, 0, 0, 0
        for path, x in before.items():
            q = np.asarray(after[path])
            n0, n1 = int(np.count_nonzero(x == 0)), int(np.count_nonzero(q == 0))
            layers[path] = (n1 - n0) / max(x.size, 1)
            size, z0, z1 = size + x.size, z0 + n0, z1 + n1
        report[int(b)] = {
            "size": int(size),
            "zeros_before": z0,
            "zeros_after": z1,
            "created": z1 - z0,
            "created_fraction": (z1 - z0) / max(size, 1),
            "zero_fraction": z1 / max(size, 1),
            "layers": layers,
        }
    return report


def _owns_kernel(module: nn.Module) -> bool:
    """Whether the module itself holds a ``kernel`` (or normalized-conv ``kernels``)."""
    try:
        params = module.variables.get("params", {})
    except Exception:  # unbound module: nothing to quantize
        return False
    return any(k in ("kernel", "kernels") and not isinstance(v, Mapping) for k, v in params.items())


def activation_quantization(
    bits: Any, *, include: str = r".*", clip: float | None = None, symmetric: bool = True
):
    """Context manager fake-quantizing the outputs of Flax conv/dense layers.

    Any linen module that owns a ``kernel`` (or ``kernels``) and whose path matches
    ``include`` has its ``__call__`` output quantized, so this works on a model
    without editing it. Use it around ``model.apply`` (also inside ``jit``).

    Args:
      bits: activation bit width (int or traced int scalar).
      include: regex over module paths (e.g. ``"guidance_network/.*"``).
      clip: fixed range, or None for the dynamic per-tensor range.
      symmetric: as :func:`fake_quant_activation`.

    Returns:
      A ``flax.linen.intercept_methods`` context manager.
    """
    if isinstance(bits, int):
        check_bits(bits, "act_bits")
    pattern = re.compile(include)

    def quantize_output(y):
        if isinstance(y, jnp.ndarray) and jnp.issubdtype(y.dtype, jnp.floating):
            return fake_quant_activation(y, bits, clip=clip, symmetric=symmetric)
        return y

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or not _owns_kernel(context.module):
            return out
        if not pattern.search(module_path(context.module)):
            return out
        return jax.tree.map(quantize_output, out)

    return nn.intercept_methods(interceptor)
