"""The most accurate compressed DeepLiDARFlow under a budget (``compression_search``).

Given a budget on the device it runs on (a latency in ms, a size on disk in MB, a
speed-up factor, or "as fast as" a named reference plan), find per *layer group*
(:data:`LAYER_GROUPS`: the RGB and the sparse-depth feature pyramids, the fusion
module, the fused features of both frames, each scene-flow estimator level, the
context network) a channel-pruning ratio and, for size budgets, a weight bit width
and an unstructured sparsity, such that the model meets the budget with the lowest
validation EPE. Method:

1. **Sensitivity** (:func:`measure_sensitivity`): the validation EPE change when one
   group alone is channel-pruned at each ratio (L1 rank, counts rounded to
   multiples of 8, :func:`.structured.plan_pruning`; evaluated as the masked full
   model, which equals the smaller model exactly), its weights and biases
   fake-quantized to each bit width (per tensor, symmetric: the trainer's
   quantizer), or magnitude-pruned to each percentile (one threshold over the
   group). One compiled forward (channel masks are arguments) evaluates them all.
   Cached per checkpoint: a JSON keyed by the sha256 of the parameters and of the
   validation frames, written atomically after every option (an interrupted run
   resumes where it stopped).
2. **Cost** (:func:`measure_costs`): every block of the forward
   (:func:`deepliflow_jax.profile.blocks.block_calls`) compiled apart and timed with
   the one timer (:func:`~deepliflow_jax.profile.timer.time_interleaved`, all blocks
   and whole models in the same rounds); the saving of (group, ratio) is the sum,
   over the blocks whose shapes change when only that group is pruned, of dense
   minus pruned block time (XLA FLOPs beside). A plan's predicted latency is the
   whole dense forward's measured time minus, per block, the block's time times one
   minus the product of the fractions its groups leave (:func:`predicted_latency`;
   for one group, its saving).
   Size on disk (:class:`SizeModel`): the bytes ``save_checkpoint`` stores per
   parameter (float32, or ``compress.export`` codes, sparse where that is smaller),
   computed exactly from the plan's shapes, times a compression factor per bit
   width measured by saving the dense model. Bits and sparsity do not change the
   float forward's time (fake-quantized and zeroed weights run the same program),
   so latency budgets search channel ratios only.
3. **Search** (:func:`solve`, :func:`search_candidates`): a multiple-choice
   knapsack: one option per group, minimising the predicted EPE change (the sum of
   the options' sensitivities) subject to the summed per-group savings reaching what
   the budget needs; solved exactly by dynamic programming over savings discretised
   to ``1/resolution`` of the need and rounded down. Every plan it returns is then
   checked with the exact (non-additive) latency or size model, and the need raised
   past that plan's summed saving if it misses. It is solved at the budget tightened
   by each margin (0, 5, 10 %) for a few distinct plans that hedge the model's error.
4. **Fine-tuning and measurement** (:func:`run_search`): every candidate and every
   reference plan (uniform ratios, the trade-off tool's hand-written hybrids) is
   fine-tuned for the same steps with the one trainer (channel-masked: one compiled
   step for all), shrunk, saved with ``save_checkpoint`` (packed codes when it has
   bits or sparsity), loaded back and measured for real: EPE on the validation set
   through the forward ``predict_sceneflow`` uses, latency interleaved with every
   other model, size on disk. The chosen model is the candidate of lowest measured
   EPE whose *measured* cost meets the budget; it is saved where the caller asks.

The validation frames select the plan and report its EPE (the synthetic world has
no separate test split), so the comparison with hand-written plans is optimistic
for the searched ones by the same token that those plans were tuned on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.checkpoint import load_checkpoint, save_checkpoint
from deepliflow_jax.compress.export import _decode, _encode_leaf  # numpy twins of the quantizer
from deepliflow_jax.compress.prune import prune
from deepliflow_jax.compress.quantize import QuantConfig
from deepliflow_jax.compress.structured import (
    channel_masks,
    count_params,
    mask_outputs,
    plan_pruning,
    rounded_keep,
    shrink,
)
from deepliflow_jax.fileio import write_json_atomic
from deepliflow_jax.model.api import forward
from deepliflow_jax.model.channels import (
    architecture_widths,
    dependency_graph,
    kernel_shape,
    layer_params,
    unwrap_params,
    widths_of,
)
from deepliflow_jax.model.config import LEVELS
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.profile.blocks import block_calls
from deepliflow_jax.profile.environment import describe_load, environment, load_average
from deepliflow_jax.profile.table1 import conv_eq3_flops
from deepliflow_jax.profile.timer import aot_compile, time_interleaved
from deepliflow_jax.scalars import check_number, check_numbers
from deepliflow_jax.study.tradeoff import (
    TradeoffData,
    dir_size,
    evaluate_outputs,
    fine_tune,
    parse_plan,
)
from deepliflow_jax.train.trainer import Trainer

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

SENSITIVITY_VERSION = 1
DIMENSIONS = ("ratio", "bits", "percent")


class InfeasibleBudgetError(ValueError):
    """No plan of the search space meets the budget (under the cost model)."""


# ----------------------------------------------------------------------------- plans


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


def _group_of_path(path: str, groups: Sequence[tuple[str, str]]) -> str | None:
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
        g = _group_of_path(path, groups)
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
    ``QuantConfig.axis_for`` decides), computed with its numpy twin in
    ``compress.export`` (bit for bit the same values, no compiles).
    """
    quant = QuantConfig(bits=int(bits), include=regex)
    flat = flax.traverse_util.flatten_dict(dict(params), sep="/")
    out = {}
    for path, x in flat.items():
        if quant.selected(path):
            x = np.asarray(x, np.float32)
            codes, scale, zp, _ = _encode_leaf(x, quant.bits, quant.axis_for(path, x.ndim),
                                               quant.symmetric)
            out[path] = _decode(codes, scale, zp)
        else:
            out[path] = x
    return flax.traverse_util.unflatten_dict(out, sep="/")


# ----------------------------------------------------------------------------- size model


def leaf_bytes(size: int, bits: int, nonzero: int, packed: bool) -> int:
    """Payload bytes of one parameter in a checkpoint (``compress.export.pack_params``'s rule).

    Args:
      size: entries of the tensor.
      bits: code width (0: float32).
      nonzero: entries that are not zero (not stored in the sparse form).
      packed: a packed checkpoint (else the float kind: float32 throughout).

    Returns:
      Bytes: float32 values, or whole-byte codes plus one float32 scale (per tensor); the
      sparse form (a 1-bit mask plus the nonzero entries) where it takes fewer bits.
    """
    if not packed:
        return 4 * size
    width, nbytes = (bits, (1 if bits <= 8 else 2)) if bits else (32, 4)
    scale = 4 if bits else 0
    if size + nonzero * width < size * width:
        return (size + 7) // 8 + nonzero * nbytes + scale
    return size * nbytes + scale


class SizeModel:
    """Checkpoint size of a plan, from the channel graph (no model is built).

    Args:
      params: the dense (or structured) model searched from.
      groups: the layer groups.
      multiple: channel counts are rounded to multiples of this.
      disk_factor: ``{bits: disk bytes / payload bytes}`` measured by saving the model
        (Orbax compresses); 0 is float32. Missing widths count 1.0.
    """

    def __init__(self, params: Any, groups: Sequence[tuple[str, str]], multiple: int = 8,
                 disk_factor: Mapping[int, float] | None = None):
        params = unwrap_params(params)[0]
        layers, _ = dependency_graph()
        self.groups = tuple(groups)
        self.multiple = multiple
        self.widths = widths_of(params)
        self.structured = architecture_widths(params) is not None
        self.members = check_groups(groups, self.widths)
        self.channel_owner = {c: g for g, cs in self.members.items() for c in cs}
        self.layers = []
        for path, lay in layers.items():
            shape = kernel_shape(lay, layer_params(params, path))
            self.layers.append((lay, int(np.prod(shape[:2])), _group_of_path(path, groups)))
        self.disk_factor = {int(k): float(v) for k, v in (disk_factor or {}).items()}

    def widths_for(self, plan: Mapping[str, Choice]) -> dict[str, int]:
        """Channel widths after pruning each group by its ratio."""
        out = {}
        for c, w in self.widths.items():
            g = self.channel_owner.get(c)
            r = plan[g].ratio if g in plan else 0.0
            out[c] = rounded_keep(w, r, self.multiple, c) if r else w
        return out

    def leaves(self, plan: Mapping[str, Choice]) -> list[tuple[str, int, int, float]]:
        """``(parameter path, entries, bits, percent)`` of every parameter of the plan's model."""
        widths = self.widths_for(plan)
        structured = self.structured or any(c.ratio > 0 for c in plan.values())
        out = []
        for lay, spatial, g in self.layers:
            c = plan.get(g, Choice()) if g else Choice()
            cin = sum(widths[s] if isinstance(s, str) else s for s in lay.inputs)
            cout = widths[lay.group] if lay.group else lay.fixed_out
            p = lay.path + "/"
            if lay.kind == "nconv":
                out.append((p + "kernels", spatial * cin * cout, c.bits, c.percent))
                out += [(p + b, cout, c.bits, c.percent) for b in ("biases", "biases_1")]
                if structured:
                    out.append((p + "conf_mass", cout, 0, 0.0))
            else:
                out.append((p + "kernel", spatial * cin * cout, c.bits, c.percent))
                out.append((p + "bias", cout, c.bits, c.percent))
        return out

    def is_packed(self, plan: Mapping[str, Choice]) -> bool:
        return any(c.bits or c.percent for c in plan.values())

    def payload_bytes(self, plan: Mapping[str, Choice]) -> int:
        """Bytes of the parameters as ``save_checkpoint`` stores them (before compression)."""
        packed = self.is_packed(plan)
        return sum(leaf_bytes(n, b, n - int(round(n * p / 100.0)), packed)
                   for _, n, b, p in self.leaves(plan))

    def disk_bytes(self, plan: Mapping[str, Choice]) -> float:
        """Predicted size on disk: each parameter's payload times its bit width's factor."""
        packed = self.is_packed(plan)
        return float(sum(leaf_bytes(n, b, n - int(round(n * p / 100.0)), packed)
                         * self.disk_factor.get(b, 1.0) for _, n, b, p in self.leaves(plan)))


# ----------------------------------------------------------------------------- the solver


def solve(options: Mapping[str, Sequence[tuple[Any, float, float]]], need: float,
          resolution: int = 1000) -> tuple[dict[str, Any], float, float]:
    """One option per group, least total delta, total saving at least ``need`` (exact DP).

    A multiple-choice knapsack solved by dynamic programming over the savings in
    units of ``max(need, ...) / resolution``, each option's saving rounded *down* to
    whole units: a selection the solver accepts truly saves ``need`` (exactly ``need``
    included, e.g. a plan predicted at the budget itself); one that saves ``need`` only
    within the rounding may still be missed when a cheaper selection that falls short
    shares its units (at most ``groups`` units below ``need``). Savings beyond ``need``
    count as ``need`` (they buy nothing); negative savings (an option that costs more)
    are allowed. Ties: the larger true saving, then the earlier option of each group.

    Args:
      options: ``{group: [(choice, delta, saving), ...]}``; include each group's
        do-nothing option (delta 0, saving 0) if it may stay as it is.
      need: the total saving required (<= 0: any selection that saves that much).
      resolution: units per ``need``.

    Returns:
      ``({group: choice}, total delta, total saving)``.

    Raises:
      InfeasibleBudgetError: even the largest savings fall short of ``need``.
      ValueError: a group without options, or ``resolution`` < 1.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    for g, opts in options.items():
        if not opts:
            raise ValueError(f"layer group {g!r} has no option")
    best_total = sum(max(s for _, _, s in opts) for opts in options.values())
    if best_total < need:
        raise InfeasibleBudgetError(f"the largest savings add up to {best_total:g}, "
                                    f"{need:g} are needed")
    scale = max(abs(need), 1e-12) if need > 0 else max(
        [abs(s) for opts in options.values() for _, _, s in opts] + [1e-12])
    unit = scale / resolution
    cap = math.ceil(need / unit - 1e-9)
    # state: units saved (capped) -> (delta, -true saving, picks)
    states: dict[int, tuple[float, float, tuple[int, ...]]] = {0: (0.0, 0.0, ())}
    for opts in options.values():
        nxt: dict[int, tuple[float, float, tuple[int, ...]]] = {}
        for units, (delta, neg_saving, picks) in states.items():
            for i, (_, d, s) in enumerate(opts):
                u = min(cap, units + math.floor(s / unit + 1e-9)) if cap > 0 else \
                    units + math.floor(s / unit + 1e-9)
                cand = (delta + d, neg_saving - s, picks + (i,))
                if u not in nxt or cand < nxt[u]:
                    nxt[u] = cand
        states = nxt
    # the units are rounded down: a selection whose true saving reaches ``need`` (a plan
    # exactly at the budget) is feasible even when its units fall short of the cap
    feasible = [v for u, v in states.items()
                if u >= cap or -v[1] >= need - 1e-9 * abs(need)]
    if not feasible:
        raise InfeasibleBudgetError(f"no selection saves {need:g} after rounding savings "
                                    f"to units of {unit:g}")
    delta, neg_saving, picks = min(feasible)
    choice = {g: opts[i][0] for (g, opts), i in zip(options.items(), picks, strict=True)}
    return choice, delta, -neg_saving


# ----------------------------------------------------------------------------- budgets


@dataclasses.dataclass(frozen=True)
class Budget:
    """What the searched model must meet.

    Attributes:
      kind: ``"latency_ms"``, ``"size_mb"``, ``"speedup"`` or ``"reference"`` (as fast
        as the named reference plan, measured in the same rounds).
      value: the number, or the reference's name.
    """

    kind: str
    value: float | str

    @classmethod
    def parse(cls, text: str | Budget) -> Budget:
        """``"120ms"``, ``"5MB"``, ``"2x"`` or a reference plan's name (e.g. ``"g70h10"``).

        Raises:
          ValueError: an empty text or a number that is not positive.
        """
        if isinstance(text, Budget):
            return text
        t = str(text).strip()
        for suffix, kind in (("ms", "latency_ms"), ("mb", "size_mb"), ("x", "speedup")):
            if t.lower().endswith(suffix):
                try:
                    value = float(t[: -len(suffix)])
                except ValueError:
                    break
                if not value > 0 or not math.isfinite(value):
                    raise ValueError(f"budget {text!r}: the {kind} must be a positive number")
                return cls(kind, value)
        if not t or not re.fullmatch(r"[A-Za-z_][\w.-]*", t):
            raise ValueError(f"budget {text!r}: expected a latency like '120ms', a size on disk "
                             "like '5MB', a speed-up like '2x' or a reference plan's name "
                             "like 'g70h10'")
        return cls("reference", t)

    def describe(self) -> str:
        if self.kind == "reference":  # a name, not a number
            return f"as fast as {self.value}"
        unit = {"latency_ms": " ms", "size_mb": " MB", "speedup": "x faster than dense"}
        return f"{float(self.value):g}{unit[self.kind]}"

    @property
    def measure(self) -> str:
        """``"latency"`` or ``"size"``."""
        return "size" if self.kind == "size_mb" else "latency"


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Settings of one search (the defaults are the demo scale).

    Attributes:
      budget: see :meth:`Budget.parse`.
      groups: the layer groups ``((name, regex), ...)``.
      ratios: channel-pruning ratios per group.
      bits: weight bit widths per group (size budgets).
      percents: unstructured pruning percentiles per group (size budgets).
      multiple, scorer: channel counts rounded to multiples of this; channel ranking
        (see :func:`.structured.plan_pruning`).
      margins: the budget tightened by each fraction gives one candidate plan each.
      candidates: at most this many distinct plans are fine-tuned and measured.
      uniform: uniform pruning ratios measured as references.
      plans: hand-written reference plans ``NAME:REGEX=RATIO[;...]``.
      finetune_steps, lr, refine_fraction: fine-tuning of every candidate and reference
        (the last fraction at ``lr / 10``); 0 steps measures them as pruned.
      repeats, block_repeats, warmup: timed rounds of the whole models and of the blocks;
        untimed calls first.
      resolution: the solver's units per needed saving.
      seed: training seed.
    """

    budget: str = "g70h10"
    groups: tuple[tuple[str, str], ...] = LAYER_GROUPS
    ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    bits: tuple[int, ...] = (8, 6)
    percents: tuple[float, ...] = (30.0, 60.0)
    multiple: int = 8
    scorer: str = "l1"
    margins: tuple[float, ...] = (0.0, 0.05, 0.1)
    candidates: int = 3
    uniform: tuple[float, ...] = (0.3, 0.5, 0.7)
    plans: tuple[str, ...] = HAND_PLANS
    finetune_steps: int = 30
    lr: float = 3e-4
    refine_fraction: float = 0.25
    repeats: int = 7
    block_repeats: int = 5
    warmup: int = 1
    resolution: int = 1000
    seed: int = 0

    def __post_init__(self):
        Budget.parse(self.budget)
        ratio = "a pruning ratio in (0, 1)"
        numbers = {
            "ratios": check_numbers(self.ratios, "ratios", ratio, above=0, below=1),
            "uniform": check_numbers(self.uniform, "uniform", ratio, above=0, below=1),
            "bits": check_numbers(self.bits, "bits", integer=True, minimum=2, maximum=16),
            "percents": check_numbers(self.percents, "percents", above=0, below=100),
            "margins": check_numbers(self.margins, "margins", minimum=0, below=1),
            "lr": check_number(self.lr, "lr", "a positive number", above=0),
            "refine_fraction": check_number(self.refine_fraction, "refine_fraction", minimum=0,
                                            below=1),
            **{name: check_number(getattr(self, name), name, integer=True, minimum=1)
               for name in ("candidates", "repeats", "block_repeats", "resolution", "multiple")},
            **{name: check_number(getattr(self, name), name, integer=True, minimum=0)
               for name in ("finetune_steps", "warmup", "seed")},
        }
        for name, value in numbers.items():  # Python numbers (a frozen dataclass)
            object.__setattr__(self, name, value)
        if not self.margins:
            raise ValueError("margins must hold at least one value (0 = the budget itself)")
        names = [parse_plan(p)[0] for p in self.plans] + [f"uniform{round(r * 100)}"
                                                          for r in self.uniform]
        if len(set(names)) != len(names):
            raise ValueError(f"reference names must be distinct, got {names}")
        budget = Budget.parse(self.budget)
        if budget.kind == "reference" and budget.value not in names:
            raise ValueError(f"budget {self.budget!r} names no reference plan; the references "
                             f"are {names} (or give '120ms', '5MB' or '2x')")

    def references(self) -> list[tuple[str, str, Any]]:
        """``[(name, "uniform" | "hand", plan_pruning ratio spec)]``."""
        out: list[tuple[str, str, Any]] = [(f"uniform{round(r * 100)}", "uniform", float(r))
                                           for r in self.uniform]
        for spec in self.plans:
            name, pairs = parse_plan(spec)
            out.append((name, "hand", dict(pairs)))
        return out


# ----------------------------------------------------------------------------- sensitivity


def params_digest(tree: Any) -> str:
    """sha256 over the leaves (paths, dtypes, shapes, bytes) of a pytree, in path order."""
    h = hashlib.sha256()
    flat = flax.traverse_util.flatten_dict(dict(tree), sep="/") if isinstance(tree, Mapping) \
        else {"": tree}
    for path in sorted(flat):
        x = np.ascontiguousarray(np.asarray(flat[path]))
        h.update(f"{path}|{x.dtype.str}|{x.shape}|".encode())
        h.update(x.tobytes())
    return h.hexdigest()


def _option_key(group: str, regex: str, dim: str, value: float, multiple: int,
                scorer: str) -> str:
    extra = f"|multiple={multiple}|scorer={scorer}" if dim == "ratio" else ""
    return f"{group}={regex}|{dim}={value:g}{extra}"


def masked_evaluator(val: Mapping[str, np.ndarray]) -> Callable[[Any, Any], dict]:
    """``(params, channel masks or None) -> metrics`` of the full model on ``val``.

    One jitted forward with the masks as arguments (:func:`.structured.mask_outputs`):
    every channel-pruning ratio and every parameter change shares it.
    """
    model = DeepLiDARFlow()
    out_size = tuple(val["gt"].shape[1:3])
    frames = jax.device_put(jnp.asarray(val["frames"]))

    @jax.jit
    def run(p, m, f):
        with mask_outputs(m):
            return model.apply({"params": p}, f, None, out_size)[0]

    def evaluate(params, masks=None):
        if masks is None:
            masks = {k: np.ones(v, np.float32) for k, v in widths_of(params).items()}
        return evaluate_outputs(np.asarray(run(params, masks, frames)), val["gt"])

    return evaluate


def _read_cache(path: Path) -> dict:
    if not path.is_file():
        return {"version": SENSITIVITY_VERSION, "entries": {}}
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise ValueError(f"sensitivity cache {path} is not readable JSON ({err}); delete it "
                         "to measure the sensitivities again") from err
    if not isinstance(data, dict) or data.get("version") != SENSITIVITY_VERSION:
        return {"version": SENSITIVITY_VERSION, "entries": {}}
    data.setdefault("entries", {})
    return data


def _progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    try:
        from tqdm import tqdm  # optional (the "viz" extra)
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc)


def measure_sensitivity(params: Any, val: Mapping[str, np.ndarray],
                        groups: Sequence[tuple[str, str]], ratios: Sequence[float] = (),
                        bits: Sequence[int] = (), percents: Sequence[float] = (), *,
                        multiple: int = 8, scorer: str = "l1",
                        cache: str | Path | None = None,
                        evaluate: Callable[[Any, Any], dict] | None = None,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validation metrics when one layer group alone is compressed (see module docstring).

    Args:
      params: bare parameter tree of the model searched from.
      val: ``{"frames" [B, 2, H, W, 4], "gt" [B, H, W, 4]}``.
      groups: the layer groups.
      ratios, bits, percents: the options of every group.
      multiple, scorer: channel rounding and ranking.
      cache: JSON file of cached results (created or extended; keyed by the sha256 of
        the parameters and of the validation batch); None: no cache.
      evaluate: ``(params, channel masks or None) -> metrics``; default
        :func:`masked_evaluator` (compiled only when something is not cached).
      log: progress printer.

    Returns:
      ``{"key", "base": metrics, "delta": {group: {dim: {value: EPE change}}},
      "metrics": {group: {dim: {value: metrics}}}, "evaluated", "cached"}``.

    Raises:
      ValueError: bad groups, or an unreadable cache file.
    """
    params = jax.tree.map(np.asarray, unwrap_params(params)[0])
    widths = widths_of(params)
    check_groups(groups, widths)
    key = params_digest(params) + "-" + params_digest(
        {"frames": np.asarray(val["frames"]), "gt": np.asarray(val["gt"])})
    path = Path(cache) if cache is not None else None
    store = _read_cache(path) if path is not None else {"entries": {}}
    entry = store["entries"].setdefault(key, {"base": None, "options": {}})
    jobs = [(g, rx, dim, v) for g, rx in groups for dim, values in
            (("ratio", ratios), ("bits", bits), ("percent", percents)) for v in values]
    todo = [j for j in jobs if _option_key(j[0], j[1], j[2], j[3], multiple, scorer)
            not in entry["options"]]
    cached = len(jobs) - len(todo)
    if entry["base"] is None or todo:
        log(f"sensitivity: {len(todo)} options to evaluate, {cached} cached"
            + (f" ({path})" if path else ""))
        evaluate = evaluate or masked_evaluator(val)

        def save():
            if path is not None:
                write_json_atomic(path, store, indent=1, sort_keys=True)

        if entry["base"] is None:
            entry["base"] = evaluate(params, None)
            save()
        for g, rx, dim, v in _progress(todo, len(todo), "sensitivity"):
            if dim == "ratio":
                keep = plan_pruning({"params": params}, {rx: v}, multiple=multiple,
                                    scorer=scorer)
                metrics = evaluate(params, channel_masks(widths, keep))
            elif dim == "bits":
                metrics = evaluate(fake_quantize(params, rx, int(v)), None)
            else:
                metrics = evaluate(prune(params, v, scope="global", include=rx)[0], None)
            entry["options"][_option_key(g, rx, dim, v, multiple, scorer)] = metrics
            save()
    else:
        log(f"sensitivity: all {cached} options cached ({path})")
    base = entry["base"]
    table: dict[str, dict[str, dict[float, dict]]] = {}
    for g, rx, dim, v in jobs:
        m = entry["options"][_option_key(g, rx, dim, v, multiple, scorer)]
        table.setdefault(g, {d: {} for d in DIMENSIONS})[dim][float(v)] = m
    delta = {g: {d: {v: m["epe"] - base["epe"] for v, m in t[d].items()} for d in DIMENSIONS}
             for g, t in table.items()}
    return {"key": key, "base": base, "delta": delta, "metrics": table,
            "evaluated": len(todo), "cached": cached}


# ----------------------------------------------------------------------------- costs


def _signature(block) -> tuple:
    """A block's name with the shapes and dtypes of its parameters and inputs.

    ``conf_mass`` is left out: every structured model has it, pruned there or not.
    """
    params = block.params
    if isinstance(params, Mapping):
        flat = flax.traverse_util.flatten_dict(dict(params), sep="/")
        params = {k: v for k, v in flat.items() if not k.endswith("conf_mass")}
    leaves, tree = jax.tree.flatten((params, block.args))
    return (block.name, str(tree), tuple((tuple(np.shape(x)), str(x.dtype)) for x in leaves))


def whole_forward(variables: Mapping[str, Any], frames: Any) -> Callable[[], Any]:
    """A no-argument call of the forward ``predict_sceneflow`` runs (one jit per shape)."""
    widths = architecture_widths(variables)
    out_size = tuple(np.shape(frames)[2:4])
    return lambda: forward(variables, frames, out_size=out_size, widths=widths)[0]


def measure_costs(params: Any, frames: Any, groups: Sequence[tuple[str, str]],
                  ratios: Mapping[str, Sequence[float]], *, multiple: int = 8,
                  scorer: str = "l1", whole: Mapping[str, Mapping[str, Any]] | None = None,
                  repeats: int = 5, warmup: int = 1, log: Callable[[str], None] = print
                  ) -> dict[str, Any]:
    """Measured latency saving of each (group, ratio), and whole models, in the same rounds.

    Args:
      params: bare parameter tree of the model searched from.
      frames: the timed input ``[B, 2, H, W, 4]``.
      groups: the layer groups.
      ratios: ``{group: ratios}`` to measure.
      multiple, scorer: channel rounding and ranking.
      whole: ``{name: variables}`` of whole models timed in the same rounds (the
        dense model is always timed, as ``"dense"``).
      repeats, warmup: see :func:`~deepliflow_jax.profile.timer.time_interleaved`.
      log: progress printer.

    Returns:
      ``{"dense_ms", "whole": {name: timer statistics}, "blocks": {block: dense
      statistics + "gflops"}, "saved_ms": {group: {ratio: ms}}, "saved_gflops": ...,
      "changed_blocks": {group: {ratio: [blocks]}}, "compile_s"}``.
    """
    params = jax.tree.map(np.asarray, unwrap_params(params)[0])
    variables = {"params": params}
    regex = dict(groups)
    b, _, h, w, _ = np.shape(frames)
    base = {blk.name: blk for blk in block_calls(variables, b, h, w)}
    base_sig = {name: _signature(blk) for name, blk in base.items()}
    jobs: dict[tuple, Any] = {}  # signature -> block
    changed: dict[str, dict[float, list[tuple[str, tuple]]]] = {}
    for g, rs in ratios.items():
        for r in rs:
            keep = plan_pruning(variables, {regex[g]: r}, multiple=multiple, scorer=scorer)
            small, widths = shrink(variables, keep)
            diff = []
            for blk in block_calls(small, b, h, w, widths=widths):
                sig = _signature(blk)
                if sig != base_sig[blk.name]:
                    diff.append((blk.name, sig))
                    jobs.setdefault(sig, blk)
                    jobs.setdefault(base_sig[blk.name], base[blk.name])
            changed.setdefault(g, {})[float(r)] = diff
    t0 = time.perf_counter()
    compiled: dict[tuple, tuple[Any, float]] = {}
    for sig, blk in _progress(list(jobs.items()), len(jobs), "compile blocks"):
        exe, info = aot_compile(blk.fn, blk.params, *blk.args)
        compiled[sig] = (exe, float("nan") if info["flops"] is None else info["flops"], blk)
    calls = {("block",) + sig: (lambda e=exe, blk=blk: e(blk.params, *blk.args))
             for sig, (exe, _, blk) in compiled.items()}
    models = {"dense": variables, **dict(whole or {})}
    device_frames = jax.device_put(jnp.asarray(frames))
    for name, v in models.items():
        calls[("whole", name)] = whole_forward(jax.device_put(v), device_frames)
    log(f"cost: compiled {len(compiled)} blocks in {time.perf_counter() - t0:.0f} s; timing "
        f"{len(calls)} contenders x {repeats} rounds (whole models compile in the warm-up)")
    stats = time_interleaved(calls, repeats, max(1, warmup))
    saved_ms: dict[str, dict[float, float]] = {}
    saved_gflops: dict[str, dict[float, float]] = {}
    option_ms: dict[str, dict[float, dict[str, float]]] = {}
    for g, per in changed.items():
        for r, diff in per.items():
            ms = sum(stats[("block",) + base_sig[n]]["median_ms"]
                     - stats[("block",) + sig]["median_ms"] for n, sig in diff)
            fl = sum(compiled[base_sig[n]][1] - compiled[sig][1] for n, sig in diff)
            saved_ms.setdefault(g, {})[r] = ms
            saved_gflops.setdefault(g, {})[r] = fl / 1e9
            option_ms.setdefault(g, {})[r] = {n: stats[("block",) + sig]["median_ms"]
                                              for n, sig in diff}
    blocks = {}
    for name, sig in base_sig.items():
        if sig in compiled:
            blocks[name] = {**stats[("block",) + sig], "gflops": compiled[sig][1] / 1e9}
    return {"dense_ms": stats[("whole", "dense")]["median_ms"],
            "whole": {n: stats[("whole", n)] for n in models},
            "blocks": blocks, "saved_ms": saved_ms, "saved_gflops": saved_gflops,
            "option_ms": option_ms,
            "changed_blocks": {g: {r: [n for n, _ in d] for r, d in per.items()}
                               for g, per in changed.items()},
            "compile_s": time.perf_counter() - t0}


def predicted_latency(costs: Mapping[str, Any], ratios: Mapping[str, float]) -> float | None:
    """A plan's latency from the per-group block times (None: a ratio was not measured).

    The dense forward's measured time minus, per block, the dense block time times
    ``1 - prod(option time / dense time)`` over the groups whose pruning changes that
    block: a conv pruned on its input channels by one group and on its outputs by
    another costs the product of both fractions (additive savings would count the
    overlap twice). For a single group this is its measured saving.

    Args:
      costs: ``{"dense_ms", "blocks": {block: {"median_ms"}}, "option_ms": {group:
        {ratio: {block: ms}}}}`` (:func:`measure_costs`).
      ratios: ``{group: ratio}`` (0: not pruned).
    """
    factors: dict[str, float] = {}
    for g, r in ratios.items():
        if not r:
            continue
        per = costs["option_ms"].get(g, {}).get(float(r))
        if per is None:
            return None
        for name, ms in per.items():
            factors[name] = factors.get(name, 1.0) * ms / costs["blocks"][name]["median_ms"]
    return costs["dense_ms"] - sum(costs["blocks"][n]["median_ms"] * (1.0 - f)
                                   for n, f in factors.items())


def calibrate_disk(params: Any, bits: Sequence[int], workdir: str | Path, quant: QuantConfig
                   ) -> dict[int, float]:
    """``{bits: measured disk bytes / payload bytes}`` of the model saved float and packed.

    Saves ``params`` once as a float checkpoint (key 0) and once packed with every
    parameter at each bit width, in ``workdir/size_probe`` (removed afterwards).
    """
    from deepliflow_jax.fileio import discard

    params = unwrap_params(params)[0]
    out = Path(workdir) / "size_probe"
    model = SizeModel(params, (("all", r".*"),), 1)
    factors = {}
    for b in (0, *bits):
        plan = {"all": Choice(bits=int(b))}
        if b:
            bits_tree = jax.tree.map(lambda _, b=b: np.int32(b), {"params": dict(params)})
            save_checkpoint(out, {"params": params}, overwrite=True, quant=quant, bits=bits_tree)
        else:
            save_checkpoint(out, {"params": params}, overwrite=True)
        factors[int(b)] = dir_size(out) / model.payload_bytes(plan)
    discard(out)
    return factors


# ----------------------------------------------------------------------------- search


def _options(groups, sens, costs, size_model, measure):
    """``{group: [(Choice, predicted EPE change, predicted saving)]}`` for :func:`solve`."""
    out = {}
    dense = size_model.disk_bytes({}) if measure == "size" else 0.0
    for g, _ in groups:
        d = sens["delta"][g]
        ratios = [0.0, *sorted(d["ratio"])]
        if measure == "latency":
            out[g] = [(Choice(r), d["ratio"].get(r, 0.0),
                       costs["saved_ms"].get(g, {}).get(r, 0.0) if r else 0.0) for r in ratios]
            continue
        opts = []
        for r, b, p in itertools.product(ratios, [0, *sorted(d["bits"])],
                                         [0.0, *sorted(d["percent"])]):
            c = Choice(r, int(b), p)
            delta = d["ratio"].get(r, 0.0) + d["bits"].get(b, 0.0) + d["percent"].get(p, 0.0)
            opts.append((c, delta, dense - size_model.disk_bytes({g: c})))
        out[g] = opts
    return out


def search_candidates(groups: Sequence[tuple[str, str]], sens: Mapping[str, Any],
                      limit: float, measure: str, *, costs: Mapping[str, Any] | None = None,
                      size_model: SizeModel | None = None, margins: Sequence[float] = (0.0,),
                      count: int = 3, resolution: int = 1000) -> list[dict[str, Any]]:
    """Distinct plans that meet ``limit`` under the cost model, best predicted first.

    Args:
      groups: the layer groups searched.
      sens: :func:`measure_sensitivity`'s result (its ``delta`` table is used).
      limit: the budget: latency in ms (``measure="latency"``) or disk bytes (``"size"``).
      measure: ``"latency"`` (channel ratios; :func:`predicted_latency`) or ``"size"``
        (ratios, bits and sparsity; :class:`SizeModel`).
      costs: :func:`measure_costs`' result (latency).
      size_model: the size model (size).
      margins: the limit tightened by each fraction is solved for one plan each.
      count: at most this many plans.
      resolution: see :func:`solve`.

    Returns:
      ``[{"plan": {group: Choice}, "margin", "delta_epe", "predicted_ms" or
      "predicted_bytes"}]``.

    Raises:
      InfeasibleBudgetError: not even the most compressed plan meets ``limit``.
      ValueError: an unknown ``measure`` or missing cost tables.
    """
    if measure not in ("latency", "size"):
        raise ValueError(f"measure must be 'latency' or 'size', got {measure!r}")
    if (costs if measure == "latency" else size_model) is None:
        raise ValueError(f"a {measure} search needs its cost table ("
                         f"{'costs' if measure == 'latency' else 'size_model'})")
    options = _options(groups, sens, costs, size_model, measure)
    if measure == "latency":
        total = costs["dense_ms"]

        def exact(plan):
            return predicted_latency(costs, {g: c.ratio for g, c in plan.items()})
    else:
        total = size_model.disk_bytes({})
        exact = size_model.disk_bytes
    unit = "ms" if measure == "latency" else "MB"
    scale = 1.0 if measure == "latency" else 1e-6

    def unreachable() -> InfeasibleBudgetError:
        fastest = {g: max(o, key=lambda x: x[2])[0] for g, o in options.items()}
        return InfeasibleBudgetError(
            f"budget {limit * scale:g} {unit} is out of reach of the search space: the most "
            f"compressed plan ({plan_label(fastest, groups)}) is predicted at "
            f"{exact(fastest) * scale:.4g} {unit} (dense {total * scale:.4g} {unit}); raise "
            "the budget or allow larger ratios, fewer bits or more sparsity")

    out: list[dict[str, Any]] = []
    for margin in sorted(set(margins)):
        target = limit * (1.0 - margin)
        need = total - target
        plan = None
        for _ in range(50):  # the exact (non-additive) cost may miss: ask for more
            try:
                plan, delta, saving = solve(options, need, resolution)
            except InfeasibleBudgetError:
                plan = None
                break
            cost = exact(plan)
            if within_budget(cost, target):
                break
            # the additive savings overrate this plan: ask for more than it offers
            need = max(need + cost - target, saving + 1e-6 * abs(total))
            plan = None
        if plan is None:
            if not out and margin == max(margins):
                raise unreachable()
            continue
        plan = {g: c for g, c in plan.items() if c != Choice()}
        if any(p["plan"] == plan for p in out):
            continue
        key = "predicted_ms" if measure == "latency" else "predicted_bytes"
        out.append({"plan": plan, "margin": margin, "delta_epe": delta, key: exact(plan)})
        if len(out) >= count:
            break
    return out


def within_budget(cost: float, limit: float) -> bool:
    """A cost meets a budget when it is at most the limit: equal counts (a budget "as fast
    as g70" accepts g70 itself), with a relative 1e-9 for the rounding of a limit derived
    from other numbers (``dense / 2``); candidate selection and the final check agree."""
    return cost <= limit + 1e-9 * abs(limit)


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats in both cost and EPE (cost order).

    Args:
      points: ``(name, cost, epe)``.
    """
    front, best = [], math.inf
    for name, _, epe in sorted(points, key=lambda p: (p[1], p[2])):
        if epe < best:
            front.append(name)
            best = epe
    return front


# ----------------------------------------------------------------------------- the whole run


@dataclasses.dataclass
class _Model:
    name: str
    kind: str  # baseline, uniform, hand, searched
    plan: dict[str, Choice] | None  # per layer group (None: not expressible)
    keep: dict[str, np.ndarray] | None
    spec: Any  # plan_pruning ratio spec
    info: dict = dataclasses.field(default_factory=dict)


def _jsonable_plan(plan: Mapping[str, Choice] | None) -> dict | None:
    if plan is None:
        return None
    return {g: dataclasses.asdict(c) for g, c in plan.items()}


def run_search(cfg: SearchConfig, data: TradeoffData, baseline: Any, workdir: str | Path,
               *, save_to: str | Path | None = None, sensitivity_cache: str | Path | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole search (see module docstring).

    Args:
      cfg: settings.
      data: training batches and the validation batch (one batch of equal-size frames).
      baseline: trained dense parameters (bare tree, or ``{'params': ...}``).
      workdir: scratch folder (fine-tuned models are saved under ``workdir/models``).
      save_to: checkpoint directory of the chosen model (replaced if it is one);
        default ``workdir/searched_model``.
      sensitivity_cache: JSON cache of the sensitivities (default
        ``workdir/sensitivity_cache.json``).
      log: progress printer.

    Returns:
      The JSON-ready result (rows, frontier, budget, chosen model, sensitivity and cost
      tables, additivity check).

    Raises:
      InfeasibleBudgetError: the budget is out of reach of the search space.
      ValueError: bad settings or data.
    """
    start = time.perf_counter()
    load_before = load_average()  # other work on the cores makes every time a shared one
    stage: dict[str, float] = {}
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    save_to = Path(save_to) if save_to is not None else work / "searched_model"
    cache = Path(sensitivity_cache) if sensitivity_cache is not None else \
        work / "sensitivity_cache.json"
    budget = Budget.parse(cfg.budget)
    params = jax.tree.map(np.asarray, unwrap_params(baseline)[0])
    if architecture_widths(params) is not None:
        raise ValueError("the search starts from the original (dense) network; got a "
                         "structured model")
    widths = widths_of(params)
    check_groups(cfg.groups, widths)
    val = data.val
    refs = cfg.references()
    ref_ratios = {name: group_ratios(spec, cfg.groups, widths) for name, _, spec in refs}
    trainer = Trainer(seed=cfg.seed, channel_masked=True)  # one compiled step for all

    # 1. sensitivity
    t = time.perf_counter()
    sens = measure_sensitivity(params, val, cfg.groups, cfg.ratios,
                               cfg.bits, cfg.percents, multiple=cfg.multiple, scorer=cfg.scorer,
                               cache=cache, log=log)
    stage["sensitivity_s"] = time.perf_counter() - t

    # 2. costs: blocks and whole reference models, in the same rounds
    t = time.perf_counter()
    cost_ratios = {g: set(cfg.ratios) for g, _ in cfg.groups}
    for rr in ref_ratios.values():
        for g, r in (rr or {}).items():
            if r:
                cost_ratios[g].add(r)
    models: dict[str, _Model] = {"dense": _Model("dense", "baseline", {}, None, None)}
    whole = {}
    for name, kind, spec in refs:
        keep = plan_pruning({"params": params}, spec, multiple=cfg.multiple, scorer=cfg.scorer)
        rr = ref_ratios[name]
        plan = None if rr is None else {g: Choice(r) for g, r in rr.items() if r}
        models[name] = _Model(name, kind, plan, keep, spec)
        whole[name] = shrink({"params": params}, keep)[0]
    log(f"cost: timing blocks for {sum(len(v) for v in cost_ratios.values())} (group, ratio) "
        f"options and {len(whole) + 1} whole models")
    costs = measure_costs(params, val["frames"], cfg.groups,
                          {g: sorted(v) for g, v in cost_ratios.items()},
                          multiple=cfg.multiple, scorer=cfg.scorer, whole=whole,
                          repeats=cfg.block_repeats, warmup=cfg.warmup, log=log)
    del whole
    quant = trainer.quant  # the packed checkpoints store what the trainer's quantizer makes
    factors = calibrate_disk(params, sorted(set(cfg.bits)), work, quant)
    size_model = SizeModel(params, cfg.groups, cfg.multiple, factors)
    stage["cost_s"] = time.perf_counter() - t

    # 3. the budget and the search
    if budget.kind == "latency_ms":
        limit = float(budget.value)
    elif budget.kind == "speedup":
        limit = costs["dense_ms"] / float(budget.value)
    elif budget.kind == "reference":
        limit = costs["whole"][budget.value]["median_ms"]
    else:
        limit = float(budget.value) * 1e6
    log(f"budget: {budget.describe()} -> "
        + (f"{limit:.1f} ms (dense {costs['dense_ms']:.1f} ms)" if budget.measure == "latency"
           else f"{limit / 1e6:.2f} MB (dense {size_model.disk_bytes({}) / 1e6:.2f} MB "
                "predicted)"))
    found = search_candidates(cfg.groups, sens, limit, budget.measure, costs=costs,
                              size_model=size_model, margins=cfg.margins, count=cfg.candidates,
                              resolution=cfg.resolution)
    for i, c in enumerate(found, 1):
        name = f"searched{i}"
        keep = plan_pruning({"params": params}, ratio_spec(c["plan"], cfg.groups),
                            multiple=cfg.multiple, scorer=cfg.scorer)
        models[name] = _Model(name, "searched", c["plan"], keep, ratio_spec(c["plan"],
                                                                            cfg.groups))
        log(f"  {name} (margin {c['margin']:.0%}): {plan_label(c['plan'], cfg.groups)}; "
            f"predicted EPE change {c['delta_epe']:+.3f}")

    # 4. fine-tune, save, load back
    t = time.perf_counter()
    refine = int(round(cfg.finetune_steps * (1 - cfg.refine_fraction)))
    n = data.samples
    loaded: dict[str, dict] = {}
    model_dir = work / "models"
    for m in _progress(list(models.values()), len(models), "fine-tune + save"):
        plan = m.plan or {}
        packed = size_model.is_packed(plan)
        if m.kind == "baseline":
            small = {"params": params}
            tuned_steps = 0
        else:
            log(f"{m.name}: {plan_label(plan, cfg.groups) if m.plan is not None else m.spec}")
            start_params, masks = sparsify(params, plan, cfg.groups)
            bits = plan_bits(params, plan, cfg.groups) if packed else 0
            run = fine_tune(trainer, start_params, lambda p: data.train_batch(p, n),
                            cfg.finetune_steps, cfg.lr, refine, log=log,
                            channel_masks=channel_masks(widths, m.keep), masks=masks,
                            bits=bits)
            small = shrink({"params": run.params}, m.keep)[0]
            tuned_steps = cfg.finetune_steps
        meta = {"source": "compression_search", "model": m.name, "kind_of_plan": m.kind,
                "plan": _jsonable_plan(m.plan), "finetune_steps": tuned_steps}
        path = model_dir / m.name
        if packed:
            save_checkpoint(path, small, meta, overwrite=True, quant=quant,
                            bits={"params": plan_bits(small["params"], plan, cfg.groups)})
        else:
            save_checkpoint(path, small, meta, overwrite=True)
        loaded[m.name] = load_checkpoint(path)
        m.info.update(disk_bytes=dir_size(path), checkpoint=str(path),
                      params=count_params(small["params"]))
    stage["finetune_s"] = time.perf_counter() - t

    # 5. measure every model for real: EPE, latency (interleaved), FLOPs
    t = time.perf_counter()
    frames = jax.device_put(jnp.asarray(val["frames"]))
    calls = {}
    for name, v in loaded.items():
        call = whole_forward(v, frames)
        sf = np.asarray(jax.block_until_ready(call()))
        models[name].info["metrics"] = evaluate_outputs(sf, val["gt"])
        widths_v = architecture_widths(v)

        def fn(p, f, w=widths_v):
            return forward(p, f, out_size=tuple(val["gt"].shape[1:3]), widths=w)[0]

        lowered = jax.jit(fn).lower(v, frames)
        cost = lowered.cost_analysis() or {}
        cost = (cost[0] if cost else {}) if isinstance(cost, list) else cost
        models[name].info["gflops_xla"] = float(cost.get("flops", float("nan"))) / 1e9
        models[name].info["conv_gflops_eq3"] = conv_eq3_flops(fn, v, frames)[0] / 1e9
        calls[name] = call
    log(f"timing {len(calls)} models x {cfg.repeats} interleaved rounds")
    stats = time_interleaved(calls, cfg.repeats, cfg.warmup)
    stage["measure_s"] = time.perf_counter() - t
    dense_ms = stats["dense"]["median_ms"]
    if budget.kind == "latency_ms":
        final_limit = float(budget.value)
    elif budget.kind == "speedup":
        final_limit = dense_ms / float(budget.value)
    elif budget.kind == "reference":
        final_limit = stats[budget.value]["median_ms"]
    else:
        final_limit = float(budget.value) * 1e6
    dense_epe = models["dense"].info["metrics"]["epe"]
    rows = []
    for name, m in models.items():
        s = stats[name]
        plan = m.plan
        ratios = None if plan is None else {g: c.ratio for g, c in plan.items()}
        pred_ms = None if ratios is None else predicted_latency(costs, ratios)
        # the prediction scaled to this round's dense time (the load may have changed)
        pred_ms = None if pred_ms is None else pred_ms * dense_ms / costs["dense_ms"]
        cost_value = s["median_ms"] if budget.measure == "latency" else m.info["disk_bytes"]
        met = m.info["metrics"]
        rows.append({
            "name": name, "kind": m.kind,
            "plan": _spec_label(m.spec) if m.kind in ("uniform", "hand") else
            plan_label(plan or {}, cfg.groups),
            "groups": _jsonable_plan(plan), "params": m.info["params"],
            "disk_bytes": m.info["disk_bytes"],
            "predicted_disk_bytes": None if plan is None else size_model.disk_bytes(plan),
            "gflops_xla": m.info["gflops_xla"], "conv_gflops_eq3": m.info["conv_gflops_eq3"],
            "latency_ms": s["median_ms"], "latency_p10_ms": s["p10_ms"],
            "latency_p90_ms": s["p90_ms"], "predicted_ms": pred_ms,
            "speedup": dense_ms / s["median_ms"],
            **{k: met[k] for k in ("epe", "d1", "fl", "sf")},
            "epe_change_vs_dense": met["epe"] / dense_epe - 1.0,
            "meets_budget": within_budget(cost_value, final_limit),
        })
    searched = [r for r in rows if r["kind"] == "searched"]
    ok = [r for r in searched if r["meets_budget"]]
    if ok:
        chosen = min(ok, key=lambda r: r["epe"])
    else:
        key = "latency_ms" if budget.measure == "latency" else "disk_bytes"
        chosen = min(searched, key=lambda r: r[key])
        log(f"WARNING: no searched candidate met the budget when measured; keeping the "
            f"cheapest, {chosen['name']}, {chosen[key] / final_limit - 1:+.1%} over it")
    chosen_model = loaded[chosen["name"]]
    plan = models[chosen["name"]].plan or {}
    meta = {"source": "compression_search", "budget": budget.describe(),
            "plan": _jsonable_plan(plan), "epe": chosen["epe"],
            "latency_ms": chosen["latency_ms"]}
    if size_model.is_packed(plan):
        save_checkpoint(save_to, {"params": jax.device_get(chosen_model["params"])}, meta,
                        overwrite=True, quant=quant,
                        bits={"params": plan_bits(chosen_model["params"], plan, cfg.groups)})
    else:
        save_checkpoint(save_to, jax.device_get(chosen_model), meta, overwrite=True)
    hand = [r for r in rows if r["kind"] == "hand" and r["meets_budget"]]
    best_hand = min(hand, key=lambda r: r["epe"]) if hand else None
    verdict = {"chosen": chosen["name"], "best_hand": best_hand["name"] if best_hand else None,
               "epe_change_vs_best_hand": (chosen["epe"] / best_hand["epe"] - 1.0)
               if best_hand else None}
    lat_checks = [(r["name"], r["predicted_ms"], r["latency_ms"]) for r in rows
                  if r["predicted_ms"] is not None and r["name"] != "dense"]
    size_checks = [(r["name"], r["predicted_disk_bytes"], r["disk_bytes"]) for r in rows
                   if r["predicted_disk_bytes"] is not None and r["name"] != "dense"]
    result = {
        "config": dataclasses.asdict(cfg),
        "budget": {"spec": cfg.budget, "kind": budget.kind, "describe": budget.describe(),
                   "measure": budget.measure, "limit": final_limit,
                   "search_limit": limit},
        "data": data.description,
        "timed_input": list(np.shape(val["frames"])),
        "environment": environment(),
        "load": {"before": load_before, "after": load_average()},
        "rows": rows,
        "chosen": chosen["name"],
        "chosen_meets_budget": chosen["meets_budget"],
        "chosen_checkpoint": str(save_to),
        "verdict": verdict,
        "candidates": [{"name": f"searched{i}", "plan": _jsonable_plan(c["plan"]),
                        "margin": c["margin"], "predicted_delta_epe": c["delta_epe"],
                        **{k: v for k, v in c.items() if k.startswith("predicted_")}}
                       for i, c in enumerate(found, 1)],
        "frontier": {
            "latency": pareto_front([(r["name"], r["latency_ms"], r["epe"]) for r in rows]),
            "size": pareto_front([(r["name"], r["disk_bytes"], r["epe"]) for r in rows])},
        "additivity": {"latency": _errors(lat_checks), "size": _errors(size_checks)},
        "sensitivity": {"key": sens["key"], "base": sens["base"],
                        "delta_epe": {g: {d: {f"{v:g}": x for v, x in t.items()}
                                          for d, t in dims.items()}
                                      for g, dims in sens["delta"].items()},
                        "evaluated": sens["evaluated"], "cached": sens["cached"],
                        "cache": str(cache)},
        "costs": {"dense_ms": costs["dense_ms"],
                  "saved_ms": {g: {f"{r:g}": v for r, v in t.items()}
                               for g, t in costs["saved_ms"].items()},
                  "saved_gflops": {g: {f"{r:g}": v for r, v in t.items()}
                                   for g, t in costs["saved_gflops"].items()},
                  "changed_blocks": {g: {f"{r:g}": v for r, v in t.items()}
                                     for g, t in costs["changed_blocks"].items()},
                  "option_ms": {g: {f"{r:g}": v for r, v in t.items()}
                                for g, t in costs["option_ms"].items()},
                  "blocks": costs["blocks"],
                  "whole_ms": {k: v["median_ms"] for k, v in costs["whole"].items()},
                  "disk_factor": factors,
                  "group_size_saved_mb": _size_savings(size_model, sens, cfg.groups)},
        "stage_s": stage,
        "wall_s": time.perf_counter() - start,
    }
    return result


def _spec_label(spec: Any) -> str:
    """A reference plan as given: ``"all r0.5"`` or ``"guidance_network=0.7; ..."``."""
    if isinstance(spec, Mapping):
        return "; ".join(f"{k}={v:g}" for k, v in spec.items())
    return f"all r{float(spec):g}"


def _errors(checks: Sequence[tuple[str, float, float]]) -> dict[str, Any]:
    rows = [{"name": n, "predicted": p, "measured": m, "error": p / m - 1.0}
            for n, p, m in checks]
    errs = [abs(r["error"]) for r in rows]
    return {"rows": rows, "mean_abs_error": float(np.mean(errs)) if errs else None,
            "max_abs_error": float(np.max(errs)) if errs else None}


def _size_savings(size_model: SizeModel, sens: Mapping[str, Any],
                  groups: Sequence[tuple[str, str]]) -> dict[str, dict[str, float]]:
    dense = size_model.disk_bytes({})
    out = {}
    for g, _ in groups:
        d = sens["delta"][g]
        out[g] = {Choice(r).label(): (dense - size_model.disk_bytes({g: Choice(r)})) / 1e6
                  for r in d["ratio"]}
        out[g].update({Choice(bits=b).label(): (dense - size_model.disk_bytes(
            {g: Choice(bits=b)})) / 1e6 for b in d["bits"]})
        out[g].update({Choice(percent=p).label(): (dense - size_model.disk_bytes(
            {g: Choice(percent=p)})) / 1e6 for p in d["percent"]})
    return out


# ----------------------------------------------------------------------------- reporting


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def to_markdown(result: Mapping[str, Any]) -> str:
    """The search's tables (models, frontier, additivity, sensitivity, costs) as Markdown."""
    env = result["environment"]
    cfg = result["config"]
    b = result["budget"]
    platform = env.get("platform", "?").upper()
    limit = f"{b['limit']:.1f} ms" if b["measure"] == "latency" else f"{b['limit'] / 1e6:.2f} MB"
    rows = result["rows"]
    by_name = {r["name"]: r for r in rows}
    chosen = by_name[result["chosen"]]
    lines = [
        f"# Compression search: the most accurate DeepLiDARFlow for a budget ({platform})",
        "",
        f"Machine load: {describe_load(result.get('load'))}.",
        "",
        f"Budget: {b['describe']} = {limit} (measured in the final rounds). Device: "
        f"{env.get('platform', '?')} ({env.get('cpu', '?')}, {env.get('cpu_count')} cores "
        f"visible), jax {env.get('versions', {}).get('jax', '?')}. Latency: median (p10-p90) "
        f"of {cfg['repeats']} interleaved rounds of the forward `predict_sceneflow` runs, on "
        f"the validation batch {result['timed_input']} (B x frames x H x W x C); on a shared "
        "machine compare rows with each other, not with other runs.",
        f"Data: {result['data']}.",
        f"Fine-tuning: {cfg['finetune_steps']} Adam steps at lr {cfg['lr']} (the last "
        f"{cfg['refine_fraction']:.0%} at lr / 10) for every searched and reference model, "
        "channel-masked with the one trainer; the dense baseline is not fine-tuned. Sizes: "
        "the saved checkpoint on disk (predicted in brackets).",
        "",
        f"**Chosen: `{chosen['name']}`** ({chosen['plan']}): EPE {chosen['epe']:.3f} "
        f"({_pct(chosen['epe_change_vs_dense'])} vs dense), {chosen['latency_ms']:.1f} ms "
        f"({chosen['speedup']:.2f}x), {chosen['disk_bytes'] / 1e6:.2f} MB; "
        + ("meets the budget." if result["chosen_meets_budget"] else
           "**does not meet the budget when measured** (no candidate did; the cheapest is "
           "kept)."),
    ]
    v = result["verdict"]
    if v["best_hand"]:
        change = v["epe_change_vs_best_hand"]
        lines.append(f"Versus the best hand-written plan that meets the budget (`{v['best_hand']}`,"
                     f" EPE {by_name[v['best_hand']]['epe']:.3f}): EPE {_pct(change)} ("
                     + ("better)." if change < 0 else "not better).")
                     + " With few validation frames and short fine-tuning, differences of a "
                     "few percent are within the noise.")
    else:
        lines.append("No hand-written plan meets the budget when measured.")
    lines += ["", "| model | kind | plan | params | disk MB (pred.) | GFLOPs XLA | conv GFLOPs "
              "eq.3 | latency ms (p10-p90) | pred. ms | speedup | EPE | vs dense | SF % | "
              "budget |", "|---" * 14 + "|"]
    for r in rows:
        pred_mb = "-" if r["predicted_disk_bytes"] is None else \
            f"{r['predicted_disk_bytes'] / 1e6:.2f}"
        pred_ms = "-" if r["predicted_ms"] is None else f"{r['predicted_ms']:.1f}"
        name = f"**{r['name']}**" if r["name"] == result["chosen"] else r["name"]
        lines.append(
            f"| {name} | {r['kind']} | {r['plan']} | {r['params']:,} | "
            f"{r['disk_bytes'] / 1e6:.2f} ({pred_mb}) | {r['gflops_xla']:.2f} | "
            f"{r['conv_gflops_eq3']:.2f} | {r['latency_ms']:.1f} ({r['latency_p10_ms']:.1f}-"
            f"{r['latency_p90_ms']:.1f}) | {pred_ms} | {r['speedup']:.2f}x | {r['epe']:.3f} | "
            f"{_pct(r['epe_change_vs_dense'])} | {r['sf']:.1f} | "
            f"{'yes' if r['meets_budget'] else 'no'} |")
    fr = result["frontier"]
    lines += ["", "Pareto frontier (no other model is both cheaper and more accurate): "
              f"EPE vs latency: {' -> '.join(fr['latency'])}; EPE vs size: "
              f"{' -> '.join(fr['size'])}.", ""]
    add = result["additivity"]
    lines.append("Interaction check (predicted latency = the dense forward's time minus, per "
                 "block, its time times one minus the product of the fractions the plan's "
                 "groups leave (measured one group at a time), scaled to this round's dense "
                 "time; size = the per-parameter payload times the measured compression "
                 "factor):")
    for what, unit in (("latency", "ms"), ("size", "MB")):
        a = add[what]
        if not a["rows"]:
            continue
        scale = 1.0 if what == "latency" else 1e-6
        items = ", ".join(f"{x['name']} {x['predicted'] * scale:.1f}/{x['measured'] * scale:.1f}"
                          f" ({x['error']:+.1%})" for x in a["rows"])
        lines.append(f"* {what} (predicted/measured {unit}): mean |error| "
                     f"{a['mean_abs_error']:.1%}, max {a['max_abs_error']:.1%}; {items}.")
    sens = result["sensitivity"]
    dims = [(d, k) for d in DIMENSIONS for k in
            next(iter(sens["delta_epe"].values()))[d]] if sens["delta_epe"] else []
    head = {"ratio": "r", "bits": "b", "percent": "p"}
    lines += ["", f"Sensitivity: EPE change when one group alone is compressed, no fine-tuning "
              f"(base EPE {sens['base']['epe']:.3f}; r = channels removed, b = weight bits, p = "
              f"% of its parameters zeroed; {sens['evaluated']} evaluated, {sens['cached']} "
              "from the cache).", "",
              "| group | " + " | ".join(f"{head[d]}{k}" for d, k in dims) + " |",
              "|---" * (len(dims) + 1) + "|"]
    for g, t in sens["delta_epe"].items():
        lines.append(f"| {g} | " + " | ".join(f"{t[d][k]:+.3f}" for d, k in dims) + " |")
    c = result["costs"]
    lines += ["", f"Cost per group option (blocks timed apart, {cfg['block_repeats']} rounds; "
              f"dense forward {c['dense_ms']:.1f} ms in those rounds): saved ms / saved GFLOPs "
              "(XLA) / saved MB on disk (predicted).", "",
              "| group | ratio | saved ms | saved GFLOPs | saved MB | blocks |",
              "|---|---|---|---|---|---|"]
    for g, t in c["saved_ms"].items():
        for r, ms in t.items():
            mb = c["group_size_saved_mb"].get(g, {}).get(f"r{r}")
            lines.append(f"| {g} | {r} | {ms:.1f} | {c['saved_gflops'][g][r]:.2f} | "
                         f"{'-' if mb is None else f'{mb:.2f}'} | "
                         f"{', '.join(c['changed_blocks'][g][r])} |")
    st = result["stage_s"]
    lines += ["", "Wall time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in st.items())
              + f"; total {result['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def plot(result: Mapping[str, Any], path: str | Path) -> None:
    """EPE vs measured latency and vs size on disk, with the Pareto frontier and the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepliflow_jax.fileio import savefig_atomic

    rows = result["rows"]
    style = {"baseline": ("o", "black"), "uniform": ("s", "tab:blue"),
             "hand": ("^", "tab:orange"), "searched": ("D", "tab:green")}
    b = result["budget"]
    chosen = next(r for r in rows if r["name"] == result["chosen"])
    # models within 15 % of a latency budget and of the chosen EPE crowd together: a third
    # panel zooms on them
    near = [r for r in rows if b["measure"] == "latency"
            and abs(r["latency_ms"] / b["limit"] - 1.0) <= 0.15
            and r["epe"] <= 1.15 * chosen["epe"]] if b["limit"] else []
    zoom = len(near) > 1
    fig, axes = plt.subplots(1, 3 if zoom else 2, figsize=(17 if zoom else 12, 4.6))
    platform = result["environment"].get("platform", "cpu").upper()
    panels = [(axes[0], "latency_ms", 1.0, f"latency per validation batch [ms] ({platform})",
               "latency", rows),
              (axes[1], "disk_bytes", 1e-6, "checkpoint size on disk [MB]", "size", rows)]
    if zoom:
        panels.append((axes[2], "latency_ms", 1.0, f"latency [ms] ({platform}), near the budget",
                       "latency", near))
    for i, (ax, key, scale, label, front, shown) in enumerate(panels):
        for kind, (marker, color) in style.items():
            pts = [r for r in shown if r["kind"] == kind]
            if kind == "uniform":
                pts = sorted(pts, key=lambda r: r[key])
            ax.plot([r[key] * scale for r in pts], [r["epe"] for r in pts], marker=marker,
                    color=color, linestyle="-" if kind == "uniform" else "", label=kind)
        names = result["frontier"][front]
        fr = [next(r for r in rows if r["name"] == n) for n in names]
        ax.step([r[key] * scale for r in fr], [r["epe"] for r in fr], where="post",
                color="gray", linestyle="--", linewidth=0.8, label="Pareto frontier")
        ax.plot([chosen[key] * scale], [chosen["epe"]], marker="*", markersize=16,
                color="tab:red", linestyle="", label=f"chosen ({chosen['name']})")
        crowded = {r["name"] for r in near} if zoom and i < 2 else set()
        for r in shown:
            if r["name"] not in crowded:  # named in the zoom panel instead
                ax.annotate(r["name"], (r[key] * scale, r["epe"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        if b["measure"] == front:
            ax.axvline(b["limit"] * scale, color="tab:red", linestyle=":", linewidth=1,
                       label=f"budget ({b['describe']})")
        if i == 2:
            xs, ys = [r[key] for r in shown], [r["epe"] for r in shown]
            pad_x, pad_y = 0.1 * (max(xs) - min(xs)) + 1e-3, 0.15 * (max(ys) - min(ys)) + 1e-3
            ax.set_xlim(min(xs + [b["limit"]]) - pad_x, max(xs + [b["limit"]]) + pad_x)
            ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
        ax.set_xlabel(label)
        ax.set_ylabel("EPE [px] (validation)")
        ax.legend(fontsize=7)
    load = describe_load(result.get("load"))
    load = "machine load not recorded" if load == "not recorded" else load
    fig.suptitle("Compression search: EPE vs measured latency and size (fine-tuned models; "
                 f"{load})", fontsize=10)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=120)
    plt.close(fig)
