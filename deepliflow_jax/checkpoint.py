"""DeepLiDARFlow checkpoints: an Orbax tree plus a JSON of metadata, for every kind of model.

Layout of a checkpoint directory ``DIR``::

    DIR/params/                   Orbax (StandardCheckpointer) tree of the model
    DIR/optimizer/                optional Orbax tree of an optimizer state to continue
                                  (``save_checkpoint(..., optimizer=)``: TF1 Adam's
                                  moments and beta powers of a converted TF training
                                  checkpoint, ``load_optimizer_state``)
    DIR/deepliflow_checkpoint.json  metadata: architecture, kind, parameter count, date,
                                  and whatever the writer adds (e.g. the source
                                  and format of a converted checkpoint)

Kinds (metadata ``"kind"`` and ``"kind_version"``; a checkpoint without them is float):

* ``float``: ``{'params': ...}``, float32.
* ``packed`` (a pruned and/or quantized model, ``save_checkpoint(..., quant=,
  masks=, bits=)``): ``{'packed': {<param path>: {codes, scale, zero_point,
  nonzero | values, nonzero}}}``: integer codes in int8/uint8/int16/uint16,
  float32 scales, int32 zero points, 1-bit nonzero masks (``np.packbits``); the
  metadata's ``"packing"`` says per parameter how (``compress.export``).
  ``load_checkpoint`` decodes it to the float32 parameters of the compressed
  forward pass, bit for bit.
* ``int8`` (``compress.int8.quantize_int8``'s model): ``{'convs': {<layer>: {w
  int8, w_scale, bias, x_scale}}, 'nconv': {<layer>: {codes int8, scale}},
  'float': {<param path>: ...}}``; ``load_checkpoint(..., kind="int8")`` returns
  that model for ``compress.int8.int8_apply``.

Every array is a plain Orbax/TensorStore array (zstd-compressed by Orbax), so
``orbax.checkpoint`` or ``tensorstore`` open any kind without this package.

``save_checkpoint`` checks the model against the parameter shapes
(``deepliflow_jax.model.build.param_shapes``) and writes through
``deepliflow_jax.fileio.replace_dir``: at every interruption point ``DIR`` holds the
complete old or the complete new checkpoint (or, between two renames, a hidden
sibling that the next save or load renames back). An existing ``DIR`` is replaced
only with ``overwrite=True`` and only if it is a checkpoint (it holds
``deepliflow_checkpoint.json``) or an empty folder; anything else is refused.
``load_checkpoint`` checks the stored shapes before reading any tensor, so a
checkpoint of another architecture fails with a list of the differences, and a
checkpoint of another kind than the requested one fails naming both. A bare
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
OPTIMIZER_DIR = "optimizer"
OPTIMIZER_SCALARS = ("beta1_power", "beta2_power", "count")  # beside the moments mu, nu
KIND = "a deepliflow_jax checkpoint"  # how refusals name what may be overwritten

PathLike = str | os.PathLike
AUTO = "auto"  # load_checkpoint: the architecture the checkpoint's metadata names

# what a checkpoint holds (metadata "kind"), and the version of each kind's layout
KINDS = {
    "float": "float32 parameters",
    "packed": "pruned/quantized parameters stored as integer codes, decoded to float32 on load",
    "int8": "an int8 model: integer kernels and activation scales for compress.int8",
}
KIND_VERSIONS = {"float": 1, "packed": 1, "int8": 1}
FLOAT_KINDS = ("float", "packed")  # what load_checkpoint(kind=None) accepts
TREE_KEYS = {"float": ("params",), "packed": ("packed",), "int8": ("convs", "nconv", "float")}
RESERVED = ("kind", "kind_version", "packing", "widths")  # metadata the loader relies on


def _expected_shapes(widths: Any = None) -> dict[str, tuple[tuple[int, ...], str]]:
    from deepliflow_jax.model.build import param_shapes

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


def is_int8_model(model: Any) -> bool:
    """Whether ``model`` is an int8 model (``compress.int8.quantize_int8``'s dict)."""
    from deepliflow_jax.compress.int8 import GROUPS

    return isinstance(model, dict) and "convs" in model and set(model) <= set(GROUPS)


def _int8_found(tree: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{params path: (shape, 'float32')}`` of an int8 model (arrays or shape structs)."""
    from deepliflow_jax.compress.int8 import float_layout

    return {f"params/{k}": (tuple(np.shape(v)), "float32")
            for k, v in float_layout(tree).items()}


def _int8_problems(tree: dict) -> list[str]:
    """The int8 model's codes that are not int8 (its float arrays are checked as the model's)."""
    wrong = [f"{group}/{path}/{name}" for group, name in (("convs", "w"), ("nconv", "codes"))
             for path, q in tree.get(group, {}).items()
             if np.dtype(getattr(q[name], "dtype", np.float64)) != np.int8]
    return [f"wrong dtype: {k} is not int8" for k in wrong]


def _check_int8(model: dict, what: str) -> dict[str, int] | None:
    """Checks an int8 model against the DeepLiDARFlow parameters; returns its widths."""
    found = _int8_found(model)
    try:
        widths = _structured_widths({k: jax.ShapeDtypeStruct(s, np.float32)
                                     for k, (s, _) in found.items()})
    except ValueError as err:
        raise ValueError(f"{what} is not a consistent structured DeepLiDARFlow: {err}") from err
    problems = shape_problems(found, widths) + _int8_problems(model)
    if problems:
        raise ValueError(f"{what} does not match the DeepLiDARFlow parameters "
                         f"({len(problems)} problems): "
                         + summarize_problems(found, problems, widths))
    return widths


def _nested(flat: dict[str, Any]) -> dict:
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def _int8_tree(model: dict) -> dict:
    """The int8 model as one nested tree of numpy arrays (layer paths split at ``/``)."""
    tree = {}
    for group in ("convs", "nconv"):
        flat = {f"{path}/{name}": np.asarray(a) for path, q in model.get(group, {}).items()
                for name, a in q.items()}
        if flat:  # Orbax stores no empty dicts
            tree[group] = _nested(flat)
    if model.get("float"):
        tree["float"] = _nested({k: np.asarray(v, np.float32) for k, v in model["float"].items()})
    return tree


def _int8_model(tree: dict) -> dict:
    """Inverse of :func:`_int8_tree` (the leaves as they are)."""
    model: dict[str, dict] = {"convs": {}, "nconv": {}, "float": {}}
    for key, value in flax.traverse_util.flatten_dict(tree, sep="/").items():
        group, rest = key.split("/", 1)
        if group == "float":
            model["float"][rest] = value
        else:
            layer, name = rest.rsplit("/", 1)
            model[group].setdefault(layer, {})[name] = value
    return model


def _optimizer_tree(optimizer: dict, variables: dict) -> dict:
    """The optimizer item as stored: moments checked against ``variables``, numpy float32."""
    if not isinstance(optimizer, dict) or set(optimizer) != {"mu", "nu", *OPTIMIZER_SCALARS}:
        raise ValueError("optimizer must be a dict with mu, nu (trees of the variables' "
                         f"{{'params': ...}}), {', '.join(OPTIMIZER_SCALARS)}; got "
                         f"{sorted(optimizer) if isinstance(optimizer, dict) else optimizer!r}")
    tree = {}
    for name in ("mu", "nu"):
        check_variables(optimizer[name], f"the optimizer's {name}")
        if jax.tree.structure(optimizer[name]) != jax.tree.structure(variables):
            raise ValueError(f"the optimizer's {name} is not a tree of the saved variables")
        tree[name] = jax.tree.map(lambda x: np.asarray(x, np.float32), optimizer[name])
    tree["beta1_power"] = np.asarray(optimizer["beta1_power"], np.float32)
    tree["beta2_power"] = np.asarray(optimizer["beta2_power"], np.float32)
    tree["count"] = np.asarray(optimizer["count"], np.int64)
    for name in OPTIMIZER_SCALARS:
        if tree[name].shape != ():
            raise ValueError(f"the optimizer's {name} must be a scalar, got shape "
                             f"{list(tree[name].shape)}")
    return tree


def save_checkpoint(directory: PathLike, variables: dict, metadata: dict | None = None,
                    overwrite: bool = False, *, quant: Any = None, masks: Any = None,
                    bits: Any = None, optimizer: dict | None = None) -> Path:
    """Saves a model (checked against the architecture) and metadata, atomically.

    The kind of checkpoint follows from the arguments and is recorded in the
    metadata (``"kind"``, ``"kind_version"``):

    * ``"float"``: ``variables`` as float32 (the original network or a structured
      one; its ``widths`` are recorded).
    * ``"packed"``: with ``quant``, ``masks`` or ``bits``: the pruned and/or
      quantized parameters as integer codes + scales + 1-bit nonzero masks
      (``compress.export.pack_params``; the layout goes to ``"packing"``);
      ``load_checkpoint`` decodes them to exactly the float parameters the
      compressed forward pass uses.
    * ``"int8"``: ``variables`` is an int8 model (``compress.int8.quantize_int8``):
      int8 kernels, float32 scales (activation ``x_scale`` and per-channel
      ``w_scale``), biases and the remaining float parameters.

    Args:
      directory: the checkpoint directory to create.
      variables: ``{'params': ...}`` of DeepLiDARFlow, or an int8 model.
      metadata: JSON-serialisable extras (e.g. ``source``, ``format``); the
        architecture, version, date, parameter count and kind are added, and for a
        structured (pruned) model its channel ``widths``.
      overwrite: replace an existing ``directory`` (only a checkpoint or an empty
        folder; see ``check_save_target``).
      quant: a ``compress.quantize.QuantConfig``: store the selected leaves as
        codes of ``quant.bits`` bits (packed kind), with ``per_channel`` one scale per
        output channel (``compress.quantize.channel_axis``: -2 for the transposed
        convs' ``[kh, kw, out, in]`` kernels, -1 for the others).
      masks: boolean pruning masks (the tree of ``variables``), applied first.
      bits: per-leaf bit widths overriding ``quant.bits`` (e.g.
        ``compress.transforms.get_bits(opt_state)``; 0 keeps a leaf float).
      optimizer: float kind only: an Adam state to continue, ``{"mu", "nu"}`` (trees
        like ``variables``), ``beta1_power``, ``beta2_power`` (TF1 Adam's running
        powers) and ``count`` (updates taken), stored in ``DIR/optimizer`` and read by
        ``load_optimizer_state`` (``weights_convert --with_optimizer_state``). Describe
        it in ``metadata["optimizer"]``.

    Returns:
      The absolute checkpoint path.

    Raises:
      FileExistsError: ``directory`` exists and ``overwrite`` is False, or it is not a
        checkpoint (see ``check_save_target``).
      ValueError: the variables are not DeepLiDARFlow's (or not a consistent int8
        model), ``bits`` without ``quant``, packing arguments with an int8 model,
        an optimizer state with another kind or of other shapes, or metadata that is
        not JSON.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from deepliflow_jax.model.build import init_params
      >>> tmp = tempfile.TemporaryDirectory()
      >>> variables = init_params(0)
      >>> path = save_checkpoint(Path(tmp.name) / "ckpt", variables, {"source": "init_params(0)"})
      >>> sorted(p.name for p in path.iterdir())
      ['deepliflow_checkpoint.json', 'params']
      >>> meta = load_metadata(path)
      >>> meta["source"], meta["parameter_count"], meta["kind"]
      ('init_params(0)', 8296404, 'float')
      >>> save_checkpoint(path, variables)
      Traceback (most recent call last):
      ...
      FileExistsError: checkpoint output ... already exists; pass overwrite=True ...
      >>> tmp.cleanup()
    """
    out = check_save_target(directory, overwrite)
    extra: dict[str, Any] = {}
    if optimizer is not None and (quant is not None or masks is not None or bits is not None
                                  or is_int8_model(variables)):
        raise ValueError("an optimizer state is kept with float parameters only (a training "
                         "checkpoint to continue); pass no quant, masks or bits with it")
    if is_int8_model(variables):
        if quant is not None or masks is not None or bits is not None:
            raise ValueError("quant, masks and bits pack float parameters; an int8 model "
                             "(quantize_int8) is saved as it is: pass none of them")
        kind = "int8"
        widths = _check_int8(variables, "the int8 model")
        tree = _int8_tree(variables)
        shapes = [s for s, _ in _int8_found(variables).values()]
        count, tensors = sum(int(np.prod(s)) for s in shapes), len(shapes)
    else:
        check_variables(variables)
        host = jax.tree.map(lambda x: np.asarray(x, np.float32), flax.core.unfreeze(variables))
        widths = _structured_widths(flax.traverse_util.flatten_dict(host, sep="/"))
        count, tensors = parameter_count(host), len(jax.tree.leaves(host))
        if quant is None and masks is None and bits is None:
            kind, tree = "float", host
            if optimizer is not None:
                optimizer = _optimizer_tree(optimizer, host)
        else:
            from deepliflow_jax.compress.export import pack_params

            if bits is not None and quant is None:
                raise ValueError("bits overrides quant.bits per leaf: pass quant too")
            arrays, extra["packing"] = pack_params(host, quant=quant, masks=masks, bits=bits)
            kind, tree = "packed", {"packed": _nested(arrays)}
    info = {
        "architecture": ARCHITECTURE,
        "checkpoint_version": CHECKPOINT_VERSION,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "parameter_count": count,
        "num_tensors": tensors,
    }
    info.update(metadata or {})
    for key in RESERVED:  # what the loader relies on: the model decides, never a caller's note
        info.pop(key, None)
    info.update(kind=kind, kind_version=KIND_VERSIONS[kind], **extra)
    if widths is not None:
        info["widths"] = widths
    try:
        text = json.dumps(info, indent=2, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {err}") from err

    def write_params(staged: Path) -> None:
        with _checkpointer() as ckptr:
            ckptr.save(staged / PARAMS_DIR, tree)
            if optimizer is not None:
                ckptr.save(staged / OPTIMIZER_DIR, optimizer)

    # the metadata file is written last: it marks a staged copy complete and makes
    # the folder recognisably a checkpoint that a later overwrite may replace
    fileio.replace_dir(out, write_params, marker=METADATA_FILE, marker_text=text + "\n",
                       kind=KIND, overwrite=overwrite, noun="checkpoint output")
    return out


def check_save_target(directory: PathLike, overwrite: bool = False) -> Path:
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



def _restore_numpy(ckptr: Any, path: Path, stored: dict, what: str) -> Any:
    """Orbax's tree at ``path`` into numpy targets of the ``stored`` shapes and dtypes.

    Numpy targets (no sharding) let Orbax read the arrays without opening every array's
    metadata a second time.

    Raises:
      ValueError: the files cannot be read, naming ``what`` and ``path``.
    """
    target = _nested({k: np.zeros(s, np.dtype(d)) for k, (s, d) in stored.items()})
    try:
        return ckptr.restore(path, target)
    except Exception as err:
        raise ValueError(f"could not read {what} in {path} (corrupted or truncated?): "
                         f"{err}") from err


def load_optimizer_state(directory: PathLike) -> dict:
    """The optimizer state stored with a checkpoint (``save_checkpoint(..., optimizer=)``).

    Args:
      directory: a checkpoint directory.

    Returns:
      ``{"mu": {"params": ...}, "nu": {"params": ...}, "beta1_power", "beta2_power",
      "count"}`` as numpy arrays (``train.tf_adam.state_from_checkpoint`` makes the
      trainer's Adam state of it); its description is ``load_metadata(directory)
      ["optimizer"]``.

    Raises:
      FileNotFoundError: no checkpoint there, or one without an optimizer state ("...
        holds no optimizer state: convert the TF training checkpoint with
        --with_optimizer_state").
      ValueError: an unreadable optimizer tree.
    """
    _params_dir(directory)
    path = Path(directory).absolute() / OPTIMIZER_DIR
    if not (path / "_METADATA").is_file():
        raise FileNotFoundError(
            f"checkpoint {directory} holds no optimizer state: convert the TF training "
            "checkpoint with `python -m weights_convert --format=tf --with_optimizer_state "
            "...` (it keeps the original's Adam slots and beta powers)")
    with _checkpointer() as ckptr:
        stored = _stored_tree(ckptr, path)
        restored = _restore_numpy(ckptr, path, stored, "the optimizer state")
    return jax.tree.map(np.asarray, restored)


def checkpoint_widths(directory: PathLike) -> dict[str, int] | None:
    """Channel widths recorded in a checkpoint (None: the original network)."""
    return _recorded_widths(load_metadata(directory))


def _recorded_widths(meta: dict) -> dict[str, int] | None:
    widths = meta.get("widths")
    return None if widths is None else {str(k): int(v) for k, v in widths.items()}


def checkpoint_kind(directory: PathLike) -> str:
    """The kind of model a checkpoint holds: ``"float"``, ``"packed"`` or ``"int8"``.

    A checkpoint without a recorded kind (written before kinds existed, or a bare
    Orbax directory) holds float parameters.

    Raises:
      FileNotFoundError: no checkpoint there.
      ValueError: unreadable metadata, an unknown kind or a newer kind version.
    """
    return _kind_of(load_metadata(directory), directory)


def _kind_of(meta: dict, directory: PathLike) -> str:
    kind = meta.get("kind", "float")
    if kind not in KINDS:
        raise ValueError(f"checkpoint {directory} holds an unknown kind {kind!r} (this version "
                         f"of deepliflow_jax reads {', '.join(map(repr, KINDS))})")
    version = meta.get("kind_version", 1)
    if version != KIND_VERSIONS[kind]:
        raise ValueError(f"checkpoint {directory}: kind {kind!r} version {version!r} is not "
                         f"the one this version of deepliflow_jax reads ({KIND_VERSIONS[kind]})")
    return kind


def _check_kind(directory: PathLike, stored: str, requested: str | None) -> None:
    """Raises unless a checkpoint of kind ``stored`` may load as ``requested``."""
    if requested is not None and requested not in KINDS:
        raise ValueError(f"kind must be None (float parameters) or one of "
                         f"{', '.join(map(repr, KINDS))}, got {requested!r}")
    if stored == requested or (requested is None and stored in FLOAT_KINDS):
        return
    want = ("float parameters (kind 'float' or 'packed')" if requested is None
            else f"kind {requested!r}")
    if stored == "int8":
        hint = ("load it with load_checkpoint(..., kind='int8') and run it with "
                "compress.int8.int8_apply")
    elif requested == "int8":
        hint = ("make an int8 model of its parameters with compress.int8.calibrate and "
                "quantize_int8")
    else:
        hint = f"pass kind={stored!r} or kind=None (both give float32 parameters)"
    raise ValueError(f"checkpoint {directory} holds kind {stored!r} ({KINDS[stored]}), not the "
                     f"requested {want}; {hint}")


def _stored_tree(ckptr: Any, params_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{path: (shape, dtype name)}`` of the Orbax tree, read without its tensors."""
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
    return {k: (tuple(v.shape), np.dtype(v.dtype).name) for k, v in flat.items()}


def _packed_problems(stored: dict[str, tuple], layout: Any) -> list[str]:
    """Differences between the stored arrays and those the packing layout needs."""
    from deepliflow_jax.compress.export import packed_arrays

    need = {f"packed/{k}": v for k, v in packed_arrays(layout).items()}
    problems = [f"missing: {k}" for k in sorted(set(need) - set(stored))]
    problems += [f"unexpected: {k}" for k in sorted(set(stored) - set(need))]
    problems += [f"mis-shaped: {k} is {list(stored[k][0])} {stored[k][1]}, its layout says "
                 f"{list(need[k][0])} {need[k][1]}" for k in sorted(set(need) & set(stored))
                 if (tuple(stored[k][0]), stored[k][1]) != (tuple(need[k][0]), need[k][1])]
    return problems


def _model_shapes(kind: str, stored: dict[str, tuple], meta: dict,
                  directory: PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{params path: (shape, dtype)}`` of the model a checkpoint holds (before reading it)."""
    tops = sorted({k.split("/")[0] for k in stored})
    if not set(tops) <= set(TREE_KEYS[kind]):
        raise ValueError(f"checkpoint {directory}: its metadata says kind {kind!r}, but its "
                         f"tensor tree holds {tops} (expected {list(TREE_KEYS[kind])})")
    if kind == "float":
        return stored
    if kind == "packed":
        layout = meta.get("packing")
        try:
            problems = _packed_problems(stored, layout)
        except ValueError as err:
            raise ValueError(f"checkpoint {directory}: {err}") from err
        if problems:
            raise ValueError(f"checkpoint {directory}: its packed arrays do not match its "
                             f"layout ({len(problems)} problems):\n  "
                             + "\n  ".join(problems[:2 * MAX_LISTED]))
        return {k: (tuple(e["shape"]), e["dtype"]) for k, e in layout["leaves"].items()}
    shapes = _int8_model(_nested({k: jax.ShapeDtypeStruct(s, np.dtype(d))
                                  for k, (s, d) in stored.items()}))
    problems = _int8_problems(shapes)
    if problems:
        raise ValueError(f"checkpoint {directory} is not a DeepLiDARFlow int8 model: "
                         + "; ".join(problems[:MAX_LISTED]))
    return _int8_found(shapes)


def load_checkpoint(directory: PathLike, widths: Any = AUTO, kind: str | None = None) -> dict:
    """Loads a model from a checkpoint directory.

    Args:
      directory: a directory written by ``save_checkpoint`` (or a bare Orbax one
        holding ``{'params': ...}``).
      widths: the architecture the caller builds: ``AUTO`` (default) takes the
        one recorded in the checkpoint (``checkpoint_widths``: the original
        network or a structured one), None demands the original network, a
        widths mapping demands that structured model.
      kind: what the caller expects (see ``save_checkpoint``): None (default)
        float parameters, from a ``"float"`` or a ``"packed"`` checkpoint;
        ``"float"``, ``"packed"`` or ``"int8"`` that kind only.

    Returns:
      For float and packed checkpoints ``{'params': ...}`` (float32 jax arrays,
      a packed one decoded: bit for bit the parameters of the compressed forward
      pass), ready for ``deepliflow_jax.predict.predict``; for ``kind="int8"``
      the int8 model (numpy) for ``compress.int8.int8_apply`` (its widths:
      ``checkpoint_widths``).

    Raises:
      FileNotFoundError: not a checkpoint.
      ValueError: a checkpoint of another kind than the requested one (naming
        both), another architecture (lists missing/unexpected/mis-shaped
        parameters, or the layers whose widths differ from the requested
        ones), or unreadable/corrupted data.

    Example:
      >>> import tempfile
      >>> import jax
      >>> import numpy as np
      >>> from pathlib import Path
      >>> from deepliflow_jax.model.build import init_params
      >>> tmp = tempfile.TemporaryDirectory()
      >>> variables = init_params(0)
      >>> path = save_checkpoint(Path(tmp.name) / "ckpt", variables)
      >>> loaded = load_checkpoint(path)
      >>> all(np.array_equal(a, b) for a, b in
      ...     zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True))
      True
      >>> load_checkpoint(path, kind="int8")
      Traceback (most recent call last):
      ...
      ValueError: checkpoint .../ckpt holds kind 'float' (float32 parameters), not the ...
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
    try:
        meta, readable = load_metadata(directory), True
    except ValueError:  # unreadable JSON: the tensors of a float checkpoint still decide
        meta, readable = {}, False
    stored_kind = _kind_of(meta, directory)
    _check_kind(directory, stored_kind, kind)
    with _checkpointer() as ckptr:
        stored = _stored_tree(ckptr, params_dir)
        found = _model_shapes(stored_kind, stored, meta, directory)
        # the architecture is read from the stored shapes (metadata only cross-checks it)
        try:
            arch = _structured_widths({k: jax.ShapeDtypeStruct(s, np.dtype(d))
                                       for k, (s, d) in found.items()})
        except ValueError as err:
            raise ValueError(f"checkpoint {directory} holds an inconsistent structured "
                             f"DeepLiDARFlow: {err}") from err
        noted = _recorded_widths(meta) if readable else arch
        if noted != arch:
            raise ValueError(f"checkpoint {directory}: its metadata widths disagree with its "
                             "tensors:\n  " + "\n  ".join(_width_differences(arch, noted)))
        if not (isinstance(requested, str) and requested == AUTO):
            diffs = _width_differences(arch, requested)
            if diffs:
                raise ValueError(f"checkpoint {directory} is {_describe(arch)} of another "
                                 f"architecture than the requested one ({len(diffs)} "
                                 f"differences):\n  " + "\n  ".join(diffs))
        problems = shape_problems(found, arch)
        if problems:
            what = "" if arch is None else " (structured, widths from its metadata)"
            raise ValueError(f"checkpoint {directory} is not a DeepLiDARFlow checkpoint of this "
                             f"architecture{what} ({len(problems)} problems): "
                             + summarize_problems(found, problems, arch))
        restored = _restore_numpy(ckptr, params_dir, stored, "the checkpoint tensors")
    if stored_kind == "int8":
        return jax.tree.map(np.asarray, _int8_model(restored))
    if stored_kind == "packed":
        from deepliflow_jax.compress.export import unpack_params

        arrays = flax.traverse_util.flatten_dict(restored["packed"], sep="/")
        restored = unpack_params({k: np.asarray(v) for k, v in arrays.items()},
                                 meta["packing"])
    return jax.tree.map(jnp.asarray, restored)
