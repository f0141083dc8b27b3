"""The whole compression search (``compression_search``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from deepliflow_jax.checkpoint import load_checkpoint, save_checkpoint
from deepliflow_jax.compress.structured import (
    count_params,
    plan_pruning,
    shrink,
)
from deepliflow_jax.data.dataset import Dataset
from deepliflow_jax.model.channels import (
    architecture_widths,
    unwrap_params,
    widths_of,
)
from deepliflow_jax.profile.environment import environment, load_average
from deepliflow_jax.search.budget import Budget, budget_cost, describe_figure
from deepliflow_jax.search.config import SearchConfig
from deepliflow_jax.search.costs import measure_costs, predicted_latency
from deepliflow_jax.search.finetune import fine_tune_pruned
from deepliflow_jax.search.measure import make_candidate, time_candidates
from deepliflow_jax.search.plans import (
    Choice,
    check_groups,
    group_ratios,
    jsonable_plan,
    plan_bits,
    plan_label,
    ratio_spec,
    sparsify,
    spec_label,
)
from deepliflow_jax.search.sensitivity import (
    measure_sensitivity,
    progress,
)
from deepliflow_jax.search.size import (
    SizeModel,
    calibrate_disk,
    dir_size,
)
from deepliflow_jax.search.solver import (
    check_reachable,
    pareto_front,
    search_candidates,
    within_budget,
)
from deepliflow_jax.train.trainer import Trainer


@dataclasses.dataclass
class _Model:
    name: str
    kind: str  # baseline, uniform, hand, searched
    plan: dict[str, Choice] | None  # per layer group (None: not expressible)
    keep: dict[str, np.ndarray] | None
    spec: Any  # plan_pruning ratio spec
    info: dict = dataclasses.field(default_factory=dict)


def run_search(cfg: SearchConfig, data: Dataset, baseline: Any, workdir: str | Path,
               *, save_to: str | Path | None = None, sensitivity_cache: str | Path | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole search (see :mod:`deepliflow_jax.search`).

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
    params = _dense_params(baseline, cfg.groups)
    trainer = Trainer(seed=cfg.seed, channel_masked=True)  # one compiled step for all

    # the costs first: a budget out of reach fails here, before the sensitivities and
    # the fine-tuning (minutes)
    t = time.perf_counter()
    models = _reference_models(cfg, params)
    costs = _reference_costs(cfg, params, models, data.val_batch()["frames"], log)
    # the packed checkpoints store what the trainer's quantizer makes
    factors = calibrate_disk(params, sorted(set(cfg.bits)), work, trainer.quant)
    size_model = SizeModel(params, cfg.groups, cfg.multiple, factors)
    stage["cost_s"] = time.perf_counter() - t

    # the budget's one figure (console, search, final check, report, json)
    figure = budget.figure(costs["dense_ms"], _medians(costs["whole"]))
    limit = figure["limit"]
    log(f"budget: {describe_figure(figure)}")
    check_reachable(budget, limit, budget.measure, cfg.groups, cfg.ratios, cfg.bits,
                    cfg.percents, costs=costs, size_model=size_model)

    t = time.perf_counter()
    sens = measure_sensitivity(params, data.val_batch(), cfg.groups, cfg.ratios, cfg.bits,
                               cfg.percents, multiple=cfg.multiple, scorer=cfg.scorer,
                               cache=cache, log=log)
    stage["sensitivity_s"] = time.perf_counter() - t

    found = search_candidates(cfg.groups, sens, limit, budget.measure, costs=costs,
                              size_model=size_model, margins=cfg.margins, count=cfg.candidates,
                              resolution=cfg.resolution, budget=budget)
    models.update(_searched_models(cfg, params, found, log))

    t = time.perf_counter()
    loaded = _fine_tune_and_save(cfg, data, params, models, trainer, size_model,
                                 work / "models", log)
    stage["finetune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    stats = _measure_models(loaded, models, data.val_batch(), cfg.repeats, cfg.warmup, work, log)
    stage["measure_s"] = time.perf_counter() - t
    dense_epe = models["dense"].info["metrics"]["epe"]
    rows = [_row(m, dense_epe, stats, costs, size_model, figure, cfg.groups)
            for m in models.values()]
    chosen = _choose(rows, limit, log)
    _save_chosen(save_to, loaded[chosen["name"]], models[chosen["name"]].plan or {}, chosen,
                 describe_figure(figure), size_model, trainer.quant, cfg.groups)
    return {
        "config": dataclasses.asdict(cfg),
        "budget": {"spec": cfg.budget, **figure, "text": describe_figure(figure)},
        "data": data.description,
        "timed_input": list(np.shape(data.val_batch()["frames"])),
        "environment": environment(),
        "load": {"before": load_before, "after": load_average()},
        "rows": rows,
        "chosen": chosen["name"],
        "chosen_meets_budget": chosen["meets_budget"],
        "chosen_checkpoint": str(save_to),
        "verdict": _verdict(rows, chosen, budget.measure),
        "candidates": [{"name": f"searched{i}", "plan": jsonable_plan(c["plan"]),
                        "margin": c["margin"], "predicted_delta_epe": c["delta_epe"],
                        **{k: v for k, v in c.items() if k.startswith("predicted_")}}
                       for i, c in enumerate(found, 1)],
        "frontier": {
            "latency": pareto_front([(r["name"], r["latency_ms"], r["epe"]) for r in rows]),
            "size": pareto_front([(r["name"], r["disk_bytes"], r["epe"]) for r in rows])},
        "additivity": _additivity(rows),
        "sensitivity": _sensitivity_table(sens, cache),
        "costs": _cost_table(costs, factors, size_model, sens, cfg.groups),
        "stage_s": stage,
        "wall_s": time.perf_counter() - start,
    }


def _dense_params(baseline: Any, groups: Sequence[tuple[str, str]]) -> Any:
    """The dense model's bare parameters on the host (its layer groups checked)."""
    params = jax.tree.map(np.asarray, unwrap_params(baseline)[0])
    if architecture_widths(params) is not None:
        raise ValueError("the search starts from the original (dense) network; got a "
                         "structured model")
    check_groups(groups, widths_of(params))
    return params


def _medians(stats: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {name: s["median_ms"] for name, s in stats.items()}


def _reference_models(cfg: SearchConfig, params: Any) -> dict[str, _Model]:
    """The dense baseline and every reference plan (uniform ratios, hand-written plans)."""
    widths = widths_of(params)
    models: dict[str, _Model] = {"dense": _Model("dense", "baseline", {}, None, None)}
    for name, kind, spec in cfg.references():
        keep = plan_pruning({"params": params}, spec, multiple=cfg.multiple, scorer=cfg.scorer)
        ratios = group_ratios(spec, cfg.groups, widths)
        plan = None if ratios is None else {g: Choice(r) for g, r in ratios.items() if r}
        models[name] = _Model(name, kind, plan, keep, spec)
    return models


def _reference_costs(cfg: SearchConfig, params: Any, models: Mapping[str, _Model],
                     frames: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """The block costs of every searched ratio and of the references' ratios, with the
    whole reference models timed in the same rounds (:func:`.costs.measure_costs`)."""
    cost_ratios = {g: set(cfg.ratios) for g, _ in cfg.groups}
    whole = {}
    for m in models.values():
        if m.kind == "baseline":
            continue
        for g, c in (m.plan or {}).items():
            cost_ratios[g].add(c.ratio)
        whole[m.name] = shrink({"params": params}, m.keep)[0]
    log(f"cost: timing blocks for {sum(len(v) for v in cost_ratios.values())} (group, ratio) "
        f"options and {len(whole) + 1} whole models")
    return measure_costs(params, frames, cfg.groups,
                         {g: sorted(v) for g, v in cost_ratios.items()},
                         multiple=cfg.multiple, scorer=cfg.scorer, whole=whole,
                         repeats=cfg.block_repeats, warmup=cfg.warmup, log=log)


def _searched_models(cfg: SearchConfig, params: Any, found: Sequence[Mapping[str, Any]],
                     log: Callable[[str], None]) -> dict[str, _Model]:
    models = {}
    for i, c in enumerate(found, 1):
        name = f"searched{i}"
        spec = ratio_spec(c["plan"], cfg.groups)
        keep = plan_pruning({"params": params}, spec, multiple=cfg.multiple, scorer=cfg.scorer)
        models[name] = _Model(name, "searched", c["plan"], keep, spec)
        log(f"  {name} (margin {c['margin']:.0%}): {plan_label(c['plan'], cfg.groups)}; "
            f"predicted EPE change {c['delta_epe']:+.3f}")
    return models


def _fine_tune_and_save(cfg: SearchConfig, data: Dataset, params: Any,
                        models: Mapping[str, _Model], trainer: Trainer, size_model: SizeModel,
                        model_dir: Path, log: Callable[[str], None]) -> dict[str, dict]:
    """Every model but the baseline fine-tuned (channel-masked, its bits and sparsity held),
    shrunk, saved with ``save_checkpoint`` and loaded back: ``{name: variables}``."""
    refine = int(round(cfg.finetune_steps * (1 - cfg.refine_fraction)))
    n = data.num_samples
    loaded: dict[str, dict] = {}
    for m in progress(list(models.values()), len(models), "fine-tune + save"):
        plan = m.plan or {}
        packed = size_model.is_packed(plan)
        if m.kind == "baseline":
            small = {"params": params}
            tuned_steps = 0
        else:
            log(f"{m.name}: {plan_label(plan, cfg.groups) if m.plan is not None else m.spec}")
            start_params, masks = sparsify(params, plan, cfg.groups)
            bits = plan_bits(params, plan, cfg.groups) if packed else 0
            _, small = fine_tune_pruned(trainer, start_params, m.keep,
                                        lambda p: data.train_batch(p, n), cfg.finetune_steps,
                                        cfg.lr, refine, masks=masks, bits=bits, log=log)
            tuned_steps = cfg.finetune_steps
        meta = {"source": "compression_search", "model": m.name, "kind_of_plan": m.kind,
                "plan": jsonable_plan(m.plan), "finetune_steps": tuned_steps}
        path = model_dir / m.name
        if packed:
            save_checkpoint(path, small, meta, overwrite=True, quant=trainer.quant,
                            bits={"params": plan_bits(small["params"], plan, cfg.groups)})
        else:
            save_checkpoint(path, small, meta, overwrite=True)
        loaded[m.name] = load_checkpoint(path)
        m.info.update(disk_bytes=dir_size(path), checkpoint=str(path),
                      params=count_params(small["params"]))
    return loaded


def _measure_models(loaded: Mapping[str, dict], models: Mapping[str, _Model],
                    val: Mapping[str, np.ndarray], repeats: int, warmup: int, workdir: Path,
                    log: Callable[[str], None]) -> dict[str, dict]:
    """EPE and FLOPs of every saved model as loaded back (into its ``info``), and its
    latency timed in interleaved rounds (the trade-off's measurement,
    :func:`.measure.make_candidate`): ``{name: timer statistics}``."""
    cands = []
    for name, v in loaded.items():
        m = models[name]
        c = make_candidate(name, 0.0, v["params"], architecture_widths(v), val, workdir,
                           disk=m.info["disk_bytes"], log=log)
        m.info.update(metrics=c.extra["metrics"], conv_gflops_eq3=c.info["conv_gflops_eq3"],
                      gflops_xla=(c.info["flops"] or float("nan")) / 1e9)
        cands.append(c)
    log(f"timing {len(cands)} models x {repeats} interleaved rounds")
    time_candidates(cands, repeats, warmup, log)
    return {c.name: c.stats for c in cands}


def _row(m: _Model, dense_epe: float, stats: Mapping[str, dict], costs: Mapping[str, Any],
         size_model: SizeModel, figure: Mapping[str, Any],
         groups: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """One model's row: what it is, its measured and predicted costs, EPE, the budget
    (``budget_cost``: its cost in the unit of the budget's figure, :func:`.budget_cost`)."""
    s = stats[m.name]
    dense_ms = stats["dense"]["median_ms"]
    plan = m.plan
    ratios = None if plan is None else {g: c.ratio for g, c in plan.items()}
    pred_ms = None if ratios is None else predicted_latency(costs, ratios)
    # the prediction scaled to this round's dense time (the load may have changed)
    pred_ms = None if pred_ms is None else pred_ms * dense_ms / costs["dense_ms"]
    cost_value = budget_cost(figure, s["median_ms"], dense_ms, m.info["disk_bytes"])
    met = m.info["metrics"]
    return {
        "name": m.name, "kind": m.kind,
        "plan": spec_label(m.spec) if m.kind in ("uniform", "hand") else
        plan_label(plan or {}, groups),
        "groups": jsonable_plan(plan), "params": m.info["params"],
        "disk_bytes": m.info["disk_bytes"],
        "predicted_disk_bytes": None if plan is None else size_model.disk_bytes(plan),
        "gflops_xla": m.info["gflops_xla"], "conv_gflops_eq3": m.info["conv_gflops_eq3"],
        "latency_ms": s["median_ms"], "latency_p10_ms": s["p10_ms"],
        "latency_p90_ms": s["p90_ms"], "predicted_ms": pred_ms,
        "speedup": dense_ms / s["median_ms"],
        **{k: met[k] for k in ("epe", "d1", "fl", "sf")},
        "epe_change_vs_dense": met["epe"] / dense_epe - 1.0,
        "budget_cost": cost_value,
        "meets_budget": within_budget(cost_value, figure["limit"]),
    }


def _choose(rows: Sequence[dict], limit: float, log: Callable[[str], None]) -> dict[str, Any]:
    """The searched row of lowest EPE that meets the budget when measured (else the
    cheapest searched row, with a warning)."""
    searched = [r for r in rows if r["kind"] == "searched"]
    ok = [r for r in searched if r["meets_budget"]]
    if ok:
        return min(ok, key=lambda r: r["epe"])
    chosen = min(searched, key=lambda r: r["budget_cost"])
    log(f"WARNING: no searched candidate met the budget when measured; keeping the "
        f"cheapest, {chosen['name']}, {chosen['budget_cost'] / limit - 1:+.1%} over it")
    return chosen


def _save_chosen(save_to: Path, model: Mapping[str, Any], plan: Mapping[str, Choice],
                 chosen: Mapping[str, Any], budget: str, size_model: SizeModel,
                 quant: Any, groups: Sequence[tuple[str, str]]) -> None:
    """The chosen model saved where the caller asks (packed when it has bits or sparsity)."""
    meta = {"source": "compression_search", "budget": budget,
            "plan": jsonable_plan(plan), "epe": chosen["epe"],
            "latency_ms": chosen["latency_ms"]}
    if size_model.is_packed(plan):
        save_checkpoint(save_to, {"params": jax.device_get(model["params"])}, meta,
                        overwrite=True, quant=quant,
                        bits={"params": plan_bits(model["params"], plan, groups)})
    else:
        save_checkpoint(save_to, jax.device_get(model), meta, overwrite=True)


def _verdict(rows: Sequence[dict], chosen: Mapping[str, Any], measure: str) -> dict[str, Any]:
    """The chosen model against the reference points, said plainly.

    ``best_hand``: the most accurate hand-written plan that meets the budget, and the
    chosen model's EPE change against it. ``worse_than``: every reference (uniform and
    hand-written plans; the dense model only when it dominates) more accurate than the
    chosen model, with the chosen model's relative EPE, latency and size against it and
    whether it *dominates* the chosen model (at least as accurate and no costlier in the
    budget's measure), those first. ``summary``: one sentence each, and one when no
    reference is more accurate (the report prints them).

    Args:
      rows: every model's row (:func:`_row`).
      chosen: the chosen row.
      measure: the budget's ``"latency"`` or ``"size"`` (what "costlier" means).
    """
    hand = [r for r in rows if r["kind"] == "hand" and r["meets_budget"]]
    best_hand = min(hand, key=lambda r: r["epe"]) if hand else None
    key = "latency_ms" if measure == "latency" else "disk_bytes"
    worse_than = []
    for r in rows:
        if r["kind"] not in ("baseline", "uniform", "hand") or not r["epe"] < chosen["epe"]:
            continue
        dominates = r[key] <= chosen[key]
        if r["kind"] == "baseline" and not dominates:  # dense is expected to be more accurate
            continue
        worse_than.append({"name": r["name"], "kind": r["kind"], "epe": r["epe"],
                           "latency_ms": r["latency_ms"], "disk_bytes": r["disk_bytes"],
                           "meets_budget": r["meets_budget"], "dominates": dominates,
                           "epe_change": chosen["epe"] / r["epe"] - 1.0,
                           "latency_change": chosen["latency_ms"] / r["latency_ms"] - 1.0,
                           "size_change": chosen["disk_bytes"] / r["disk_bytes"] - 1.0})
    worse_than.sort(key=lambda w: (not w["dominates"], -w["epe_change"]))
    return {"chosen": chosen["name"], "best_hand": best_hand["name"] if best_hand else None,
            "epe_change_vs_best_hand": (chosen["epe"] / best_hand["epe"] - 1.0)
            if best_hand else None,
            "worse_than": worse_than,
            "dominated_by": [w["name"] for w in worse_than if w["dominates"]],
            "summary": _verdict_sentences(
                chosen, worse_than, measure,
                any(r["kind"] in ("uniform", "hand") for r in rows))}


def _change(x: float, more: str, less: str) -> str:
    """``+0.598`` -> ``"59.8 % slower"``."""
    return f"{abs(x):.1%} {more if x > 0 else less}".replace("%", " %")


def _verdict_sentences(chosen: Mapping[str, Any], worse_than: Sequence[Mapping[str, Any]],
                       measure: str, references: bool) -> list[str]:
    name = chosen["name"]
    if not worse_than and not references:
        return ["No reference plan was measured (no uniform or hand-written plans)."]
    if not worse_than:
        return [f"The searched plan `{name}` is at least as accurate (EPE) as every reference "
                "plan."]
    out = []
    for w in worse_than:
        if measure == "latency":
            cost = (f"{_change(w['latency_change'], 'slower', 'faster')} "
                    f"({chosen['latency_ms']:.1f} vs {w['latency_ms']:.1f} ms)")
        else:
            cost = (f"{_change(w['size_change'], 'larger', 'smaller')} on disk "
                    f"({chosen['disk_bytes'] / 1e6:.2f} vs {w['disk_bytes'] / 1e6:.2f} MB)")
        budget = "meets the budget" if w["meets_budget"] else "misses the budget"
        end = (f"`{w['name']}` dominates it" if w["dominates"] else
               f"`{w['name']}` is more accurate but costlier")
        out.append(f"The searched plan `{name}` is {_change(w['epe_change'], 'worse', 'better')}"
                   f" in EPE ({chosen['epe']:.3f} vs {w['epe']:.3f}) and {cost} than reference "
                   f"`{w['name']}` (which {budget}); {end}.")
    return out


def _additivity(rows: Sequence[dict]) -> dict[str, Any]:
    """Predicted against measured latency and size of every compressed row."""
    lat_checks = [(r["name"], r["predicted_ms"], r["latency_ms"]) for r in rows
                  if r["predicted_ms"] is not None and r["name"] != "dense"]
    size_checks = [(r["name"], r["predicted_disk_bytes"], r["disk_bytes"]) for r in rows
                   if r["predicted_disk_bytes"] is not None and r["name"] != "dense"]
    return {"latency": _errors(lat_checks), "size": _errors(size_checks)}


def _sensitivity_table(sens: Mapping[str, Any], cache: Path) -> dict[str, Any]:
    return {"key": sens["key"], "base": sens["base"],
            "delta_epe": {g: {d: {f"{v:g}": x for v, x in t.items()}
                              for d, t in dims.items()}
                          for g, dims in sens["delta"].items()},
            "evaluated": sens["evaluated"], "cached": sens["cached"],
            "cache": str(cache)}


def _cost_table(costs: Mapping[str, Any], factors: Mapping[int, float], size_model: SizeModel,
                sens: Mapping[str, Any], groups: Sequence[tuple[str, str]]) -> dict[str, Any]:
    def by_ratio(table):
        return {g: {f"{r:g}": v for r, v in t.items()} for g, t in table.items()}

    return {"dense_ms": costs["dense_ms"],
            "saved_ms": by_ratio(costs["saved_ms"]),
            "saved_gflops": by_ratio(costs["saved_gflops"]),
            "changed_blocks": by_ratio(costs["changed_blocks"]),
            "option_ms": by_ratio(costs["option_ms"]),
            "blocks": costs["blocks"],
            "whole_ms": _medians(costs["whole"]),
            "disk_factor": factors,
            "group_size_saved_mb": _size_savings(size_model, sens, groups)}


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
