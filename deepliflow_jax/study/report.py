"""Tables (laid out like the paper's Tables II and III), JSON/CSV and plots."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepliflow_jax.fileio import write_json_atomic, write_text_atomic
from deepliflow_jax.model.layers import resolve_conv_impl
from deepliflow_jax.profile.environment import cpu_info, describe_load
from deepliflow_jax.study.config import StudyConfig
from deepliflow_jax.study.dynamic import trajectory_table


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


def _row(rec: dict | None) -> list[str]:
    if rec is None:
        return ["-"] * 4
    bits = f"{rec['bits']} bits" if rec.get("bits") else "32 bits"
    if rec.get("failed"):
        return [f"{rec['percent']:g}%" if rec.get("percent") else "-", bits, "failed",
                "failed"]
    m = rec["metrics"]
    pruning = f"{rec['percent']:g}%" if rec.get("percent") else f"{rec['zero_percent']:.2f}%"
    return [pruning, bits, f"{m['epe']:.3f}", f"{m['sf']:.3f}"]


def validity_note(cfg: StudyConfig) -> str:
    """Which evaluation produced the numbers (``StudyConfig.validity``)."""
    if cfg.validity == "devkit":
        return ("Evaluation: validity 'devkit' (the KITTI devkit's rule: D0 / D1 / Fl on the "
                "pixels where that quantity's ground truth is valid, SF and EPE where all "
                "three are; pixels pooled over the set). Not comparable with the paper's "
                "numbers.")
    return ("Evaluation: validity 'original' (the original's rule, as the paper: every "
            "quantity on the pixels with a valid first-frame disparity; frames averaged).")


def table2(records: dict[str, dict], cfg: StudyConfig) -> str:
    """Table II: post vs aware, per pruning level and bit width (EPE, KEO = SF %, time)."""
    base, zero = records.get("baseline"), records.get("zero_flow")
    lines = ["| kind | pruning | quantization | EPE | KEO (SF %) | kind | pruning | "
             "quantization | EPE | KEO (SF %) | time (ms, aware) |", "|---" * 11 + "|"]
    if base:
        b = base["metrics"]
        lines.append(f"| original | | 32 bits | {b['epe']:.3f} | {b['sf']:.3f} | original | | "
                     f"32 bits | {b['epe']:.3f} | {b['sf']:.3f} | {_ms(base)} |")
    keys = [f"prune_{p:g}" for p in cfg.prune_percents] + [f"quant_{b}" for b in cfg.quant_bits]
    hybrid = sorted(k[len("hybrid_post_"):] for k in records if k.startswith("hybrid_post_"))
    keys += [f"hybrid_{h}" for h in hybrid]
    for k in keys:
        post = records.get(k.replace("hybrid_", "hybrid_post_") if k.startswith("hybrid")
                           else f"post_{k}")
        aware = records.get(k.replace("hybrid_", "hybrid_aware_") if k.startswith("hybrid")
                            else f"aware_{k}")
        lines.append("| post | " + " | ".join(_row(post)) + " | aware | "
                     + " | ".join(_row(aware)) + f" | {_ms(aware) if aware else '-'} |")
    dyn = records.get("dynamic_prune")
    if dyn:  # the dynamic threshold's final model: aware by construction
        lines.append("| post | " + " | ".join(_row(None)) + " | dynamic | "
                     + " | ".join(_row(dyn)) + f" | {_ms(dyn)} |")
    if zero:
        z = zero["metrics"]
        lines.append(f"| zero flow (reference) | | | {z['epe']:.3f} | {z['sf']:.3f} | | | | | "
                     "| |")
    return "\n".join(lines)


def table3(records: dict[str, dict], cfg: StudyConfig) -> str:
    """Table III ablation: post / aware at lr1 / aware after lr2, at the extreme levels."""
    lines = ["| no | configuration | mode | EPE | KEO (SF %) |", "|---|---|---|---|---|"]
    if "baseline" in records:
        b = records["baseline"]["metrics"]
        lines.append(f"| - | original | - | {b['epe']:.3f} | {b['sf']:.3f} |")
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
            rows.append(("post", post["metrics"]))
        if aware:
            phases = aware.get("phases", {})  # none when the run failed
            rows.append((f"aware lr1={cfg.lr1:g}", phases.get("lr1")))
            rows.append((f"aware lr1 then lr2={cfg.lr2:g}", phases.get("lr2")))
        for mode, m in rows:
            n += 1
            cells = "failed | failed" if m is None else f"{m['epe']:.3f} | {m['sf']:.3f}"
            lines.append(f"| {n} | {label} | {mode} | {cells} |")
    dyn = records.get("dynamic_prune", {})
    if "before" in dyn:  # its final level, before and after that level's fine-tuning
        label = f"{dyn['percent']:g} % pruning (dynamic threshold)"
        for mode, m in (("dynamic, before fine-tuning", dyn["before"]),
                        (f"dynamic lr1={cfg.lr1:g}", dyn["phases"].get("lr1")),
                        (f"dynamic lr1 then lr2={cfg.lr2:g}", dyn["phases"].get("lr2"))):
            if m is not None:  # a phase of 0 steps has no row
                n += 1
                lines.append(f"| {n} | {label} | {mode} | {m['epe']:.3f} | {m['sf']:.3f} |")
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
    paths = {
        "json": write_json_atomic(out_dir / "results.json",
                                  {"config": cfg.to_dict(), "validity": cfg.validity,
                                   "machine": machine,
                                   # the model's form ("auto" as resolved here)
                                   "conv_impl": resolve_conv_impl("auto"),
                                   "records": records,
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
    md += ["## Table II", "", table2(records, cfg), "", "## Table III (ablation)", "",
           table3(records, cfg), ""]
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
        paths["plots"] = plots.write_plots(out_dir, records, cfg) + list(extra_plots)
    return {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in paths.items()}
