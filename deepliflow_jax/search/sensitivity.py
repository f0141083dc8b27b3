"""Validation EPE change when one layer group alone is compressed (cached)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.compress.prune import prune
from deepliflow_jax.compress.structured import (
    channel_masks,
    mask_outputs,
    plan_pruning,
)
from deepliflow_jax.fileio import write_json_atomic
from deepliflow_jax.model.channels import (
    unwrap_params,
    widths_of,
)
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.search.measure import (
    evaluate_outputs,
)
from deepliflow_jax.search.plans import (
    check_groups,
    fake_quantize,
)

SENSITIVITY_VERSION = 1


DIMENSIONS = ("ratio", "bits", "percent")


def params_digest(tree: Any) -> str:
    """sha256 over the leaves (paths, dtypes, shapes, bytes) of a pytree, in path order."""
    h = hashlib.sha256()
    flat = flax.traverse_util.flatten_dict(dict(tree), sep="/") if isinstance(tree, Mapping) \
        else {"": tree}
    for path in sorted(flat):
        x = np.ascontiguousarray(np.asarray(flat[path]))
        h.update(f"{path}|{x.dtype.str}|{x.shape}|".encode())
        h.update(x.tobytes())
    return h.hexdigest()


def option_key(group: str, regex: str, dim: str, value: float, multiple: int,
                scorer: str) -> str:
    extra = f"|multiple={multiple}|scorer={scorer}" if dim == "ratio" else ""
    return f"{group}={regex}|{dim}={value:g}{extra}"


def masked_evaluator(val: Mapping[str, np.ndarray]) -> Callable[[Any, Any], dict]:
    """``(params, channel masks or None) -> metrics`` of the full model on ``val``.

    One jitted forward with the masks as arguments (:func:`.structured.mask_outputs`):
    every channel-pruning ratio and every parameter change shares it.
    """
    model = DeepLiDARFlow()
    out_size = tuple(val["gt"].shape[1:3])
    frames = jax.device_put(jnp.asarray(val["frames"]))

    @jax.jit
    def run(p, m, f):
        with mask_outputs(m):
            return model.apply({"params": p}, f, None, out_size)[0]

    def evaluate(params, masks=None):
        if masks is None:
            masks = {k: np.ones(v, np.float32) for k, v in widths_of(params).items()}
        return evaluate_outputs(np.asarray(run(params, masks, frames)), val["gt"])

    return evaluate


def read_cache(path: Path) -> dict:
    if not path.is_file():
        return {"version": SENSITIVITY_VERSION, "entries": {}}
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise ValueError(f"sensitivity cache {path} is not readable JSON ({err}); delete it "
                         "to measure the sensitivities again") from err
    if not isinstance(data, dict) or data.get("version") != SENSITIVITY_VERSION:
        return {"version": SENSITIVITY_VERSION, "entries": {}}
    data.setdefault("entries", {})
    return data


def progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    try:
        from tqdm import tqdm  # optional (the "viz" extra)
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc)


def measure_sensitivity(params: Any, val: Mapping[str, np.ndarray],
                        groups: Sequence[tuple[str, str]], ratios: Sequence[float] = (),
                        bits: Sequence[int] = (), percents: Sequence[float] = (), *,
                        multiple: int = 8, scorer: str = "l1",
                        cache: str | Path | None = None,
                        evaluate: Callable[[Any, Any], dict] | None = None,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validation metrics when one layer group alone is compressed (the package, step 1).

    Args:
      params: bare parameter tree of the model searched from.
      val: ``{"frames" [B, 2, H, W, 4], "gt" [B, H, W, 4]}``.
      groups: the layer groups.
      ratios, bits, percents: the options of every group.
      multiple, scorer: channel rounding and ranking.
      cache: JSON file of cached results (created or extended; keyed by the sha256 of
        the parameters and of the validation batch); None: no cache.
      evaluate: ``(params, channel masks or None) -> metrics``; default
        :func:`masked_evaluator` (compiled only when something is not cached).
      log: progress printer.

    Returns:
      ``{"key", "base": metrics, "delta": {group: {dim: {value: EPE change}}},
      "metrics": {group: {dim: {value: metrics}}}, "evaluated", "cached"}``.

    Raises:
      ValueError: bad groups, or an unreadable cache file.
    """
    params = jax.tree.map(np.asarray, unwrap_params(params)[0])
    widths = widths_of(params)
    check_groups(groups, widths)
    key = params_digest(params) + "-" + params_digest(
        {"frames": np.asarray(val["frames"]), "gt": np.asarray(val["gt"])})
    path = Path(cache) if cache is not None else None
    store = read_cache(path) if path is not None else {"entries": {}}
    entry = store["entries"].setdefault(key, {"base": None, "options": {}})
    jobs = [(g, rx, dim, v) for g, rx in groups for dim, values in
            (("ratio", ratios), ("bits", bits), ("percent", percents)) for v in values]
    todo = [j for j in jobs if option_key(j[0], j[1], j[2], j[3], multiple, scorer)
            not in entry["options"]]
    cached = len(jobs) - len(todo)
    if entry["base"] is None or todo:
        log(f"sensitivity: {len(todo)} options to evaluate, {cached} cached"
            + (f" ({path})" if path else ""))
        evaluate = evaluate or masked_evaluator(val)

        def save():
            if path is not None:
                write_json_atomic(path, store, indent=1, sort_keys=True)

        if entry["base"] is None:
            entry["base"] = evaluate(params, None)
            save()
        for g, rx, dim, v in progress(todo, len(todo), "sensitivity"):
            if dim == "ratio":
                keep = plan_pruning({"params": params}, {rx: v}, multiple=multiple,
                                    scorer=scorer)
                metrics = evaluate(params, channel_masks(widths, keep))
            elif dim == "bits":
                metrics = evaluate(fake_quantize(params, rx, int(v)), None)
            else:
                metrics = evaluate(prune(params, v, scope="global", include=rx)[0], None)
            entry["options"][option_key(g, rx, dim, v, multiple, scorer)] = metrics
            save()
    else:
        log(f"sensitivity: all {cached} options cached ({path})")
    base = entry["base"]
    table: dict[str, dict[str, dict[float, dict]]] = {}
    for g, rx, dim, v in jobs:
        m = entry["options"][option_key(g, rx, dim, v, multiple, scorer)]
        table.setdefault(g, {d: {} for d in DIMENSIONS})[dim][float(v)] = m
    delta = {g: {d: {v: m["epe"] - base["epe"] for v, m in t[d].items()} for d in DIMENSIONS}
             for g, t in table.items()}
    return {"key": key, "base": base, "delta": delta, "metrics": table,
            "evaluated": len(todo), "cached": cached}
