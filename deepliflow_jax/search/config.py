"""Settings of one compression search."""

from __future__ import annotations

import dataclasses
from typing import Any

from deepliflow_jax.scalars import check_number, check_numbers
from deepliflow_jax.search.budget import Budget
from deepliflow_jax.search.plans import (
    HAND_PLANS,
    LAYER_GROUPS,
    parse_plan,
)


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


#: The context network and the level-6 estimator: the smallest groups (few blocks to
#: compile and time).
_TINY_GROUPS = tuple((g, r) for g, r in LAYER_GROUPS if g in ("context", "estimator6"))

#: Named scales of a search (``compression_search --preset``). ``demo`` is the
#: dataclass's defaults; ``tiny`` is a smoke run of every stage but the fine-tuning (CI):
#: two small groups, one ratio, one bit width, a size budget (deterministic: the bytes on
#: disk), one candidate, no references, no fine-tuning (measured as pruned: the
#: channel-masked train step alone compiles for minutes on a 2-core CPU), one timed round.
SEARCH_PRESETS: dict[str, SearchConfig] = {
    "demo": SearchConfig(),
    "tiny": SearchConfig(
        budget="27.6MB", groups=_TINY_GROUPS, ratios=(0.5,), bits=(8,), percents=(),
        margins=(0.0,), candidates=1, uniform=(), plans=(), finetune_steps=0, repeats=1,
        block_repeats=1, warmup=0),
}
