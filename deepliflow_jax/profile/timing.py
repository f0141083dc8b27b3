"""Run-time harness: AOT-compiled, warmed-up, device-resident, multi-process timing.

Method:

* every configuration is compiled ahead of time (``jit(...).lower().compile()``);
  lowering and compile time are reported separately from run time;
* inputs and parameters are put on the device before timing; every timed call
  ends with ``block_until_ready`` (``torch.cuda.synchronize`` for torch);
* warm-up calls, then ``repeats`` timed rounds in which every configuration of
  a process runs once, in an order rotated per round and per process, so slow
  drift of a shared machine hits all of them alike;
* the whole thing runs in ``processes`` fresh subprocesses (each compiles and
  times; JAX and torch in separate processes by default, so that JAX's GPU
  memory preallocation and torch's caching allocator never meet), and the
  times of all processes are merged: median, p10/p90, per-process medians;
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
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepliflow_jax.fileio import atomic_write, write_text_atomic
from deepliflow_jax.profile import runtime_configs as rc
from deepliflow_jax.profile.timer import aot_compile, summarize, time_calls

SCHEMA_VERSION = 1
PRECISIONS = ("default", "highest")
SIZE_MULTIPLE = 64
PAPER_BASELINE_MS = 137.4  # TF model, GTX 1660 Ti, 384x1216, batch 1

# Dense (no 2:4 sparsity) peak throughput in TFLOP/s from NVIDIA's data sheets.
GPU_PEAK_TFLOPS = {
    "H100 SXM": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
    "H100 PCIe": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0},
    "H100 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5},
    "H200": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
    "GTX 1660 Ti": {"float32": 5.4, "tf32": 5.4, "bfloat16": 5.4},
}

# The run-time targets (one H100, batch 1, 384x1216).
TARGET_SIZE = (384, 1216)
TARGET_EAGER_RATIO = 0.7
TARGET_BF16_SPEEDUP = 1.5
TARGET_BF16_EPE_CHANGE = 0.01
TARGET_FLOOR_FACTOR = 5.0


# ----------------------------------------------------------------------------- small tools


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


def check_sizes(height: int, width: int, batch_sizes: Sequence[int] = (1,),
                train_batch: int = 1) -> None:
    """Validates the benchmark sizes.

    Raises:
      ValueError: naming ``--height``/``--width``/``--batch_sizes``/``--train_batch``.
    """
    for flag, value in (("--height", height), ("--width", width)):
        if value <= 0 or value % SIZE_MULTIPLE:
            raise ValueError(f"{flag}={value}: DeepLiDARFlow needs a positive multiple of "
                             f"{SIZE_MULTIPLE} (e.g. 384x1216 for KITTI; 64x128 for tests)")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"--batch_sizes={list(batch_sizes)}: need one or more sizes >= 1")
    if train_batch < 1:
        raise ValueError(f"--train_batch={train_batch}: must be >= 1")


def make_frames(batch: int, height: int, width: int, seed: int = 0,
                lidar_fraction: float = 0.05) -> np.ndarray:
    """Deterministic preprocessed-looking frames ``[B, 2, H, W, 4]`` (float32).

    RGB in [0, 1] minus a mean of 0.4, and a sparse normalised disparity with
    ``lidar_fraction`` of the pixels set (the rest exactly 0 = no point), so the
    sparse-depth branch sees KITTI-like sparsity.
    """
    rng = np.random.default_rng(seed)
    rgb = rng.uniform(0.0, 1.0, (batch, 2, height, width, 3)) - 0.4
    disp = rng.standard_normal((batch, 2, height, width, 1))
    disp *= rng.uniform(size=disp.shape) < lidar_fraction
    return np.concatenate([rgb, disp], axis=-1).astype(np.float32)


def make_ground_truth(batch: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    """Sparse KITTI-style ground truth ``[B, H, W, 4]`` in pixels (d0 > 0 = valid)."""
    rng = np.random.default_rng(seed)
    gt = rng.normal(0.0, 5.0, (batch, height, width, 4)).astype(np.float32)
    gt[..., 2:] = np.abs(gt[..., 2:]) + 1.0
    gt *= (rng.uniform(size=(batch, height, width, 1)) < 0.2)
    return gt


def load_variables(weights: str | None = None, seed: int = 0) -> dict:
    """Parameters: ``weights`` (``.npz`` of '/'-joined paths) or the numpy init.

    Args:
      weights: optional path to an ``.npz`` whose keys are the parameter paths
        (``params/guidance_network/...``, as :func:`compress.select.flatten`).
      seed: init seed (random weights; biases N(0, 0.1) so they matter).

    Returns:
      ``{'params': ...}`` of float32 numpy-backed jax arrays.
    """
    from deepliflow_jax.model.api import init_params

    if not weights:
        return init_params(seed, bias_std=0.1)
    from deepliflow_jax.compress.select import unflatten

    with np.load(weights) as data:
        flat = {k: np.asarray(data[k], np.float32) for k in data.files}
    return unflatten(flat)


def peak_tflops(device_kind: str, platform_name: str) -> tuple[dict[str, float], str]:
    """Assumed peak TFLOP/s per precision for a device, and where it comes from.

    Returns:
      ``({"float32", "tf32", "bfloat16"}, note)``. For a CPU: cores x clock x
      FLOP/cycle (32 for AVX2 with two FMA units, 64 with AVX-512), fp32; bf16
      is assumed no faster (no AMX/AVX512-BF16 use by XLA:CPU assumed).
    """
    kind = device_kind or ""
    if platform_name == "gpu" or "NVIDIA" in kind or "H100" in kind or "H200" in kind:
        if "H200" in kind:
            return GPU_PEAK_TFLOPS["H200"], "NVIDIA H200 data sheet, dense"
        if "H100" in kind:
            if "PCIe" in kind:
                return GPU_PEAK_TFLOPS["H100 PCIe"], "NVIDIA H100 PCIe data sheet, dense"
            if "NVL" in kind:
                return GPU_PEAK_TFLOPS["H100 NVL"], "NVIDIA H100 NVL data sheet, dense"
            return GPU_PEAK_TFLOPS["H100 SXM"], "NVIDIA H100 SXM data sheet, dense"
        if "1660" in kind:
            return GPU_PEAK_TFLOPS["GTX 1660 Ti"], "GTX 1660 Ti fp32 (no tensor cores)"
        return {}, f"no peak figure known for {kind!r}"
    cores = os.cpu_count() or 1
    mhz, flags = 0.0, ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":")[1])
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    mhz = mhz or 2500.0
    per_cycle = 64 if "avx512f" in flags else 32 if ("avx2" in flags and "fma" in flags) else 16
    tf = cores * mhz * 1e6 * per_cycle / 1e12
    note = (f"CPU assumption: {cores} cores x {mhz:.0f} MHz x {per_cycle} fp32 FLOP/cycle "
            f"({'AVX-512' if per_cycle == 64 else 'AVX2+FMA, 2 FMA units'}) = {tf * 1e3:.0f} "
            "GFLOP/s; bf16 assumed no faster; the cores are shared with other jobs")
    return {"float32": tf, "tf32": tf, "bfloat16": tf}, note


def precision_key(dtype: str, precision: str, platform_name: str) -> str:
    """Which peak applies: bf16 compute, TF32 (GPU default precision) or true fp32."""
    if dtype == "bfloat16":
        return "bfloat16"
    if platform_name == "gpu" and precision == "default":
        return "tf32"
    return "float32"


# ----------------------------------------------------------------------------- environment


def _versions() -> dict[str, Any]:
    import jax
    import jaxlib

    out = {"python": platform.python_version(), "jax": jax.__version__,
           "jaxlib": jaxlib.__version__, "numpy": np.__version__}
    try:
        import flax

        out["flax"] = flax.__version__
    except ImportError:
        pass
    return out


def _config_value(name: str) -> Any:
    import jax

    try:
        return getattr(jax.config, name)
    except AttributeError:  # newer JAX: read() only
        return jax.config.read(name)


def environment(precision: str = "default") -> dict[str, Any]:
    """Device and software facts recorded with every result (initialises JAX).

    Args:
      precision: the ``--precision`` the run asked for.

    Returns:
      Device kind/platform/count, versions (jax, jaxlib, CUDA where present),
      ``jax_default_matmul_precision`` and what it means for convolutions.
    """
    import jax

    dev = jax.devices()[0]
    env = {
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "platform_version": getattr(dev.client, "platform_version", None),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": _versions(),
        "precision_flag": precision,
        "jax_default_matmul_precision": _config_value("jax_default_matmul_precision"),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if dev.platform == "gpu":
        try:
            from jax._src.lib import cuda_versions  # private; absent on CPU builds

            if cuda_versions is not None:
                env["versions"]["cuda_runtime"] = cuda_versions.cuda_runtime_get_version()
                env["versions"]["cudnn"] = cuda_versions.cudnn_get_version()
                env["versions"]["cuda_driver"] = cuda_versions.cuda_driver_get_version()
        except Exception as e:  # noqa: BLE001 - recorded, never fatal
            env["versions"]["cuda_error"] = repr(e)
        env["conv_precision"] = (
            "true fp32 (Precision.HIGHEST)" if precision == "highest" else
            "XLA default: float32 convs/matmuls may run in TF32 on Ampere/Hopper")
    else:
        env["conv_precision"] = "true fp32 (XLA:CPU has no TF32)"
        env["versions"]["cuda"] = None
    return env


def _torch_environment(device: str) -> dict[str, Any]:
    import torch

    env = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "torch_device": device, "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        env["torch_device_name"] = torch.cuda.get_device_name(0)
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        env["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    env["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return env


def device_memory() -> dict[str, Any] | None:
    """``memory_stats()`` of the first JAX device (None on CPU: n/a)."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats:
        return None
    keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit", "largest_alloc_size")
    return {k: int(stats[k]) for k in keys if k in stats}


def time_forward(variables: dict, batch: int, height: int, width: int, repeats: int = 10,
                 warmup: int = 2, dtype: Any = None) -> dict:
    """Median/p10/p90 wall time of the jitted forward, in this process (compile timed apart).

    Args:
      variables: ``{'params': ...}``.
      batch, height, width: input size.
      repeats: timed calls.
      warmup: untimed calls after compiling.
      dtype: compute dtype (default float32).

    Returns:
      ``{"compile_s", "median_ms", "p10_ms", "p90_ms", "repeats", "backend", "device"}``.
    """
    import jax
    import jax.numpy as jnp

    from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow

    model = DeepLiDARFlow(dtype=dtype or jnp.float32)
    frames = jax.device_put(make_frames(batch, height, width))
    variables = jax.device_put(variables)
    compiled, info = aot_compile(model.apply, variables, frames)
    stats = time_calls(compiled, variables, frames, repeats=repeats, warmup=warmup)
    return {"compile_s": info["compile_s"], "median_ms": stats["median_ms"],
            "p10_ms": stats["p10_ms"], "p90_ms": stats["p90_ms"], "repeats": repeats,
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}


# ----------------------------------------------------------------------------- runners


class _Runner:
    """One (config, batch) job inside a worker: compiled, ready to call."""

    def __init__(self, key: str, config: rc.RuntimeConfig, batch: int):
        self.key, self.config, self.batch = key, config, batch
        self.info: dict[str, Any] = {}
        self.compile: dict[str, Any] = {}
        self.times: list[float] = []
        self.output: np.ndarray | None = None
        self.call: Callable[[], Any] = lambda: None

    def timed(self) -> None:
        t0 = time.perf_counter()
        self.call()
        self.times.append(time.perf_counter() - t0)


def _jax_forward_runner(key, config, batch, spec, variables, cache) -> _Runner:
    import functools

    import jax
    import jax.numpy as jnp

    from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow

    h, w = spec["height"], spec["width"]
    runner = _Runner(key, config, batch)
    if config.builder is not None:
        return _jax_builder_runner(runner, spec, variables)
    params = variables
    if config.transform is not None:
        if ("transformed", config.name) not in cache:  # once per config, not per batch size
            cache[("transformed", config.name)] = config.transform(variables)
        params, info = cache[("transformed", config.name)]
        runner.info = dict(info)
    params = jax.device_put(params)
    frames = jax.device_put(make_frames(batch, h, w, spec["seed"]))
    exe_key = (config.executable_key, batch)
    if exe_key not in cache:
        model = DeepLiDARFlow(dtype=jnp.dtype(config.dtype))
        fn = functools.partial(model.apply, out_size=(h, w))
        compiled, info = aot_compile(fn, params, frames)
        cache[exe_key] = (compiled, info, key)
        runner.compile = dict(info)
    else:
        compiled, info, owner = cache[exe_key]
        runner.compile = {**info, "shared_with": owner}

    def call():
        return jax.block_until_ready(compiled(params, frames))

    runner.call = call
    runner.output = np.asarray(call()[0], np.float32)
    return runner


def _jax_builder_runner(runner: _Runner, spec: dict, variables: dict) -> _Runner:
    """A forward of another model (structured, int8), compiled on its own."""
    import jax

    h, w = spec["height"], spec["width"]
    frames_np = make_frames(runner.batch, h, w, spec["seed"])
    apply_fn, params, runner.info = runner.config.builder(variables, frames_np, (h, w),
                                                          runner.config.dtype)
    params = jax.device_put(params)
    frames = jax.device_put(frames_np)
    compiled, runner.compile = aot_compile(apply_fn, params, frames)
    if runner.config.name.startswith("int8"):
        try:
            from deepliflow_jax.compress.int8 import hlo_conv_report

            rep = hlo_conv_report(compiled.as_text())
            runner.info["hlo_convolutions"] = {k: rep[k] for k in (
                "int8_convolutions", "int32_convolutions", "float_convolutions")}
        except Exception as e:  # noqa: BLE001 - a report, never fatal
            runner.info["hlo_convolutions"] = repr(e)

    def call():
        return jax.block_until_ready(compiled(params, frames))

    runner.call = call
    runner.output = np.asarray(call()[0], np.float32)
    return runner


def _jax_train_runner(key, config, batch, spec, variables, cache) -> _Runner:
    import jax
    import jax.numpy as jnp

    from deepliflow_jax.train.trainer import Trainer

    h, w = spec["height"], spec["width"]
    runner = _Runner(key, config, batch)
    trainer = Trainer(dtype=jnp.dtype(config.dtype))
    # own copies: the step donates the state, and must not delete the buffers that the
    # forward jobs of this process share
    state = trainer.new_state(jax.tree.map(jnp.copy, variables["params"]), lr=1e-4)
    data = jax.device_put({"frames": make_frames(batch, h, w, spec["seed"]),
                           "gt": make_ground_truth(batch, h, w)})
    compiled, info = aot_compile(trainer.step_fn, state, data, donate_argnums=0)
    runner.compile = info
    runner.info = {"optimizer": "Adam(1e-4) through the compression transform (dense, float)",
                   "loss": "deepliflow_jax.losses.kitti_loss + the original's L2 term "
                   "(synthetic sparse ground truth)",
                   "step": "deepliflow_jax.train.trainer.Trainer.step_fn, state donated"}
    holder = {"state": state}

    def call():
        new_state, metrics = compiled(holder["state"], data)
        holder["state"] = new_state
        return jax.block_until_ready((new_state, metrics))

    runner.call = call
    runner.output = np.asarray(call()[1]["loss"], np.float32).reshape(1)
    return runner


def torch_reference_loader(address: str | None) -> Callable[[dict, str], Any]:
    """The PyTorch reference's loader named by ``"module:function"``.

    The reference lives in ``weights_convert``, beside the library; the caller
    (``experiments.runtime``: ``weights_convert.torch_bridge.LOADER``) names it, so
    the harness imports nothing above itself.

    Raises:
      ValueError: no address, or one not of the form ``"module:function"``.
      ImportError, AttributeError: the module or function does not exist.
    """
    if not address or ":" not in address:
        raise ValueError(f"torch_reference={address!r}: torch configurations need the "
                         "PyTorch reference's loader as 'module:function', e.g. "
                         "'weights_convert.torch_bridge:load_reference'")
    module, name = address.split(":", 1)
    return getattr(importlib.import_module(module), name)


def _torch_runner(key, config, batch, spec, variables, cache) -> _Runner:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    _set_torch_precision(spec["precision"], device)
    runner = _Runner(key, config, batch)
    if "torch_ref" not in cache:
        cache["torch_ref"] = torch_reference_loader(spec.get("torch_reference"))(
            variables, device)
    ref = cache["torch_ref"]
    frames = make_frames(batch, spec["height"], spec["width"], spec["seed"])
    x = ref.make_input(frames)
    module = ref.module
    if config.torch_mode == "compile":
        module = torch.compile(module)
    autocast = config.dtype == "bfloat16"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call():
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=autocast):
            out = module(x)
        sync()
        return out

    # torch.compile compiles lazily and may recompile on the second call: the first
    # calls (one eager, three compiled) count as its compile time, not as warm-up
    first_calls = 3 if config.torch_mode == "compile" else 1
    t0 = time.perf_counter()
    for _ in range(first_calls):
        out = call()
    runner.compile = {"lower_s": 0.0, "compile_s": time.perf_counter() - t0, "flops": None,
                      "memory_analysis": None,
                      "note": f"first {first_calls} call(s), including torch.compile"}
    runner.output = ref.to_numpy(out)
    runner.info = {"reference": ref.description, **_torch_environment(device)}
    runner.call = call
    return runner


def _set_torch_precision(precision: str, device: str) -> None:
    import torch

    tf32 = precision != "highest"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("highest" if not tf32 else "high")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True


def _make_runner(key, config, batch, spec, variables, cache) -> _Runner:
    if config.framework == "torch":
        return _torch_runner(key, config, batch, spec, variables, cache)
    if config.kind == "train_step":
        return _jax_train_runner(key, config, batch, spec, variables, cache)
    return _jax_forward_runner(key, config, batch, spec, variables, cache)


def _torch_peak() -> int | None:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    except ImportError:
        pass
    return None


def run_worker(spec: dict) -> dict:
    """Compiles and times the jobs of one process (called in a fresh subprocess).

    Args:
      spec: ``{"jobs": [{"key", "config", "batch"}], "height", "width", "repeats",
        "warmup", "precision", "seed", "weights", "process_index", "output_dir"
        (or None: no outputs saved), "profile_dir" (or None)}``.

    Returns:
      ``{"environment", "jobs": {key: {"times_s", "compile", "info", "output",
      "error"}}, "device_memory", "torch_peak_bytes", "wall_s"}``.
    """
    start = time.perf_counter()
    import jax

    if spec["precision"] not in PRECISIONS:
        raise ValueError(f"--precision={spec['precision']!r}: must be one of {PRECISIONS}")
    jax.config.update("jax_default_matmul_precision",
                      None if spec["precision"] == "default" else spec["precision"])
    if spec.get("compilation_cache_dir"):
        # later processes load what the first compiled: their compile_s is a cache load
        jax.config.update("jax_compilation_cache_dir", spec["compilation_cache_dir"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    env = environment(spec["precision"])
    variables = load_variables(spec.get("weights"), spec["seed"])
    cache: dict = {}
    runners, results = [], {}
    for job in spec["jobs"]:
        config = rc.resolve(job["config"])
        try:
            runners.append(_make_runner(job["key"], config, job["batch"], spec, variables,
                                        cache))
        except Exception as e:  # noqa: BLE001 - one broken config must not sink the rest
            results[job["key"]] = {"error": f"{type(e).__name__}: {e}",
                                   "traceback": traceback.format_exc(limit=8)}
    for runner in runners:
        for _ in range(spec["warmup"]):
            runner.call()
    n = len(runners)
    for r in range(spec["repeats"]):
        shift = (r + spec["process_index"]) % max(n, 1)
        for runner in runners[shift:] + runners[:shift]:
            runner.timed()
    jax_runners = [r for r in runners if r.config.framework == "jax"]
    if spec.get("profile_dir") and jax_runners:
        _capture_trace(jax_runners, spec["profile_dir"])
    out_dir = spec.get("output_dir")
    for runner in runners:
        entry = {"times_s": runner.times, "compile": runner.compile, "info": runner.info,
                 "error": None, "output": None}
        if out_dir and runner.output is not None:
            path = Path(out_dir) / f"{runner.key}.npy"
            atomic_write(path, lambda f, a=runner.output: np.save(f, a))
            entry["output"] = str(path)
        results[runner.key] = entry
    return {"environment": env, "jobs": results, "device_memory": device_memory(),
            "torch_peak_bytes": _torch_peak(), "wall_s": time.perf_counter() - start}


def _capture_trace(runners: list[_Runner], profile_dir: str, calls: int = 3) -> None:
    import jax

    Path(profile_dir).mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(profile_dir):
        for runner in runners:
            for _ in range(calls):
                with jax.profiler.TraceAnnotation(runner.key):
                    runner.call()


# ----------------------------------------------------------------------------- parent


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
    """Which job an output is compared against (same batch)."""
    if config.kind != "forward":
        return None
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
                  isolate: bool = False, mix_frameworks: bool = False,
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
      mix_frameworks: JAX and torch jobs in the same subprocess.
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
    batch_sizes = [int(b) for b in batch_sizes]
    check_sizes(height, width, batch_sizes, train_batch)
    if precision not in PRECISIONS:
        raise ValueError(f"--precision={precision!r}: must be one of {PRECISIONS}")
    if repeats < 1:
        raise ValueError(f"--repeats={repeats}: must be >= 1")
    if warmup < 0:
        raise ValueError(f"--warmup={warmup}: must be >= 0")
    if processes < 0:
        raise ValueError(f"--processes={processes}: must be >= 0 (0 = in this process)")
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
            if processes == 0:
                worker_results.append((p, run_worker(spec)))
            else:
                worker_results.append((p, _spawn(spec, work, i, mix_frameworks)))
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


def derive(result: dict) -> dict:
    """Adds the derived parts (torch rows' FLOP figures, targets, compression sentences).

    Also usable on a results JSON read back from disk, to re-render it.

    Returns:
      ``result``, updated in place.
    """
    results, env = result["results"], result["environment"]
    peak_tf = env.get("peak_tflops", {})
    # forward FLOPs do not depend on the framework: give torch rows the XLA count too
    for row in results.values():
        dense = results.get(f"dense@b{row['batch']}")
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


def _median_or_none(values):
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


# ----------------------------------------------------------------------------- analysis


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


# ----------------------------------------------------------------------------- output


def _fmt(v, spec=".2f", none="-"):
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
            f"| {row['config']} | {row['batch']} | {row['dtype']} | {_fmt(row['median_ms'])} | "
            f"{_fmt(row['p10_ms'])} | {_fmt(row['p90_ms'])} | {row['n']} | "
            f"{_fmt(row.get('items_per_s'))} | {_fmt(row['compile_s_median'], '.1f')} | "
            f"{_fmt(row.get('achieved_gflops'), '.1f')} | "
            f"{'-' if pct is None else f'{pct:.1%}'} | {_fmt(row.get('floor_ms'), '.3f')} | "
            f"{_fmt(row.get('x_floor'), '.1f')} | {rel} | "
            f"{'-' if zeros is None else f'{zeros:.1%}'} | {'; '.join(notes)} |")
    lines += ["", "Items/s: frame pairs per second (forward) or training examples per second "
              "(train_step). GFLOP/s from XLA's FLOP count of the dense forward; floor = "
              f"XLA FLOPs / peak. Peak: {env.get('peak_note')} "
              f"({peaks})."
              f" Paper baseline: {PAPER_BASELINE_MS} ms (TF, GTX 1660 Ti, 384x1216, batch 1).",
              "", "## Targets (defined for one H100, batch 1, 384x1216)", ""]
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
        out.append(f"{row['config']:>20s} b{row['batch']}: median {_fmt(row['median_ms'])} ms "
                   f"(p10 {_fmt(row['p10_ms'])}, p90 {_fmt(row['p90_ms'])}, n {row['n']}), "
                   f"compile {_fmt(row['compile_s_median'], '.1f')} s{extra}")
    out += [f"TARGET {t['status']}: {t['target']}: {t['detail']}" for t in result["targets"]]
    return "\n".join(out)


def write_results(result: dict, json_path: str | None, md_path: str | None) -> None:
    """Writes the JSON and/or Markdown files (parent folders created)."""
    if json_path:
        write_text_atomic(json_path, json.dumps(result, indent=2, default=str) + "\n")
    if md_path:
        write_text_atomic(md_path, to_markdown(result))


def worker_main(argv: Sequence[str]) -> int:
    """``python -m deepliflow_jax.profile.timing_worker SPEC.json OUT.json``.

    Returns:
      The exit status (0).
    """
    spec_path, out_path = argv[1], argv[2]
    result = run_worker(json.loads(Path(spec_path).read_text()))
    write_text_atomic(out_path, json.dumps(result, default=str))  # never half-read
    return 0
