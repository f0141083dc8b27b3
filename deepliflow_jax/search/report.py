"""Markdown tables and plots of the compression search and the trade-off."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepliflow_jax.fileio import savefig_atomic
from deepliflow_jax.profile.environment import describe_load
from deepliflow_jax.search.sensitivity import (
    DIMENSIONS,
)
from deepliflow_jax.search.tradeoff import (
    TARGET_EPE_INCREASE,
    TARGET_SPEEDUP,
)


def _measured_on(env: Mapping[str, Any], repeats: int, shape: Sequence[int]) -> str:
    """Where and how every model of both reports was measured (:mod:`.measure`)."""
    return (f"Device: {env.get('platform', '?')} ({env.get('cpu', '?')}, {env.get('cpu_count')} "
            f"cores visible), jax {env.get('versions', {}).get('jax', '?')}. Latency: median "
            f"(p10-p90) of {repeats} interleaved rounds of each model's AOT-compiled forward "
            f"(the one that evaluated it) on the validation batch {list(shape)} (B x frames x H "
            "x W x C); on a shared machine compare rows with each other, not with other runs.")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def to_markdown(result: Mapping[str, Any]) -> str:
    """The search's tables (models, frontier, additivity, sensitivity, costs) as Markdown."""
    env = result["environment"]
    cfg = result["config"]
    b = result["budget"]
    platform = env.get("platform", "?").upper()
    if b.get("relative"):
        check = (" (resolved once, from the cost rounds, before the search). Each model is "
                 "checked on its speed-up over the dense model timed in the same final rounds "
                 "(its latency x the cost rounds' dense time / the final rounds' dense time), "
                 "so a change of machine load between the rounds does not move the budget.")
    else:
        check = ". Each model is checked on its measured " + (
            "latency." if b["measure"] == "latency" else "checkpoint size on disk.")
    rows = result["rows"]
    by_name = {r["name"]: r for r in rows}
    chosen = by_name[result["chosen"]]
    lines = [
        f"# Compression search: the most accurate DeepLiDARFlow for a budget ({platform})",
        "",
        f"Machine load: {describe_load(result.get('load'))}.",
        "",
        f"Budget: {b['text']}{check} "
        + _measured_on(env, cfg["repeats"], result["timed_input"]),
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
        word = "better" if change < 0 else "worse" if change > 0 else "equal"
        lines.append(f"Versus the best hand-written plan that meets the budget (`{v['best_hand']}`,"
                     f" EPE {by_name[v['best_hand']]['epe']:.3f}): EPE {_pct(change)} ({word}).")
    else:
        lines.append("No hand-written plan meets the budget when measured.")
    lines += ["", *(f"* {sentence}" for sentence in v["summary"]),
              "", "With few validation frames and short fine-tuning, EPE differences of a few "
              "percent are within the noise."]
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
    line = b["limit"]
    if b.get("relative"):  # drawn where a model meets it in the final rounds
        line *= next(r for r in rows if r["name"] == "dense")["latency_ms"] / b["dense_ms"]
    # models within 15 % of a latency budget and of the chosen EPE crowd together: a third
    # panel zooms on them
    near = [r for r in rows if b["measure"] == "latency"
            and abs(r["latency_ms"] / line - 1.0) <= 0.15
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
            ax.axvline(line * scale, color="tab:red", linestyle=":", linewidth=1,
                       label=f"budget ({b['describe']})")
        if i == 2:
            xs, ys = [r[key] for r in shown], [r["epe"] for r in shown]
            pad_x, pad_y = 0.1 * (max(xs) - min(xs)) + 1e-3, 0.15 * (max(ys) - min(ys)) + 1e-3
            ax.set_xlim(min(xs + [line]) - pad_x, max(xs + [line]) + pad_x)
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


def tradeoff_markdown(result: dict[str, Any]) -> str:
    """The trade-off table (and the target verdicts) as Markdown."""
    env = result["environment"]
    shape = result["timed_input"]
    lines = [
        "# Structured pruning + int8: measured trade-offs "
        f"({env.get('platform', '?').upper()}; GPU pending)",
        "",
        _measured_on(env, result["config"]["repeats"], shape),
        f"Data: {result['data']}.",
        f"Fine-tuning ({result['config']['finetune_mode']}): "
        f"{result['config']['finetune_steps']} Adam steps at lr {result['config']['lr']}, the "
        f"last {result['config']['refine_fraction']:.0%} at a 10x lower rate, for every pruned "
        "model and for `dense_ft`"
        + (f"; validated every {result['config']['eval_every']} steps, the best validation "
           "SF outlier rate kept (the original's and the study's protocol; selection on the "
           "reported set)" if result["config"].get("eval_every") else "; the last step kept")
        + "; int8 = post-training, calibrated on "
        f"{result['config']['calib_batches']} training batches.",
        "",
        "| model | ratio | int8 | params | disk MB | GFLOPs (XLA) | conv GFLOPs eq.3 | "
        "latency ms | speedup | EPE | vs dense | vs dense_ft | D1 % | Fl % | SF % |",
        "|---" * 15 + "|",
    ]
    for r in result["rows"]:
        ft = r.get("epe_change_vs_dense_ft")
        lines.append(
            f"| {r['name']} | {r['ratio']:.0%} | {'yes' if r['int8'] else 'no'} | "
            f"{r['params']:,} ({r['param_fraction']:.0%}) | {r['disk_bytes'] / 1e6:.2f} "
            f"({r['disk_fraction']:.0%}) | {r['gflops_xla']:.2f} | {r['conv_gflops_eq3']:.2f} | "
            f"{r['latency_ms']:.0f} ({r['latency_p10_ms']:.0f}-{r['latency_p90_ms']:.0f}) | "
            f"{r['speedup']:.2f}x | {r['epe']:.3f} | {r['epe_change_vs_dense']:+.1%} | "
            f"{'-' if ft is None else f'{ft:+.1%}'} | {r['d1']:.1f} | {r['fl']:.1f} | "
            f"{r['sf']:.1f} |")
    lines += ["", "Target: EPE at most +5 %, at least 1.3x faster (here: CPU, "
              "labelled), at least 50 % smaller on disk."]
    for key, t in result["target"].items():
        verdict = f"met by {', '.join(t['candidates'])} (fastest: {t['best']})" if t["met"] \
            else "not met"
        lines.append(f"* EPE {key.replace('_', ' ')}: {verdict}.")
    plans = result["config"].get("plans") or []
    if plans:
        lines += ["", "Per-layer plans (ratio column = fraction of all channels removed): "
                  + "; ".join(f"`{name}` = {dict(spec)}" for name, spec in plans) + ". "
                  "Caveat: such plans come from a sensitivity check (each module pruned "
                  "without fine-tuning) and from the uniform rows, measured on the same "
                  "validation frames as the table (there is no separate test split), so their "
                  "EPE comparison is optimistic; with 8 validation frames, EPE differences of "
                  "a few percent are within the noise of fine-tuning."]
    hlo = [r for r in result["rows"] if "hlo" in r]
    if hlo:
        h = hlo[0]["hlo"]
        lines += ["", f"Integer convolutions in the compiled HLO ({env.get('platform', '?')}): "
                  f"{h['integer_convolutions']} of {h['selected_layers']} selected convs "
                  f"are integer ({h['int8_convolutions']} with s8 operands, "
                  f"{h['int32_convolutions']} whose s8 codes XLA widened to s32 before the "
                  f"convolution); {h['float_convolutions']} float convolutions (the normalized "
                  f"convs: weight-only int8, dequantized in the step). Operand types: "
                  f"{h['operand_types']}."]
    return "\n".join(lines) + "\n"


def tradeoff_plot(result: dict[str, Any], path: str | os.PathLike) -> None:
    """EPE vs latency (the paper's Fig. 4 layout): float and int8 per pruning ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for quant, marker, label in ((False, "o", "float32"), (True, "s", "int8")):
        rows = [r for r in result["rows"] if r["int8"] == quant]
        if not rows:
            continue
        pruned = sorted((r for r in rows if r["ratio"] > 0 and r.get("plan", "uniform")
                         == "uniform"), key=lambda r: r["ratio"])
        line = ax.plot([r["latency_ms"] for r in pruned], [r["epe"] for r in pruned],
                       marker=marker, label=f"{label}, pruned")[0]
        dense_rows = [r for r in rows if r["ratio"] == 0]
        ax.plot([r["latency_ms"] for r in dense_rows], [r["epe"] for r in dense_rows],
                marker=marker, linestyle="", color=line.get_color(), markerfacecolor="none")
        plans = [r for r in rows if r.get("plan", "uniform") != "uniform"]
        ax.plot([r["latency_ms"] for r in plans], [r["epe"] for r in plans], marker="*",
                markersize=11, linestyle="", color=line.get_color())
        for r in rows:
            ax.annotate(r["name"].replace("+int8", "").replace("pruned", "p"),
                        (r["latency_ms"], r["epe"]), textcoords="offset points",
                        xytext=(4, 4 if quant else -10), fontsize=7)
    dense = result["rows"][0]
    ax.axhline(dense["epe"] * (1 + TARGET_EPE_INCREASE), color="gray", linestyle="--",
               linewidth=0.8, label="dense EPE +5 %")
    ft = [r for r in result["rows"] if r["name"] == "dense_ft"]
    if ft:
        ax.axhline(ft[0]["epe"] * (1 + TARGET_EPE_INCREASE), color="tab:green",
                   linestyle="--", linewidth=0.8, label="dense_ft EPE +5 %")
    ax.axvline(dense["latency_ms"] / TARGET_SPEEDUP, color="gray", linestyle=":",
               linewidth=0.8, label="dense latency / 1.3")
    backend = result["environment"].get("platform", "cpu").upper()
    ax.set_xlabel(f"latency per validation batch [ms] ({backend}, shared machine)")
    ax.set_ylabel("EPE [px] (synthetic validation)")
    ax.set_title("Structured pruning (+ int8): EPE vs latency (hollow: dense, star: per-layer "
                 "plan)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=120)
    plt.close(fig)
