"""Unstructured percentile (magnitude) pruning of weights and biases.

The paper (Alhimdiat et al. 2023, sec. III-B) prunes "the lowest p % of the
distribution of weights" and applies it to weights *and* biases. Here the
distribution is that of magnitudes ``|w|`` over the selected leaves, either pooled
(``scope="global"``, one threshold for the whole network) or per leaf
(``scope="layer"``).

Exactly ``k = floor(p * n / 100)`` entries are pruned per scope of ``n`` entries:
the ``k`` smallest magnitudes, ties broken by position, with entries already
masked by ``masks`` ranked first. The *threshold* reported by
:func:`pruning_thresholds` is the smallest surviving magnitude, ``sort(|w|)[k]``.
Masks are boolean pytrees with the params' structure; ``True`` means kept.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.compress.select import (
    Pattern,
    check_same_structure,
    flatten,
    select,
)
from deepliflow_jax.scalars import check_number

SCOPES = ("global", "layer")


def check_percent(percent: Any) -> float:
    """Validates a concrete pruning percentage; returns it as float.

    Raises:
      ValueError: if ``percent`` is not a finite number in ``[0, 100)`` (a bool or a
        string is refused, as for every numeric argument:
        :func:`deepliflow_jax.scalars.check_number`).
    """
    return check_number(percent, "percent", minimum=0, below=100)


def num_to_prune(percent: Any, n: int) -> Any:
    """``floor(percent * n / 100)``; exact in decimal for concrete ``percent``.

    A traced ``percent`` (gradual schedules inside jit) is evaluated in float32,
    which can be off by one entry for very large ``n``.
    """
    if isinstance(percent, jax.core.Tracer):
        k = jnp.floor(jnp.asarray(percent, jnp.float32) * (n / 100.0) + 1e-4)
        return jnp.clip(k.astype(jnp.int32), 0, max(n - 1, 0))
    # Fraction(repr(x)) reads 0.07 as 7/100, so "7 % of 100" is exactly 7.
    return int(Fraction(repr(float(percent))) * n // 100)


def _ranks(scores: jnp.ndarray) -> jnp.ndarray:
    """Rank of each entry in ascending, stable order (0 = smallest)."""
    order = jnp.argsort(scores, stable=True)
    ranks = jnp.arange(scores.size, dtype=jnp.int32)
    return jnp.zeros(scores.shape, jnp.int32).at[order].set(ranks)


def _scores(leaf: jnp.ndarray, mask: Any) -> jnp.ndarray:
    """Magnitudes as float32; already-masked entries get -1 so they rank first."""
    mag = jnp.abs(jnp.asarray(leaf)).astype(jnp.float32).ravel()
    if mask is None:
        return mag
    return jnp.where(jnp.asarray(mask).ravel(), mag, -1.0)


def _check_masks(masks: Any, params: Any) -> None:
    check_same_structure(masks, params, "masks", "params")
    for path, m in flatten(masks).items():
        if jnp.asarray(m).dtype != jnp.bool_:
            raise ValueError(f"masks must be boolean; {path!r} has dtype {jnp.asarray(m).dtype}")


def compute_masks(
    params: Any,
    percent: Any,
    selection: Any,
    *,
    scope: str = "global",
    masks: Any = None,
) -> Any:
    """Masks pruning ``percent`` % of the selected entries (traceable in ``percent``).

    Args:
      params: parameter pytree.
      percent: percentage in [0, 100); may be a traced scalar (not validated then).
      selection: pytree of Python bools (see :func:`select`); unselected leaves get
        all-True masks unless ``masks`` already prunes them.
      scope: ``"global"`` (one ranking over all selected entries) or ``"layer"``.
      masks: optional current masks; pruned entries stay pruned and count towards
        the ``percent`` (so raising the percentage prunes only the difference).

    Returns:
      Boolean masks with the structure of ``params``.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    sizes = _group_sizes(params, selection, scope)
    return _masks(params, [num_to_prune(percent, n) for n in sizes], selection, scope, masks)


def _group_sizes(params: Any, selection: Any, scope: str) -> list[int]:
    """Entries per ranking group: one per selected leaf, or one in total."""
    leaves, treedef = jax.tree.flatten(params)
    sel = treedef.flatten_up_to(selection)
    sizes = [int(np.prod(jnp.shape(x), dtype=np.int64)) for x, s in zip(leaves, sel) if s]
    return sizes if scope == "layer" else [sum(sizes)] if sizes else []


def _masks(params: Any, counts: Any, selection: Any, scope: str, masks: Any) -> Any:
    """Masks pruning ``counts[g]`` entries of each group (see :func:`_group_sizes`)."""
    leaves, treedef = jax.tree.flatten(params)
    sel = treedef.flatten_up_to(selection)
    old = [None] * len(leaves) if masks is None else treedef.flatten_up_to(masks)
    new = [
        jnp.ones(jnp.shape(x), bool) if o is None else jnp.asarray(o)
        for x, o in zip(leaves, old, strict=True)
    ]
    idx = [i for i, s in enumerate(sel) if s]
    if scope == "layer":
        for i, k in zip(idx, counts, strict=True):
            keep = _ranks(_scores(leaves[i], old[i])) >= k
            new[i] = keep.reshape(jnp.shape(leaves[i]))
    elif idx:
        scores = jnp.concatenate([_scores(leaves[i], old[i]) for i in idx])
        keep = _ranks(scores) >= counts[0]
        start = 0
        for i in idx:
            size = int(np.prod(jnp.shape(leaves[i]), dtype=np.int64))
            new[i] = keep[start : start + size].reshape(jnp.shape(leaves[i]))
            start += size
    return jax.tree.unflatten(treedef, new)


def dense_masks(params: Any) -> Any:
    """All-True masks (nothing pruned) for ``params``."""
    return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)


def apply_masks(params: Any, masks: Any) -> Any:
    """Zeroes masked-out entries (``where``, so a NaN there cannot leak through).

    Raises:
      ValueError: if the masks' tree or shapes do not match ``params``.
    """
    _check_masks(masks, params)
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def prune(
    params: Any,
    percent: float,
    *,
    scope: str = "global",
    include: Pattern = r".*",
    exclude: Pattern = None,
    masks: Any = None,
) -> tuple[Any, Any]:
    """Percentile magnitude pruning (post-training, or to seed aware training).

    Args:
      params: parameter pytree, e.g. ``{'params': {...}}``.
      percent: percentage of the selected entries to prune, in ``[0, 100)``.
      scope: ``"global"`` (one threshold over all selected leaves) or ``"layer"``.
      include: regex(es) over parameter paths; default every leaf, weights and
        biases alike (as the paper does).
      exclude: regex(es) of paths to leave dense.
      masks: optional existing masks to extend (pruned entries stay pruned).

    Returns:
      ``(pruned_params, masks)``: params with pruned entries set to exactly zero
      and boolean masks (True = kept) with the params' structure.

    Raises:
      ValueError: percent outside [0, 100), unknown scope, a selection that is
        empty, or masks that do not match the params.

    Example:
      >>> import numpy as np
      >>> params = {"w": np.array([0.5, -0.1, 2.0, 0.05]), "b": np.array([1.0, -3.0])}
      >>> pruned, masks = prune(params, 50.0)  # the 3 smallest of all 6 entries
      >>> np.asarray(pruned["w"]).tolist(), np.asarray(masks["w"]).tolist()
      ([0.0, 0.0, 2.0, 0.0], [False, False, True, False])
      >>> pruned, _ = prune(params, 50.0, scope="layer")  # half of each leaf
      >>> np.asarray(pruned["w"]).tolist(), np.asarray(pruned["b"]).tolist()
      ([0.5, 0.0, 2.0, 0.0], [0.0, -3.0])
      >>> np.asarray(prune(params, 50.0, include="w")[0]["b"]).tolist()  # b stays dense
      [1.0, -3.0]
    """
    percent = check_percent(percent)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if masks is not None:
        _check_masks(masks, params)
    selection = select(params, include, exclude, what="parameters to prune")
    new_masks = _masks_host(params, percent, selection, scope, masks)
    pruned = jax.tree.map(
        lambda p, m: jnp.asarray(np.where(m, np.asarray(p), np.zeros((), np.asarray(p).dtype))),
        params,
        new_masks,
    )
    return pruned, jax.tree.map(jnp.asarray, new_masks)


def _host_keep(scores: np.ndarray, k: int) -> np.ndarray:
    """False for the ``k`` smallest scores, ties by position (stable rank < k)."""
    if k <= 0:
        return np.ones(scores.shape, bool)
    t = np.partition(scores, k - 1)[k - 1]  # the largest pruned score
    below, tied = scores < t, scores == t
    need = k - int(below.sum())
    return ~(below | (tied & (np.cumsum(tied) <= need)))


def _masks_host(params: Any, percent: float, selection: Any, scope: str, masks: Any) -> Any:
    """:func:`compute_masks` in numpy: O(n) selection instead of an XLA sort.

    Same result as the traced version (tested); XLA's CPU sort of a whole
    network's weights plus compiling a graph over hundreds of leaves takes tens
    of seconds, this well under one.
    """
    leaves, treedef = jax.tree.flatten(params)
    sel = treedef.flatten_up_to(selection)
    old = [None] * len(leaves) if masks is None else treedef.flatten_up_to(masks)
    new = [
        np.ones(np.shape(x), bool) if o is None else np.asarray(o, bool)
        for x, o in zip(leaves, old, strict=True)
    ]

    def scores(i):
        mag = np.abs(np.asarray(leaves[i]).astype(np.float32)).ravel()
        return mag if old[i] is None else np.where(new[i].ravel(), mag, np.float32(-1))

    idx = [i for i, s in enumerate(sel) if s]
    if scope == "layer":
        for i in idx:
            sc = scores(i)
            new[i] = _host_keep(sc, num_to_prune(percent, sc.size)).reshape(new[i].shape)
    elif idx:
        sc = np.concatenate([scores(i) for i in idx])
        keep = _host_keep(sc, num_to_prune(percent, sc.size))
        start = 0
        for i in idx:
            new[i] = keep[start : start + new[i].size].reshape(new[i].shape)
            start += new[i].size
    return jax.tree.unflatten(treedef, new)


def pruning_thresholds(
    params: Any,
    percent: float,
    *,
    scope: str = "global",
    include: Pattern = r".*",
    exclude: Pattern = None,
) -> dict[str, float]:
    """The magnitude thresholds :func:`prune` uses: the smallest surviving ``|w|``.

    Returns:
      ``{"global": t}`` for global scope, ``{path: t}`` per selected leaf otherwise.
      Entries with ``|w| < t`` are pruned; entries equal to ``t`` are pruned only
      as far as needed to prune exactly ``floor(percent * n / 100)``.
    """
    percent = check_percent(percent)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    sel = flatten(select(params, include, exclude, what="parameters to prune"))
    flat = {p: np.abs(np.asarray(x, np.float32)).ravel() for p, x in flatten(params).items()}
    groups = {p: flat[p] for p, s in sel.items() if s}
    if scope == "global":
        groups = {"global": np.concatenate(list(groups.values()))}
    return {
        name: float(np.sort(mags)[num_to_prune(percent, mags.size)])
        for name, mags in groups.items()
    }


def sparsity_report(
    params: Any,
    masks: Any = None,
    *,
    include: Pattern = r".*",
    exclude: Pattern = None,
) -> dict[str, Any]:
    """Achieved sparsity per layer and in total.

    Args:
      params: parameter pytree (zeros are counted in it).
      masks: optional masks; ``pruned`` counts their False entries.
      include, exclude: which leaves the report lists (default all).

    Returns:
      ``{"layers": {path: {"size", "zeros", "pruned", "sparsity"}},
      "total": {...same keys over the listed leaves...}}`` where ``sparsity`` is
      the fraction of exact zeros in the params.
    """
    if masks is not None:
        _check_masks(masks, params)
    sel = flatten(select(params, include, exclude))
    flat_p = flatten(params)
    flat_m = flatten(masks) if masks is not None else {}
    layers = {}
    tot = {"size": 0, "zeros": 0, "pruned": 0}
    for path, chosen in sel.items():
        if not chosen:
            continue
        x = np.asarray(flat_p[path])
        row = {
            "size": int(x.size),
            "zeros": int(np.count_nonzero(x == 0)),
            "pruned": int(np.count_nonzero(~np.asarray(flat_m[path]))) if flat_m else 0,
        }
        row["sparsity"] = row["zeros"] / max(row["size"], 1)
        layers[path] = row
        for key in tot:
            tot[key] += row[key]
    tot["sparsity"] = tot["zeros"] / max(tot["size"], 1)
    return {"layers": layers, "total": tot}


# The paper prunes and quantizes weights *and* biases of every layer, per tensor.
SELECT_ALL = r".*"


def post_training_masks(params: Any, percent: float, masks: Any = None) -> tuple[Any, Any]:
    """Global percentile pruning of every weight and bias, as the paper.

    Args:
      params: parameter pytree.
      percent: share of all entries pruned, in [0, 100).
      masks: optional current masks: their pruned entries stay pruned and count
        towards ``percent`` (raising the percentile of a pruned model, as the
        dynamic threshold does).

    Returns:
      ``(pruned params, masks)``; ``(params, masks)`` for ``percent <= 0``.
    """
    if percent <= 0:
        return params, masks
    return prune(params, percent, include=SELECT_ALL, scope="global", masks=masks)[:2]


def zero_fraction(params: Any) -> float:
    """Percentage of exactly-zero values over all parameters.

    Args:
      params: any pytree of arrays (e.g. ``{'params': ...}`` or a pruned tree).

    Returns:
      ``100 * (number of entries == 0) / (number of entries)`` over all leaves,
      a float in [0, 100].

    Raises:
      ZeroDivisionError: ``params`` holds no entries (no leaves, or only empty ones).

    Example:
      >>> import numpy as np
      >>> zero_fraction({"w": np.array([0.0, 1.5, 0.0, -2.0]), "b": np.zeros(4)})
      75.0
      >>> zero_fraction(prune({"w": np.arange(1.0, 11.0)}, 30.0)[0])
      30.0
    """
    leaves = jax.tree.leaves(params)
    zeros = sum(int(np.count_nonzero(np.asarray(x) == 0)) for x in leaves)
    return 100.0 * zeros / sum(int(np.size(x)) for x in leaves)
