"""Run-time harness: AOT-compiled, warmed-up, device-resident, multi-process timing.

Method:

* every configuration is compiled ahead of time (``jit(...).lower().compile()``);
  lowering and compile time are reported separately from run time;
* inputs and parameters are put on the device before timing; every timed call
  ends with ``block_until_ready`` (``torch.cuda.synchronize`` for torch);
* warm-up calls, then ``repeats`` timed rounds in which every configuration of
  a process runs once, in an order rotated per round and per process, so slow
  drift of a shared machine hits all of them alike (:mod:`.runners`, with the one
  timer's :func:`~deepliflow_jax.profile.timer.time_interleaved`); JAX and torch
  contenders share the process and the rounds by default (``mix_frameworks``;
  JAX's GPU memory preallocation is then off, so torch's allocator has room);
* the whole thing runs in ``processes`` fresh subprocesses (each compiles and
  times), and the times of all processes are merged: median, p10/p90,
  per-process medians;
* the load average is recorded before and after every process
  (:func:`~deepliflow_jax.profile.environment.load_average`); a run during which
  it exceeded the core count is flagged ``loaded`` in the results and warned
  about, since other work then shared the cores;
* peak device memory from ``device.memory_stats()`` (n/a on CPU), XLA's own
  memory analysis of each executable, the XLA FLOP count and with it the
  achieved GFLOP/s against a stated peak, and the floor time that peak implies;
* device, jax/jaxlib/CUDA (and torch) versions and the matmul/conv precision
  are recorded with every result.

The parent process never touches a JAX backend when it runs subprocesses (on a
GPU that would preallocate most of its memory); the workers do.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepliflow_jax.fileio import write_text_atomic
from deepliflow_jax.profile import runtime_configs as rc
from deepliflow_jax.profile.environment import (
    PRECISIONS,
    load_average,
    peak_tflops,
    precision_key,
)
from deepliflow_jax.profile.inputs import check_sizes
from deepliflow_jax.profile.report import derive
from deepliflow_jax.profile.runners import run_worker, torch_reference_loader
from deepliflow_jax.profile.timer import summarize
from deepliflow_jax.scalars import check_number, check_numbers

SCHEMA_VERSION = 1


def _progress(iterable, total: int, desc: str, enabled: bool = True):
    """tqdm when installed, else one printed line per item."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm  # optional
    except ImportError:
        return _plain_progress(iterable, total, desc)
    return tqdm(iterable, total=total, desc=desc)


def _plain_progress(iterable, total: int, desc: str):
    start = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        print(f"{desc}: {i}/{total} started ({time.perf_counter() - start:.0f} s so far)",
              flush=True)
        yield item


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _spawn(spec: dict, workdir: Path, index: int, mix_frameworks: bool) -> dict:
    spec_path = workdir / f"spec_{index}.json"
    out_path = workdir / f"out_{index}.json"
    write_text_atomic(spec_path, json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_repo_root())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    frameworks = {rc.resolve(j["config"]).framework for j in spec["jobs"]}
    if mix_frameworks or "jax" not in frameworks:
        # JAX must not grab most of a GPU in a process where torch runs
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if "jax" not in frameworks:
        env["JAX_PLATFORMS"] = "cpu"  # the torch-only worker uses JAX for host-side init only
    proc = subprocess.run(
        [sys.executable, "-m", "deepliflow_jax.profile.timing_worker", str(spec_path),
         str(out_path)],
        env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"timing worker {index} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(out_path.read_text())


def _load_warning(entry: dict) -> str:
    before, after = entry["before"], entry["after"]
    return (f"machine loaded while timing {', '.join(entry['jobs'])}: load average "
            f"{before['load1']} before, {after['load1']} after, on {after['cpu_count']} "
            "cores; other work shared the cores, so these figures are labelled 'loaded'")


def _job_groups(jobs: list[dict], isolate: bool, mix_frameworks: bool) -> list[list[dict]]:
    if isolate:
        return [[j] for j in jobs]
    if mix_frameworks:
        return [jobs]
    groups = {}
    for job in jobs:
        groups.setdefault(rc.resolve(job["config"]).framework, []).append(job)
    return list(groups.values())


def _compare(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Errors of ``out`` against ``ref`` (both ``[B, H, W, 4]`` scene flow)."""
    if out.shape != ref.shape:
        return {"shape_mismatch": f"{out.shape} vs {ref.shape}"}
    diff = out.astype(np.float64) - ref.astype(np.float64)
    scale = float(np.max(np.abs(ref))) or 1.0
    res = {
        "max_abs_err": float(np.max(np.abs(diff))),
        "max_rel_err": float(np.max(np.abs(diff)) / scale),
        "rel_l2_err": float(np.linalg.norm(diff) / (np.linalg.norm(ref) or 1.0)),
    }
    if ref.ndim == 4 and ref.shape[-1] >= 2:
        epe = np.sqrt(np.sum(diff[..., :2] ** 2, axis=-1)).mean()
        mag = np.sqrt(np.sum(ref[..., :2].astype(np.float64) ** 2, axis=-1)).mean()
        res["flow_epe_vs_ref_px"] = float(epe)
        res["flow_epe_vs_ref_rel"] = float(epe / (mag or 1.0))
    return res


def _reference_key(config: rc.RuntimeConfig, batch: int, keys: set[str]) -> str | None:
    """Which job an output is compared against (same batch).

    Forwards: the scene flow against ``dense`` (``bf16`` for torch bfloat16); PyTorch
    train steps: the loss of the first step against the JAX ``train_step``'s.
    """
    if config.kind != "forward":
        ref = f"train_step@b{batch}"
        return ref if config.framework == "torch" and ref in keys else None
    if config.framework == "torch" and config.dtype == "bfloat16":
        ref = f"bf16@b{batch}"
        if ref in keys:
            return ref
    ref = f"dense@b{batch}"
    if config.name == "dense" or ref not in keys:
        return None
    return ref


def run_benchmark(configs: str | Sequence[str] = rc.DEFAULT_CONFIGS, height: int = 384,
                  width: int = 1216, batch_sizes: Sequence[int] = (1, 8), train_batch: int = 1,
                  repeats: int = 20, warmup: int = 3, processes: int = 3,
                  precision: str = "default", seed: int = 0, weights: str | None = None,
                  isolate: bool = False, mix_frameworks: bool = True,
                  profile_dir: str | None = None, progress: bool = True,
                  note: str = "", compilation_cache_dir: str | None = None,
                  torch_reference: str | None = None) -> dict:
    """Times every configuration; the library function behind ``experiments.runtime``.

    Args:
      configs: comma-separated names (see :mod:`runtime_configs`).
      height, width: network input size (multiples of 64).
      batch_sizes: forward batch sizes (1 = latency, 8 = throughput).
      train_batch: batch of the fine-tuning step configs.
      repeats: timed rounds per process.
      warmup: untimed calls per job after compiling.
      processes: subprocesses per job group (0: run in this process, no isolation).
      precision: ``"default"`` (XLA default; TF32 convs possible on GPU) or ``"highest"``.
      seed: weights (when ``weights`` is None) and input seed.
      weights: optional ``.npz`` of parameters.
      isolate: one subprocess per job (exact per-job peak memory; more compiles).
      mix_frameworks: JAX and torch jobs in the same subprocess, interleaved in the
        same rounds (the default; False gives each framework its own processes).
      profile_dir: capture a ``jax.profiler`` trace of the JAX forward jobs here
        (first process only).
      progress: show progress.
      note: free text stored with the results (e.g. "shared CPU, noisy").
      compilation_cache_dir: JAX persistent compilation cache for the workers
        (cuts the compile time of processes 2..n; process 1's compile is the real one).
      torch_reference: ``"module:function"`` of the PyTorch reference's loader, needed
        by the torch configurations (``weights_convert.torch_bridge.LOADER``).

    Returns:
      The results dict (``schema_version``, ``environment``, ``settings``,
      ``results`` per job, ``comparisons``, ``targets``, ``compression_honesty``).

    Raises:
      ValueError: naming the flag for an unknown configuration, a bad size,
        precision, repeats or process count.
    """
    parsed = rc.parse_configs(configs)
    batch_sizes = list(check_numbers(batch_sizes, "--batch_sizes", integer=True, minimum=1))
    check_sizes(height, width, batch_sizes, train_batch)
    if precision not in PRECISIONS:
        raise ValueError(f"--precision={precision!r}: must be one of {PRECISIONS}")
    repeats = check_number(repeats, "--repeats", integer=True, minimum=1)
    warmup = check_number(warmup, "--warmup", integer=True, minimum=0)
    processes = check_number(processes, "--processes", "an integer >= 0 (0 = in this process)",
                             integer=True, minimum=0)
    if any(c.framework == "torch" for c in parsed):
        torch_reference_loader(torch_reference)  # refuse a missing loader before any work
    jobs = []
    for config in parsed:
        sizes = [train_batch] if config.kind == "train_step" else batch_sizes
        jobs += [{"key": f"{config.name}@b{b}", "config": config.name, "batch": b}
                 for b in sizes]
    base = {"height": height, "width": width, "repeats": repeats, "warmup": warmup,
            "precision": precision, "seed": seed, "weights": weights,
            "compilation_cache_dir": compilation_cache_dir, "torch_reference": torch_reference}
    groups = _job_groups(jobs, isolate, mix_frameworks)
    worker_results: list[tuple[int, dict]] = []
    loads: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="runtime_") as tmp:
        work = Path(tmp)
        out_dir = work / "outputs"
        out_dir.mkdir()
        runs = [(p, g) for p in range(max(processes, 1)) for g in
                (groups[p % len(groups):] + groups[:p % len(groups)])]
        for i, (p, group) in enumerate(_progress(runs, len(runs), "timing processes",
                                                 progress)):
            spec = {**base, "jobs": group, "process_index": p,
                    "output_dir": str(out_dir) if p == 0 else None,
                    "profile_dir": profile_dir if p == 0 else None}
            before = load_average()
            if processes == 0:
                worker_results.append((p, run_worker(spec)))
            else:
                worker_results.append((p, _spawn(spec, work, i, mix_frameworks)))
            after = load_average()
            loads.append({"process": p, "jobs": [j["key"] for j in group],
                          "before": before, "after": after})
            if before["loaded"] or after["loaded"]:
                warnings.warn(_load_warning(loads[-1]), stacklevel=2)
        outputs = {}
        for _, wr in worker_results:
            for key, entry in wr["jobs"].items():
                if entry.get("output"):
                    outputs[key] = np.load(entry["output"])
        result = _merge(parsed, jobs, worker_results, outputs, base)
    result["settings"].update({"batch_sizes": batch_sizes, "train_batch": train_batch,
                               "processes": processes, "isolate": isolate,
                               "mix_frameworks": mix_frameworks, "profile_dir": profile_dir,
                               "configs": [c.name for c in parsed]})
    result["wall_s"] = time.perf_counter() - t0
    result["note"] = note
    result["load"] = loads
    result["loaded"] = any(x["before"]["loaded"] or x["after"]["loaded"] for x in loads)
    return derive(result)


def _merge(parsed, jobs, worker_results, outputs, base) -> dict:
    # the device facts of a worker that ran JAX jobs (torch-only workers hide the GPU from JAX)
    envs = [wr["environment"] for _, wr in worker_results
            if any(rc.resolve(k.split("@")[0]).framework == "jax" for k in wr["jobs"])]
    envs = envs or [wr["environment"] for _, wr in worker_results]
    env = dict(envs[0]) if envs else {}
    for wr in (w for _, w in worker_results):
        for entry in wr["jobs"].values():
            info = entry.get("info") or {}
            if "torch" in info:
                env.setdefault("torch", {k: v for k, v in info.items()
                                         if k.startswith(("torch", "cudnn", "matmul",
                                                          "float32"))})
    peak_tf, peak_note = peak_tflops(env.get("device_kind", ""), env.get("platform", ""))
    env["peak_tflops"] = peak_tf
    env["peak_note"] = peak_note
    by_name = {c.name: c for c in parsed}
    keys = {j["key"] for j in jobs}
    results = {}
    for job in jobs:
        key, config = job["key"], by_name[job["config"]]
        times, compile_s, lower_s, per_proc, errors, proc_mem = [], [], [], [], [], []
        compile_info, info = {}, {}
        for p, wr in worker_results:
            entry = wr["jobs"].get(key)
            if entry is None:
                continue
            if entry.get("error"):
                errors.append(entry["error"])
                continue
            times += entry["times_s"]
            per_proc.append(float(np.median(entry["times_s"])) * 1e3)
            compile_s.append(entry["compile"].get("compile_s"))
            lower_s.append(entry["compile"].get("lower_s"))
            compile_info = entry["compile"]
            info = entry["info"]
            mem = wr.get("device_memory") or {}
            peak = mem.get("peak_bytes_in_use")
            if config.framework == "torch":
                peak = wr.get("torch_peak_bytes")
            proc_mem.append({"process": p, "jobs_in_process": len(wr["jobs"]),
                             "peak_bytes": peak})
        stats = summarize(times)
        flops = compile_info.get("flops")
        row = {
            "config": config.name, "framework": config.framework, "kind": config.kind,
            "dtype": config.dtype, "batch": job["batch"], "description": config.description,
            **stats,
            "per_process_median_ms": per_proc,
            "compile_s_median": _median_or_none(compile_s),
            "compile_s_per_process": compile_s,
            "lower_s_median": _median_or_none(lower_s),
            "compile_shared_with": compile_info.get("shared_with"),
            "xla_flops": flops,
            "memory_analysis": compile_info.get("memory_analysis"),
            "peak_device_memory": proc_mem if any(m["peak_bytes"] for m in proc_mem) else "n/a",
            "info": info,
            "errors": errors,
        }
        if stats["median_ms"]:
            row["items_per_s"] = job["batch"] / (stats["median_ms"] / 1e3)
        key_p = precision_key(config.dtype, base["precision"], env.get("platform", ""))
        row["peak_key"] = key_p
        if flops and stats["median_ms"] and peak_tf.get(key_p):
            peak_flops = peak_tf[key_p] * 1e12
            row["achieved_gflops"] = flops / (stats["median_ms"] / 1e3) / 1e9
            row["fraction_of_peak"] = row["achieved_gflops"] * 1e9 / peak_flops
            row["floor_ms"] = flops / peak_flops * 1e3
            row["x_floor"] = stats["median_ms"] / row["floor_ms"]
        ref = _reference_key(config, job["batch"], keys)
        if ref and key in outputs and ref in outputs:
            row["vs"] = ref
            row["error_vs_ref"] = _compare(outputs[key], outputs[ref])
        results[key] = row
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "settings": {k: base[k] for k in ("height", "width", "repeats", "warmup", "precision",
                                          "seed", "weights", "compilation_cache_dir")},
        "results": results,
    }


def _median_or_none(values):
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None
