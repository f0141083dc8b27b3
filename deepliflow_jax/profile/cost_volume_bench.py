"""Alternative formulations of the cost volume, checked against the model's, and timed.

All compute exactly what ``deepliflow_jax.model.cost_volume.cost_volume`` does
(channel ``k = (dy + r)(2r + 1) + (dx + r)``, mean over channels divided by
``(2r + 1)^2``, zero outside the image):

* ``shifted``: the model's: 81 shifted multiply + channel reductions, stacked.
* ``window_einsum``: all 81 shifted windows stacked into ``[B, H, W, 81, C]``,
  then one ``einsum`` with ``x``.
* ``row_einsum``: per ``dy``, the 9 ``dx`` windows ``[B, H, W, 9, C]``, one
  ``einsum`` each (9x less transient memory than ``window_einsum``).
* ``patches``: ``lax.conv_general_dilated_patches`` (an identity-kernel conv)
  extracts the 9x9 neighbourhoods, then a per-pixel matrix-vector product.
* ``banded_matmul``: the model's ``cost_volume_banded`` (``conv_impl`` token
  ``"banded"``): W is cut into tiles of ``T`` pixels; per tile and ``dy`` one
  ``[T, C] x [C, T + 2r]`` matmul, of which the band of ``2r + 1`` diagonals is kept.
* ``tiled_matmul``: the model's ``cost_volume_tiled`` (token ``"tiled"``): per 8x8
  pixel tile one ``[64, C] x [C, 256]`` matmul against its 16x16 search window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.model.cost_volume import correlation_scale
from deepliflow_jax.model.cost_volume import cost_volume as shifted
from deepliflow_jax.model.cost_volume import cost_volume_banded as banded_matmul
from deepliflow_jax.model.cost_volume import cost_volume_tiled as tiled_matmul
from deepliflow_jax.profile.timer import time_calls

# per-level feature sizes of the forward pass: (level, H / 2**level, W / 2**level), C = 64
LEVELS = (6, 5, 4, 3, 2)
FEATURES = 64


def window_einsum(x: jnp.ndarray, warped: jnp.ndarray, search_range: int = 4) -> jnp.ndarray:
    """All windows stacked, one einsum. Args/Returns as ``cost_volume``."""
    r, (_, h, w, c) = search_range, x.shape
    d = 2 * r + 1
    padded = jnp.pad(warped, ((0, 0), (r, r), (r, r), (0, 0)))
    win = jnp.stack([padded[:, dy:dy + h, dx:dx + w] for dy in range(d) for dx in range(d)],
                    axis=3)
    return jnp.einsum("bhwc,bhwkc->bhwk", x, win) * correlation_scale(c, r, x.dtype)


def row_einsum(x: jnp.ndarray, warped: jnp.ndarray, search_range: int = 4) -> jnp.ndarray:
    """Per dy the 2r+1 dx windows, one einsum each. Args/Returns as ``cost_volume``."""
    r, (_, h, w, c) = search_range, x.shape
    d = 2 * r + 1
    padded = jnp.pad(warped, ((0, 0), (r, r), (r, r), (0, 0)))
    rows = []
    for dy in range(d):
        band = padded[:, dy:dy + h]
        win = jnp.stack([band[:, :, dx:dx + w] for dx in range(d)], axis=3)
        rows.append(jnp.einsum("bhwc,bhwkc->bhwk", x, win))
    return jnp.concatenate(rows, axis=-1) * correlation_scale(c, r, x.dtype)


def patches(x: jnp.ndarray, warped: jnp.ndarray, search_range: int = 4) -> jnp.ndarray:
    """Neighbourhoods by ``conv_general_dilated_patches``. Args/Returns as ``cost_volume``."""
    r, (b, h, w, c) = search_range, x.shape
    d = 2 * r + 1
    p = jax.lax.conv_general_dilated_patches(
        warped, (d, d), (1, 1), ((r, r), (r, r)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # channel = c * d * d + k
    p = p.reshape(b, h, w, c, d * d)
    return jnp.einsum("bhwc,bhwck->bhwk", x, p) * correlation_scale(c, r, x.dtype)


VARIANTS: dict[str, Callable] = {
    "shifted (model)": shifted,
    "window_einsum": window_einsum,
    "row_einsum": row_einsum,
    "patches": patches,
    "banded_matmul": banded_matmul,
    "tiled_matmul": tiled_matmul,
}


def level_shapes(height: int, width: int, batch: int = 1) -> list[tuple[int, int, int, int]]:
    """``[B, h, w, C]`` of the cost volume inputs at levels 6..2."""
    return [(batch, height // 2**lv, width // 2**lv, FEATURES) for lv in LEVELS]


def run_bench(height: int = 384, width: int = 1216, batch: int = 1, repeats: int = 20,
              dtype: str = "float32", variants: Sequence[str] | None = None) -> dict:
    """Times every variant on all five levels of a forward pass (one jit each).

    Args:
      height, width: network input size (the levels are /64 ... /4).
      batch: batch size.
      repeats: timed calls (median, p10, p90 reported).
      dtype: ``"float32"`` or ``"bfloat16"``.
      variants: names from :data:`VARIANTS` (default all).

    Returns:
      ``{"device", "shapes", "analytic_gflops", "variants": {name: {stats...,
      "compile_s", "max_abs_err", "xla_flops", "xla_bytes"}}}``.

    Raises:
      ValueError: unknown variant or dtype.
    """
    names = list(variants or VARIANTS)
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"--variants: unknown variant {n!r}; known: {list(VARIANTS)}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype={dtype!r}: must be float32 or bfloat16")
    shapes = level_shapes(height, width, batch)
    rng = np.random.default_rng(0)
    inputs = [(jnp.asarray(rng.standard_normal(s), dtype), jnp.asarray(rng.standard_normal(s),
                                                                       dtype)) for s in shapes]
    inputs = jax.device_put(inputs)

    def all_levels(fn):
        return lambda ins: [fn(a, b) for a, b in ins]

    ref = None
    out = {}
    for name in names:
        t0 = time.perf_counter()
        compiled = jax.jit(all_levels(VARIANTS[name])).lower(inputs).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else (cost or {})
        res = jax.block_until_ready(compiled(inputs))
        if ref is None:
            ref = [np.asarray(r, np.float32) for r in res]
        err = max(float(np.max(np.abs(np.asarray(a, np.float32) - b))) for a, b in zip(res, ref))
        stats = time_calls(compiled, inputs, repeats=repeats, warmup=0)
        out[name] = {**stats, "compile_s": compile_s, "max_abs_err_vs_first": err,
                     "xla_flops": cost.get("flops"), "xla_bytes": cost.get("bytes accessed")}
    analytic = sum(2.0 * b * h * w * c * 81 for b, h, w, c in shapes) / 1e9
    return {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
            "dtype": dtype, "shapes": shapes, "analytic_gflops": analytic, "variants": out,
            "reference": names[0]}


def forward_with_variant(variant: str, height: int, width: int, batch: int = 1,
                         repeats: int = 5, dtype: str = "float32") -> dict:
    """Times the whole jitted forward with the model's cost volume swapped for ``variant``.

    The swap patches the name ``cost_volume`` inside ``deepliflow_jax.model.deeplidarflow``
    for the duration of tracing only (the model files are not changed).

    Returns:
      ``summarize`` stats plus ``compile_s`` and ``max_abs_err`` of the scene flow
      against the unpatched model's (computed in the same call).
    """
    from unittest import mock

    from deepliflow_jax.model import deeplidarflow
    from deepliflow_jax.profile.inputs import load_variables, random_frames

    if variant not in VARIANTS:
        raise ValueError(f"--whole_model: unknown variant {variant!r}; known: {list(VARIANTS)}")
    variables = jax.device_put(load_variables(None, 0))
    frames = jax.device_put(random_frames(batch, height, width))
    model = deeplidarflow.DeepLiDARFlow(dtype=jnp.dtype(dtype))
    with mock.patch.object(deeplidarflow, "cost_volume", VARIANTS[variant]):
        t0 = time.perf_counter()
        compiled = jax.jit(model.apply).lower(variables, frames).compile()
        compile_s = time.perf_counter() - t0
    out = np.asarray(jax.block_until_ready(compiled(variables, frames))[0])
    return {**time_calls(compiled, variables, frames, repeats=repeats, warmup=0),
            "compile_s": compile_s, "output": out}


def run_whole_model(variants: Sequence[str], height: int, width: int, batch: int = 1,
                    repeats: int = 5, dtype: str = "float32") -> dict:
    """:func:`forward_with_variant` for each variant; errors against the first.

    Returns:
      ``{variant: {stats..., "compile_s", "max_rel_err_vs_first"}}``.
    """
    out, ref = {}, None
    for name in variants:
        res = forward_with_variant(name, height, width, batch, repeats, dtype)
        flow = res.pop("output")
        ref = flow if ref is None else ref
        res["max_rel_err_vs_first"] = float(np.max(np.abs(flow - ref)) / np.max(np.abs(ref)))
        out[name] = res
    return out


def format_whole_model(result: dict, height: int, width: int, batch: int) -> str:
    """Markdown table of :func:`run_whole_model`."""
    first = next(iter(result.values()))["median_ms"]
    lines = [f"Whole forward, {batch}x{height}x{width}, cost volume swapped:", "",
             "| cost volume | forward median ms | p10 | p90 | vs first | compile s | "
             "max rel err vs first |", "|---" * 7 + "|"]
    for name, v in result.items():
        lines.append(f"| {name} | {v['median_ms']:.1f} | {v['p10_ms']:.1f} | {v['p90_ms']:.1f} | "
                     f"{v['median_ms'] / first:.2f}x | {v['compile_s']:.1f} | "
                     f"{v['max_rel_err_vs_first']:.1e} |")
    return "\n".join(lines)


def format_bench(result: dict) -> str:
    """Markdown table of :func:`run_bench`'s result."""
    lines = [f"Cost volume, all five levels, {result['dtype']}, on {result['device']} "
             f"({result['platform']}); shapes {result['shapes']}; analytic "
             f"{result['analytic_gflops']:.3f} GFLOP.", "",
             "| variant | median ms | p10 | p90 | vs first | compile s | XLA GFLOP | "
             "XLA MB accessed | max abs err vs first |", "|---" * 9 + "|"]
    first = result["variants"][result["reference"]]["median_ms"]
    for name, v in result["variants"].items():
        fl = v["xla_flops"]
        by = v["xla_bytes"]
        lines.append(f"| {name} | {v['median_ms']:.3f} | {v['p10_ms']:.3f} | {v['p90_ms']:.3f} | "
                     f"{v['median_ms'] / first:.2f}x | {v['compile_s']:.2f} | "
                     f"{'-' if fl is None else f'{fl / 1e9:.3f}'} | "
                     f"{'-' if by is None else f'{by / 2**20:.1f}'} | "
                     f"{v['max_abs_err_vs_first']:.1e} |")
    return "\n".join(lines)
