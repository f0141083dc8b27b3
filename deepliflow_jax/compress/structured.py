"""Structured channel pruning of DeepLiDARFlow: a physically smaller network.

Unstructured zeros (:mod:`.prune`) make a model compressible, not faster. Here
whole output channels are removed from the Flax parameters and a smaller
:class:`~deepliflow_jax.model.deeplidarflow.DeepLiDARFlow` is built with the
new channel counts (``widths``, see :mod:`deepliflow_jax.model.widths`); the
parameter paths stay those of the original.

Channel dependency graph: :mod:`deepliflow_jax.model.channels`.

Cost volume. The cost volume is the *mean* over the fused channels (and /81).
Pruning the fused features of a level from C to C' channels makes the smaller
network divide by C', i.e. its cost volume is ``C / C'`` times that of the full
network with the removed channels zeroed. The leaky ReLU after it is positively
homogeneous (``lrelu(s x) = s lrelu(x)`` for ``s > 0``), and the cost volume
enters the network only through the 81 first input rows of the estimator's
``conv1``; :func:`shrink` multiplies those rows by ``C' / C``. The pruned model
then equals the masked full model exactly (up to float rounding), and the fused
channels can be pruned like any others (pass ``exclude=FUSED_GROUPS`` to keep
them).

Equivalence. The *channel-masked full model* (:func:`channel_masked_apply`) is the full model
whose removed channels are zeroed at every producer's output (data and
confidence of normalized convs); the shrunken model computes the same flow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.compress.select import module_path
from deepliflow_jax.model.channels import (
    Layer,
    architecture_widths,
    dependency_graph,
    kernel_of,
    layer_params,
    out_axis,
    out_dim,
    unwrap_params,
    widths_of,
)
from deepliflow_jax.model.config import CV_CHANNELS
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.model.widths import freeze_widths

DEFAULT_MULTIPLE = 8
# the fused features of both frames (cost volume, f1, warped f2) of every level
FUSED_GROUPS = r"/fusion/convconcat_refine_d\d$"

# ----------------------------------------------------------------------------- scoring

Scorer = Callable[[str, Sequence[np.ndarray]], np.ndarray]


def l1_scores(group: str, filters: Sequence[np.ndarray]) -> np.ndarray:
    """Mean |w| per output channel, summed over the group's producers.

    Args:
      group: the group's name (unused; part of the scorer signature).
      filters: one ``[out, fan_in]`` array per producer.

    Returns:
      ``[out]`` scores; within one producer the order is that of the L1 norm.
    """
    del group
    return sum(np.mean(np.abs(f), axis=1) for f in filters)


def l2_scores(group: str, filters: Sequence[np.ndarray]) -> np.ndarray:
    """Root-mean-square weight per output channel, summed over the producers."""
    del group
    return sum(np.sqrt(np.mean(np.square(f), axis=1)) for f in filters)


SCORERS: dict[str, Scorer] = {"l1": l1_scores, "l2": l2_scores}


def _filters(layer: Layer, p: Mapping[str, Any]) -> np.ndarray:
    """``[out, fan_in]`` view of a layer's kernel (raw parameters)."""
    k = kernel_of(layer, p)
    axis = out_axis(layer.kind)
    return np.moveaxis(k, axis, 0).reshape(k.shape[axis], -1)


def channel_scores(variables: Mapping[str, Any], scorer: str | Scorer = "l1"
                   ) -> dict[str, np.ndarray]:
    """Importance of every channel of every group (higher = keep).

    Args:
      variables: ``{'params': ...}`` or bare params.
      scorer: ``"l1"`` (default), ``"l2"`` or a callable
        ``(group, [producer filters [out, fan_in]]) -> [out] scores``.

    Returns:
      ``{group: float64 [width]}``.
    """
    params, _ = unwrap_params(variables)
    fn = SCORERS.get(scorer) if isinstance(scorer, str) else scorer
    if fn is None:
        raise ValueError(f"unknown channel scorer {scorer!r}; choose one of {sorted(SCORERS)} "
                         "or pass a callable")
    layers, groups = dependency_graph()
    out = {}
    for name, group in groups.items():
        filters = [_filters(layers[p], layer_params(params, p)) for p in group.producers]
        scores = np.asarray(fn(name, filters), np.float64)
        if scores.shape != (filters[0].shape[0],):
            raise ValueError(f"scorer returned shape {scores.shape} for group {name}, "
                             f"expected ({filters[0].shape[0]},)")
        out[name] = scores
    return out


# ----------------------------------------------------------------------------- planning


def _ratio_for_groups(ratio: float | Mapping[str, float], names: Sequence[str]
                      ) -> dict[str, float]:
    if not isinstance(ratio, Mapping):
        return {n: float(ratio) for n in names}
    out: dict[str, float] = {}
    for pattern, r in ratio.items():
        hits = [n for n in names if re.search(pattern, n)]
        if not hits:
            raise ValueError(f"layer pattern {pattern!r} matches no prunable channel group; "
                             f"groups are named like {names[0]!r} (see default_widths())")
        for n in hits:
            out.setdefault(n, float(r))  # first matching pattern wins
    return out


def _check_ratio(r: float, what: str) -> None:
    if not 0.0 <= r <= 1.0 or r != r:
        raise ValueError(f"pruning ratio of {what} must be in [0, 1), got {r}")


def rounded_keep(width: int, ratio: float, multiple: int = DEFAULT_MULTIPLE, name: str = "?"
                 ) -> int:
    """Channels kept when ``ratio`` of ``width`` are removed, rounded to ``multiple``.

    Args:
      width: current channels.
      ratio: fraction to remove, in [0, 1).
      multiple: the kept count is rounded to the nearest multiple of this
        (at least one multiple, at most ``width``); 1 disables rounding.
      name: the layer, for the error message.

    Returns:
      The number of channels to keep (``width`` when ``ratio`` is 0).

    Raises:
      ValueError: the ratio would remove every channel of the layer.
    """
    _check_ratio(ratio, f"layer {name}")
    if ratio == 0:
        return width
    raw = width * (1.0 - ratio)
    if round(raw) < 1:
        raise ValueError(f"pruning ratio {ratio} would remove all {width} channels of layer "
                         f"{name}")
    keep = max(multiple, int(round(raw / multiple)) * multiple)
    return min(keep, width)


def plan_pruning(
    variables: Mapping[str, Any],
    ratio: float | Mapping[str, float],
    *,
    scope: str = "layer",
    multiple: int = DEFAULT_MULTIPLE,
    scorer: str | Scorer = "l1",
    exclude: str | Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Which channels of each group to keep.

    Args:
      variables: ``{'params': ...}`` (full or already pruned model).
      ratio: fraction of channels to remove: one float for every group, or
        ``{regex over group names: ratio}`` (first match wins; unmatched groups
        are kept whole), e.g. ``{"scene_flow_estimator_": 0.5}``.
      scope: ``"layer"``: every selected group loses ``ratio`` of its channels;
        ``"global"`` (float ``ratio`` only): scores normalised by each group's
        mean are ranked across all selected groups and the lowest ``ratio`` of
        all their channels go (each group keeps at least ``multiple``).
      multiple: kept counts are rounded to multiples of this (8 suits GPU
        tensor cores); 1 keeps exact counts.
      scorer: channel importance (see :func:`channel_scores`).
      exclude: regex(es) over group names never pruned (e.g. ``FUSED_GROUPS``).

    Returns:
      ``{group: sorted int indices of the kept channels}`` for every group.

    Raises:
      ValueError: a ratio outside [0, 1), one that would empty a layer, a
        pattern that matches nothing, or an unknown scope/scorer.
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if int(multiple) != multiple or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    scores = channel_scores(variables, scorer)
    names = list(scores)
    excl = [exclude] if isinstance(exclude, str) else list(exclude or ())
    for pattern in excl:
        if not any(re.search(pattern, n) for n in names):
            raise ValueError(f"exclude pattern {pattern!r} matches no channel group")
    selected = [n for n in names if not any(re.search(p, n) for p in excl)]
    keep = {n: np.arange(len(s)) for n, s in scores.items()}

    def top(name: str, k: int) -> np.ndarray:
        s = scores[name]
        order = np.argsort(-s, kind="stable")  # ties: the lower index stays
        return np.sort(order[:k])

    if scope == "layer":
        ratios = _ratio_for_groups(ratio, selected)
        for name, r in ratios.items():
            keep[name] = top(name, rounded_keep(len(scores[name]), r, multiple, name))
        return keep
    if isinstance(ratio, Mapping):
        raise ValueError("scope='global' takes one float ratio, not a per-layer mapping")
    _check_ratio(float(ratio), "the network (global)")
    if not selected or ratio == 0:
        return keep
    normed = {n: scores[n] / max(float(np.mean(scores[n])), 1e-30) for n in selected}
    pool = np.concatenate([normed[n] for n in selected])
    n_remove = int(round(float(ratio) * pool.size))
    if n_remove >= pool.size:
        raise ValueError(f"global pruning ratio {ratio} would remove every channel")
    threshold = np.sort(pool)[n_remove - 1] if n_remove else -np.inf
    for name in selected:
        width = len(scores[name])
        raw = int(np.count_nonzero(normed[name] > threshold))
        k = max(multiple, int(round(raw / multiple)) * multiple) if multiple > 1 else raw
        keep[name] = top(name, min(max(k, 1), width))
    return keep


# ----------------------------------------------------------------------------- surgery


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x.astype(np.float64)).astype(np.float32)


def _input_index(layer: Layer, widths: Mapping[str, int], keep: Mapping[str, np.ndarray]
                 ) -> np.ndarray:
    parts, offset = [], 0
    for seg in layer.inputs:
        if isinstance(seg, str):
            parts.append(offset + np.asarray(keep[seg]))
            offset += widths[seg]
        else:
            parts.append(offset + np.arange(seg))
            offset += seg
    return np.concatenate(parts).astype(np.int64)


def _check_keep(keep: Mapping[str, Any], widths: Mapping[str, int]) -> dict[str, np.ndarray]:
    unknown = sorted(set(keep) - set(widths))
    if unknown:
        raise ValueError(f"keep lists unknown channel groups: {unknown}")
    out = {}
    for name, width in widths.items():
        idx = np.asarray(keep.get(name, np.arange(width)), np.int64)
        if idx.ndim != 1 or idx.size == 0:
            raise ValueError(f"channel group {name} would keep no channel (every channel of "
                             f"layer {name} removed)")
        if np.any(idx < 0) or np.any(idx >= width) or np.unique(idx).size != idx.size:
            raise ValueError(f"kept channels of {name} must be distinct indices in [0, {width})")
        out[name] = np.sort(idx)
    return out


def shrink(variables: Mapping[str, Any], keep: Mapping[str, Any]) -> tuple[dict, dict[str, int]]:
    """Removes channels from the parameters: the smaller model's variables.

    Args:
      variables: ``{'params': ...}`` of a full or structured model.
      keep: ``{group: kept channel indices}`` (missing groups keep all), e.g.
        from :func:`plan_pruning`.

    Returns:
      ``(variables, widths)``: numpy ``{'params': ...}`` of the structured model
      and the ``widths`` to build it with (``DeepLiDARFlow(widths=widths)``).
      Every normalized conv gets ``conf_mass`` (the removed inputs' softplus
      weight mass) and every estimator's ``conv1`` the cost-volume rescaling
      (see module docstring).

    Raises:
      ValueError: unknown groups, bad indices or an emptied layer.
    """
    params, _ = unwrap_params(variables)
    layers, _ = dependency_graph()
    widths = widths_of(params)
    keep = _check_keep(keep, widths)
    flat = flax.traverse_util.flatten_dict(dict(params), sep="/")
    covered = set()
    out: dict[str, np.ndarray] = {}
    for layer in layers.values():
        p = {k: np.asarray(v, np.float32) for k, v in layer_params(params, layer.path).items()}
        covered.update(f"{layer.path}/{k}" for k in p)
        in_idx = _input_index(layer, widths, keep)
        kernel = kernel_of(layer, p)
        out_all = out_dim(layer, kernel)
        out_idx = keep[layer.group] if layer.group else np.arange(out_all)
        if layer.kind == "deconv":
            new_kernel = kernel[:, :, out_idx, :][..., in_idx]
        else:
            new_kernel = kernel[:, :, in_idx, :][..., out_idx]
        if layer.cost_volume is not None:
            g = layer.cost_volume
            new_kernel = new_kernel.copy()
            new_kernel[:, :, :CV_CHANNELS, :] *= np.float32(len(keep[g]) / widths[g])
        prefix = layer.path + "/"
        if layer.kind == "nconv":
            removed = np.setdiff1d(np.arange(kernel.shape[2]), in_idx)
            mass = p.get("conf_mass", np.zeros(out_all, np.float32))
            mass = mass + _softplus(kernel[:, :, removed, :]).sum(axis=(0, 1, 2))
            out[prefix + "kernels"] = new_kernel
            out[prefix + "conf_mass"] = mass[out_idx].astype(np.float32)
            for b in ("biases", "biases_1"):
                out[prefix + b] = p[b][out_idx]
        else:
            out[prefix + "kernel"] = new_kernel
            out[prefix + "bias"] = p["bias"][out_idx]
    stray = sorted(set(flat) - covered)
    if stray:
        raise ValueError(f"parameters outside DeepLiDARFlow's layer graph: {stray[:5]}")
    new_widths = {name: int(len(idx)) for name, idx in keep.items()}
    return {"params": flax.traverse_util.unflatten_dict(out, sep="/")}, new_widths


@dataclasses.dataclass
class StructuredResult:
    """A structurally pruned model.

    Attributes:
      variables: ``{'params': ...}`` (numpy) of the smaller model.
      widths: ``{group: channels}`` to build it with.
      keep: ``{group: kept indices}`` into the input model's channels.
      params_before, params_after: parameter counts.
    """

    variables: dict
    widths: dict[str, int]
    keep: dict[str, np.ndarray]
    params_before: int
    params_after: int

    def model(self, **kwargs: Any) -> DeepLiDARFlow:
        """``DeepLiDARFlow(widths=self.widths, **kwargs)``."""
        return DeepLiDARFlow(widths=freeze_widths(self.widths), **kwargs)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly: counts and per-group widths before/after."""
        return {"params_before": self.params_before, "params_after": self.params_after,
                "param_ratio": self.params_after / self.params_before,
                "widths": dict(self.widths)}


def count_params(variables: Mapping[str, Any]) -> int:
    """Number of scalar parameters (``conf_mass`` included)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(dict(variables))))


def structured_prune(
    variables: Mapping[str, Any],
    ratio: float | Mapping[str, float],
    **plan_kwargs: Any,
) -> StructuredResult:
    """Plans and applies structured pruning in one call.

    Args:
      variables: ``{'params': ...}`` of a full or structured model.
      ratio: fraction of channels to remove (see :func:`plan_pruning`).
      **plan_kwargs: ``scope``, ``multiple``, ``scorer``, ``exclude``.

    Returns:
      A :class:`StructuredResult`.
    """
    keep = plan_pruning(variables, ratio, **plan_kwargs)
    new, widths = shrink(variables, keep)
    return StructuredResult(new, widths, keep, count_params(unwrap_params(variables)[0]),
                            count_params(new["params"]))


# ----------------------------------------------------------------------------- masked model


def channel_masks(widths: Mapping[str, int], keep: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{group: float32 0/1 [width]}`` with 1 on the kept channels."""
    keep = _check_keep(keep, dict(widths))
    out = {}
    for name, width in widths.items():
        m = np.zeros(width, np.float32)
        m[keep[name]] = 1.0
        out[name] = m
    return out


def mask_outputs(masks: Mapping[str, Any]):
    """Context manager zeroing removed channels at every producer's output.

    Args:
      masks: ``{group: [width] 0/1}`` (see :func:`channel_masks`); may be traced.

    Returns:
      A ``flax.linen.intercept_methods`` context for ``model.apply``.
    """
    layers, _ = dependency_graph()
    by_layer = {path: masks[lay.group] for path, lay in layers.items()
                if lay.group is not None and lay.group in masks}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return out
        mask = by_layer.get(module_path(context.module))
        if mask is None:
            return out
        return jax.tree.map(lambda y: y * jnp.asarray(mask, y.dtype), out)

    return nn.intercept_methods(interceptor)


def channel_masked_apply(variables: Mapping[str, Any], frames: jnp.ndarray,
                         keep: Mapping[str, Any], interp_size=None, out_size=None,
                         widths: Any = None):
    """The full model with the channels ``keep`` drops zeroed (reference for tests).

    Args:
      variables: ``{'params': ...}`` of the model being pruned.
      frames: ``[B, 2, H, W, 4]``.
      keep: ``{group: kept indices}``.
      interp_size, out_size: as ``DeepLiDARFlow.__call__``.
      widths: that model's widths (default: read from ``variables``).

    Returns:
      ``(sceneflow, aux)`` of the masked model.
    """
    if widths is None:
        widths = architecture_widths(variables)
    model = DeepLiDARFlow(widths=freeze_widths(widths))
    current = widths_of(variables)
    masks = channel_masks(current, keep)
    with mask_outputs(masks):
        return model.apply(dict(variables), frames, interp_size, out_size)
