"""Configurable channel widths (structured pruning builds physically smaller models).

A *widths* mapping gives the number of output channels of layers, keyed by the
layer's path in the parameter tree without the leading ``params/``, e.g.
``"guidance_network/rgb_encoder/conv1a"`` or ``"scene_flow_estimator_2/conv3"``.
``None`` (the default everywhere) is the original network, with parameter trees
identical to the original's. Only the *leader* layer of each channel group is a
key (:func:`default_widths` lists them all); layers whose output is added to a
leader's output take their width from it (the RGB decoder's
``deconv_upsample{i+1}to{i}`` follows ``rgb_encoder/conv{i+1}b``, the depth
decoder's ``upsampling{i+1}to{i}`` follows ``depth_encoder/nconv{i}b``), and the
4-channel scene-flow outputs (``conv_w``, ``deconv_up_flow``,
``deconv_up_feature``, ``context_network/conv7``) are fixed.

A model built with a widths mapping (any, even the original counts) is a
*structured* model: each of its normalized convolutions also holds a
non-trainable ``conf_mass`` vector (see
:class:`~deepliflow_jax.model.normalized_conv.NormalizedConv`), the softplus
weight mass of input channels that pruning removed, so that the confidences of
a pruned model equal those of the full model with those channels zeroed.

Module attributes must be hashable, so widths travel through the modules as a
sorted tuple of ``(key, width)`` pairs (:func:`freeze_widths`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deepliflow_jax.model.config import (
    CONTEXT_LAYERS,
    DEPTH_REFINE_FILTERS,
    ESTIMATOR_FILTERS,
    FUSED_FILTERS,
    LEVELS,
    PYRAMID_FILTERS,
)

Widths = tuple[tuple[str, int], ...] | None

G = "guidance_network"


def default_widths() -> dict[str, int]:
    """Every configurable layer (channel-group leader) with its original width.

    Returns:
      ``{layer path: output channels}`` in network order.
    """
    out: dict[str, int] = {}
    for i, f in enumerate(PYRAMID_FILTERS, start=1):
        out[f"{G}/rgb_encoder/conv{i}a"] = f
        out[f"{G}/rgb_encoder/conv{i}b"] = f
    for i, f in enumerate(PYRAMID_FILTERS):
        out[f"{G}/depth_encoder/nconv{i}b"] = f
    out[f"{G}/depth_decoder/nconv_pyr_top"] = PYRAMID_FILTERS[-1]
    for i in range(4, 0, -1):
        out[f"{G}/depth_decoder/refine{i}"] = PYRAMID_FILTERS[i]
    out[f"{G}/rgb_decoder/conv_pyr_top"] = PYRAMID_FILTERS[-1]
    for i in range(4, 0, -1):
        out[f"{G}/rgb_decoder/conv_refine{i}"] = PYRAMID_FILTERS[i]
    for k in range(len(LEVELS)):
        for s in "abcd":
            out[f"{G}/fusion/convdepth_refine_{s}{k}"] = DEPTH_REFINE_FILTERS
        for s in "abcd":
            out[f"{G}/fusion/convconcat_refine_{s}{k}"] = FUSED_FILTERS
    for level in LEVELS:
        for name, f in ESTIMATOR_FILTERS:
            out[f"scene_flow_estimator_{level}/{name}"] = f
    for i, (f, _) in enumerate(CONTEXT_LAYERS[:-1], start=1):
        out[f"context_network/conv{i}"] = f
    return out


def uniform_widths(width: int) -> dict[str, int]:
    """Every configurable layer of :func:`default_widths` at ``width`` channels: the
    structured DeepLiDARFlow with ``width`` channels in every channel group (the study's
    ``group_width``; its tiny preset's 8)."""
    return {layer: width for layer in default_widths()}


def freeze_widths(widths: Mapping[str, int] | Widths) -> Widths:
    """Validated, hashable form of a widths mapping (None stays None).

    Args:
      widths: ``{layer path: width}`` (a subset of :func:`default_widths`' keys;
        missing keys keep the original width), a tuple of pairs, or None.

    Returns:
      A sorted tuple of ``(path, width)`` pairs, or None.

    Raises:
      ValueError: an unknown layer key or a width that is not a positive int.
    """
    if widths is None:
        return None
    items = dict(widths.items() if isinstance(widths, Mapping) else widths)
    known = default_widths()
    unknown = sorted(set(items) - set(known))
    if unknown:
        raise ValueError(f"unknown layer(s) in channel widths: {unknown}; configurable "
                         f"layers are the keys of deepliflow_jax.model.widths.default_widths()")
    out = []
    for key in sorted(items):
        value = items[key]
        try:
            ok = int(value) == value and int(value) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"width of layer {key} must be a positive integer, got {value!r}")
        out.append((key, int(value)))
    return tuple(out)


def full_widths(widths: Mapping[str, int] | Widths) -> dict[str, int]:
    """Every configurable layer's width: the originals updated with ``widths``."""
    out = default_widths()
    out.update(dict(freeze_widths(widths) or ()))
    return out


def scoped(widths: Widths, prefix: str) -> Widths:
    """The entries under ``prefix/`` with the prefix stripped (None stays None)."""
    if widths is None:
        return None
    head = prefix + "/"
    return tuple((k[len(head):], v) for k, v in widths if k.startswith(head))


def lookup(widths: Widths, name: str, default: Any) -> Any:
    """Width of layer ``name`` (relative to the module) or ``default``."""
    if widths:
        for k, v in widths:
            if k == name:
                return v
    return default
