"""Tables (laid out like the paper's Tables II and III), JSON/CSV and plots."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepliflow_jax.fileio import write_json_atomic, write_text_atomic
from deepliflow_jax.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    METRIC_NAMES,
    bootstrap_interval,
    default_aggregate,
)
from deepliflow_jax.model.layers import resolve_conv_impl
from deepliflow_jax.profile.environment import cpu_info, describe_load
from deepliflow_jax.study.config import StudyConfig
from deepliflow_jax.study.dynamic import trajectory_table

CONFIDENCE = 0.95
INTERVAL_METHOD = {"method": "percentile bootstrap over validation frames, each resample's "
                             "counts pooled as the evaluation pools them; paired with the "
                             "baseline on the same resamples (vs_baseline)",
                   "confidence": CONFIDENCE, "resamples": BOOTSTRAP_RESAMPLES,
                   "seed": BOOTSTRAP_SEED}


def _finite_or_none(pair) -> list:
    # JSON has no NaN: an interval that cannot be computed is null
    return [float(x) if np.isfinite(x) else None for x in pair]


def intervals(records: dict[str, dict], cfg: StudyConfig) -> dict[str, dict]:
    """95 % bootstrap intervals of every record that kept its per-frame counts.

    Frames are resampled (``metrics.bootstrap_interval``: seeded, ``BOOTSTRAP_RESAMPLES``
    resamples, each pooled with the study's aggregation), so a rerun gives the same
    intervals. Every configuration is paired with the baseline: the interval of
    ``metric - baseline's metric`` on the same resampled frames.

    Args:
      records: the study's records (``frame_counts`` of the validation frames: records
        written before the counts were kept have none and get no interval).
      cfg: the study's configuration (its ``validity`` picks the aggregation).

    Returns:
      ``{key: {"frames": N, "metrics": {name: [low, high]}, "vs_baseline": {name:
      [low, high]}}}`` (``vs_baseline`` for every record but the baseline, when the
      baseline has counts of the same frames); an interval that cannot be computed
      (a NaN resample) is ``[None, None]``.
    """
    aggregate = default_aggregate(cfg.validity)
    base = (records.get("baseline") or {}).get("frame_counts")
    out = {}
    for key, rec in records.items():
        counts = rec.get("frame_counts")
        if not counts:
            continue
        kw = {"confidence": CONFIDENCE, "resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED}
        entry = {"frames": len(counts["count"]),
                 "metrics": {k: _finite_or_none(v) for k, v in
                             bootstrap_interval(counts, aggregate, **kw).items()}}
        if base and key != "baseline" and len(base["count"]) == len(counts["count"]):
            entry["vs_baseline"] = {
                k: _finite_or_none(v) for k, v in
                bootstrap_interval(counts, aggregate, baseline=base, **kw).items()}
        out[key] = entry
    return out


def interval_note(ci: dict[str, dict]) -> str:
    """What the bracketed intervals of ``tables.md`` are."""
    frames = sorted({e["frames"] for e in ci.values()})
    few = (" With a single frame an interval is a point: it says nothing."
           if frames and frames[0] < 2 else "")
    return (f"Intervals: [low, high] after a number is its {CONFIDENCE:.0%} percentile "
            f"bootstrap interval over the {'/'.join(map(str, frames)) or '?'} validation "
            f"frames ({BOOTSTRAP_RESAMPLES} resamples of the frames, seed {BOOTSTRAP_SEED}, "
            "each resample's counts pooled as the evaluation pools them). It covers which "
            "frames were drawn, not the training's randomness (--seeds). Rows without one "
            "(aware after lr1 only, dynamic before fine-tuning) are validations during "
            "training whose per-frame counts are not kept." + few)


def _fmt(value: float, interval: list | None, digits: int = 3) -> str:
    if not interval or interval[0] is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _cells(m: dict, ci: dict | None) -> list[str]:
    """The EPE and SF cells of a row, with their intervals when ``ci`` has them."""
    ci = ci or {}
    return [_fmt(m["epe"], ci.get("epe")), _fmt(m["sf"], ci.get("sf"))]


def _verdict(low, high) -> str:
    if low is None:
        return "no interval"
    if high < 0:
        return "lower"
    if low > 0:
        return "higher"
    return "not shown"


def difference_table(records: dict[str, dict], ci: dict[str, dict]) -> str:
    """Each configuration minus the baseline, with the paired interval and the verdict.

    A configuration is said to have a lower (better) or higher (worse) EPE / SF outlier
    rate than the baseline only where the paired interval excludes 0; otherwise "not
    shown" (the frames do not support a difference either way).
    """
    base = (records.get("baseline") or {}).get("metrics")
    lines = ["| configuration | EPE - baseline [95 % interval] | EPE | SF % - baseline "
             "[95 % interval] | SF |", "|---|---|---|---|---|"]
    if not base:
        return "\n".join(lines)
    for key, rec in records.items():
        pair = (ci.get(key) or {}).get("vs_baseline")
        if pair is None or "metrics" not in rec:
            continue
        row = [key]
        for name in ("epe", "sf"):
            diff, (low, high) = rec["metrics"][name] - base[name], pair[name]
            cell = f"{diff:+.3f}" if low is None else f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]"
            row += [cell, _verdict(low, high)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def best_levels(records: dict[str, dict], cfg: StudyConfig) -> tuple[float, int]:
    """The pruning percent and bit width with the lowest aware-training EPE.

    Without aware records (a study of the post-training parts only) the post-training
    EPE decides; with neither, the smallest pruning level and the largest bit width.
    The dynamic threshold's final level (when that part ran and pruned anything)
    competes with its fine-tuned EPE.
    """

    def epe(name):
        for kind in ("aware", "post"):
            if f"{kind}_{name}" in records:  # a failed (diverged) run: never the best
                return records[f"{kind}_{name}"].get("metrics", {}).get("epe", float("inf"))
        return float("inf")

    # ties go to the mildest level
    levels = [(epe(f"prune_{p:g}"), p) for p in cfg.prune_percents]
    dyn = records.get("dynamic_prune", {})
    if "dynamic_prune" in cfg.experiments and dyn.get("percent", 0) > 0 and "metrics" in dyn:
        levels.append((dyn["metrics"]["epe"], dyn["percent"]))
    best_p = min(levels)[1]
    best_b = min(sorted(cfg.quant_bits, reverse=True), key=lambda b: epe(f"quant_{b}"))
    return best_p, best_b


def _ms(rec: dict) -> str:
    t = rec.get("time") or {}
    return f"{t['median_ms']:.1f}" if "median_ms" in t else "-"


def _row(rec: dict | None, ci: dict | None = None) -> list[str]:
    if rec is None:
        return ["-"] * 4
    bits = f"{rec['bits']} bits" if rec.get("bits") else "32 bits"
    if rec.get("failed"):
        return [f"{rec['percent']:g}%" if rec.get("percent") else "-", bits, "failed",
                "failed"]
    m = rec["metrics"]
    pruning = f"{rec['percent']:g}%" if rec.get("percent") else f"{rec['zero_percent']:.2f}%"
    return [pruning, bits, *_cells(m, ci)]


def _ci_of(ci: dict | None, key: str) -> dict | None:
    return ((ci or {}).get(key) or {}).get("metrics")


def validity_note(cfg: StudyConfig) -> str:
    """Which evaluation produced the numbers (``StudyConfig.validity``)."""
    if cfg.validity == "devkit":
        return ("Evaluation: validity 'devkit' (the KITTI devkit's rule: D0 / D1 / Fl on the "
                "pixels where that quantity's ground truth is valid, SF and EPE where all "
                "three are; pixels pooled over the set). Not comparable with the paper's "
                "numbers.")
    return ("Evaluation: validity 'original' (the original's rule, as the paper: every "
            "quantity on the pixels with a valid first-frame disparity; frames averaged).")


def table2(records: dict[str, dict], cfg: StudyConfig, ci: dict | None = None) -> str:
    """Table II: post vs aware, per pruning level and bit width (EPE, KEO = SF %, time);
    with ``ci`` (:func:`intervals`) each EPE and SF carries its interval."""
    base, zero = records.get("baseline"), records.get("zero_flow")
    lines = ["| kind | pruning | quantization | EPE | KEO (SF %) | kind | pruning | "
             "quantization | EPE | KEO (SF %) | time (ms, aware) |", "|---" * 11 + "|"]
    if base:
        b = " | ".join(_cells(base["metrics"], _ci_of(ci, "baseline")))
        lines.append(f"| original | | 32 bits | {b} | original | | 32 bits | {b} | "
                     f"{_ms(base)} |")
    keys = [f"prune_{p:g}" for p in cfg.prune_percents] + [f"quant_{b}" for b in cfg.quant_bits]
    hybrid = sorted(k[len("hybrid_post_"):] for k in records if k.startswith("hybrid_post_"))
    keys += [f"hybrid_{h}" for h in hybrid]
    for k in keys:
        post_key = (k.replace("hybrid_", "hybrid_post_") if k.startswith("hybrid")
                    else f"post_{k}")
        aware_key = (k.replace("hybrid_", "hybrid_aware_") if k.startswith("hybrid")
                     else f"aware_{k}")
        post, aware = records.get(post_key), records.get(aware_key)
        lines.append("| post | " + " | ".join(_row(post, _ci_of(ci, post_key))) + " | aware | "
                     + " | ".join(_row(aware, _ci_of(ci, aware_key)))
                     + f" | {_ms(aware) if aware else '-'} |")
    dyn = records.get("dynamic_prune")
    if dyn:  # the dynamic threshold's final model: aware by construction
        lines.append("| post | " + " | ".join(_row(None)) + " | dynamic | "
                     + " | ".join(_row(dyn, _ci_of(ci, "dynamic_prune")))
                     + f" | {_ms(dyn)} |")
    if zero:
        z = " | ".join(_cells(zero["metrics"], _ci_of(ci, "zero_flow")))
        lines.append(f"| zero flow (reference) | | | {z} | | | | | | |")
    return "\n".join(lines)


def table3(records: dict[str, dict], cfg: StudyConfig, ci: dict | None = None) -> str:
    """Table III ablation: post / aware at lr1 / aware after lr2, at the extreme levels;
    with ``ci`` the rows of recorded models (post, the final aware model) carry their
    intervals (the lr1 phase's and "before fine-tuning" models are not kept)."""
    lines = ["| no | configuration | mode | EPE | KEO (SF %) |", "|---|---|---|---|---|"]
    if "baseline" in records:
        b = " | ".join(_cells(records["baseline"]["metrics"], _ci_of(ci, "baseline")))
        lines.append(f"| - | original | - | {b} |")
    picks = []
    if cfg.quant_bits:
        picks += [(f"quant_{b}", f"{b} bits") for b in (max(cfg.quant_bits), min(cfg.quant_bits))]
    if cfg.prune_percents:
        picks += [(f"prune_{p:g}", f"{p:g} % pruning")
                  for p in (min(cfg.prune_percents), max(cfg.prune_percents))]
    n = 0
    for key, label in dict.fromkeys(picks):
        post, aware = records.get(f"post_{key}"), records.get(f"aware_{key}")
        rows = []
        if post:
            rows.append(("post", post["metrics"], _ci_of(ci, f"post_{key}")))
        if aware:
            phases = aware.get("phases", {})  # none when the run failed
            final = phases.get("lr2")
            rows.append((f"aware lr1={cfg.lr1:g}", phases.get("lr1"), None))
            # the lr2 phase's model is the recorded one (its counts kept) when they agree
            rows.append((f"aware lr1 then lr2={cfg.lr2:g}", final,
                         _ci_of(ci, f"aware_{key}") if final == aware.get("metrics") else None))
        for mode, m, interval in rows:
            n += 1
            cells = "failed | failed" if m is None else " | ".join(_cells(m, interval))
            lines.append(f"| {n} | {label} | {mode} | {cells} |")
    dyn = records.get("dynamic_prune", {})
    if "before" in dyn:  # its final level, before and after that level's fine-tuning
        label = f"{dyn['percent']:g} % pruning (dynamic threshold)"
        final = dyn["phases"].get("lr2")
        for mode, m, interval in (
                ("dynamic, before fine-tuning", dyn["before"], None),
                (f"dynamic lr1={cfg.lr1:g}", dyn["phases"].get("lr1"), None),
                (f"dynamic lr1 then lr2={cfg.lr2:g}", final,
                 _ci_of(ci, "dynamic_prune") if final == dyn.get("metrics") else None)):
            if m is not None:  # a phase of 0 steps has no row
                n += 1
                lines.append(f"| {n} | {label} | {mode} | {' | '.join(_cells(m, interval))} |")
    return "\n".join(lines)


def csv_text(records: dict[str, dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["key", "kind", "percent", "bits", "zero_percent", "epe", "d0", "d1", "fl", "sf",
                "time_ms", "nonfinite", "failed"])
    for k, r in records.items():
        m = r.get("metrics", {})
        w.writerow([k, r.get("kind"), r.get("percent", ""), r.get("bits", ""),
                    r.get("zero_percent", ""), *(m.get(x, "") for x in
                                                 ("epe", "d0", "d1", "fl", "sf")),
                    (r.get("time") or {}).get("median_ms", ""), m.get("nonfinite", ""),
                    r.get("failed", "")])
    return buf.getvalue()


def time_load_note(records: dict[str, dict]) -> str | None:
    """A warning when the time column was measured while other work shared the cores.

    Each record's ``time`` holds the machine's load before and after its timing
    (``profile.environment.load_average``); a load above the core count marks it loaded.

    Returns:
      One line naming how many configurations were timed loaded and the worst load
      (:func:`~deepliflow_jax.profile.environment.describe_load`), or None when none was
      (or no load was recorded, e.g. records of an older run).
    """
    loads = [t["load"] for r in records.values() if (t := r.get("time") or {}).get("load")]
    shared = [x for x in loads if x["before"].get("loaded") or x["after"].get("loaded")]
    if not shared:
        return None
    worst = max(shared, key=lambda x: max(x["before"]["load1"], x["after"]["load1"]))
    return (f"WARNING: the time column was measured on a loaded machine: {len(shared)} of "
            f"{len(loads)} configurations timed while other work shared the cores (worst: "
            f"{describe_load(worst)}); rerun on an idle machine for the model's speed.")


def _runs(results_json: Path, run: dict | None) -> list[dict]:
    """The runs recorded in an earlier ``results.json`` (its ``wall_s`` as one run when it
    predates the list), then ``run``."""
    try:
        saved = json.loads(results_json.read_text())
    except (FileNotFoundError, ValueError):
        saved = {}
    runs = list(saved.get("runs") or ([{"wall_s": saved["wall_s"]}] if saved.get("wall_s")
                                      else []))
    return runs + ([run] if run else [])


def write_all(out_dir: Path, records: dict[str, dict], cfg: StudyConfig,
              run: dict | None = None, extra_plots: Sequence[Path] = ()) -> dict[str, Any]:
    """Writes results.json, results.csv, tables.md and the plots; returns the paths.

    Args:
      out_dir: the results folder.
      records: the configurations' records.
      cfg: the study's configuration.
      run: this run's ``{"started", "wall_s"}``, appended to the ``runs`` of the folder's
        earlier ``results.json`` (a resumed or repeated run keeps the earlier ones);
        ``results.json``'s ``wall_s`` is their sum (workers running at once each count).
        None: the runs stay as they were.
      extra_plots: figures written by the study itself (Fig. 5), listed with the plots.

    Returns:
      ``{"json", "csv", "tables": path, "plots": [paths]}`` (str).
    """
    out_dir = Path(out_dir)
    machine = cpu_info()
    runs = _runs(out_dir / "results.json", run)
    ci = intervals(records, cfg)
    paths = {
        "json": write_json_atomic(out_dir / "results.json",
                                  {"config": cfg.to_dict(), "validity": cfg.validity,
                                   "machine": machine,
                                   # the model's form ("auto" as resolved here)
                                   "conv_impl": resolve_conv_impl("auto"),
                                   "records": records, "intervals": ci,
                                   "interval_method": INTERVAL_METHOD,
                                   "wall_s": sum(r["wall_s"] for r in runs), "runs": runs}),
        "csv": write_text_atomic(out_dir / "results.csv", csv_text(records)),
    }
    base = records.get("baseline", {}).get("metrics", {})
    zero = records.get("zero_flow", {}).get("metrics", {})
    note = ("Numbers from the synthetic KITTI-format world and a briefly pre-trained model, "
            "not from KITTI." if cfg.data == "synthetic" else "KITTI 2015, validation split.")
    md = [f"# Compression study ({cfg.preset})", "", note, "", validity_note(cfg), "",
          f"Machine: {machine['cpu']} ({machine['instruction_set']}); conv_impl "
          f"{resolve_conv_impl('auto')!r}. Numbers after "
          "training differ between instruction sets (float summation order), so compare "
          "runs on one machine.", ""]
    if base and zero:
        md += [f"Baseline EPE {base['epe']:.3f} vs zero flow {zero['epe']:.3f} "
               f"(SF outliers {base['sf']:.2f} % vs {zero['sf']:.2f} %).", ""]
    if ci:
        md += [interval_note(ci), ""]
    md += ["## Table II", "", table2(records, cfg, ci), "", "## Table III (ablation)", "",
           table3(records, cfg, ci), ""]
    if any("vs_baseline" in e for e in ci.values()):
        md += ["## Differences from the baseline (paired)", "",
               "Each configuration's value minus the baseline's, with the 95 % interval of "
               "that difference over the same resampled frames. \"lower\" / \"higher\": "
               "the interval excludes 0 (for EPE and SF, lower is better); \"not shown\": "
               "it includes 0, and these frames support no claim either way.", "",
               difference_table(records, ci), ""]
    if "dynamic_prune" in records:
        md += ["## Dynamic threshold (trajectory)", "", trajectory_table(records["dynamic_prune"]),
               ""]
    failed = [k for k, r in records.items() if r.get("failed")]
    if failed:
        md += ["Failed (training diverged; no numbers): "
               + "; ".join(f"{k}: {records[k]['failed']}" for k in failed), ""]
    md += ["Time: median forward pass of the model with masked / fake-quantized weights "
           "(dense float convolutions: zeros and quantization levels do not change the "
           "work), see the run-time study for a proper benchmark.", ""]
    loaded = time_load_note(records)
    if loaded:
        md += [loaded, ""]
    paths["tables"] = write_text_atomic(out_dir / "tables.md", "\n".join(md))
    try:
        from deepliflow_jax.study import plots
    except ImportError:  # matplotlib is the optional "viz" extra
        paths["plots"] = list(extra_plots)
    else:
        paths["plots"] = plots.write_plots(out_dir, records, cfg, intervals=ci) + list(
            extra_plots)
    return {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in paths.items()}


# -- several seeds ---------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float | None]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max())}


def aggregate_seeds(per_seed: dict[int, dict[str, dict]],
                    per_seed_ci: dict[int, dict[str, dict]] | None = None) -> dict[str, dict]:
    """Every configuration's metrics over the seeds of a ``--seeds`` study.

    Args:
      per_seed: ``{seed: records}``, each the records of one seed's study.
      per_seed_ci: ``{seed: intervals(records)}``, to count the seeds whose paired
        interval vs their own baseline excludes 0; None: not counted.

    Returns:
      ``{key: {"seeds": [seeds with metrics], "per_seed": {name: [values]}, name:
      {"mean", "std", "min", "max"}, "vs_baseline": {name: {"per_seed": [...], "mean",
      "std", "min", "max", "lower": n, "higher": n}}}}`` for ``name`` in ``epe``, ``d0``,
      ``d1``, ``fl``, ``sf``: ``std`` is the sample standard deviation (``ddof=1``; None
      for one seed); ``vs_baseline`` (not for the baseline itself) holds each seed's
      difference from its own baseline and, with ``per_seed_ci``, ``lower`` / ``higher``:
      in how many seeds the paired interval lies below / above 0. A configuration that
      failed in a seed counts in the others only; keys in the order first seen.
    """
    seeds = sorted(per_seed)
    keys = list(dict.fromkeys(k for s in seeds for k in per_seed[s]))
    out = {}
    for key in keys:
        have = [s for s in seeds if "metrics" in per_seed[s].get(key, {})]
        if not have:
            continue
        entry: dict[str, Any] = {"seeds": have, "per_seed": {}}
        for name in METRIC_NAMES:
            values = [float(per_seed[s][key]["metrics"][name]) for s in have]
            entry["per_seed"][name] = values
            entry[name] = _spread(values)
        paired = [s for s in have if "metrics" in per_seed[s].get("baseline", {})]
        if key != "baseline" and paired:
            entry["vs_baseline"] = {}
            for name in METRIC_NAMES:
                diffs = [float(per_seed[s][key]["metrics"][name]
                               - per_seed[s]["baseline"]["metrics"][name]) for s in paired]
                d = {"per_seed": diffs, **_spread(diffs)}
                if per_seed_ci is not None:
                    pairs = [((per_seed_ci.get(s, {}).get(key) or {}).get("vs_baseline")
                              or {}).get(name) or [None, None] for s in paired]
                    d["lower"] = sum(1 for lo, hi in pairs if hi is not None and hi < 0)
                    d["higher"] = sum(1 for lo, hi in pairs if lo is not None and lo > 0)
                entry["vs_baseline"][name] = d
        out[key] = entry
    return out


def _mean_std(d: dict, digits: int = 3) -> str:
    std = "n/a" if d["std"] is None else f"{d['std']:.{digits}f}"
    return (f"{d['mean']:.{digits}f} ± {std} ({d['min']:.{digits}f}–"
            f"{d['max']:.{digits}f})")


def seeds_table(agg: dict[str, dict]) -> str:
    """The ``--seeds`` table: mean ± std (min–max) and per-seed values of EPE and SF, and
    in how many seeds the paired interval vs that seed's baseline excludes 0."""
    lines = ["| configuration | seeds | EPE mean ± std (min–max) | EPE per seed | "
             "SF % mean ± std (min–max) | SF % per seed | EPE vs baseline: seeds lower / "
             "higher (paired 95 %) |", "|---" * 7 + "|"]
    for key, e in agg.items():
        per = {n: ", ".join(f"{v:.3f}" for v in e["per_seed"][n]) for n in ("epe", "sf")}
        vs = (e.get("vs_baseline") or {}).get("epe", {})
        counted = (f"{vs['lower']} / {vs['higher']} of {len(vs['per_seed'])}"
                   if "lower" in vs else "-")
        lines.append(f"| {key} | {len(e['seeds'])} | {_mean_std(e['epe'])} | {per['epe']} | "
                     f"{_mean_std(e['sf'])} | {per['sf']} | {counted} |")
    return "\n".join(lines)


def write_seeds_report(out_dir: Path, per_seed: dict[int, dict[str, dict]], cfg: StudyConfig,
                       folders: dict[int, str]) -> dict[str, Any]:
    """The aggregate of a ``--seeds`` study in its results folder: results.json,
    tables.md and ``fig_seeds.png`` (with matplotlib).

    Args:
      out_dir: the folder holding one subfolder per seed.
      per_seed: ``{seed: records}``.
      cfg: the study's configuration (``seeds`` > 1).
      folders: ``{seed: its results folder}`` (each has its own tables, plots and
        intervals over frames).

    Returns:
      ``{"json", "tables", "plots": [...]}`` (str paths).
    """
    out_dir = Path(out_dir)
    per_seed_ci = {s: intervals(r, cfg) for s, r in per_seed.items()}
    agg = aggregate_seeds(per_seed, per_seed_ci)
    seeds = sorted(per_seed)
    paths = {"json": write_json_atomic(out_dir / "results.json", {
        "config": cfg.to_dict(), "validity": cfg.validity, "seeds": seeds,
        "folders": {str(s): str(folders[s]) for s in seeds},
        "spread": "std: sample standard deviation over seeds (ddof=1); min, max",
        "aggregate": agg, "intervals": {str(s): per_seed_ci[s] for s in seeds},
        "interval_method": INTERVAL_METHOD})}
    md = [f"# Compression study ({cfg.preset}), {len(seeds)} seeds", "",
          f"Seeds {', '.join(map(str, seeds))}: each a whole study (data draws, "
          "pre-training, sweeps, dynamic threshold) in its own folder "
          f"({', '.join(Path(folders[s]).name for s in seeds)}), with its own tables and "
          "intervals over frames.", "", validity_note(cfg), "",
          "mean ± std: the mean over seeds and the sample standard deviation (ddof=1); "
          "(min–max) over seeds. The last column: in how many seeds the paired 95 % "
          "bootstrap interval of EPE minus that seed's baseline EPE lies below 0 (lower) / "
          "above 0 (higher). A claim \"A is better than B\" needs the paired interval to "
          "exclude 0, and holds for these settings only as far as the seeds agree.", "",
          "## Every configuration over the seeds", "", seeds_table(agg), ""]
    paths["tables"] = write_text_atomic(out_dir / "tables.md", "\n".join(md))
    try:
        from deepliflow_jax.study import plots
    except ImportError:  # matplotlib is the optional "viz" extra
        paths["plots"] = []
    else:
        paths["plots"] = [plots.fig_seeds(out_dir, agg)]
    return {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in paths.items()}
