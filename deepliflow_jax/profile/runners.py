"""Timing workers: each job (config, batch) compiled once, then timed with the one timer.

A worker runs in a fresh subprocess (``python -m deepliflow_jax.profile.timing_worker``)
started by :func:`deepliflow_jax.profile.timing.run_benchmark`: it builds one
runner per job (JAX forward, another model's forward, the train step, or the
PyTorch reference's forward or train step), warms each up, and times them all together with
:func:`~deepliflow_jax.profile.timer.time_interleaved` (round-robin, order
rotated per round and per process).
"""

from __future__ import annotations

import importlib
import json
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepliflow_jax.fileio import atomic_write, write_text_atomic
from deepliflow_jax.profile import runtime_configs as rc
from deepliflow_jax.profile.environment import (
    PRECISIONS,
    device_memory,
    environment,
    torch_environment,
)
from deepliflow_jax.profile.inputs import load_variables, make_train_batch, random_frames
from deepliflow_jax.profile.timer import aot_compile, time_calls, time_interleaved

#: the learning rate of every timed fine-tuning step (JAX and PyTorch), the paper's first
TRAIN_LR = 1e-4


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
    frames = jax.device_put(random_frames(batch, height, width))
    variables = jax.device_put(variables)
    compiled, info = aot_compile(model.apply, variables, frames)
    stats = time_calls(compiled, variables, frames, repeats=repeats, warmup=warmup)
    return {"compile_s": info["compile_s"], "median_ms": stats["median_ms"],
            "p10_ms": stats["p10_ms"], "p90_ms": stats["p90_ms"], "repeats": repeats,
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}


class _Runner:
    """One (config, batch) job inside a worker: compiled, ready to call."""

    def __init__(self, key: str, config: rc.RuntimeConfig, batch: int):
        self.key, self.config, self.batch = key, config, batch
        self.info: dict[str, Any] = {}
        self.compile: dict[str, Any] = {}
        self.times: list[float] = []
        self.output: np.ndarray | None = None
        self.call: Callable[[], Any] = lambda: None  # blocks until its result is ready


def _jax_forward_runner(key, config, batch, spec, variables, cache) -> _Runner:
    import functools

    import jax
    import jax.numpy as jnp

    from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
    from deepliflow_jax.model.layers import resolve_conv_impl

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
    runner.info["conv_impl"] = resolve_conv_impl(config.conv_impl)
    params = jax.device_put(params)
    frames = jax.device_put(random_frames(batch, h, w, spec["seed"]))
    exe_key = (config.executable_key, batch)
    if exe_key not in cache:
        model = DeepLiDARFlow(dtype=jnp.dtype(config.dtype), conv_impl=config.conv_impl)
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
    frames_np = random_frames(runner.batch, h, w, spec["seed"])
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


def jax_train_step_call(variables: dict, batch: int, height: int, width: int, seed: int = 0,
                        dtype: Any = "float32", conv_impl: str = "auto",
                        interp_size: tuple[int, int] | None = None
                        ) -> tuple[Callable[[], Any], dict]:
    """The JAX fine-tuning step every timing job runs, compiled and bound to its batch.

    ``Trainer.step_fn`` (the original's KITTI loss plus its L2 term, Adam at
    :data:`TRAIN_LR` through the compression transform, dense and float) on
    :func:`~deepliflow_jax.profile.inputs.make_train_batch`, compiled ahead of time with
    the state donated; each call takes one step from the state the last one left.

    Args:
      variables: ``{'params': ...}`` (copied: the caller's buffers are never donated).
      batch, height, width: the batch ``[B, 2, H, W, 4]``.
      seed: seed of the frames.
      dtype: compute dtype.
      conv_impl: the network's conv implementation (default ``"auto"``).
      interp_size: the network's input size (None: the frames').

    Returns:
      ``(call, compile_info)``: ``call() -> (state, metrics)``, blocked until ready.
    """
    import jax
    import jax.numpy as jnp

    from deepliflow_jax.train.trainer import Trainer

    trainer = Trainer(interp_size, dtype=jnp.dtype(dtype), conv_impl=conv_impl)
    # own copies: the step donates the state, and must not delete the buffers that the
    # forward jobs of this process share
    state = trainer.new_state(jax.tree.map(jnp.copy, variables["params"]), lr=TRAIN_LR)
    data = jax.device_put(make_train_batch(batch, height, width, seed))
    compiled, info = aot_compile(trainer.step_fn, state, data, donate_argnums=0)
    holder = {"state": state}

    def call():
        new_state, metrics = compiled(holder["state"], data)
        holder["state"] = new_state
        return jax.block_until_ready((new_state, metrics))

    return call, info


def _jax_train_runner(key, config, batch, spec, variables, cache) -> _Runner:
    from deepliflow_jax.model.layers import resolve_conv_impl

    runner = _Runner(key, config, batch)
    call, runner.compile = jax_train_step_call(variables, batch, spec["height"],
                                               spec["width"], spec["seed"], config.dtype,
                                               config.conv_impl)
    runner.info = {"conv_impl": resolve_conv_impl(config.conv_impl),
                   "optimizer": f"Adam({TRAIN_LR:g}) through the compression transform "
                   "(dense, float)",
                   "loss": "deepliflow_jax.losses.kitti_loss + the original's L2 term "
                   "(synthetic sparse ground truth)",
                   "step": "deepliflow_jax.train.trainer.Trainer.step_fn, state donated"}
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


def _torch_reference(spec, variables, cache):
    """``(reference, device)``: the PyTorch reference, loaded once per worker."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    _set_torch_precision(spec["precision"], device)
    if "torch_ref" not in cache:
        cache["torch_ref"] = torch_reference_loader(spec.get("torch_reference"))(
            variables, device)
    return cache["torch_ref"], device


def _torch_runner(key, config, batch, spec, variables, cache) -> _Runner:
    import torch

    runner = _Runner(key, config, batch)
    ref, device = _torch_reference(spec, variables, cache)
    frames = random_frames(batch, spec["height"], spec["width"], spec["seed"])
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
    runner.info = {"reference": ref.description, **torch_environment(device)}
    runner.call = call
    return runner


def _torch_train_runner(key, config, batch, spec, variables, cache) -> _Runner:
    """The PyTorch fine-tuning step on the JAX train step's weights, batch and lr."""
    import torch

    if config.dtype != "float32":
        raise ValueError(f"{config.name}: the PyTorch train step runs in float32 only, "
                         f"got dtype {config.dtype!r}")
    runner = _Runner(key, config, batch)
    ref, device = _torch_reference(spec, variables, cache)
    step = ref.train_step(make_train_batch(batch, spec["height"], spec["width"], spec["seed"]),
                          lr=TRAIN_LR, compile=config.torch_mode == "compile")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call():
        loss = step()
        sync()
        return loss

    first_calls = 3 if config.torch_mode == "compile" else 1  # as the forward runner
    t0 = time.perf_counter()
    try:
        first = call()  # the loss at the initial weights, as the JAX step's first call
        for _ in range(first_calls - 1):
            call()
    except Exception as e:
        if config.torch_mode == "compile" and min(spec["height"], spec["width"]) < 128:
            # seen with torch 2.13 on CPU: a 1-pixel level 6 gives the backward of the
            # loss's resize a constant-index scatter that inductor's C++ codegen rejects
            raise RuntimeError(f"{config.name} at {spec['height']}x{spec['width']}: "
                               f"torch.compile failed ({type(e).__name__}: {e}); on CPU it "
                               "needs --height and --width >= 128") from e
        raise
    runner.compile = {"lower_s": 0.0, "compile_s": time.perf_counter() - t0, "flops": None,
                      "memory_analysis": None,
                      "note": f"first {first_calls} step(s), including torch.compile"}
    runner.output = np.asarray(first.float().cpu().numpy(), np.float32).reshape(1)
    runner.info = {"reference": ref.description,
                   "optimizer": f"torch.optim.Adam({TRAIN_LR:g}), optax.adam's betas and eps",
                   "loss": "weights_convert.torch_train.kitti_loss + the original's L2 term "
                   "(synthetic sparse ground truth)",
                   "step": "weights_convert.torch_train.make_train_step"
                   + (", objective and optimizer step torch.compile'd"
                      if config.torch_mode == "compile" else ", eager"),
                   **torch_environment(device)}
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
    if config.framework == "torch" and config.kind == "train_step":
        return _torch_train_runner(key, config, batch, spec, variables, cache)
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
    if runners:
        timed = time_interleaved({r.key: r.call for r in runners}, spec["repeats"],
                                 spec["warmup"], offset=spec["process_index"],
                                 keep_times=True)
        for runner in runners:
            runner.times = timed[runner.key]["times_s"]
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


def worker_main(argv: Sequence[str]) -> int:
    """``python -m deepliflow_jax.profile.timing_worker SPEC.json OUT.json``.

    Returns:
      The exit status (0).
    """
    spec_path, out_path = argv[1], argv[2]
    result = run_worker(json.loads(Path(spec_path).read_text()))
    write_text_atomic(out_path, json.dumps(result, default=str))  # never half-read
    return 0
