"""Plots like the paper's Figs. 1-4 and 6 (needs matplotlib, the "viz" extra)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deepliflow_jax.fileio import savefig_atomic  # noqa: E402
from deepliflow_jax.study.config import StudyConfig  # noqa: E402


def _get(records, key, field="epe", phase=None):
    rec = records.get(key)
    if rec is None:
        return None
    m = rec["phases"][phase] if phase else rec["metrics"]
    return m[field]


def _baseline(ax, records, intervals=None):
    if "baseline" in records:
        epe = records["baseline"]["metrics"]["epe"]
        ax.axhline(epe, color="red", lw=1, label="original")
        low, high = _interval(records, intervals, "baseline", epe)
        if high > low:
            ax.axhspan(low, high, color="red", alpha=0.1, lw=0)


def _interval(records, intervals, key, value, phase=None) -> tuple[float, float]:
    """The EPE interval of ``key`` (``report.intervals``), or ``(value, value)`` when it has
    none (a phase other than the recorded model's, a record without per-frame counts)."""
    ci = ((intervals or {}).get(key) or {}).get("metrics", {}).get("epe")
    rec = records.get(key, {})
    if not ci or ci[0] is None or (phase and rec["phases"][phase] != rec.get("metrics")):
        return value, value
    return ci[0], ci[1]


def _yerr(points):
    """Error bar lengths below / above each ``(x, y, low, high)``."""
    return [[y - lo for _, y, lo, _ in points], [hi - y for _, y, _, hi in points]]


def fig1(out: Path, records: dict, cfg: StudyConfig, intervals=None) -> Path:
    """EPE vs bits and vs pruning percent: post, aware lr1, aware lr1 then lr2; error bars:
    the 95 % bootstrap intervals over frames (``report.intervals``) where recorded."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, keys, xs, xlabel in (
        (axes[0], [f"quant_{b}" for b in cfg.quant_bits], list(cfg.quant_bits), "weight bits"),
        (axes[1], [f"prune_{p:g}" for p in cfg.prune_percents], list(cfg.prune_percents),
         "pruned %"),
    ):
        for label, prefix, phase, style in (("post", "post_", None, "o-"),
                                            ("aware lr1", "aware_", "lr1", "s--"),
                                            ("aware lr1+lr2", "aware_", "lr2", "^-")):
            ys = [_get(records, prefix + k, phase=phase) for k in keys]
            pts = [(x, y, *_interval(records, intervals, prefix + k, y, phase))
                   for x, y, k in zip(xs, ys, keys) if y is not None]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=_yerr(pts),
                            fmt=style, capsize=3, label=label)
        _baseline(ax, records, intervals)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("EPE (px)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].invert_xaxis()
    fig.suptitle("Quantization (left) and pruning (right) vs EPE")
    fig.tight_layout()
    path = out / "fig1_epe_quant_prune.png"
    savefig_atomic(fig, path, dpi=100)
    plt.close(fig)
    return path


def fig23(out: Path, records: dict, cfg: StudyConfig) -> Path:
    """EPE vs LiDAR samples per configuration, post (left) and aware (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    ns = [str(n) for n in cfg.lidar_sweep]
    for ax, kind in zip(axes, ("post", "aware")):
        for key, rec in records.items():
            # the dynamic threshold's final model is fine-tuned: with the aware ones
            kinds = (kind, "dynamic") if kind == "aware" else (kind,)
            if rec.get("kind") not in kinds and key != "baseline":
                continue
            if "lidar" not in rec or key.startswith("hybrid"):
                continue
            ys = [rec["lidar"][n]["epe"] for n in ns]
            style = "k-" if key == "baseline" else ".-"
            ax.plot([int(n) for n in ns], ys, style, lw=2 if key == "baseline" else 1,
                    label=key.replace(f"{kind}_", ""))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("LiDAR samples (KITTI-resolution equivalent)")
        ax.set_title(kind)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("EPE (px)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / "fig23_lidar_sweep.png"
    savefig_atomic(fig, path, dpi=100)
    plt.close(fig)
    return path


def fig4(out: Path, records: dict, cfg: StudyConfig, intervals=None) -> Path:
    """Accuracy vs run time of every configuration, original and hybrids marked; EPE error
    bars: the 95 % bootstrap intervals over frames."""
    colors = {"post": "tab:blue", "aware": "tab:orange"}
    names = {"post": "post-training", "aware": "aware training"}
    fig, ax = plt.subplots(figsize=(7, 5))
    labelled = set()
    for key, rec in records.items():
        t = (rec.get("time") or {}).get("median_ms")
        if t is None:
            continue
        m = rec["metrics"]["epe"]
        kind = rec.get("kind")
        low, high = _interval(records, intervals, key, m)
        if high > low:
            ax.errorbar(t, m, yerr=[[m - low], [high - m]], fmt="none", ecolor="gray",
                        capsize=2, lw=0.8)
        if key == "baseline":
            ax.scatter(t, m, s=150, facecolors="none", edgecolors="green", label="original")
        elif kind == "dynamic":
            ax.scatter(t, m, marker="D", s=60, c="tab:green", edgecolors="black",
                       label=f"dynamic threshold: {rec['percent']:g} %")
        elif key.startswith("hybrid"):
            ax.scatter(t, m, marker="*", s=160, c=colors[kind], edgecolors="black",
                       label=f"hybrid, {names[kind]}: {rec['bits']} bits + {rec['percent']:g} %")
        elif kind in colors:
            label = None if kind in labelled else names[kind]
            labelled.add(kind)
            ax.scatter(t, m, s=15, c=colors[kind], label=label)
            ax.annotate(key.split("_", 1)[1].replace("prune_", "p").replace("quant_", "q"),
                        (t, m), fontsize=6)
    ax.set_xlabel("forward time (ms, median)")
    ax.set_ylabel("EPE (px)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing is timed with runtime_repeats=0
        ax.legend(fontsize=7)
    ax.set_title("Accuracy vs run time (p = pruned %, q = weight bits)")
    fig.tight_layout()
    path = out / "fig4_hybrid_accuracy_vs_time.png"
    savefig_atomic(fig, path, dpi=100)
    plt.close(fig)
    return path


def fig6(out: Path, records: dict, cfg: StudyConfig) -> Path:
    """Run time per configuration (median with p10-p90 bars)."""
    keys = [k for k, r in records.items() if (r.get("time") or {}).get("median_ms")]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(keys)), 4))
    med = [records[k]["time"]["median_ms"] for k in keys]
    lo = [m - records[k]["time"]["p10_ms"] for k, m in zip(keys, med)]
    hi = [records[k]["time"]["p90_ms"] - m for k, m in zip(keys, med)]
    ax.bar(range(len(keys)), med, yerr=[lo, hi], color="tab:gray")
    ax.set_xticks(range(len(keys)), keys, rotation=70, fontsize=7)
    ax.set_ylabel("forward time (ms)")
    ax.set_title("Run time per configuration (same dense convolutions for all)")
    fig.tight_layout()
    path = out / "fig6_runtime.png"
    savefig_atomic(fig, path, dpi=100)
    plt.close(fig)
    return path


def fig_dynamic(out: Path, records: dict, cfg: StudyConfig, intervals=None) -> Path:
    """The dynamic threshold's search: pruned % (top) and validation EPE (bottom) against
    the fine-tuning steps of all levels; rejected levels in red, accepted in green."""
    rec = records["dynamic_prune"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for e in rec["trajectory"]:
        x0, x1 = e["start_step"], e["start_step"] + e["steps"]
        color = "tab:green" if e["accepted"] else "tab:red"
        top.plot([x0, x1], [e["percent"]] * 2, "-", color=color, lw=2)
        top.plot(x1, e["percent"], "o" if e["accepted"] else "x", color=color)
        top.annotate(f"{e['percent']:g}", (x1, e["percent"]), fontsize=7,
                     textcoords="offset points", xytext=(3, 3))
        xs = [x0] + [x0 + h["step"] for h in e.get("history", [])]
        ys = [e["before"]["epe"]] + [h["epe"] for h in e.get("history", [])]
        bottom.plot(xs, ys, ".-", color=color, lw=1)
        bottom.plot(x0, e["before"]["epe"], "v", color=color, mfc="none")
    _baseline(bottom, records, intervals)
    bottom.axhline(rec["limit"], color="gray", ls="--", lw=1, label="limit (tolerance)")
    top.set_ylabel("pruned % (all weights, biases)")
    top.set_title(f"Dynamic threshold: final {rec['percent']:g} % (green accepted, red "
                  "rejected)")
    bottom.set_ylabel("validation EPE (px)")
    bottom.set_xlabel("fine-tuning step (all levels; v = before the level's fine-tuning)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    bottom.legend(fontsize=7)
    fig.tight_layout()
    path = out / "fig_dynamic_threshold.png"
    savefig_atomic(fig, path, dpi=100)
    plt.close(fig)
    return path


def fig_seeds(out: Path, agg: dict) -> Path:
    """EPE of every configuration over the seeds of a ``--seeds`` study: mean with
    ± one standard deviation (ddof=1) as error bars, each seed's value as a dot."""
    keys = list(agg)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(keys)), 4))
    for i, key in enumerate(keys):
        e = agg[key]["epe"]
        ax.errorbar(i, e["mean"], yerr=e["std"] or 0.0, fmt="o", color="tab:blue", capsize=3)
        values = agg[key]["per_seed"]["epe"]
        ax.plot([i] * len(values), values, ".", color="black", alpha=0.6)
    ax.set_xticks(range(len(keys)), keys, rotation=70, fontsize=7)
    ax.set_ylabel("EPE (px)")
    ax.set_title("EPE over seeds: mean ± std (bars), each seed (dots)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out) / "fig_seeds.png"
    savefig_atomic(fig, path, dpi=100)
    plt.close(fig)
    return path


def write_plots(out_dir: Path, records: dict, cfg: StudyConfig,
                intervals: dict | None = None) -> list[Path]:
    """Figs. 1, 2/3, 4, 6 and the dynamic threshold's; ``intervals`` (``report.intervals``)
    give Figs. 1 and 4 and the baseline's line their error bars."""
    # a failed (diverged) configuration has no numbers to plot
    records = {k: r for k, r in records.items() if not r.get("failed")}
    out = Path(out_dir)
    paths = [fig1(out, records, cfg, intervals), fig23(out, records, cfg),
             fig4(out, records, cfg, intervals), fig6(out, records, cfg)]
    if "dynamic_prune" in records:
        paths.append(fig_dynamic(out, records, cfg, intervals))
    return paths
