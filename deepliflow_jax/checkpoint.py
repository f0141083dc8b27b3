"""DeepLiDARFlow checkpoints: an Orbax parameter tree plus a JSON of metadata.

Layout of a checkpoint directory ``DIR``::

    DIR/params/                   Orbax (StandardCheckpointer) tree {'params': ...}
    DIR/deepliflow_checkpoint.json  metadata: architecture, parameter count, date,
                                  and whatever the writer adds (e.g. the source
                                  and format of a converted checkpoint)

``save_checkpoint`` checks the tree against the model's parameter shapes
(``deepliflow_jax.model.api.param_shapes``) and writes through
``deepliflow_jax.fileio.replace_dir``: at every interruption point ``DIR`` holds the
complete old or the complete new checkpoint (or, between two renames, a hidden
sibling that the next save or load renames back). An existing ``DIR`` is replaced
only with ``overwrite=True`` and only if it is a checkpoint (it holds
``deepliflow_checkpoint.json``) or an empty folder; anything else is refused.
``load_checkpoint`` checks the stored shapes before reading any tensor, so a
checkpoint of another architecture fails with a list of the differences. A bare
Orbax directory holding ``{'params': ...}`` (``DIR/_METADATA``) loads too.

Structured (channel-pruned) models: a tree whose normalized convs hold
``conf_mass`` is a structured DeepLiDARFlow; ``save_checkpoint`` reads its
channel widths from the shapes (checking every coupling) and stores them in the
metadata (``"widths"``), and ``load_checkpoint`` builds the expected parameter
shapes from them. ``load_checkpoint(dir, widths=...)`` insists on one
architecture (``None`` = the original network) and refuses a checkpoint of
another one, naming the layers whose widths differ.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax import fileio

ARCHITECTURE = "DeepLiDARFlow"
CHECKPOINT_VERSION = 1
METADATA_FILE = "deepliflow_checkpoint.json"
PARAMS_DIR = "params"
KIND = "a deepliflow_jax checkpoint"  # how refusals name what may be overwritten

PathLike = str | os.PathLike
AUTO = "auto"  # load_checkpoint: the architecture the checkpoint's metadata names


def _expected_shapes(widths: Any = None) -> dict[str, tuple[tuple[int, ...], str]]:
    from deepliflow_jax.model.api import param_shapes

    flat = flax.traverse_util.flatten_dict(param_shapes(widths), sep="/")
    return {k: (tuple(v.shape), np.dtype(v.dtype).name) for k, v in flat.items()}


def shape_problems(found: dict[str, tuple[tuple[int, ...], str]],
                   widths: Any = None) -> list[str]:
    """Differences between ``{path: (shape, dtype)}`` and the model's parameters.

    Args:
      found: ``'params/...'`` paths (``/``-separated) with their shape and dtype name.
      widths: channel widths of a structured model (None = the original network).

    Returns:
      One line per missing, unexpected, mis-shaped or non-float32 entry (empty if all match).
    """
    want = _expected_shapes(widths)
    problems = [f"missing: {k} {list(want[k][0])}" for k in sorted(set(want) - set(found))]
    problems += [f"unexpected: {k} {list(found[k][0])}" for k in sorted(set(found) - set(want))]
    for k in sorted(set(want) & set(found)):
        if tuple(found[k][0]) != want[k][0]:
            problems.append(f"mis-shaped: {k} is {list(found[k][0])}, the model needs "
                            f"{list(want[k][0])}")
        elif found[k][1] != want[k][1]:
            problems.append(f"wrong dtype: {k} is {found[k][1]}, the model needs {want[k][1]}")
    return problems


MAX_LISTED = 5  # problems of each kind shown before "... and N more"
PROBLEM_KINDS = ("unexpected", "missing", "mis-shaped", "wrong dtype")


def _likely_cause(found: dict[str, tuple], problems: list[str], widths: Any) -> str:
    """One sentence on why ``found`` differs from the model, when the pattern is clear."""
    want = _expected_shapes(widths)
    kinds = {k: [p for p in problems if p.startswith(k + ":")] for k in PROBLEM_KINDS}
    tops = sorted({k.split("/")[0] for k in found})
    state = ("this looks like a train state (it holds " + ", ".join(tops) + ")"
             if set(tops) & {"opt_state", "step", "rng"} else "")
    # the model's tree nested deeper, e.g. {'params': {'params': ...}} or {'params': {'model':
    # ...}}: the parameters under one prefix instead of 'params'
    prefixes: dict[str, int] = {}
    for key in found:
        for w in want:
            rel = w.split("/", 1)[1]
            if key.endswith("/" + rel) and key != w:
                prefix = key[: -len(rel) - 1]
                prefixes[prefix] = prefixes.get(prefix, 0) + 1
    if prefixes:
        prefix, count = max(prefixes.items(), key=lambda kv: kv[1])
        if count >= len(want) // 2:
            subtree = "variables" + "".join(f"['{p}']" for p in prefix.split("/"))
            return (f"{state or 'this looks like a wrapped tree'}, with the DeepLiDARFlow "
                    f"parameters under '{prefix}/': pass {{'params': {subtree}}}")
    if state:
        return state + ": save or load its {'params': ...} only"
    if not set(found) & set(want):
        return (f"this looks like a checkpoint of another model: none of its {len(found)} "
                "tensors is a DeepLiDARFlow parameter")
    if any(p.split()[1].endswith("/conf_mass") for p in kinds["unexpected"]) or (
            kinds["mis-shaped"] and not kinds["missing"] and all(
                len(found[k][0]) == len(want[k][0])
                and all(a <= b for a, b in zip(found[k][0], want[k][0], strict=True))
                for k in set(want) & set(found) if tuple(found[k][0]) != want[k][0])):
        return ("this looks like a structured (channel-pruned) DeepLiDARFlow checked "
                "against the original widths: load it with its widths (load_checkpoint "
                "reads them from the metadata; check_variables(..., widths=...))")
    if kinds["wrong dtype"] and len(kinds["wrong dtype"]) == len(problems):
        return ("every tensor is there but some have another dtype: cast them with "
                "jax.tree.map(lambda x: np.asarray(x, np.float32), variables)")
    return ""


def summarize_problems(found: dict[str, tuple[tuple[int, ...], str]], problems: list[str],
                       widths: Any = None) -> str:
    """``shape_problems`` as a readable message: counts, a likely cause, a few of each kind.

    Args:
      found: ``{path: (shape, dtype name)}`` as for :func:`shape_problems`.
      problems: its result (not empty).
      widths: the architecture checked against.

    Returns:
      ``"N missing, M unexpected; <likely cause>:\n  <first lines of each kind>"``;
      at most ``MAX_LISTED`` lines per kind, the rest counted.
    """
    groups = {k: [p for p in problems if p.startswith(k + ":")] for k in PROBLEM_KINDS}
    counts = ", ".join(f"{len(v)} {k}" for k, v in groups.items() if v)
    cause = _likely_cause(found, problems, widths)
    lines = []
    for kind, items in groups.items():
        lines += items[:MAX_LISTED]
        if len(items) > MAX_LISTED:
            lines.append(f"... and {len(items) - MAX_LISTED} more {kind}")
    return f"{counts}{'; ' + cause if cause else ''}:\n  " + "\n  ".join(lines)


def _structured_widths(flat: dict[str, Any]) -> dict[str, int] | None:
    """Widths of a structured tree (``conf_mass`` leaves), None for the original layout."""
    if not any(k.endswith("/conf_mass") for k in flat):
        return None
    from deepliflow_jax.model.channels import widths_of

    tree = flax.traverse_util.unflatten_dict(flat, sep="/")
    return widths_of(tree)


def _describe(widths: dict[str, int] | None) -> str:
    return "the original DeepLiDARFlow" if widths is None else "a structured DeepLiDARFlow"


def _width_differences(have: dict[str, int] | None, want: dict[str, int] | None) -> list[str]:
    from deepliflow_jax.model.widths import full_widths

    if (have is None) != (want is None):
        return [f"checkpoint is {_describe(have)}, requested {_describe(want)}"]
    a, b = full_widths(have), full_widths(want)
    return [f"{k}: checkpoint {a[k]} channels, requested {b[k]}" for k in a if a[k] != b[k]]


def check_variables(variables: Any, what: str = "variables", widths: Any = AUTO) -> None:
    """Raises ``ValueError`` listing every difference from the model's parameter tree.

    Args:
      variables: ``{'params': ...}`` (arrays or anything with ``shape`` and ``dtype``).
      what: how to name the tree in the message.
      widths: the architecture to check against: ``AUTO`` (default) reads it from
        the tree (a structured tree holds ``conf_mass``), None is the original.
    """
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError(f"{what} must be a dict {{'params': ...}}, got "
                         f"{type(variables).__name__} with keys "
                         f"{sorted(variables) if isinstance(variables, dict) else '-'}")
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/")
    found = {k: (tuple(np.shape(v)), np.dtype(getattr(v, "dtype", np.float64)).name)
             for k, v in flat.items()}
    if isinstance(widths, str) and widths == AUTO:
        try:
            widths = _structured_widths(flat)
        except ValueError as err:
            raise ValueError(f"{what} are not a consistent structured DeepLiDARFlow: "
                             f"{err}") from err
    problems = shape_problems(found, widths)
    if problems:
        raise ValueError(f"{what} do not match the DeepLiDARFlow parameters "
                         f"({len(problems)} problems): "
                         + summarize_problems(found, problems, widths))


def parameter_count(variables: dict) -> int:
    """Number of scalar parameters in ``variables``."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(variables)))


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_checkpoint(directory: PathLike, variables: dict, metadata: dict | None = None,
                    overwrite: bool = False) -> Path:
    """Saves ``variables`` (checked against the model) and metadata, atomically.

    Args:
      directory: the checkpoint directory to create.
      variables: ``{'params': ...}`` of DeepLiDARFlow.
      metadata: JSON-serialisable extras (e.g. ``source``, ``format``); the
        architecture, version, date and parameter count are added, and for a
        structured (pruned) model its channel ``widths``.
      overwrite: replace an existing ``directory`` (only a checkpoint or an empty
        folder; see ``check_output``).

    Returns:
      The absolute checkpoint path.

    Raises:
      FileExistsError: ``directory`` exists and ``overwrite`` is False, or it is not a
        checkpoint (see ``check_output``).
      ValueError: the variables are not DeepLiDARFlow's, or metadata is not JSON.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from deepliflow_jax.model.api import init_params
      >>> tmp = tempfile.TemporaryDirectory()
      >>> variables = init_params(0)
      >>> path = save_checkpoint(Path(tmp.name) / "ckpt", variables, {"source": "init_params(0)"})
      >>> sorted(p.name for p in path.iterdir())
      ['deepliflow_checkpoint.json', 'params']
      >>> meta = load_metadata(path)
      >>> meta["source"], meta["parameter_count"]
      ('init_params(0)', 8296404)
      >>> save_checkpoint(path, variables)
      Traceback (most recent call last):
      ...
      FileExistsError: checkpoint output ... already exists; pass overwrite=True ...
      >>> tmp.cleanup()
    """
    out = check_output(directory, overwrite)
    check_variables(variables)
    host = jax.tree.map(lambda x: np.asarray(x, np.float32), flax.core.unfreeze(variables))
    widths = _structured_widths(flax.traverse_util.flatten_dict(host, sep="/"))
    info = {
        "architecture": ARCHITECTURE,
        "checkpoint_version": CHECKPOINT_VERSION,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "parameter_count": parameter_count(host),
        "num_tensors": len(jax.tree.leaves(host)),
    }
    info.update(metadata or {})
    info.pop("widths", None)
    if widths is not None:  # the shapes decide, never a caller's note
        info["widths"] = widths
    try:
        text = json.dumps(info, indent=2, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {err}") from err

    def write_params(staged: Path) -> None:
        with _checkpointer() as ckptr:
            ckptr.save(staged / PARAMS_DIR, host)

    # the metadata file is written last: it marks a staged copy complete and makes
    # the folder recognisably a checkpoint that a later overwrite may replace
    fileio.replace_dir(out, write_params, marker=METADATA_FILE, marker_text=text + "\n",
                       kind=KIND, overwrite=overwrite, noun="checkpoint output")
    return out


def check_output(directory: PathLike, overwrite: bool = False) -> Path:
    """Checks that ``save_checkpoint(directory, ..., overwrite)`` may write there.

    Settles an interrupted earlier save first (``checkpoint_exists``).

    Returns:
      The absolute path.

    Raises:
      FileExistsError: ``directory`` exists and ``overwrite`` is False, or it exists
        and is neither a checkpoint (it has no ``deepliflow_checkpoint.json``) nor an
        empty folder: "refusing to overwrite DIR: it is not a deepliflow_jax
        checkpoint (holds important.txt, sub/); remove it or choose another path".
    """
    return fileio.check_output(directory, marker=METADATA_FILE, kind=KIND, overwrite=overwrite,
                               noun="checkpoint output")


def checkpoint_exists(directory: PathLike) -> bool:
    """Whether something is at ``directory``, after settling an interrupted save there.

    A save interrupted between moving the old checkpoint aside and renaming the new
    one in leaves hidden ``.NAME.new-*`` / ``.NAME.old-*`` siblings; this renames the
    complete one back (see ``deepliflow_jax.fileio``). Loaders do the same.
    """
    return fileio.recover_dir(directory, METADATA_FILE, strict=False)


def _params_dir(directory: PathLike) -> Path:
    path = Path(directory)
    checkpoint_exists(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a checkpoint directory")
    for candidate in (path / PARAMS_DIR, path):
        if (candidate / "_METADATA").is_file():
            return candidate
    raise FileNotFoundError(f"{path} is not a DeepLiDARFlow checkpoint: no {PARAMS_DIR}/_METADATA "
                            f"(Orbax tree) in it")


def load_metadata(directory: PathLike) -> dict:
    """The checkpoint's JSON metadata (empty for a bare Orbax directory).

    Raises:
      FileNotFoundError: no checkpoint there.
      ValueError: the JSON is unreadable.
    """
    _params_dir(directory)
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"unreadable checkpoint metadata {path}: {err}") from err


def checkpoint_widths(directory: PathLike) -> dict[str, int] | None:
    """Channel widths recorded in a checkpoint (None: the original network)."""
    widths = load_metadata(directory).get("widths")
    return None if widths is None else {str(k): int(v) for k, v in widths.items()}


def load_checkpoint(directory: PathLike, widths: Any = AUTO) -> dict:
    """Loads ``{'params': ...}`` (float32 jax arrays) from a checkpoint directory.

    Args:
      directory: a directory written by ``save_checkpoint`` (or a bare Orbax one).
      widths: the architecture the caller builds: ``AUTO`` (default) takes the
        one recorded in the checkpoint (``checkpoint_widths``: the original
        network or a structured one), None demands the original network, a
        widths mapping demands that structured model.

    Returns:
      The variables pytree, ready for ``deepliflow_jax.predict.predict``.

    Raises:
      FileNotFoundError: not a checkpoint.
      ValueError: another architecture (lists missing/unexpected/mis-shaped
        parameters, or the layers whose widths differ from the requested
        ones), or unreadable/corrupted data.

    Example:
      >>> import tempfile
      >>> import jax
      >>> import numpy as np
      >>> from pathlib import Path
      >>> from deepliflow_jax.model.api import init_params
      >>> tmp = tempfile.TemporaryDirectory()
      >>> variables = init_params(0)
      >>> path = save_checkpoint(Path(tmp.name) / "ckpt", variables)
      >>> loaded = load_checkpoint(path)
      >>> all(np.array_equal(a, b) for a, b in
      ...     zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True))
      True
      >>> load_checkpoint(Path(tmp.name) / "missing")
      Traceback (most recent call last):
      ...
      FileNotFoundError: checkpoint directory not found: .../missing
      >>> tmp.cleanup()
    """
    params_dir = _params_dir(directory).absolute()
    requested = widths
    if not (isinstance(requested, str) and requested == AUTO) and requested is not None:
        from deepliflow_jax.model.widths import freeze_widths

        requested = dict(freeze_widths(requested))
    with _checkpointer() as ckptr:
        try:
            meta = ckptr.metadata(params_dir)
        except Exception as err:  # orbax raises many types for a damaged tree
            raise ValueError(f"unreadable checkpoint metadata in {params_dir}: {err}") from err
        item = getattr(meta, "item_metadata", meta)
        tree = getattr(item, "tree", item)
        if not isinstance(tree, dict):  # orbax logs and returns None for a damaged store
            raise ValueError(f"unreadable checkpoint metadata in {params_dir} (corrupted or "
                             f"incomplete checkpoint): got {type(tree).__name__}")
        flat = flax.traverse_util.flatten_dict(dict(tree), sep="/")
        found = {k: (tuple(v.shape), np.dtype(v.dtype).name) for k, v in flat.items()}
        # the architecture is read from the stored shapes (metadata only cross-checks it)
        try:
            stored = _structured_widths(flat)
        except ValueError as err:
            raise ValueError(f"checkpoint {directory} holds an inconsistent structured "
                             f"DeepLiDARFlow: {err}") from err
        try:
            noted = checkpoint_widths(directory)
        except ValueError:  # unreadable JSON: the tensors still decide
            noted = stored
        if noted != stored:
            raise ValueError(f"checkpoint {directory}: its metadata widths disagree with its "
                             "tensors:\n  " + "\n  ".join(_width_differences(stored, noted)))
        if not (isinstance(requested, str) and requested == AUTO):
            diffs = _width_differences(stored, requested)
            if diffs:
                raise ValueError(f"checkpoint {directory} is {_describe(stored)} of another "
                                 f"architecture than the requested one ({len(diffs)} "
                                 f"differences):\n  " + "\n  ".join(diffs))
        problems = shape_problems(found, stored)
        if problems:
            what = "" if stored is None else " (structured, widths from its metadata)"
            raise ValueError(f"checkpoint {directory} is not a DeepLiDARFlow checkpoint of this "
                             f"architecture{what} ({len(problems)} problems): "
                             + summarize_problems(found, problems, stored))
        target = flax.traverse_util.unflatten_dict(
            {tuple(k.split("/")): jax.ShapeDtypeStruct(s, np.dtype(d)) for k, (s, d)
             in found.items()})
        try:
            restored = ckptr.restore(params_dir, target)
        except Exception as err:
            raise ValueError(f"could not read the checkpoint tensors in {params_dir} "
                             f"(corrupted or truncated?): {err}") from err
    return jax.tree.map(jnp.asarray, restored)
