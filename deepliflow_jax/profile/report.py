"""The harness's results as text: derived figures, the run-time targets, Markdown, console.

Works on a results dict from :func:`deepliflow_jax.profile.timing.run_benchmark`
or on a results JSON read back from disk (:func:`derive` re-renders it).
"""

from __future__ import annotations

import json

from deepliflow_jax.fileio import write_text_atomic
from deepliflow_jax.profile.environment import precision_key

PAPER_BASELINE_MS = 137.4  # TF model, GTX 1660 Ti, 384x1216, batch 1


# The run-time targets (one H100, batch 1, 384x1216).
TARGET_SIZE = (384, 1216)


TARGET_EAGER_RATIO = 0.7


TARGET_BF16_SPEEDUP = 1.5


TARGET_BF16_EPE_CHANGE = 0.01


TARGET_FLOOR_FACTOR = 5.0


# The train-step target: a ratio of two steps timed in the same run, so it is checked on
# whatever machine and size it runs (JAX train_step vs PyTorch eager, batch --train_batch).
TARGET_TRAIN_RATIO = 1.0


def derive(result: dict) -> dict:
    """Adds the derived parts (torch rows' FLOP figures, targets, compression sentences).

    Also usable on a results JSON read back from disk, to re-render it.

    Returns:
      ``result``, updated in place.
    """
    results, env = result["results"], result["environment"]
    peak_tf = env.get("peak_tflops", {})
    # FLOPs do not depend on the framework: give torch rows the XLA count of the same
    # work (the dense forward, or the JAX train step)
    for row in results.values():
        same = "dense" if row["kind"] == "forward" else "train_step"
        dense = results.get(f"{same}@b{row['batch']}")
        if row["framework"] == "torch" and dense and dense.get("xla_flops") and row["median_ms"]:
            row["xla_flops"] = dense["xla_flops"]
            row["achieved_gflops"] = dense["xla_flops"] / (row["median_ms"] / 1e3) / 1e9
            peak = peak_tf.get(precision_key(row["dtype"], result["settings"]["precision"],
                                             env.get("platform", "")))
            if peak:
                row["fraction_of_peak"] = row["achieved_gflops"] / (peak * 1e3)
                row["floor_ms"] = dense["xla_flops"] / (peak * 1e12) * 1e3
                row["x_floor"] = row["median_ms"] / row["floor_ms"]
    result["targets"] = target_checks(result)
    result["compression_honesty"] = compression_summary(result)
    return result


def _row(result: dict, name: str, batch: int = 1) -> dict | None:
    row = result["results"].get(f"{name}@b{batch}")
    return row if row and row.get("median_ms") else None


def target_checks(result: dict) -> list[dict[str, str]]:
    """The run-time targets, evaluated on whatever was measured.

    Returns:
      One dict per target: ``{"target", "status", "detail"}``; status is PASS,
      FAIL, PENDING (something not measured) or N/A-HERE (measured, but not on
      one H100 at batch 1, 384x1216, where the target is defined: the numbers
      are shown for information).
    """
    env, settings = result["environment"], result["settings"]
    on_target = ("H100" in (env.get("device_kind") or "")
                 and (settings["height"], settings["width"]) == TARGET_SIZE)

    def status(ok: bool | None) -> str:
        if ok is None:
            return "PENDING"
        if not on_target:
            return "N/A-HERE"
        return "PASS" if ok else "FAIL"

    dense, bf16 = _row(result, "dense"), _row(result, "bf16")
    eager, comp = _row(result, "torch_eager"), _row(result, "torch_compile")
    out = []
    if dense and eager:
        ratio = dense["median_ms"] / eager["median_ms"]
        out.append({"target": f"flax fp32 <= {TARGET_EAGER_RATIO} x torch eager",
                    "status": status(ratio <= TARGET_EAGER_RATIO),
                    "detail": f"{dense['median_ms']:.2f} ms vs {eager['median_ms']:.2f} ms "
                              f"(ratio {ratio:.2f})"})
    else:
        out.append({"target": f"flax fp32 <= {TARGET_EAGER_RATIO} x torch eager",
                    "status": "PENDING", "detail": "needs dense and torch_eager at batch 1"})
    if dense and comp:
        ratio = dense["median_ms"] / comp["median_ms"]
        out.append({"target": "flax fp32 <= torch.compile", "status": status(ratio <= 1.0),
                    "detail": f"{dense['median_ms']:.2f} ms vs {comp['median_ms']:.2f} ms "
                              f"(ratio {ratio:.2f})"})
    else:
        out.append({"target": "flax fp32 <= torch.compile", "status": "PENDING",
                    "detail": "needs dense and torch_compile at batch 1"})
    if dense and bf16:
        speedup = dense["median_ms"] / bf16["median_ms"]
        out.append({"target": f"bf16 >= {TARGET_BF16_SPEEDUP}x faster than fp32",
                    "status": status(speedup >= TARGET_BF16_SPEEDUP),
                    "detail": f"{bf16['median_ms']:.2f} ms vs {dense['median_ms']:.2f} ms "
                              f"(speed-up {speedup:.2f}x)"})
        err = (bf16.get("error_vs_ref") or {}).get("flow_epe_vs_ref_rel")
        out.append({"target": f"bf16 EPE change < {TARGET_BF16_EPE_CHANGE:.0%}",
                    "status": "PENDING",
                    "detail": ("proxy only: mean flow endpoint distance bf16 vs fp32 output "
                               f"= {err:.2%} of the mean flow magnitude" if err is not None
                               else "no output comparison")
                              + "; the real check needs trained weights and KITTI ground "
                                "truth (EPE of each against the ground truth)"})
    else:
        out.append({"target": f"bf16 >= {TARGET_BF16_SPEEDUP}x faster than fp32",
                    "status": "PENDING", "detail": "needs dense and bf16 at batch 1"})
    out.append(_train_target(result))
    for name, row in (("fp32", dense), ("bf16", bf16)):
        if row and row.get("x_floor"):
            out.append({"target": f"{name} within {TARGET_FLOOR_FACTOR:g}x of the floor",
                        "status": status(row["x_floor"] <= TARGET_FLOOR_FACTOR),
                        "detail": f"{row['median_ms']:.2f} ms vs floor {row['floor_ms']:.3f} ms "
                                  f"({row['x_floor']:.1f}x; {row['peak_key']} peak)"})
        else:
            out.append({"target": f"{name} within {TARGET_FLOOR_FACTOR:g}x of the floor",
                        "status": "PENDING", "detail": f"needs {name} time and XLA FLOPs"})
    return out


def _train_target(result: dict) -> dict[str, str]:
    """Flax's train step against PyTorch's eager one (and torch.compile's, for information)."""
    batch = result["settings"].get("train_batch", 1)
    name = f"flax train step <= {TARGET_TRAIN_RATIO:g}x torch eager train step"
    flax, eager = _row(result, "train_step", batch), _row(result, "torch_train_step", batch)
    comp = _row(result, "torch_compile_train_step", batch)
    if not (flax and eager):
        return {"target": name, "status": "PENDING",
                "detail": f"needs train_step and torch_train_step at batch {batch}"}
    ratio = flax["median_ms"] / eager["median_ms"]
    s = result["settings"]
    detail = (f"{flax['median_ms']:.2f} ms vs {eager['median_ms']:.2f} ms (ratio {ratio:.2f})")
    if comp:
        detail += (f"; torch.compile train step {comp['median_ms']:.2f} ms (flax / compile "
                   f"{flax['median_ms'] / comp['median_ms']:.2f})")
    detail += (f"; batch {batch}, {s['height']}x{s['width']}, on this machine (a same-run "
               "ratio, checked wherever it runs)")
    return {"target": name, "status": "PASS" if ratio <= TARGET_TRAIN_RATIO else "FAIL",
            "detail": detail}


def compression_summary(result: dict) -> list[str]:
    """Plain sentences: do masked / fake-quantized weights run faster than dense?"""
    lines = []
    for row in result["results"].values():
        if row["framework"] != "jax" or row["kind"] != "forward" or not row.get("median_ms"):
            continue
        if row["config"] in ("dense", "bf16"):
            continue
        dense = _row(result, "dense", row["batch"])
        if not dense:
            continue
        change = row["median_ms"] / dense["median_ms"] - 1.0
        overlap = row["p10_ms"] <= dense["p90_ms"] and dense["p10_ms"] <= row["p90_ms"]
        zeros = row["info"].get("zero_fraction")
        same_exe = row.get("compile_shared_with") == f"dense@b{row['batch']}"
        if zeros is None:  # another model (structured, int8): its own executable
            lines.append(
                f"{row['config']} (batch {row['batch']}, its own executable): median "
                f"{row['median_ms']:.2f} ms vs dense {dense['median_ms']:.2f} ms "
                f"({change:+.1%}), p10 {row['p10_ms']:.2f} vs {dense['p10_ms']:.2f} ms; "
                f"p10-p90 ranges {'overlap' if overlap else 'do not overlap'}"
                + _builder_note(row["info"]))
            continue
        lines.append(
            f"{row['config']} (batch {row['batch']}, {zeros:.1%} zero weights): median "
            f"{row['median_ms']:.2f} ms vs dense {dense['median_ms']:.2f} ms ({change:+.1%}), "
            f"p10 {row['p10_ms']:.2f} vs {dense['p10_ms']:.2f} ms; p10-p90 ranges "
            f"{'overlap' if overlap else 'do not overlap'}"
            + ("; it runs the very same compiled executable as dense (only the weight values "
               "differ) and dense convolutions do the same work on zeros and on quantized "
               "values, so the difference is noise, not a speed-up" if same_exe else ""))
    return lines


def _builder_note(info: dict) -> str:
    if "param_ratio" in info:
        return f"; {info['param_ratio']:.0%} of the parameters remain"
    hlo = info.get("hlo_convolutions")
    if isinstance(hlo, dict):
        return (f"; compiled HLO: {hlo['int8_convolutions']} s8 convolutions, "
                f"{hlo['int32_convolutions']} widened to s32, {hlo['float_convolutions']} "
                "float")
    return ""


def fmt(v, spec=".2f", none="-"):
    """``v`` formatted with ``spec``, or ``none`` for a missing value (a table cell)."""
    return none if v is None else format(v, spec)


def to_markdown(result: dict) -> str:
    """The results as a Markdown report (tables, comparisons, targets, environment)."""
    env, s = result["environment"], result["settings"]
    v = env.get("versions", {})
    seed = s["seed"]
    procs = s.get("processes") or "1 (in-process)"
    peaks = ", ".join(f"{k} {x:.3g} TFLOP/s" for k, x in env.get("peak_tflops", {}).items())
    lines = [
        f"# DeepLiDARFlow run time: {env.get('device_kind')} ({env.get('platform')})", "",
        f"Created {result['created']}. Input {s['height']}x{s['width']}, precision flag "
        f"`{s['precision']}` (jax_default_matmul_precision = "
        f"{env.get('jax_default_matmul_precision')}; {env.get('conv_precision')}). "
        f"{s['repeats']} timed rounds x {procs} process(es), "
        f"{s['warmup']} warm-up calls; weights: {s['weights'] or f'random init (seed {seed})'}.",
        "",
    ]
    if result.get("note"):
        lines += [f"**Note:** {result['note']}", ""]
    if result.get("loaded"):
        lines += [f"**Loaded machine:** {_load_text(result)}. Other work shared the cores: "
                  "these figures are not comparable with ones from an idle machine.", ""]
    lines += ["| config | batch | dtype | median ms | p10 | p90 | n | items/s | compile s | "
              "GFLOP/s | % peak | floor ms | x floor | max rel err (vs) | zeros | notes |",
              "|---" * 16 + "|"]
    for row in result["results"].values():
        err = row.get("error_vs_ref") or {}
        rel = (f"{err['max_rel_err']:.1e} ({row['vs'].split('@')[0]})"
               if "max_rel_err" in err else "-")
        zeros = row["info"].get("zero_fraction")
        notes = []
        if row.get("compile_shared_with"):
            notes.append(f"same executable as {row['compile_shared_with'].split('@')[0]}")
        if row["errors"]:
            notes.append("ERROR: " + row["errors"][0].splitlines()[0][:120])
        pct = row.get("fraction_of_peak")
        lines.append(
            f"| {row['config']} | {row['batch']} | {row['dtype']} | {fmt(row['median_ms'])} | "
            f"{fmt(row['p10_ms'])} | {fmt(row['p90_ms'])} | {row['n']} | "
            f"{fmt(row.get('items_per_s'))} | {fmt(row['compile_s_median'], '.1f')} | "
            f"{fmt(row.get('achieved_gflops'), '.1f')} | "
            f"{'-' if pct is None else f'{pct:.1%}'} | {fmt(row.get('floor_ms'), '.3f')} | "
            f"{fmt(row.get('x_floor'), '.1f')} | {rel} | "
            f"{'-' if zeros is None else f'{zeros:.1%}'} | {'; '.join(notes)} |")
    lines += ["", "Items/s: frame pairs per second (forward) or training examples per second "
              "(train_step). GFLOP/s from XLA's FLOP count of the dense forward; floor = "
              f"XLA FLOPs / peak. Peak: {env.get('peak_note')} "
              f"({peaks})."
              f" Paper baseline: {PAPER_BASELINE_MS} ms (TF, GTX 1660 Ti, 384x1216, batch 1).",
              "", "## Targets (the forward ones defined for one H100, batch 1, 384x1216; the "
              "train-step one on the machine of the run)", ""]
    lines += [f"- **{t['status']}** {t['target']}: {t['detail']}" for t in result["targets"]]
    lines += ["", "## Compression variants vs dense: does anything run faster?", ""]
    lines += [f"- {x}" for x in result["compression_honesty"]] or ["- (no compressed configs)"]
    mem_rows = [r for r in result["results"].values() if r.get("memory_analysis")]
    if mem_rows:
        lines += ["", "## Memory", "", "| config | batch | XLA args MB | XLA temp MB | "
                  "XLA out MB | device peak |", "|---" * 6 + "|"]
        for r in mem_rows:
            m = r["memory_analysis"]
            peak = r["peak_device_memory"]
            peak_s = "n/a" if peak == "n/a" else ", ".join(
                f"{x['peak_bytes'] / 2**20:.0f} MB (proc {x['process']}, "
                f"{x['jobs_in_process']} jobs)" for x in peak if x["peak_bytes"])
            lines.append(f"| {r['config']} | {r['batch']} | "
                         f"{m.get('argument_size_in_bytes', 0) / 2**20:.1f} | "
                         f"{m.get('temp_size_in_bytes', 0) / 2**20:.1f} | "
                         f"{m.get('output_size_in_bytes', 0) / 2**20:.1f} | {peak_s} |")
        lines += ["", "Device peak is `memory_stats()['peak_bytes_in_use']` of the process "
                  "(a running maximum over all jobs in it; use --isolate for per-job peaks); "
                  "n/a on CPU."]
    lines += ["", "## Environment", "",
              f"- device: {env.get('device_kind')} x{env.get('device_count')} "
              f"({env.get('platform')}, {env.get('platform_version')}); CPU: {env.get('cpu')} "
              f"({env.get('cpu_count')} logical cores visible)",
              f"- versions: {', '.join(f'{k} {x}' for k, x in v.items())}",
              f"- torch: {env.get('torch', 'not run')}",
              f"- XLA_FLAGS: `{env.get('xla_flags') or ''}`",
              f"- load average (1 min) before/after each process: "
              f"{_load_text(result) or 'not recorded'}",
              f"- total wall time of the run: {result.get('wall_s', 0):.0f} s"]
    return "\n".join(lines) + "\n"


def format_console(result: dict) -> str:
    """Short console summary: one line per job, then the target check lines."""
    out = []
    for row in result["results"].values():
        err = (row.get("error_vs_ref") or {}).get("max_rel_err")
        extra = f"  max rel err vs {row['vs'].split('@')[0]} {err:.1e}" if err is not None else ""
        if row["errors"]:
            extra += "  ERROR " + row["errors"][0].splitlines()[0][:100]
        out.append(f"{row['config']:>20s} b{row['batch']}: median {fmt(row['median_ms'])} ms "
                   f"(p10 {fmt(row['p10_ms'])}, p90 {fmt(row['p90_ms'])}, n {row['n']}), "
                   f"compile {fmt(row['compile_s_median'], '.1f')} s{extra}")
    out += [f"TARGET {t['status']}: {t['target']}: {t['detail']}" for t in result["targets"]]
    if result.get("loaded"):
        out.append(f"WARNING loaded machine ({_load_text(result)}): not an idle-machine figure")
    return "\n".join(out)


def _load_text(result: dict) -> str:
    loads = result.get("load") or []
    if not loads:
        return ""
    cores = loads[0]["after"]["cpu_count"]
    return "; ".join(f"process {x['process']}: {x['before']['load1']} -> {x['after']['load1']}"
                     for x in loads) + f" on {cores} cores"


def write_results(result: dict, json_path: str | None, md_path: str | None) -> None:
    """Writes the JSON and/or Markdown files (parent folders created)."""
    if json_path:
        write_text_atomic(json_path, json.dumps(result, indent=2, default=str) + "\n")
    if md_path:
        write_text_atomic(md_path, to_markdown(result))
