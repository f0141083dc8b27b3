"""One-shot GPU check: parity at the backend's precisions, run time, precision vs EPE.

Made for a GPU lent for a few minutes: one call, one results folder, every part
recorded even when another fails or the time budget runs out. Parts, in order of
importance (a part that would start after ``budget_s`` is recorded as skipped):

1. **parity**: under the backend's default float32 precision (TF32 convolutions on
   Ampere/Hopper) and under ``highest``, whatever the caller's ``parity`` runs:
   ``experiments.gpu_check`` runs the TF-golden and conv-implementation tests of the
   checkout (``tests/test_tf_golden.py``, ``tests/test_conv_impl.py``) with pytest; the
   library runs no tests itself.
2. **runtime**: the harness (:func:`deepliflow_jax.profile.timing.run_benchmark`) at
   384x1216: float32, bf16, fp16, each ``conv_impl``, PyTorch eager and
   ``torch.compile`` at batch 1 and 8; the structured plan, int8 and the train step
   (examples/s) at batch 1; float32 and PyTorch eager again under ``highest``.
3. **precision_vs_epe**: EPE and outlier rates at float32, bf16 and fp16 on the
   caller's validation batches (:func:`deepliflow_jax.profile.precision.precision_metrics`;
   ``experiments.gpu_check`` gives a synthetic world and a checkpoint or random
   weights: with random weights only the differences between the rows mean something).

``smoke=True`` runs every part at toy size on any backend (CI runs it on CPU), so
the GPU run is not the first time the code runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepliflow_jax.fileio import write_text_atomic
from deepliflow_jax.profile import report, timing

PRECISIONS = ("default", "highest")

FULL = {
    "height": 384, "width": 1216, "repeats": 20, "warmup": 3, "budget_s": 420.0,
    "parity_select": None, "parity_timeout_s": 150,
    "runtime": (  # (configs, batch sizes, precision)
        ("dense,bf16,fp16,torch_eager,torch_compile", (1, 8), "default"),
        # the alternatives "auto" may pick on this backend (it runs "xla" off the CPU
        # until these have been measured here): the CPU's forms, each cost volume
        ("conv_subpixel,conv_subpixel+s2b,conv_subpixel+s2b+pad8,conv_phase+widen+s2grad+tiled,"
         "conv_tiled,conv_banded,structured50,int8,train_step,train_conv_phase+widen+s2grad+tiled,"
         "dense", (1,), "default"),
        ("dense,torch_eager", (1,), "highest"),
    ),
    "world": {"num_scenes": 10, "height": 128, "width": 384},
    "dtypes": ("float32", "bfloat16", "float16"),
}
SMOKE = {
    "height": 64, "width": 192, "repeats": 2, "warmup": 1, "budget_s": 600.0,
    "parity_select": "test_resizes_match_tf", "parity_timeout_s": 300,
    "runtime": (("dense,conv_subpixel,torch_eager", (1,), "default"),),
    "world": {"num_scenes": 10, "height": 64, "width": 192},
    "dtypes": ("float32", "bfloat16"),
}


def runtime(out: Path, settings: dict, torch_reference: str | None,
            progress: bool) -> list[dict[str, Any]]:
    """The harness runs of ``settings["runtime"]``; each writes ``runtime_<i>.json/.md``."""
    rows = []
    for i, (configs, batches, precision) in enumerate(settings["runtime"]):
        result = timing.run_benchmark(
            configs, settings["height"], settings["width"], batches, 1, settings["repeats"],
            settings["warmup"], processes=1, precision=precision, progress=progress,
            note=f"gpu_check part {i}", torch_reference=torch_reference)
        report.write_results(result, str(out / f"runtime_{i}.json"), str(out / f"runtime_{i}.md"))
        print(report.format_console(result), flush=True)
        rows.append({"configs": configs, "precision": precision,
                     "environment": result["environment"], "loaded": result.get("loaded"),
                     "results": {k: {f: r.get(f) for f in (
                         "median_ms", "p10_ms", "p90_ms", "items_per_s", "compile_s_median",
                         "x_floor", "errors")} | {"max_rel_err": (r.get("error_vs_ref") or {})
                                                  .get("max_rel_err")}
                                 for k, r in result["results"].items()},
                     "targets": result["targets"]})
    return rows


def precision_vs_epe(variables: Any, batches: list, dtypes: tuple) -> dict[str, Any]:
    """EPE per compute dtype of ``variables`` on ``batches`` (the caller's data)."""
    from deepliflow_jax.profile.precision import precision_metrics

    return precision_metrics(variables, batches, dtypes)


def run_gpu_check(out_dir: str | Path, *, smoke: bool = False, variables: Any = None,
                  batches: list | None = None, torch_reference: str | None = None,
                  parity: Callable[[Path, str, dict], dict] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """All parts (module docstring); writes ``gpu_check.json`` and ``gpu_check.md``.

    Args:
      out_dir: results folder (created; files in it are replaced atomically).
      smoke: toy sizes, a one-test parity selection (CI on CPU).
      variables, batches: weights and validation batches (``{'frames', 'gt'}``) of the
        precision check; the part is skipped without them (``experiments.gpu_check``
        passes a synthetic world of ``settings["world"]``'s size).
      torch_reference: ``"module:function"`` of the PyTorch reference loader
        (``weights_convert.torch_bridge.LOADER``); None drops the torch configs.
      parity: ``parity(out, precision, settings)`` runs the parity part under
        ``precision`` (``"default"`` or ``"highest"``) and returns its JSON-ready result
        (``{"precision", "returncode", "counts", "log"}`` or ``{"skipped": why}``);
        None records the part as skipped.
      progress: progress bars.

    Returns:
      ``{"smoke", "settings", "parts": {name: result or {"error"} or {"skipped"}},
      "wall_s"}``.
    """
    settings = SMOKE if smoke else FULL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if torch_reference is None:  # no loader named: the torch contenders cannot run
        settings = {**settings, "runtime": tuple(
            (",".join(c for c in configs.split(",") if not c.startswith("torch")), b, p)
            for configs, b, p in settings["runtime"])}
    if variables is None and batches:
        raise ValueError("batches given without the variables to evaluate on them")
    start = time.perf_counter()
    parts: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], Any]]] = [
        *[(f"parity_{p}", lambda p=p: (parity(out, p, settings) if parity is not None
                                       else {"skipped": "no parity runner given"}))
          for p in PRECISIONS],
        ("runtime", lambda: runtime(out, settings, torch_reference, progress)),
        ("precision_vs_epe", lambda: (
            precision_vs_epe(variables, batches, settings["dtypes"]) if batches
            else {"skipped": "no weights and batches given"})),
    ]
    for name, step in steps:
        elapsed = time.perf_counter() - start
        if elapsed > settings["budget_s"]:
            parts[name] = {"skipped": f"time budget of {settings['budget_s']:.0f} s spent "
                           f"({elapsed:.0f} s)"}
            continue
        t0 = time.perf_counter()
        try:
            parts[name] = step()
        except Exception as e:  # noqa: BLE001 - one failing part must not lose the others
            parts[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"[gpu_check] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        result = {"smoke": smoke, "settings": {k: v for k, v in settings.items()},
                  "parts": parts, "wall_s": time.perf_counter() - start,
                  "xla_flags": os.environ.get("XLA_FLAGS", "")}
        write_text_atomic(out / "gpu_check.json",  # after every part: a cut run keeps them
                          json.dumps(result, indent=2, default=str) + "\n")
    write_text_atomic(out / "gpu_check.md", to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    """A one-page summary of :func:`run_gpu_check`'s result."""
    parts = result["parts"]
    runs = parts.get("runtime") if isinstance(parts.get("runtime"), list) else []
    env = runs[0]["environment"] if runs else {}
    lines = [f"# GPU check{' (smoke)' if result['smoke'] else ''}: "
             f"{env.get('device_kind', '?')} ({env.get('platform', '?')})", "",
             f"Versions: {env.get('versions', '?')}; XLA_FLAGS: `{result['xla_flags']}`; "
             f"wall time {result['wall_s']:.0f} s.", "", "## Parity", ""]
    for p in PRECISIONS:
        part = parts.get(f"parity_{p}", {})
        lines.append(f"- {p}: " + (part.get("skipped") or part.get("error") or
                                   f"{part.get('counts')} (exit {part.get('returncode')}; "
                                   f"log {Path(part['log']).name})"))
    lines += ["", "## Run time", ""]
    if not runs:
        rt = parts.get("runtime", {})
        lines.append(f"- {rt.get('skipped') or rt.get('error')}")
    for run in runs:
        lines += [f"### {run['configs']} ({run['precision']})"
                  + (" LOADED MACHINE" if run.get("loaded") else ""), "",
                  "| job | median ms | p10 | p90 | items/s | x floor | max rel err |",
                  "|---|---|---|---|---|---|---|"]
        for key, r in run["results"].items():
            lines.append(f"| {key} | {report.fmt(r['median_ms'])} | {report.fmt(r['p10_ms'])}"
                         f" | {report.fmt(r['p90_ms'])} | {report.fmt(r['items_per_s'])} | "
                         f"{report.fmt(r['x_floor'], '.1f')} | "
                         f"{report.fmt(r['max_rel_err'], '.1e')} |")
        lines += [""] + [f"- **{t['status']}** {t['target']}: {t['detail']}"
                         for t in run["targets"]] + [""]
    lines += ["## Precision vs EPE", ""]
    pe = parts.get("precision_vs_epe", {})
    lines.append("```\n" + json.dumps(pe, indent=1, default=str)[:3000] + "\n```")
    return "\n".join(lines) + "\n"
