"""The multiple-choice knapsack and the candidate plans that meet a budget."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from deepliflow_jax.search.budget import Budget
from deepliflow_jax.search.costs import predicted_latency
from deepliflow_jax.search.plans import (
    Choice,
    plan_label,
)
from deepliflow_jax.search.size import (
    SizeModel,
)


class InfeasibleBudgetError(ValueError):
    """No plan of the search space meets the budget (under the cost model).

    Attributes (set by :func:`unreachable`; None from :func:`solve`): ``fastest`` and
    ``slowest``, the reachable range (the most compressed plan's and the dense model's
    predicted ms or bytes), and ``nearest``, the nearest feasible budget as
    :meth:`.Budget.parse` reads it.
    """

    fastest: float | None = None
    slowest: float | None = None
    nearest: str | None = None


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


def plan_options(groups, sens, costs, size_model, measure):
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


def option_grid(groups: Sequence[tuple[str, str]], ratios: Sequence[float],
                bits: Sequence[int] = (), percents: Sequence[float] = ()) -> dict[str, Any]:
    """The search space as a sensitivity table of zeros (:func:`plan_options` reads its
    options from it): what the costs alone decide, before the sensitivities exist."""
    return {"delta": {g: {"ratio": dict.fromkeys(map(float, ratios), 0.0),
                          "bits": dict.fromkeys(map(int, bits), 0.0),
                          "percent": dict.fromkeys(map(float, percents), 0.0)}
                      for g, _ in groups}}


def _exact_cost(measure, costs, size_model):
    """The plan's exact (non-additive) predicted ms or bytes, and the dense model's."""
    if measure == "latency":
        return (lambda plan: predicted_latency(costs, {g: c.ratio for g, c in plan.items()}),
                costs["dense_ms"])
    return size_model.disk_bytes, size_model.disk_bytes({})


def unreachable(budget: Budget | str | None, limit: float, measure: str,
                options: Mapping[str, Sequence[tuple[Any, float, float]]],
                groups: Sequence[tuple[str, str]], *, costs: Mapping[str, Any] | None = None,
                size_model: SizeModel | None = None) -> InfeasibleBudgetError | None:
    """The error for a budget out of reach of the search space, or None when the most
    compressed plan meets it.

    The message names the reachable range (the most compressed plan's and the dense
    model's predicted cost) and the nearest feasible budget (of the budget's kind; a
    latency or size in ms or MB when ``budget`` is None).

    Args:
      budget: the budget as given (its kind words the nearest feasible one).
      limit: its figure: ms or bytes (:meth:`.Budget.figure`).
      measure: ``"latency"`` or ``"size"``.
      options: :func:`plan_options` (the most compressed plan: each group's largest saving).
      groups: the layer groups (the plan's label).
      costs, size_model: as :func:`search_candidates`.
    """
    exact, total = _exact_cost(measure, costs, size_model)
    fastest_plan = {g: max(o, key=lambda x: x[2])[0] for g, o in options.items()}
    fastest = exact(fastest_plan)
    if within_budget(fastest, limit):
        return None
    if budget is None:
        budget = Budget("latency_ms" if measure == "latency" else "size_mb", 1.0)
    budget = Budget.parse(budget)
    unit, scale, digits = ("ms", 1.0, 1) if measure == "latency" else ("MB", 1e-6, 2)
    what = f"{limit * scale:.{digits}f} {unit}"
    if budget.kind in ("speedup", "reference"):
        what = f"{budget.describe()} = {what}"
    nearest = budget.nearest_feasible(fastest, total)
    err = InfeasibleBudgetError(
        f"budget {what} is out of reach of the search space: its plans are predicted at "
        f"{fastest * scale:.{digits}f} {unit} (the most compressed: "
        f"{plan_label(fastest_plan, groups)}) to {total * scale:.{digits}f} {unit} (dense); "
        f"the nearest feasible budget is {nearest!r} (or allow more layer groups, larger "
        "ratios" + (", fewer bits or more sparsity)" if measure == "size" else ")"))
    err.fastest, err.slowest, err.nearest = float(fastest), float(total), nearest
    return err


def check_reachable(budget: Budget | str, limit: float, measure: str,
                    groups: Sequence[tuple[str, str]], ratios: Sequence[float],
                    bits: Sequence[int] = (), percents: Sequence[float] = (), *,
                    costs: Mapping[str, Any] | None = None,
                    size_model: SizeModel | None = None) -> None:
    """Raises :func:`unreachable`'s error when even the most compressed plan of the search
    space misses the budget: called as soon as the costs are known, before the
    sensitivities and the fine-tuning.

    Raises:
      InfeasibleBudgetError: the budget is out of reach (the message gives the reachable
        range and the nearest feasible budget).
    """
    sens = option_grid(groups, ratios, bits if measure == "size" else (),
                       percents if measure == "size" else ())
    err = unreachable(budget, limit, measure, plan_options(groups, sens, costs, size_model,
                                                           measure), groups, costs=costs,
                      size_model=size_model)
    if err is not None:
        raise err


def search_candidates(groups: Sequence[tuple[str, str]], sens: Mapping[str, Any],
                      limit: float, measure: str, *, costs: Mapping[str, Any] | None = None,
                      size_model: SizeModel | None = None, margins: Sequence[float] = (0.0,),
                      count: int = 3, resolution: int = 1000,
                      budget: Budget | str | None = None) -> list[dict[str, Any]]:
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
      budget: the budget as given (words the error; see :func:`unreachable`).

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
    options = plan_options(groups, sens, costs, size_model, measure)
    exact, total = _exact_cost(measure, costs, size_model)

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
                raise unreachable(budget, limit, measure, options, groups, costs=costs,
                                  size_model=size_model) or InfeasibleBudgetError(
                    f"no plan found for the budget {limit:g} (the solver's rounding)")
            continue
        plan = {g: c for g, c in plan.items() if c != Choice()}
        if any(p["plan"] == plan for p in out):
            continue
        key = "predicted_ms" if measure == "latency" else "predicted_bytes"
        out.append({"plan": plan, "margin": margin, "delta_epe": delta, key: exact(plan)})
        if len(out) >= count:
            break
    return out
