"""What a timing result is recorded with: device, versions, precision, peak FLOP/s, load.

A figure is only comparable with the facts it was taken under: the device and
its assumed peak, jax/jaxlib/CUDA/torch versions, the matmul/conv precision, and
how loaded the machine was (:func:`load_average`; a run on a machine whose load
exceeds its cores is flagged, see :mod:`.timing`).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("default", "highest")


# Dense (no 2:4 sparsity) peak throughput in TFLOP/s from NVIDIA's data sheets.
GPU_PEAK_TFLOPS = {
    "H100 SXM": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
    "H100 PCIe": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0},
    "H100 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5},
    "H200": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
    "GTX 1660 Ti": {"float32": 5.4, "tf32": 5.4, "bfloat16": 5.4},
}


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
    cpu = cpu_info()
    cores, mhz = cpu["cpu_count"], cpu["mhz"] or 2500.0
    per_cycle = {"AVX-512": 64, "AVX2+FMA": 32}.get(cpu["instruction_set"], 16)
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
      The form the default ``conv_impl="auto"`` resolves to on this backend,
      device kind/platform/count, versions (jax, jaxlib, CUDA where present),
      ``jax_default_matmul_precision`` and what it means for convolutions.
    """
    import jax

    from deepliflow_jax.model.layers import resolve_conv_impl

    dev = jax.devices()[0]
    env = {
        # what the default conv_impl ("auto") runs here
        "conv_impl_auto": resolve_conv_impl("auto"),
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


def torch_environment(device: str) -> dict[str, Any]:
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


def load_average() -> dict[str, Any]:
    """The machine's load right now, to tell an honest figure from a loaded one.

    A benchmark process itself keeps up to one thread per core busy, so only a load
    above the core count means other work shared the cores (and the figure is
    labelled ``loaded``).

    Returns:
      ``{"load1", "load5", "load15", "cpu_count", "loaded"}`` (loads None where the
      OS has no load average, e.g. Windows; ``loaded`` is then None too).
    """
    cores = os.cpu_count() or 1
    try:
        load1, load5, load15 = os.getloadavg()
    except (AttributeError, OSError):
        return {"load1": None, "load5": None, "load15": None, "cpu_count": cores,
                "loaded": None}
    return {"load1": round(load1, 2), "load5": round(load5, 2), "load15": round(load15, 2),
            "cpu_count": cores, "loaded": load1 > cores}


def describe_load(load: dict[str, Any] | None) -> str:
    """``{"before": load_average(), "after": load_average()}`` of a run, in words.

    Returns:
      The 1-minute load average before and after on the core count, and whether other
      work shared the cores (a load above the core count); "not recorded" without it.
    """
    before, after = (load or {}).get("before") or {}, (load or {}).get("after") or {}
    if before.get("load1") is None or after.get("load1") is None:
        return "not recorded"
    shared = before.get("loaded") or after.get("loaded")
    return (f"load average {before['load1']:.2f} before, {after['load1']:.2f} after on "
            f"{before['cpu_count']} cores" + ("; LOADED by other work: compare rows with each "
                                              "other only" if shared else "; not loaded"))


def cpu_info() -> dict[str, Any]:
    """The host CPU: model, widest vector instruction set, clock, logical cores.

    Float results after many training steps differ between instruction sets (XLA:CPU
    picks other kernels and summation orders for AVX2 and AVX-512), so the study
    records this with its results.

    Returns:
      ``{"cpu", "instruction_set" ("AVX-512", "AVX2+FMA", "SSE/other" or "unknown"
      without /proc/cpuinfo), "mhz" (None when unknown), "cpu_count"}``.
    """
    model, mhz, flags = platform.processor() or platform.machine(), None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model == (platform.processor() or platform.machine()):
                model = value.strip()
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "flags" and flags is None:
                flags = set(value.split())
    except (OSError, ValueError):
        pass
    if flags is None:
        isa = "unknown"
    elif "avx512f" in flags:
        isa = "AVX-512"
    elif {"avx2", "fma"} <= flags:
        isa = "AVX2+FMA"
    else:
        isa = "SSE/other"
    return {"cpu": model, "instruction_set": isa, "mhz": mhz, "cpu_count": os.cpu_count() or 1}
