"""Layer groups and per-group compression plans (what a searched or reference model is)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import numpy as np

from deepliflow_jax.compress.codec import decode, encode_tensor
from deepliflow_jax.compress.prune import prune
from deepliflow_jax.compress.quantize import QuantConfig
from deepliflow_jax.model.config import LEVELS

#: the searched layer groups: ``(name, regex)``; the regex selects channel groups
#: (keys of ``default_widths()``) and parameter paths (without ``params/``)
LAYER_GROUPS: tuple[tuple[str, str], ...] = (
    ("rgb", r"^guidance_network/(rgb_encoder|rgb_decoder)/"),
    ("depth", r"^guidance_network/(depth_encoder|depth_decoder)/"),
    ("fusion", r"^guidance_network/fusion/conv(depth_refine_|concat_refine_[abc])"),
    # the fused features feed the cost volumes, warps and estimators: their own group
    ("fused", r"^guidance_network/fusion/convconcat_refine_d"),
    *((f"estimator{level}", rf"^scene_flow_estimator_{level}/") for level in LEVELS),
    ("context", r"^context_network/"),
)


#: the structured trade-off tool's hand-written hybrids (its README and table)
HAND_PLANS: tuple[str, ...] = (
    "g70h10:guidance_network=0.7;scene_flow_estimator|context_network=0.1",
    "g70h30:guidance_network=0.7;scene_flow_estimator|context_network=0.3",
    "g70:guidance_network=0.7",
)


@dataclasses.dataclass(frozen=True, order=True)
class Choice:
    """What one layer group gets.

    Attributes:
      ratio: fraction of its channels removed (0: none).
      bits: weight (and bias) bit width (0: float32).
      percent: unstructured magnitude pruning of its parameters in percent (0: none).
    """

    ratio: float = 0.0
    bits: int = 0
    percent: float = 0.0

    def label(self) -> str:
        parts = [f"r{self.ratio:g}" if self.ratio else "", f"b{self.bits}" if self.bits else "",
                 f"p{self.percent:g}" if self.percent else ""]
        return "+".join(p for p in parts if p) or "dense"


Plan = dict[str, Choice]


def plan_label(plan: Mapping[str, Choice], groups: Sequence[tuple[str, str]] = LAYER_GROUPS
               ) -> str:
    """``"rgb r0.7, fused r0.3+b8"`` (groups in network order; ``"dense"`` when empty)."""
    order = [g for g, _ in groups] + sorted(set(plan) - {g for g, _ in groups})
    parts = [f"{g} {plan[g].label()}" for g in order if g in plan and plan[g] != Choice()]
    return ", ".join(parts) or "dense"


def parse_plan(spec: str) -> tuple[str, tuple[tuple[str, float], ...]]:
    """A named per-layer pruning plan from ``NAME:REGEX=RATIO[;REGEX=RATIO]``.

    Example: ``"g70h10:guidance_network=0.7;scene_flow_estimator|context_network=0.1"``
    (the regexes go over channel-group names, see :func:`.structured.plan_pruning`).

    Returns:
      ``(name, ((regex, ratio), ...))``.

    Raises:
      ValueError: a spec without a name, ``:`` or ``REGEX=RATIO`` pair, or a ratio that
        is not a number in (0, 1).
    """
    name, sep, body = str(spec).partition(":")
    try:
        if not sep or not name:
            raise ValueError("expected NAME:REGEX=RATIO[;REGEX=RATIO]")
        pairs = tuple((p.rsplit("=", 1)[0], float(p.rsplit("=", 1)[1]))
                      for p in body.split(";") if p)
        if not pairs:
            raise ValueError("no REGEX=RATIO pair")
    except (ValueError, IndexError) as err:
        raise ValueError(f"plan {spec!r}: {err}") from err
    for _, ratio in pairs:
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"plan {spec!r}: ratio {ratio} outside (0, 1)")
    return name, pairs


def spec_label(spec: Any) -> str:
    """A reference plan as given: ``"all r0.5"`` or ``"guidance_network=0.7; ..."``."""
    if isinstance(spec, Mapping):
        return "; ".join(f"{k}={v:g}" for k, v in spec.items())
    return f"all r{float(spec):g}"


def jsonable_plan(plan: Mapping[str, Choice] | None) -> dict | None:
    if plan is None:
        return None
    return {g: dataclasses.asdict(c) for g, c in plan.items()}


def check_groups(groups: Sequence[tuple[str, str]], widths: Mapping[str, int]
                 ) -> dict[str, list[str]]:
    """The channel groups of each layer group.

    Args:
      groups: ``((name, regex), ...)``.
      widths: the model's ``{channel group: width}``.

    Returns:
      ``{name: [channel groups]}``.

    Raises:
      ValueError: a repeated name, a regex that matches no channel group, or a channel
        group matched by two layer groups.
    """
    names = [g for g, _ in groups]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"layer group names must be distinct and not empty, got {names}")
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for name, regex in groups:
        hits = [c for c in widths if re.search(regex, c)]
        if not hits:
            raise ValueError(f"layer group {name!r} (regex {regex!r}) matches no channel group; "
                             "they are named like 'guidance_network/rgb_encoder/conv1a' (the "
                             "keys of deepliflow_jax.model.widths.default_widths())")
        for c in hits:
            if c in owner:
                raise ValueError(f"channel group {c} is in layer groups {owner[c]!r} and "
                                 f"{name!r}: their regexes must not overlap")
            owner[c] = name
        out[name] = hits
    return out


def group_of_path(path: str, groups: Sequence[tuple[str, str]]) -> str | None:
    for name, regex in groups:
        if re.search(regex, path):
            return name
    return None


def ratio_spec(plan: Mapping[str, Choice], groups: Sequence[tuple[str, str]]
               ) -> dict[str, float]:
    """``{regex: ratio}`` for :func:`.structured.plan_pruning` (groups with a ratio only)."""
    regex = dict(groups)
    return {regex[g]: c.ratio for g, c in plan.items() if c.ratio > 0}


def group_ratios(spec: float | Mapping[str, float], groups: Sequence[tuple[str, str]],
                 widths: Mapping[str, int]) -> dict[str, float] | None:
    """Per layer group, the ratio a ``plan_pruning`` spec gives its channel groups.

    Returns:
      ``{group: ratio}``, or None when the spec gives one group's channel groups
      different ratios (its latency cannot be predicted from the per-group costs)
      or prunes channel groups outside every layer group.
    """
    members = check_groups(groups, widths)
    covered = {c for cs in members.values() for c in cs}

    def ratio_of(c: str) -> float:
        if not isinstance(spec, Mapping):
            return float(spec)
        for regex, r in spec.items():
            if re.search(regex, c):
                return float(r)
        return 0.0

    if any(ratio_of(c) > 0 for c in widths if c not in covered):
        return None
    out = {}
    for g, cs in members.items():
        rs = {ratio_of(c) for c in cs}
        if len(rs) != 1:
            return None
        out[g] = rs.pop()
    return out


def plan_bits(params: Any, plan: Mapping[str, Choice], groups: Sequence[tuple[str, str]]) -> Any:
    """Per-leaf bit widths (0 = float; ``conf_mass`` always float) like ``params``."""
    flat = flax.traverse_util.flatten_dict(dict(params), sep="/")
    bits = {}
    for path in flat:
        g = group_of_path(path, groups)
        b = plan[g].bits if g in plan and not path.endswith("/conf_mass") else 0
        bits[path] = np.int32(b)
    return flax.traverse_util.unflatten_dict(bits, sep="/")


def sparsify(params: Any, plan: Mapping[str, Choice], groups: Sequence[tuple[str, str]]
             ) -> tuple[Any, Any]:
    """Magnitude-prunes each group's parameters to its ``percent`` (one threshold per group).

    Returns:
      ``(params, masks)``: numpy params with the pruned entries zero and boolean masks
      (None when no group is pruned).
    """
    regex = dict(groups)
    masks = None
    for g, c in plan.items():
        if c.percent > 0:
            params, masks = prune(params, c.percent, scope="global", include=regex[g],
                                  masks=masks)
    if masks is None:
        return params, None
    return jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, masks)


def fake_quantize(params: Any, regex: str, bits: int) -> Any:
    """The parameters matching ``regex`` fake-quantized to ``bits`` (per tensor, symmetric).

    The trainer's quantizer (``quantize_tree`` with ``Trainer.quant``, whose axes
    ``QuantConfig.axis_for`` decides), computed with the one codec on numpy
    (``compress.codec``: bit for bit the same values, no compiles).
    """
    quant = QuantConfig(bits=int(bits), include=regex)
    flat = flax.traverse_util.flatten_dict(dict(params), sep="/")
    out = {}
    for path, x in flat.items():
        if quant.selected(path):
            x = np.asarray(x, np.float32)
            codes, scale, zp = encode_tensor(x, quant.bits, axis=quant.axis_for(path, x.ndim),
                                             symmetric=quant.symmetric)
            out[path] = decode(codes, scale, zp)
        else:
            out[path] = x
    return flax.traverse_util.unflatten_dict(out, sep="/")
