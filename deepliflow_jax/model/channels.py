"""DeepLiDARFlow's channel-dependency graph: which conv widths are coupled.

Used by structured pruning (``deepliflow_jax.compress.structured``), int8
(``deepliflow_jax.compress.int8``) and checkpoints (a structured model's widths
are read from its parameter shapes).

Channel dependency graph (:func:`dependency_graph`). Every layer's output
channels belong to a *channel group*; the group's *leader* names it (its key in
``widths``). A group lists its *producers* (layers whose outputs carry these
channels) and its *consumers* (layers whose inputs contain them, at some offset
of a concatenation). The couplings of DeepLiDARFlow:

* RGB encoder: ``conv{i}a`` -> ``conv{i}b`` -> ``conv{i+1}a``; for levels 2..5
  the RGB decoder adds the transposed conv ``deconv_upsample{i}to{i-1}`` to
  ``conv{i}b`` (both are producers of one group, consumed by ``conv{i+1}a`` and
  by ``conv_refine{i-1}`` before the confidence channels).
* RGB decoder: ``conv_pyr_top`` in = [``conv6b`` | depth confidences of level 6];
  ``conv_refine{i}`` in = [``conv{i+1}b`` group | depth confidences]; each
  decoder output feeds the next transposed conv (TF layout ``[kh, kw, out, in]``:
  input channels on axis -1) and the fusion at its level.
* Sparse-depth branch (normalized convs): ``nconv{i}b`` -> ``nconv{i+1}b``;
  ``upsampling{i+1}to{i}`` is added to ``nconv{i}b`` (one group); the decoder
  outputs (``nconv_pyr_top``, ``refine{i}``) feed the next ``upsampling``, the
  fusion's ``convdepth_refine_a`` (data) and the RGB decoder (confidences). The
  data and confidence of a normalized conv share its channels. Removing input
  channels of a normalized conv keeps their softplus weight mass in the layer's
  ``conf_mass`` (the confidence normaliser runs over all original inputs).
* Fusion per level k: ``convdepth_refine_{a..d}k`` chain,
  ``convconcat_refine_ak`` in = [RGB decoder level k | ``convdepth_refine_dk``],
  ``convconcat_refine_{b..d}k`` chain; ``convconcat_refine_dk`` is the fused
  feature of level k, computed by one layer for *both* frames.
* Estimator at level L: ``conv1`` in = [cost volume 81 | f1 (fused) | warped f2
  (fused, the same channels) | up_flow 4 | up_feature 4] (no ups at level 6);
  ``conv1`` .. ``conv_f`` chain; ``conv_f`` feeds ``conv_w``,
  ``deconv_up_feature`` and (level 2) the context network's ``conv1`` before
  the 4 flow channels. Context: ``conv1`` .. ``conv6`` chain into ``conv7``.
* Never pruned: the 4-channel outputs (``conv_w``, ``deconv_up_flow``,
  ``deconv_up_feature``, ``context_network/conv7``) and the network inputs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np

from deepliflow_jax.model.config import (
    CONTEXT_LAYERS,
    CV_CHANNELS,
    ESTIMATOR_FILTERS,
    LEVELS,
    PYRAMID_FILTERS,
    SF_CHANNELS,
)
from deepliflow_jax.model.widths import default_widths

G = "guidance_network"

Segment = str | int  # a channel group, or a fixed number of channels


@dataclasses.dataclass(frozen=True)
class Layer:
    """One weight-bearing layer.

    Attributes:
      path: parameter path without ``params/`` (e.g. ``context_network/conv1``).
      kind: ``"conv"`` (HWIO kernel), ``"deconv"`` (TF ``[kh, kw, out, in]``) or
        ``"nconv"`` (normalized conv, HWIO ``kernels``, two bias vectors).
      inputs: the input concatenation: channel-group names and fixed counts.
      group: the channel group of its output channels (None: fixed output).
      fixed_out: output channels when ``group`` is None.
      cost_volume: for an estimator's ``conv1``, the fused group whose cost
        volume fills its first 81 input channels.
    """

    path: str
    kind: str
    inputs: tuple[Segment, ...]
    group: str | None
    fixed_out: int = 0
    cost_volume: str | None = None


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together.

    Attributes:
      name: the leader layer's path (its key in ``widths``).
      producers: layers whose outputs carry these channels.
      consumers: layers whose inputs contain them.
      original: channel count of the original network.
    """

    name: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    original: int


def _rgb_level_group(k: int) -> str:
    """RGB decoder output of fusion level k (0 = level 6)."""
    return f"{G}/rgb_decoder/conv_pyr_top" if k == 0 else f"{G}/rgb_decoder/conv_refine{5 - k}"


def _depth_level_group(k: int) -> str:
    """Depth decoder output of fusion level k (0 = level 6)."""
    return f"{G}/depth_decoder/nconv_pyr_top" if k == 0 else f"{G}/depth_decoder/refine{5 - k}"


@functools.lru_cache(maxsize=1)
def _graph() -> tuple[dict[str, Layer], dict[str, ChannelGroup]]:
    layers: list[Layer] = []
    enc, dec = f"{G}/rgb_encoder", f"{G}/rgb_decoder"
    denc, ddec = f"{G}/depth_encoder", f"{G}/depth_decoder"
    n = len(PYRAMID_FILTERS)
    # RGB encoder
    for i in range(1, n + 1):
        prev = 3 if i == 1 else f"{enc}/conv{i - 1}b"
        layers.append(Layer(f"{enc}/conv{i}a", "conv", (prev,), f"{enc}/conv{i}a"))
        layers.append(Layer(f"{enc}/conv{i}b", "conv", (f"{enc}/conv{i}a",), f"{enc}/conv{i}b"))
    # sparse-depth encoder / decoder
    for i in range(n):
        prev = 1 if i == 0 else f"{denc}/nconv{i - 1}b"
        layers.append(Layer(f"{denc}/nconv{i}b", "nconv", (prev,), f"{denc}/nconv{i}b"))
    layers.append(Layer(f"{ddec}/nconv_pyr_top", "nconv", (f"{denc}/nconv{n - 1}b",),
                        f"{ddec}/nconv_pyr_top"))
    for i in range(4, 0, -1):
        above = f"{ddec}/nconv_pyr_top" if i == 4 else f"{ddec}/refine{i + 1}"
        layers.append(Layer(f"{ddec}/upsampling{i + 1}to{i}", "nconv", (above,),
                            f"{denc}/nconv{i}b"))
        layers.append(Layer(f"{ddec}/refine{i}", "nconv", (f"{denc}/nconv{i}b",),
                            f"{ddec}/refine{i}"))
    # RGB decoder
    layers.append(Layer(f"{dec}/conv_pyr_top", "conv", (f"{enc}/conv{n}b", f"{ddec}/nconv_pyr_top"),
                        f"{dec}/conv_pyr_top"))
    for i in range(4, 0, -1):
        above = f"{dec}/conv_pyr_top" if i == 4 else f"{dec}/conv_refine{i + 1}"
        layers.append(Layer(f"{dec}/deconv_upsample{i + 1}to{i}", "deconv", (above,),
                            f"{enc}/conv{i + 1}b"))
        layers.append(Layer(f"{dec}/conv_refine{i}", "conv",
                            (f"{enc}/conv{i + 1}b", f"{ddec}/refine{i}"), f"{dec}/conv_refine{i}"))
    # fusion
    fus = f"{G}/fusion"
    for k in range(len(LEVELS)):
        prev: Segment = _depth_level_group(k)
        for s in "abcd":
            name = f"{fus}/convdepth_refine_{s}{k}"
            layers.append(Layer(name, "conv", (prev,), name))
            prev = name
        inputs: tuple[Segment, ...] = (_rgb_level_group(k), prev)
        for s in "abcd":
            name = f"{fus}/convconcat_refine_{s}{k}"
            layers.append(Layer(name, "conv", inputs, name))
            inputs = (name,)
    # estimators and context
    for k, level in enumerate(LEVELS):
        est = f"scene_flow_estimator_{level}"
        fused = f"{fus}/convconcat_refine_d{k}"
        ups = (SF_CHANNELS, SF_CHANNELS) if k else ()
        inputs = (CV_CHANNELS, fused, fused, *ups)
        for j, (name, _) in enumerate(ESTIMATOR_FILTERS):
            layers.append(Layer(f"{est}/{name}", "conv", inputs, f"{est}/{name}",
                                cost_volume=fused if j == 0 else None))
            inputs = (f"{est}/{name}",)
        feat = f"{est}/{ESTIMATOR_FILTERS[-1][0]}"
        layers.append(Layer(f"{est}/conv_w", "conv", (feat,), None, SF_CHANNELS))
        if level != LEVELS[-1]:
            layers.append(Layer(f"{est}/deconv_up_flow", "deconv", (SF_CHANNELS,), None,
                                SF_CHANNELS))
            layers.append(Layer(f"{est}/deconv_up_feature", "deconv", (feat,), None,
                                SF_CHANNELS))
    inputs = (f"scene_flow_estimator_{LEVELS[-1]}/{ESTIMATOR_FILTERS[-1][0]}", SF_CHANNELS)
    last = len(CONTEXT_LAYERS)
    for i in range(1, last + 1):
        name = f"context_network/conv{i}"
        group = name if i < last else None
        layers.append(Layer(name, "conv", inputs, group, 0 if group else SF_CHANNELS))
        inputs = (name,)

    by_path = {lay.path: lay for lay in layers}
    originals = default_widths()
    groups = {}
    for name, width in originals.items():
        producers = tuple(lay.path for lay in layers if lay.group == name)
        consumers = tuple(lay.path for lay in layers if name in lay.inputs)
        groups[name] = ChannelGroup(name, producers, consumers, width)
    return by_path, groups


def dependency_graph() -> tuple[dict[str, Layer], dict[str, ChannelGroup]]:
    """DeepLiDARFlow's layers and channel groups (see module docstring).

    Returns:
      ``(layers, groups)``: ``{path: Layer}`` in network order and
      ``{group name: ChannelGroup}`` (the keys of ``default_widths()``).
    """
    layers, groups = _graph()
    return dict(layers), dict(groups)


# ----------------------------------------------------------------------------- params access


def layer_params(params: Mapping[str, Any], path: str) -> dict[str, Any]:
    node = params
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"layer {path} not found in the parameters (at {part!r})")
        node = node[part]
    return dict(node)


def unwrap_params(variables: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """``(params, wrapped)``: accepts ``{'params': ...}`` or the bare tree."""
    if "params" in variables and isinstance(variables["params"], Mapping):
        return variables["params"], True
    return variables, False


def kernel_of(layer: Layer, p: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(p[kernel_name(layer.kind)], np.float32)


def kernel_shape(layer: Layer, p: Mapping[str, Any]) -> tuple[int, ...]:
    """Shape only: works on numpy, jax and traced arrays and on ShapeDtypeStructs."""
    return tuple(np.shape(p[kernel_name(layer.kind)]))


# Kernel layouts per layer kind: (output-channel axis, input-channel axis). Convs and the
# normalized convs' ``kernels`` are HWIO (flax's layout, outputs last); the transposed
# convs keep TF's ``conv2d_transpose`` filter layout ``[kh, kw, out, in]`` (the original
# model's ``deconv`` in DeepLiDARFlow's ``layers.py``), outputs on axis -2.
KERNEL_AXES = {"conv": (-1, -2), "nconv": (-1, -2), "deconv": (-2, -1)}


def _kernel_axes(kind: str) -> tuple[int, int]:
    try:
        return KERNEL_AXES[kind]
    except KeyError:
        raise ValueError(f"unknown layer kind {kind!r} (known: {', '.join(KERNEL_AXES)})"
                         ) from None


def out_axis(kind: str) -> int:
    """Output-channel axis of a kernel of this layer kind (negative, from the end).

    The one definition of the layouts: per-channel quantization
    (``compress.quantize.channel_axis``), int8, structured pruning and the widths read
    from shapes all use it.

    Args:
      kind: ``"conv"`` (HWIO kernel), ``"nconv"`` (HWIO ``kernels``) or ``"deconv"``
        (TF ``[kh, kw, out, in]``).

    Returns:
      -1 for ``"conv"``/``"nconv"``, -2 for ``"deconv"``.

    Raises:
      ValueError: an unknown kind.
    """
    return _kernel_axes(kind)[0]


def in_axis(kind: str) -> int:
    """Input-channel axis of a kernel of this layer kind: -2, or -1 for ``"deconv"``."""
    return _kernel_axes(kind)[1]


def kernel_name(kind: str) -> str:
    """The kernel parameter's name in a layer of this kind (``kernels`` for normalized convs)."""
    return "kernels" if kind == "nconv" else "kernel"


def kernel_out_axes() -> dict[str, int]:
    """``{kernel path: output-channel axis}`` of every DeepLiDARFlow kernel.

    Paths have no ``params/`` prefix (e.g.
    ``guidance_network/rgb_decoder/deconv_upsample2to1/kernel``); they are the same in a
    full and a structured model.
    """
    layers, _ = _graph()
    return {f"{path}/{kernel_name(lay.kind)}": out_axis(lay.kind) for path, lay in layers.items()}


def out_dim(layer: Layer, kernel: Any) -> int:
    shape = np.shape(kernel) if not isinstance(kernel, tuple) else kernel
    return shape[out_axis(layer.kind)]


def in_dim(layer: Layer, kernel: Any) -> int:
    shape = np.shape(kernel) if not isinstance(kernel, tuple) else kernel
    return shape[in_axis(layer.kind)]


def widths_of(variables: Mapping[str, Any]) -> dict[str, int]:
    """Current width of every channel group, read from the parameter shapes.

    Args:
      variables: ``{'params': ...}`` or the bare params of a (pruned) model.

    Returns:
      ``{group: channels}``; a model whose inputs disagree raises.

    Raises:
      ValueError: producers of one group with different widths, or a layer whose
        input size is not the sum of its input groups (inconsistent surgery).
    """
    params, _ = unwrap_params(variables)
    layers, groups = _graph()
    widths = {}
    for name, group in groups.items():
        dims = {path: out_dim(layers[path], kernel_shape(layers[path],
                                                           layer_params(params, path)))
                for path in group.producers}
        if len(set(dims.values())) != 1:
            raise ValueError(f"producers of channel group {name} disagree on its width: {dims}")
        widths[name] = next(iter(dims.values()))
    for layer in layers.values():
        kernel = kernel_shape(layer, layer_params(params, layer.path))
        want = sum(widths[s] if isinstance(s, str) else s for s in layer.inputs)
        if in_dim(layer, kernel) != want:
            raise ValueError(f"layer {layer.path} has {in_dim(layer, kernel)} input channels, "
                             f"its input groups {list(layer.inputs)} give {want}")
    return widths


def is_structured(variables: Mapping[str, Any]) -> bool:
    """Whether the tree is a structured model's (its normalized convs hold ``conf_mass``)."""
    flat = flax.traverse_util.flatten_dict(dict(unwrap_params(variables)[0]), sep="/")
    return any(k.endswith("/conf_mass") for k in flat)


def architecture_widths(variables: Mapping[str, Any]) -> dict[str, int] | None:
    """The ``widths`` to build the model for ``variables`` (None: the original network)."""
    return widths_of(variables) if is_structured(variables) else None


def to_structured(variables: Mapping[str, Any]) -> dict:
    """Adds a zero ``conf_mass`` to every normalized conv (same function, structured form).

    Args:
      variables: ``{'params': ...}`` (or bare params) of a full or structured model.

    Returns:
      ``{'params': ...}`` (numpy) for ``DeepLiDARFlow(widths=widths_of(...))``.
    """
    params, _ = unwrap_params(variables)
    layers, _ = _graph()
    flat = {k: np.asarray(v, np.float32) for k, v in
            flax.traverse_util.flatten_dict(dict(params), sep="/").items()}
    for layer in layers.values():
        if layer.kind == "nconv":
            key = f"{layer.path}/conf_mass"
            if key not in flat:
                flat[key] = np.zeros(flat[f"{layer.path}/biases"].shape, np.float32)
    return {"params": flax.traverse_util.unflatten_dict(flat, sep="/")}
