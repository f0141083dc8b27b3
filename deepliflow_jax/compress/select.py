"""Parameter paths and regex selection over them.

A *path* is the '/'-joined key path of a leaf in a parameter pytree, e.g.
``"params/guidance_network/rgb_features_encoder_decoder/conv1a/kernel"``. Every
compression function selects its leaves with ``include``/``exclude`` regular
expressions matched with :func:`re.search` against these paths (anchor them with
``^``/``$`` when you need an exact match), in the style of jaxpruner.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax

Pattern = str | Sequence[str] | None


def _key_name(key: Any) -> str:
    """One path component: dict key, attribute name or sequence index."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(key_path: Sequence[Any]) -> str:
    """Converts a JAX key path (tuple of key entries) into a '/'-joined string."""
    return "/".join(_key_name(k) for k in key_path)


def module_path(module: Any) -> str:
    """The '/'-joined scope path of a bound Flax module (its parameters' path without
    ``params/``), e.g. ``"guidance_network/rgb_encoder/conv1a"``; ``""`` for the root or an
    unbound module. What the module interceptors of :mod:`.quantize`, :mod:`.int8` and
    :mod:`.structured` match their layer paths against.
    """
    scope = getattr(module, "scope", None)
    return "/".join(str(p) for p in getattr(scope, "path", ()) or ())


def leaf_paths(tree: Any) -> list[str]:
    """Paths of all leaves of ``tree``, in ``jax.tree.leaves`` order."""
    return [path_str(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def flatten(tree: Any) -> dict[str, Any]:
    """Flattens a pytree into ``{path: leaf}`` (insertion order = leaf order).

    Args:
      tree: a pytree, typically flax's ``{'params': {...}}``.

    Returns:
      A flat dict from '/'-joined path to leaf.
    """
    return {path_str(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten` for trees made of nested dicts.

    Args:
      flat: ``{path: leaf}``.

    Returns:
      A nested dict. Use :func:`map_with_path` or ``jax.tree.unflatten`` when the
      original tree has non-dict nodes.
    """
    out: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ValueError(f"path {path!r} runs through a leaf at {name!r}")
        if last in node:
            raise ValueError(f"duplicate path {path!r}")
        node[last] = leaf
    return out


def map_with_path(fn, tree: Any, *rest: Any) -> Any:
    """``jax.tree.map`` whose function also receives the leaf's path first."""
    return jax.tree_util.tree_map_with_path(lambda kp, *xs: fn(path_str(kp), *xs), tree, *rest)


def _as_patterns(pattern: Pattern) -> list[re.Pattern]:
    if pattern is None:
        return []
    if isinstance(pattern, str):
        pattern = [pattern]
    return [re.compile(p) for p in pattern]


def matches(path: str, include: Pattern = r".*", exclude: Pattern = None) -> bool:
    """Whether ``path`` is selected: some include regex matches and no exclude does."""
    inc = _as_patterns(include)
    exc = _as_patterns(exclude)
    return any(p.search(path) for p in inc) and not any(p.search(path) for p in exc)


def select(
    tree: Any,
    include: Pattern = r".*",
    exclude: Pattern = None,
    *,
    what: str = "leaves",
) -> Any:
    """Boolean pytree (Python bools, static) saying which leaves are selected.

    Args:
      tree: the parameter pytree.
      include: regex or list of regexes; a leaf is a candidate if any matches.
      exclude: regex or list of regexes; a matching leaf is dropped.
      what: noun used in the error message.

    Returns:
      A pytree of Python bools with the structure of ``tree``.

    Raises:
      ValueError: if the selection is empty (a typo in a regex would otherwise
        silently compress nothing).
    """
    sel = map_with_path(lambda p, _: matches(p, include, exclude), tree)
    if not any(jax.tree.leaves(sel)):
        raise ValueError(
            f"include={include!r} exclude={exclude!r} selects no {what}; "
            f"first paths are {leaf_paths(tree)[:5]}"
        )
    return sel


def selected_paths(tree: Any, include: Pattern = r".*", exclude: Pattern = None) -> list[str]:
    """Paths selected by ``include``/``exclude`` (raises ValueError if none)."""
    sel = flatten(select(tree, include, exclude))
    return [p for p, s in sel.items() if s]


def check_same_structure(tree: Any, ref: Any, name: str = "masks", ref_name: str = "params"):
    """Raises ValueError naming the differing paths if two pytrees differ in structure.

    Also checks that leaf shapes agree where both leaves have a shape.
    """
    if jax.tree.structure(tree) == jax.tree.structure(ref):
        for (path, a), b in zip(flatten(tree).items(), jax.tree.leaves(ref), strict=True):
            sa, sb = getattr(a, "shape", None), getattr(b, "shape", None)
            if sa is not None and sb is not None and tuple(sa) != tuple(sb):
                raise ValueError(f"{name} and {ref_name} differ in shape at {path!r}: {sa} vs {sb}")
        return
    a, b = set(leaf_paths(tree)), set(leaf_paths(ref))
    missing, extra = sorted(b - a), sorted(a - b)
    raise ValueError(
        f"{name} tree does not match the {ref_name} tree: "
        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
        f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        + ("" if missing or extra else " (same paths, different node types)")
    )
