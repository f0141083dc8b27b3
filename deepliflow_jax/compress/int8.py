"""Fixed-point int8 inference: integer convolutions with calibrated activations.

What runs where:

* every regular conv and transposed conv (``Conv``/``ConvTranspose``: RGB
  pyramid, fusion, estimators, context network) runs as a real integer
  convolution: the input activation is quantized per tensor to int8 with a
  scale from calibration (``scale = max|x| / 127`` over a few batches), the
  kernel per output channel to int8 (symmetric, ``max|w| / 127``, the
  quantizer of :mod:`.quantize`), ``lax.conv_general_dilated`` /
  ``lax.conv_transpose`` take the int8 operands with
  ``preferred_element_type=int32`` (exact accumulation), and the int32 result
  is rescaled by ``x_scale * w_scale[out]``, plus the float bias and the
  activation. Whether XLA really executes s8 x s8 -> s32 convolutions on the
  backend is read from the compiled HLO (:func:`hlo_conv_report`).
* the normalized convolutions of the sparse-depth branch (a ratio of two
  convolutions, softplus'd weights, confidences in [0, 1]) store their kernels
  as int8 (per output channel) and are dequantized in the step: weight-only
  int8, float arithmetic.
* biases, ``conf_mass``, the cost volume, warping and resizing stay float.

:func:`fake_quant_apply` is the float reference (quantize-dequantize of the
same activations and weights, straight-through gradients, so it also serves
quantization-aware fine-tuning); :func:`int8_apply` equals it up to the float
rounding of the accumulation. ``deepliflow_jax.checkpoint.save_checkpoint`` stores
the int8 model (the ``int8`` checkpoint kind: int8 codes, float32 scales and biases,
in Orbax) and ``load_checkpoint(..., kind="int8")`` reads it back for :func:`int8_apply`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.compress.codec import encode, encode_tensor, symmetric_scale
from deepliflow_jax.compress.quantize import fake_quant
from deepliflow_jax.compress.select import module_path
from deepliflow_jax.model.channels import (
    architecture_widths,
    dependency_graph,
    out_axis,
    widths_of,
)
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, Conv, ConvTranspose, leaky_relu
from deepliflow_jax.model.widths import freeze_widths

BITS = 8
QMAX = 2 ** (BITS - 1) - 1
GROUPS = ("convs", "nconv", "float")  # the parts of an int8 model (quantize_int8)


@dataclasses.dataclass(frozen=True)
class Int8Config:
    """Which layers run as integer convolutions.

    Attributes:
      include: regex over conv/deconv layer paths (``params/`` stripped) run as
        integer convolutions.
      exclude: regex of layers kept in float (None: none).
      nconv_weights: store the normalized convs' kernels as int8 (weight-only).
    """

    include: str = r".*"
    exclude: str | None = None
    nconv_weights: bool = True

    def selected(self, path: str) -> bool:
        if not re.search(self.include, path):
            return False
        return not (self.exclude and re.search(self.exclude, path))


def _conv_layers(config: Int8Config) -> dict[str, str]:
    """``{path: kind}`` of the conv/deconv layers ``config`` runs in integer."""
    layers, _ = dependency_graph()
    out = {p: lay.kind for p, lay in layers.items() if lay.kind != "nconv" and config.selected(p)}
    if not out:
        raise ValueError(f"int8 layer pattern include={config.include!r} "
                         f"exclude={config.exclude!r} selects no conv layer")
    return out


def _params_tree(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    return variables["params"] if "params" in variables else variables


def _node(params: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    node = params
    for part in path.split("/"):
        node = node[part]
    return node


def _model(widths: Any, conv_impl: str = CONV_IMPL_DEFAULT) -> DeepLiDARFlow:
    return DeepLiDARFlow(widths=freeze_widths(widths), conv_impl=conv_impl)


def _kind(module: nn.Module) -> str:
    """The layer kind (``model.channels``) of a ``Conv``/``ConvTranspose``: its kernel layout."""
    return "deconv" if isinstance(module, ConvTranspose) else "conv"


# ----------------------------------------------------------------------------- calibration


def _recording_interceptor(store: dict[str, Any], paths: Iterable[str]):
    wanted = set(paths)

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, Conv | ConvTranspose):
            path = module_path(context.module)
            if path in wanted:
                amax = jnp.max(jnp.abs(args[0])).astype(jnp.float32)
                store[path] = jnp.maximum(store.get(path, 0.0), amax)
        return next_fun(*args, **kwargs)

    return nn.intercept_methods(interceptor)


def calibrate(variables: Mapping[str, Any], frames_batches: Iterable[Any],
              config: Int8Config = Int8Config(), interp_size=None,
              widths: Any = "auto", conv_impl: str = CONV_IMPL_DEFAULT) -> dict[str, float]:
    """Activation ranges: ``max |input|`` of every integer conv over the batches.

    Args:
      variables: ``{'params': ...}`` of the float model (full or structured).
      frames_batches: a few ``[B, 2, H, W, 4]`` frame batches (e.g. training data).
      config: the layers that will run in integer.
      interp_size: network input size, as in ``DeepLiDARFlow.__call__``.
      widths: the model's widths (default: read from ``variables``).
      conv_impl: the form the model runs in (see :mod:`deepliflow_jax.model.layers`).

    Returns:
      ``{layer path: max |x|}`` (float).

    Raises:
      ValueError: no batch given.
    """
    if isinstance(widths, str) and widths == "auto":
        widths = architecture_widths(variables)
    paths = _conv_layers(config)
    model = _model(widths, conv_impl)

    def ranges(v, frames):
        store: dict[str, Any] = {}
        with _recording_interceptor(store, paths):
            model.apply(v, frames, interp_size)
        return store

    fn = jax.jit(ranges)
    out: dict[str, float] = {}
    n = 0
    for frames in frames_batches:
        got = jax.device_get(fn(dict(variables), jnp.asarray(frames)))
        for k, v in got.items():
            out[k] = max(out.get(k, 0.0), float(v))
        n += 1
    if not n:
        raise ValueError("calibration needs at least one batch of frames")
    missing = sorted(set(paths) - set(out))
    if missing:
        raise ValueError(f"calibration saw no input of layers {missing[:3]}")
    return out


def act_scale(amax: Any) -> Any:
    """Per-tensor activation scale ``amax * (1 / 127)`` (1 for an all-zero range).

    float32, numpy for a Python or numpy ``amax``, ``jax.numpy`` for a jax array
    (:func:`.codec.symmetric_scale`).
    """
    return symmetric_scale(amax, QMAX)


def _quantize_act(x: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """int8 codes ``clip(round(x / scale), -127, 127)`` (:func:`.codec.encode`)."""
    return encode(x, scale, jnp.zeros((), jnp.int32), -QMAX, QMAX).astype(jnp.int8)


# ----------------------------------------------------------------------------- conv bodies


def _conv(module: nn.Module, x: jnp.ndarray, w: jnp.ndarray, out_type=None) -> jnp.ndarray:
    kw = {} if out_type is None else {"preferred_element_type": out_type}
    if isinstance(module, ConvTranspose):
        return jax.lax.conv_transpose(
            x, w, strides=(module.stride, module.stride), padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True, **kw)
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(module.stride, module.stride), padding="SAME",
        rhs_dilation=(module.dilation, module.dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


def _finish(module: nn.Module, y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    y = y + bias
    return leaky_relu(y) if module.activation else y


def integer_conv(module: nn.Module, x: jnp.ndarray, q: Mapping[str, Any]) -> jnp.ndarray:
    """One conv layer in integer arithmetic: int8 activations and kernel, int32 accumulation.

    Args:
      module: the ``Conv``/``ConvTranspose`` (its stride, dilation, activation).
      x: float input ``[B, H, W, C]``.
      q: ``{"w" int8 kernel, "w_scale" per output channel, "bias", "x_scale"}``.

    Returns:
      ``act((sum x_q w_q) * x_scale * w_scale + bias)`` in float32.
    """
    x_scale = jnp.asarray(q["x_scale"], jnp.float32)
    xq = _quantize_act(x.astype(jnp.float32), x_scale)
    acc = _conv(module, xq, jnp.asarray(q["w"], jnp.int8), jnp.int32)
    w_scale = jnp.reshape(jnp.asarray(q["w_scale"], jnp.float32), (-1,))
    y = acc.astype(jnp.float32) * (x_scale * w_scale)
    return _finish(module, y, jnp.asarray(q["bias"], jnp.float32))


def fake_quant_conv(module: nn.Module, x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray,
                    amax: Any) -> jnp.ndarray:
    """The float reference of :func:`integer_conv` (straight-through gradients).

    Args:
      module: the ``Conv``/``ConvTranspose``.
      x: float input.
      kernel, bias: float parameters (the kernel is fake-quantized per output channel).
      amax: calibrated activation range (inputs beyond it saturate).

    Returns:
      The layer output computed in float from the quantize-dequantized operands.
    """
    s = act_scale(amax)
    codes = _quantize_act(x, s).astype(jnp.float32)
    # straight-through: the value of the quantized input, the gradient of x inside range
    inside = jnp.abs(x) <= jnp.asarray(amax, jnp.float32)
    xq = codes * s + jnp.where(inside, x - jax.lax.stop_gradient(x), 0.0)
    w = fake_quant(kernel, BITS, axis=out_axis(_kind(module)))
    return _finish(module, _conv(module, xq, w), bias)


def _replacing_interceptor(body):
    """Replaces the ``__call__`` of conv modules for which ``body`` returns non-None."""

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, Conv | ConvTranspose):
            out = body(context.module, module_path(context.module), args[0])
            if out is not None:
                return out
        return next_fun(*args, **kwargs)

    return nn.intercept_methods(interceptor)


# ----------------------------------------------------------------------------- fake quant


def fake_quant_apply(variables: Mapping[str, Any], act_ranges: Mapping[str, Any],
                     frames: jnp.ndarray, interp_size=None, out_size=None,
                     config: Int8Config = Int8Config(), widths: Any = "auto",
                     conv_impl: str = CONV_IMPL_DEFAULT):
    """Float reference of the int8 model (straight-through gradients: usable for QAT).

    Activations entering each integer conv are quantize-dequantized with their
    calibrated scale (saturating beyond the range), kernels per output channel
    (:func:`.quantize.fake_quant`); with ``config.nconv_weights`` the
    normalized convs' kernels too.

    Args:
      variables: float ``{'params': ...}``.
      act_ranges: from :func:`calibrate` (may be traced).
      frames, interp_size, out_size: as ``DeepLiDARFlow.__call__``.
      config: layer selection.
      widths: the model's widths (default: read from ``variables``).
      conv_impl: the form of the layers that stay float (normalized convs, cost
        volume; see :mod:`deepliflow_jax.model.layers`).

    Returns:
      ``(sceneflow, aux)``.
    """
    if isinstance(widths, str) and widths == "auto":
        widths = architecture_widths(variables)
    params = _params_tree(variables)
    paths = _conv_layers(config)

    def body(module, path, x):
        if path not in paths:
            return None
        p = _node(params, path)
        return fake_quant_conv(module, x, p["kernel"], p["bias"], act_ranges[path])

    fparams = _fake_quant_nconv(params) if config.nconv_weights else params
    with _replacing_interceptor(body):
        return _model(widths, conv_impl).apply({"params": fparams}, frames, interp_size,
                                               out_size)


def _fake_quant_nconv(params: Mapping[str, Any]) -> dict:
    layers, _ = dependency_graph()
    flat = flax.traverse_util.flatten_dict(dict(params), sep="/")
    for path, lay in layers.items():
        if lay.kind == "nconv":
            flat[f"{path}/kernels"] = fake_quant(flat[f"{path}/kernels"], BITS,
                                                 axis=out_axis(lay.kind))
    return flax.traverse_util.unflatten_dict(flat, sep="/")


# ----------------------------------------------------------------------------- int8 model


def quantize_int8(variables: Mapping[str, Any], act_ranges: Mapping[str, float],
                  config: Int8Config = Int8Config()) -> dict:
    """The int8 model: integer kernels and scales, float biases.

    Args:
      variables: float ``{'params': ...}`` (full or structured).
      act_ranges: from :func:`calibrate`.
      config: layer selection.

    Returns:
      ``{"convs": {path: {"w" int8, "w_scale", "bias", "x_scale"}},
      "nconv": {path: {"codes" int8, "scale"}}, "float": remaining float params}``
      (numpy), for :func:`int8_apply` and ``checkpoint.save_checkpoint``.

    Raises:
      ValueError: a selected layer without a calibrated range.
    """
    params = _params_tree(variables)
    paths = _conv_layers(config)
    missing = sorted(set(paths) - set(act_ranges))
    if missing:
        raise ValueError(f"no calibrated activation range for layers {missing[:3]} "
                         f"({len(missing)} in all); run calibrate() with the same config")
    flat = {k: np.asarray(v, np.float32) for k, v in
            flax.traverse_util.flatten_dict(dict(params), sep="/").items()}
    convs, nconv = {}, {}
    for path, kind in paths.items():
        convs[path] = quantize_layer(flat.pop(f"{path}/kernel"), flat.pop(f"{path}/bias"),
                                     act_ranges[path], kind)
    if config.nconv_weights:
        layers, _ = dependency_graph()
        for path, lay in layers.items():
            if lay.kind == "nconv":
                codes, scale, _ = encode_tensor(flat.pop(f"{path}/kernels"), BITS,
                                                axis=out_axis(lay.kind))
                nconv[path] = {"codes": codes.astype(np.int8), "scale": scale}
    return {"convs": convs, "nconv": nconv, "float": flat}


def quantize_layer(kernel: Any, bias: Any, amax: float, kind: str = "conv") -> dict:
    """int8 form of one conv layer (see :func:`integer_conv`).

    Args:
      kernel: float kernel (HWIO, or ``[kh, kw, out, in]`` for ``kind="deconv"``).
      bias: float bias.
      amax: calibrated input range.
      kind: ``"conv"`` or ``"deconv"``.

    Returns:
      ``{"w" int8, "w_scale" float32 (broadcastable), "bias", "x_scale"}`` (numpy);
      ``w * w_scale`` equals :func:`.quantize.fake_quant` of the kernel bit for bit
      (host-side numpy with the same float32 operations, as the compact export).
    """
    codes, scale, _ = encode_tensor(np.asarray(kernel, np.float32), BITS, axis=out_axis(kind))
    return {"w": codes.astype(np.int8), "w_scale": scale,
            "bias": np.asarray(bias, np.float32),
            "x_scale": np.asarray(act_scale(amax), np.float32)}


def _float_params(qmodel: Mapping[str, Any]) -> dict:
    flat = dict(qmodel["float"])
    for path, q in qmodel["nconv"].items():
        flat[f"{path}/kernels"] = q["codes"].astype(jnp.float32) * q["scale"]
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def int8_apply(qmodel: Mapping[str, Any], frames: jnp.ndarray, interp_size=None,
               out_size=None, widths: Any = None, conv_impl: str = CONV_IMPL_DEFAULT):
    """Forward pass of the int8 model with integer convolutions (s8 x s8 -> s32).

    Args:
      qmodel: from :func:`quantize_int8` (numpy or device arrays).
      frames, interp_size, out_size: as ``DeepLiDARFlow.__call__``.
      widths: the model's channel widths (None = the original network; a
        structured model's must be given, see :func:`int8_widths`).
      conv_impl: the form of the layers that stay float (normalized convs, cost
        volume; see :mod:`deepliflow_jax.model.layers`).

    Returns:
      ``(sceneflow, aux)``.
    """
    convs = qmodel["convs"]

    def body(module, path, x):
        q = convs.get(path)
        return None if q is None else integer_conv(module, x, q)

    with _replacing_interceptor(body):
        return _model(widths, conv_impl).apply({"params": _float_params(qmodel)}, frames,
                                               interp_size, out_size)


def float_layout(qmodel: Mapping[str, Any]) -> dict[str, Any]:
    """The int8 model's arrays under the float model's parameter paths.

    Args:
      qmodel: from :func:`quantize_int8` (or anything with the same tree whose
        leaves have a ``shape``, e.g. ``jax.ShapeDtypeStruct``).

    Returns:
      ``{path: array}`` (``/``-joined, without ``params/``): each conv's int8 kernel
      under ``kernel`` and its ``bias``, each normalized conv's codes under
      ``kernels``, the float parameters as they are; the shapes are the float
      model's, so they name its architecture.
    """
    flat = dict(qmodel.get("float", {}))
    for path, q in qmodel.get("convs", {}).items():
        flat[f"{path}/kernel"] = q["w"]
        flat[f"{path}/bias"] = q["bias"]
    for path, q in qmodel.get("nconv", {}).items():
        flat[f"{path}/kernels"] = q["codes"]
    return flat


def int8_widths(qmodel: Mapping[str, Any]) -> dict[str, int] | None:
    """The channel widths of an int8 model (None: the original network)."""
    if not any(k.endswith("/conf_mass") for k in qmodel["float"]):
        return None
    return widths_of(flax.traverse_util.unflatten_dict(float_layout(qmodel), sep="/"))


# ----------------------------------------------------------------------------- HLO evidence

_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\(?([a-z]+[0-9]*)\[")
_CONV = re.compile(r"\b(convolution|custom-call)\(([^)]*)\)")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s*\(.*\{\s*$")
#: fusion kinds of XLA:CPU that hand their computation to a library (YNNPACK, oneDNN)
_LIBRARY_FUSIONS = ("__ynn_fusion", "__onednn_fusion")


def _library_computations(hlo_text: str) -> set[str]:
    """Names of the computations that a library fusion calls."""
    called = set()
    for line in hlo_text.splitlines():
        if any(kind in line for kind in _LIBRARY_FUSIONS):
            called.update(re.findall(r"calls=%([\w.\-]+)", line))
    return called


def hlo_conv_report(hlo_text: str) -> dict[str, Any]:
    """Counts the convolutions of a compiled HLO module by operand element type.

    A convolution (an HLO ``convolution`` or a cuDNN ``custom-call`` whose
    target names a convolution) is *int8* when its operands are s8, *int32*
    when they are other integers (XLA's CPU backend widens some s8 operands to
    s32 before the convolution: still exact integer arithmetic, but not 8-bit),
    and *float* otherwise. A convolution runs in a *library* when XLA:CPU put it
    in a library fusion (``__ynn_fusion``: YNNPACK); the others run on XLA's own
    kernels (Eigen's spatial convolution on CPU, several times slower there).

    Args:
      hlo_text: ``compiled.as_text()``.

    Returns:
      ``{"int8_convolutions", "int32_convolutions", "float_convolutions",
      "integer_convolutions" (int8 + int32), "int8_examples" (first lines,
      shortened), "operand_types": {"s8,s8->s32": n, ...},
      "library_convolutions", "other_convolutions" (the rest), "other_examples"
      (``"shape window={...}"`` of each of the rest)}``.
    """
    types: dict[str, str] = {}
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if m:
            types[m.group(1)] = m.group(2)
    counts = {"int8": 0, "int32": 0, "float": 0}
    examples: list[str] = []
    kinds: dict[str, int] = {}
    library = _library_computations(hlo_text)
    placement = {"library": 0, "other": 0}
    others: list[str] = []
    computation = None
    for line in hlo_text.splitlines():
        c = _COMPUTATION.match(line)
        if c:
            computation = c.group(1)
            continue
        m = _CONV.search(line)
        d = _DEF.match(line)
        if not m or not d:
            continue
        if m.group(1) == "custom-call" and "conv" not in line.split("custom_call_target")[-1][:40]:
            continue
        operands = [types.get(name, "?") for name in re.findall(r"%([\w.\-]+)", m.group(2))][:2]
        key = f"{','.join(operands)}->{d.group(2)}"
        kinds[key] = kinds.get(key, 0) + 1
        if computation in library:
            placement["library"] += 1
        else:
            placement["other"] += 1
            shape = re.search(r"=\s*(\S+)\s", line)
            window = re.search(r"window=\{[^}]*\}", line)
            others.append(f"{shape.group(1) if shape else '?'} "
                          f"{window.group(0) if window else ''}".strip())
        if "s8" in operands:
            counts["int8"] += 1
            if len(examples) < 3:
                examples.append(line.strip()[:200])
        elif operands and all(t[:1] in ("s", "u") for t in operands):
            counts["int32"] += 1
        else:
            counts["float"] += 1
    return {"int8_convolutions": counts["int8"], "int32_convolutions": counts["int32"],
            "float_convolutions": counts["float"],
            "integer_convolutions": counts["int8"] + counts["int32"],
            "int8_examples": examples, "operand_types": kinds,
            "library_convolutions": placement["library"],
            "other_convolutions": placement["other"], "other_examples": others}


def compiled_int8_report(qmodel: Mapping[str, Any], frames: Any, widths: Any = None,
                         interp_size=None) -> dict[str, Any]:
    """Compiles :func:`int8_apply` and reports its convolutions (:func:`hlo_conv_report`).

    Returns:
      The report plus ``backend``, ``selected_layers``, ``lowered_int8`` (s8 x
      s8 -> s32 convolutions in the program handed to XLA) and
      ``integer_convs_ran`` (True when every selected conv is an integer
      convolution in the compiled HLO).
    """
    fn = jax.jit(lambda q, f: int8_apply(q, f, interp_size, None, widths)[0])
    lowered = fn.lower(qmodel, jnp.asarray(frames))
    stablehlo = lowered.as_text()
    compiled = lowered.compile()
    report = hlo_conv_report(compiled.as_text())
    report["lowered_int8"] = len(re.findall(
        r"stablehlo.convolution.*\(tensor<[0-9x]*xi8>, tensor<[0-9x]*xi8>\) -> tensor<[0-9x]*xi32>",
        stablehlo))
    report["backend"] = jax.default_backend()
    report["selected_layers"] = len(qmodel["convs"])
    report["integer_convs_ran"] = report["integer_convolutions"] >= len(qmodel["convs"])
    return report
