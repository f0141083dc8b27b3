"""The one timer: compile apart, warm up, block until ready, order statistics.

Every place that times something (the run-time harness, the study's time
column, ``api.time_model``, the structured trade-off, the cost-volume and block
benchmarks) calls :func:`time_calls` or :func:`time_interleaved` and reports
:func:`summarize`'s statistics (median and p10/p90 in ms). Compilation is never
timed: :func:`aot_compile` compiles ahead of time and reports its own seconds,
and a jitted function's first (compiling) call is a warm-up call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from deepliflow_jax.scalars import check_number


def summarize(times_s: Sequence[float]) -> dict[str, Any]:
    """Order statistics of wall times.

    Args:
      times_s: times in seconds.

    Returns:
      ``{"n", "median_ms", "p10_ms", "p90_ms", "mean_ms", "min_ms", "max_ms"}``
      (values None when ``times_s`` is empty).
    """
    ms = np.asarray(list(times_s), np.float64) * 1e3
    if ms.size == 0:
        return {"n": 0, **{k: None for k in ("median_ms", "p10_ms", "p90_ms", "mean_ms",
                                              "min_ms", "max_ms")}}
    return {
        "n": int(ms.size),
        "median_ms": float(np.median(ms)),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def _memory_analysis(compiled) -> dict[str, int] | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
             "alias_size_in_bytes", "generated_code_size_in_bytes")
    return {n: int(getattr(m, n)) for n in names if hasattr(m, n)}


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    value = (cost or {}).get("flops")
    return float(value) if value is not None else None


def aot_compile(fn: Callable, *args, donate_argnums=()) -> tuple[Any, dict[str, Any]]:
    """Ahead-of-time compiles ``jit(fn)`` for ``args``.

    Returns:
      ``(compiled, {"lower_s", "compile_s", "flops", "memory_analysis"})``.
    """
    import jax

    t0 = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, {"lower_s": t1 - t0, "compile_s": t2 - t1, "flops": _flops(compiled),
                      "memory_analysis": _memory_analysis(compiled)}


def _block(value: Any) -> Any:
    import jax

    return jax.block_until_ready(value)


def time_calls(fn: Callable, *args: Any, repeats: int = 10, warmup: int = 1) -> dict[str, Any]:
    """Wall times of ``fn(*args)``, each call blocked until its result is ready.

    Args:
      fn: a compiled or jitted function (or any callable returning arrays).
      *args: its arguments, already on the device.
      repeats: timed calls (>= 1).
      warmup: untimed calls first (a jitted function compiles in the first one).

    Returns:
      :func:`summarize`'s statistics plus ``"repeats"``.

    Raises:
      ValueError: ``repeats < 1`` or ``warmup < 0``.
    """
    repeats = check_number(repeats, "repeats", integer=True, minimum=1)
    warmup = check_number(warmup, "warmup", integer=True, minimum=0)
    for _ in range(warmup):
        _block(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _block(fn(*args))
        times.append(time.perf_counter() - t0)
    return {**summarize(times), "repeats": repeats}


def time_interleaved(calls: Mapping[str, Callable[[], Any]], repeats: int = 10,
                     warmup: int = 1, *, offset: int = 0,
                     keep_times: bool = False) -> dict[str, dict[str, Any]]:
    """Contenders timed in rounds, each once per round, the round's order rotated.

    A load that comes and goes on a shared machine then hits every contender
    alike, so their ratios stay fair.

    Args:
      calls: ``{name: no-argument callable}`` (compiled functions bound to their inputs).
      repeats: rounds (>= 1).
      warmup: untimed calls of each contender first.
      offset: rotation of the first round (the harness gives each process its own,
        so no contender is always first after a pause).
      keep_times: also return each contender's raw times (``"times_s"``), e.g. to
        merge several processes' runs.

    Returns:
      ``{name: summarize statistics + "repeats" (+ "times_s")}``.

    Raises:
      ValueError: no contenders, ``repeats < 1`` or ``warmup < 0``.
    """
    if not calls:
        raise ValueError("need one or more contenders, got none")
    repeats = check_number(repeats, "repeats", integer=True, minimum=1)
    warmup = check_number(warmup, "warmup", integer=True, minimum=0)
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            _block(calls[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = (r + offset) % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            _block(calls[name]())
            times[name].append(time.perf_counter() - t0)
    return {name: {**summarize(times[name]), "repeats": repeats,
                   **({"times_s": times[name]} if keep_times else {})} for name in names}
