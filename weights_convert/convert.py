"""Checkpoint conversion: TF release / PyTorch state dict <-> Flax variables.

Pure functions; the CLI (``python -m weights_convert``) is a thin wrapper.

Every conversion goes through an explicit name table (``tf_names.tf_name_table``,
``torch_names.torch_name_table``) and is validated before any tensor is read:

* each table entry must be in the source with the expected shape and a float
  dtype (shapes come from ``jax.eval_shape`` of the model, transformed into the
  source layout);
* every source entry must be either a model tensor of the table or a known
  non-model entry, reported as skipped: for TF, an optimizer slot or moving-average
  shadow of a model variable, ``[<outer scopes>/]<var>/<slot>`` with ``<slot>`` one of
  ``TF_SLOTS`` (the original release: ``train/<var>/Adam_optimizer{,_1}``), of the
  variable's shape (kept in ``ConversionReport.slots``), and the scalars
  ``beta1_power``, ``beta2_power``, ``global_step`` under any scope; for PyTorch
  files, non-weight items of a training checkpoint dict;
* all problems (missing, unexpected, mis-shaped, wrong dtype) are collected and
  raised together as one ``ConversionError``; nothing is written then.

Layout transforms: TF kernels are already HWIO (transposed convs
``[kh, kw, out, in]``, kept by the Flax ``ConvTranspose``); TF normalized-conv
biases ``[1, 1, 1, C]`` are flattened. PyTorch kernels are permuted with
``torch_names.PT_TO_FLAX``. The reverse (Flax -> PyTorch) is the inverse
permutation, so Flax -> PyTorch -> Flax is bit-exact.
"""

from __future__ import annotations

import datetime
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import flax
import numpy as np

from deepliflow_jax import fileio
from weights_convert import tf_bundle
from weights_convert.tf_names import tf_name_table
from weights_convert.torch_names import FLAX_TO_PT, PT_TO_FLAX, torch_name_table

FORMATS = ("tf", "torch")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
FLOAT_DTYPES = ("float32", "float16", "bfloat16")  # upcasts to float32 are exact

PathLike = str | os.PathLike

# TF non-model entries: step counters and Adam's accumulators (also when uniquified, _1)
_TF_NON_MODEL = re.compile(r"^(.*/)?(global_step|beta1_power|beta2_power)(_\d+)?$")
_TF_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
# Slot components TF appends to a variable's name (slot_creator: ``<var>/<optimizer
# name>``, uniquified ``_N`` for the second slot of one optimizer and for repeats):
# AdamOptimizer m, v (``Adam``, ``Adam_1``; the original names its optimizer
# ``Adam_optimizer``), MomentumOptimizer, RMSPropOptimizer (rms, momentum) and
# ExponentialMovingAverage's shadow.
TF_SLOTS = ("Adam", "Adam_optimizer", "Momentum", "RMSProp", "ExponentialMovingAverage")
_TF_SLOT = re.compile(r"^(?:" + "|".join(TF_SLOTS) + r")(?:_\d+)?$")


class ConversionError(ValueError):
    """A source checkpoint that does not fit the model; ``problems`` lists every issue."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"cannot convert {source}: {len(problems)} problems (nothing written):"
                         "\n  " + "\n  ".join(problems))


@dataclass
class ConversionReport:
    """What a conversion did: source entries used (-> Flax path) and skipped (-> reason).

    Attributes:
      source, format: the input and ``'tf'``/``'torch'``.
      converted: ``{source name: flax path}`` of the 257 model tensors.
      skipped: ``{source name: reason}`` of every other entry.
      parameter_count: number of converted parameters.
      notes: what was done to the names (e.g. a removed key prefix).
      slots: TF only: ``{(flax path, slot): float32 array}``, the optimizer slots and
        moving-average shadows of the model variables, in the Flax layout of their
        variable; ``slot`` is the component as written, e.g. ``'Adam_optimizer'``
        (Adam's first moment m) and ``'Adam_optimizer_1'`` (its second moment v),
        in the order TF's ``AdamOptimizer._create_slots`` creates them. Saved only on
        request, as an Adam state (``tf_optimizer_state``, ``convert_checkpoint(...,
        with_optimizer_state=True)``).
      optimizer_scalars: TF only: ``{source name: value}`` of ``beta1_power``,
        ``beta2_power`` and ``global_step`` entries.
      global_step: TF only: the checkpoint's ``global_step`` when it has exactly one.
        The original's ``train.py`` counts validation rounds with it, not Adam steps
        (Adam's step count is ``log(beta1_power) / log(beta1) - 1``).
    """

    source: str
    format: str
    converted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    parameter_count: int = 0
    notes: list[str] = field(default_factory=list)
    slots: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)
    optimizer_scalars: dict[str, float] = field(default_factory=dict)
    global_step: int | None = None

    def metadata(self) -> dict:
        """JSON-ready metadata for ``deepliflow_jax.checkpoint.save_checkpoint``."""
        meta = {
            "source": self.source,
            "format": self.format,
            "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "parameter_count": self.parameter_count,
            "converted_tensors": len(self.converted),
            "skipped": dict(sorted(self.skipped.items())),
        }
        if self.notes:
            meta["notes"] = list(self.notes)
        if self.global_step is not None:
            meta["global_step"] = self.global_step
        return meta

    def summary(self) -> str:
        """A few human-readable lines."""
        reasons: dict[str, int] = {}
        for r in self.skipped.values():
            reasons[r] = reasons.get(r, 0) + 1
        lines = [f"converted {len(self.converted)} tensors ({self.parameter_count:,} parameters) "
                 f"from {self.format} checkpoint {self.source}"]
        lines += list(self.notes)
        lines += [f"skipped {n} x {r}" for r, n in sorted(reasons.items())]
        if self.global_step is not None:
            lines.append(f"global_step {self.global_step}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- shared core

def _flax_shapes() -> dict[str, tuple[int, ...]]:
    from deepliflow_jax.model.build import param_shapes

    flat = flax.traverse_util.flatten_dict(param_shapes()["params"], sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def _validate(source: str, found: Mapping[str, tuple[tuple[int, ...], str]],
              table: Mapping[str, tuple[str, tuple[int, ...]]], classify) -> dict[str, str]:
    """Checks a source against the table; returns the skipped entries or raises.

    Args:
      source: name for messages.
      found: ``{source name: (shape, dtype name)}``.
      table: ``{source name: (flax path, expected source shape)}``.
      classify: ``(name, shape, dtype) -> (reason, problem)`` for entries outside the
        table: reason None = unexpected; a problem refuses a known but malformed entry.
    """
    problems, skipped = [], {}
    for name in sorted(set(table) - set(found)):
        problems.append(f"missing: {name} {list(table[name][1])} (-> {table[name][0]})")
    for name in sorted(set(found) - set(table)):
        reason, problem = classify(name, *found[name])
        if reason is None:
            problems.append(f"unexpected: {name} {found[name][1]}{list(found[name][0])}")
        elif problem is not None:
            problems.append(problem)
        else:
            skipped[name] = reason
    for name in sorted(set(found) & set(table)):
        shape, dtype = found[name]
        if tuple(shape) != tuple(table[name][1]):
            problems.append(f"mis-shaped: {name} is {list(shape)}, expected "
                            f"{list(table[name][1])} (-> {table[name][0]})")
        elif dtype not in FLOAT_DTYPES:
            problems.append(f"wrong dtype: {name} is {dtype}, expected float32")
    if problems:
        raise ConversionError(source, problems)
    return skipped


def _assemble(source: str, arrays: Mapping[str, np.ndarray]) -> dict:
    """``{flax path: array}`` -> ``{'params': nested}``, each path filled exactly once."""
    shapes = _flax_shapes()
    problems = [f"not filled: {p}" for p in sorted(set(shapes) - set(arrays))]
    problems += [f"mis-shaped after transform: {p} {list(np.shape(a))} vs {list(shapes[p])}"
                 for p, a in sorted(arrays.items()) if tuple(np.shape(a)) != shapes.get(p)]
    if problems:  # a table bug, not a user error; still never write a broken tree
        raise ConversionError(source, problems)
    nested = {tuple(p.split("/")): np.ascontiguousarray(a, np.float32) for p, a in arrays.items()}
    return {"params": flax.traverse_util.unflatten_dict(nested)}


def _check_unfilled(source: str, arrays: Mapping[str, np.ndarray], path: str, name: str):
    # each model tensor is consumed exactly once: two source names for one leaf is a table bug
    if path in arrays:
        raise ConversionError(source, [f"{name}: {path} is already filled by another entry"])


def _to_float32(value) -> np.ndarray:
    return np.asarray(value).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- TF

class TFSlot(NamedTuple):
    """A TF checkpoint entry that belongs to a model variable without being one."""

    variable: str  # the model variable's name in ``tf_name_table``
    slot: str  # the slot component, e.g. 'Adam_optimizer_1'
    scope: str  # outer scopes in front of the variable, e.g. 'train/' ('' for none)

    @property
    def reason(self) -> str:
        kind = "moving average" if self.slot.startswith("ExponentialMovingAverage") else \
            "optimizer slot"
        return f"{kind} ({self.slot})"


def parse_tf_slot(name: str, table: Mapping[str, object] | None = None) -> TFSlot | None:
    """Splits ``[<outer scopes>/]<model variable>/<slot>``; None for anything else.

    Args:
      name: a TF checkpoint entry, e.g. the original release's
        ``train/model/context_network/conv1/kernel/Adam_optimizer_1`` (its training
        script builds ``AdamOptimizer(name='Adam_optimizer')`` in a ``train`` scope).
      table: the model variables (default ``tf_name_table()``).

    Returns:
      ``TFSlot(variable, slot, scope)`` when the last component is one of ``TF_SLOTS``
      (or its uniquified ``_N`` form) and what precedes it ends in a model variable
      at a scope boundary; otherwise None.
    """
    table = tf_name_table() if table is None else table
    head, sep, slot = name.rpartition("/")
    if not sep or not _TF_SLOT.match(slot):
        return None
    start = 0
    while True:
        if head[start:] in table:
            return TFSlot(head[start:], slot, head[:start])
        start = head.find("/", start) + 1
        if start == 0:
            return None


def tf_skip_reason(name: str, table: Mapping[str, object] | None = None) -> str | None:
    """Why a TF checkpoint entry outside the model table is skipped (None: unexpected)."""
    table = tf_name_table() if table is None else table
    if name == _TF_OBJECT_GRAPH:
        return "TF2 object graph"
    if _TF_NON_MODEL.match(name):
        return "optimizer/step counter"
    slot = parse_tf_slot(name, table)
    return None if slot is None else slot.reason


def _tf_classify(expected: Mapping[str, tuple[str, tuple[int, ...]]]):
    def classify(name: str, shape: tuple[int, ...], dtype: str):
        reason = tf_skip_reason(name, expected)
        if reason is None or name == _TF_OBJECT_GRAPH:
            return reason, None
        if _TF_NON_MODEL.match(name):
            if tuple(shape) != ():
                return reason, f"mis-shaped: {name} is {list(shape)}, expected a scalar"
            return reason, None
        var = parse_tf_slot(name, expected).variable
        want = tuple(expected[var][1])
        if tuple(shape) != want:
            return reason, (f"mis-shaped slot: {name} is {list(shape)}, but its variable "
                            f"{var} is {list(want)}")
        if dtype not in FLOAT_DTYPES:
            return reason, f"wrong dtype: {name} is {dtype}, expected float32"
        return reason, None
    return classify


def tf_expected_shapes() -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{TF name: (flax path, shape in the TF checkpoint)}`` for the 257 variables."""
    shapes = _flax_shapes()
    out = {}
    for name, entry in tf_name_table().items():
        shape = shapes[entry.path]
        out[name] = (entry.path, (1, 1, 1) + shape if entry.squeeze_bias else shape)
    return out


def tf_tensors_to_flax(tensors: Mapping[str, np.ndarray], source: str = "<tensors>"):
    """Converts in-memory TF-named tensors (e.g. read with ``tf_bundle.read_bundle``).

    Args:
      tensors: ``{original TF variable name: array}``; optimizer slots, moving
        averages and step counters allowed (see ``tf_to_flax``).
      source: name for messages and the report.

    Returns:
      ``(variables, ConversionReport)``; the report keeps the slots and counters.

    Raises:
      ConversionError: missing, unexpected, mis-shaped or non-float entries.
    """
    found = {k: (tuple(np.shape(v)), np.asarray(v).dtype.name) for k, v in tensors.items()}
    return _tf_convert(source, found, lambda names: {n: tensors[n] for n in names})


def _tf_convert(source: str, found, read):
    expected = tf_expected_shapes()
    table = tf_name_table()
    skipped = _validate(source, found, expected, _tf_classify(expected))
    slots = {n: parse_tf_slot(n, table) for n in skipped}
    slots = {n: s for n, s in slots.items() if s is not None}
    owners: dict[tuple[str, str], str] = {}
    problems = []
    for name, slot in sorted(slots.items()):
        key = (slot.variable, slot.slot)
        if key in owners:  # e.g. 'train/<var>/Adam' beside '<var>/Adam'
            problems.append(f"two {slot.slot} slots for {slot.variable}: {owners[key]} "
                            f"and {name}")
        owners[key] = name
    if problems:
        raise ConversionError(source, problems)
    scalars = sorted(n for n in skipped if _TF_NON_MODEL.match(n))
    values = read(sorted(expected) + sorted(slots) + scalars)
    arrays, report = {}, ConversionReport(source, "tf", skipped=skipped)
    for name, entry in table.items():
        arr = _to_float32(values[name])
        _check_unfilled(source, arrays, entry.path, name)
        arrays[entry.path] = arr.reshape(-1) if entry.squeeze_bias else arr
        report.converted[name] = entry.path
    variables = _assemble(source, arrays)
    report.parameter_count = int(sum(a.size for a in arrays.values()))
    for name, slot in sorted(slots.items()):
        entry = table[slot.variable]
        arr = _to_float32(values[name])
        report.slots[(entry.path, slot.slot)] = arr.reshape(-1) if entry.squeeze_bias else arr
    steps = []
    for name in scalars:
        value = np.asarray(values[name])
        if name.rpartition("/")[2] == "global_step":
            steps.append(int(value))
        report.optimizer_scalars[name] = value.item()
    report.global_step = steps[0] if len(steps) == 1 else None
    return variables, report


# Adam's slot pairs (m, v) as TF names them: the default optimizer name, the original's
ADAM_SLOT_PAIRS = (("Adam", "Adam_1"), ("Adam_optimizer", "Adam_optimizer_1"))


def tf_optimizer_state(report: ConversionReport) -> tuple[dict, dict]:
    """The TF checkpoint's Adam state, for ``save_checkpoint(..., optimizer=)``.

    The original's ``train.py`` builds ``tf.train.AdamOptimizer(name='Adam_optimizer')``
    after the model and saves every variable, so its checkpoints hold Adam's ``m``
    (``train/<var>/Adam_optimizer``), ``v`` (``..._1``) and ``train/beta{1,2}_power``; its
    ``load_model`` restores them with the weights. This keeps them, in the Flax layout.

    Args:
      report: a TF conversion's report (``slots``, ``optimizer_scalars``).

    Returns:
      ``(tree, info)``: ``tree`` = ``{"mu": {"params": ...}, "nu": {"params": ...},
      "beta1_power", "beta2_power", "count"}`` (``count``: Adam updates taken, from the
      powers, ``deepliflow_jax.train.tf_adam.steps_from_powers``); ``info`` = JSON
      metadata (``"kind": "tf1_adam"``, the betas and epsilon the original uses, the slot
      names, ``adam_steps``, ``global_step``).

    Raises:
      ConversionError: not a TF report, no or ambiguous Adam slots (every model variable
        needs one m and one v slot of one optimizer), or not exactly one
        ``beta1_power`` and one ``beta2_power``.
    """
    from deepliflow_jax.train.tf_adam import TF1_BETA1, TF1_BETA2, TF1_EPSILON, steps_from_powers

    if report.format != "tf":
        raise ConversionError(report.source, [
            "an optimizer state is kept from TF training checkpoints only (the original's "
            f"Adam slots); this is a {report.format} checkpoint"])
    paths = sorted(report.converted.values())
    names = {slot for _, slot in report.slots}
    pairs = [p for p in ADAM_SLOT_PAIRS if p[0] in names or p[1] in names]
    problems = []
    if len(pairs) != 1:
        pair_names = " or ".join("/".join(p) for p in ADAM_SLOT_PAIRS)
        problems.append(f"need the Adam slots (m/v) of one optimizer, {pair_names}, for the "
                        f"optimizer state; found slots {sorted(names) or 'none'}")
    else:
        for path in paths:
            problems += [f"missing slot {slot} of {path}" for slot in pairs[0]
                         if (path, slot) not in report.slots]
    powers = {}
    for which in ("beta1_power", "beta2_power"):
        found = sorted(n for n in report.optimizer_scalars
                       if re.fullmatch(rf"(.*/)?{which}", n))
        if len(found) != 1:
            problems.append(f"need exactly one {which} for the optimizer state, found "
                            f"{found or 'none'}")
        else:
            powers[which] = report.optimizer_scalars[found[0]]
    if problems:
        raise ConversionError(report.source, problems[:10] + (
            [f"... and {len(problems) - 10} more"] if len(problems) > 10 else []))
    try:
        steps = steps_from_powers(powers["beta1_power"], powers["beta2_power"])
    except ValueError as err:
        raise ConversionError(report.source, [str(err)]) from err

    def moments(slot: str) -> dict:
        flat = {tuple(p.split("/")): report.slots[(p, slot)] for p in paths}
        return {"params": flax.traverse_util.unflatten_dict(flat)}

    tree = {"mu": moments(pairs[0][0]), "nu": moments(pairs[0][1]),
            "beta1_power": np.float32(powers["beta1_power"]),
            "beta2_power": np.float32(powers["beta2_power"]), "count": np.int64(steps)}
    info = {"kind": "tf1_adam", "beta1": TF1_BETA1, "beta2": TF1_BETA2, "epsilon": TF1_EPSILON,
            "slots": {"m": pairs[0][0], "v": pairs[0][1]}, "adam_steps": steps,
            "beta1_power": float(powers["beta1_power"]),
            "beta2_power": float(powers["beta2_power"]), "global_step": report.global_step}
    return tree, info


def tf_to_flax(prefix: PathLike, verify_crc: bool = True):
    """Converts an original TF release checkpoint (tensor bundle) to Flax variables.

    Only the index is read before validation. Besides the 257 model variables, a
    training checkpoint may hold optimizer slots and moving-average shadows of
    them under any outer scope (``[<scopes>/]<var>/<slot>``, ``<slot>`` one of
    ``TF_SLOTS`` or a uniquified ``_N`` form, of the variable's shape) and the
    scalars ``beta1_power``, ``beta2_power``, ``global_step`` (any scope): these
    are skipped, reported and kept in the report (``slots``, ``global_step``).
    The original release names its Adam slots
    ``train/<var>/Adam_optimizer{,_1}`` and its counters ``train/global_step``,
    ``train/beta{1,2}_power`` (``train.py``). Partitioned variables and their slots,
    saved by ``tf.train.Saver`` as slices along any axis, are reassembled once the
    reader has checked that their slices tile the full shape exactly.

    Args:
      prefix: checkpoint prefix (``PREFIX.index`` + ``PREFIX.data-*``), its
        ``.index`` file, or a folder holding one checkpoint.
      verify_crc: check the CRC-32C of every tensor read.

    Returns:
      ``(variables, ConversionReport)``.

    Raises:
      FileNotFoundError: index or data file missing.
      ValueError: unreadable/corrupted files (``ConversionError`` for a checkpoint
        that does not fit the model, e.g. an entry tied to no model variable or a
        slot whose shape is not its variable's, and for index entries the reader
        cannot decode: a key neither UTF-8 nor TF's slice encoding, or partitioned
        variable slices that overlap, leave a gap or exceed the shape; each problem
        names its entry).
    """
    path = Path(prefix)
    if path.is_file() and path.suffix in TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,):
        raise ValueError(f"{path} looks like a PyTorch file; use --format=torch")
    try:
        bundle = tf_bundle.read_index(prefix)
    except tf_bundle.BundleError as err:  # entries the reader cannot decode or reassemble
        raise ConversionError(str(err.checkpoint), err.problems) from err
    source = str(bundle.prefix)
    found = {}
    for name, e in bundle.entries.items():
        found[name] = (e.shape, e.dtype_name)
    return _tf_convert(source, found,
                       lambda names: tf_bundle.read_tensors(bundle, names, verify_crc))


def flax_to_tf_tensors(variables: dict) -> dict[str, np.ndarray]:
    """Flax variables -> ``{original TF variable name: float32 array}`` (257 entries)."""
    from deepliflow_jax.checkpoint import check_variables

    check_variables(variables)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables)["params"], sep="/")
    out = {}
    for name, entry in tf_name_table().items():
        arr = np.asarray(flat[entry.path], np.float32)
        out[name] = arr.reshape(1, 1, 1, -1) if entry.squeeze_bias else arr
    return out


# ----------------------------------------------------------------------------- PyTorch

def torch_expected_shapes() -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{PyTorch key: (flax path, shape in the state dict)}`` for the 257 tensors."""
    shapes = _flax_shapes()
    out = {}
    for key, entry in torch_name_table().items():
        shape = shapes[entry.path]
        out[key] = (entry.path, tuple(shape[i] for i in FLAX_TO_PT) if entry.is_kernel else shape)
    return out


# key prefixes of module wrappers: DataParallel / DistributedDataParallel, torch.compile
TORCH_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip_wrappers(state: Mapping[str, object]) -> tuple[dict, list[str]]:
    """Removes any stack of wrapper prefixes shared by every key (``module._orig_mod.``)."""
    state, removed = dict(state), []
    while state:
        prefix = next((p for p in TORCH_WRAPPER_PREFIXES if all(k.startswith(p) for k in state)),
                      None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
        removed.append(prefix)
    return state, removed


def _strip_torch_prefixes(state: Mapping[str, object], table: Mapping[str, object]
                          ) -> tuple[dict, list[str]]:
    """Removes wrapper prefixes, then a model name shared by every key (``model.``, ``net.``).

    The model name is removed only when what remains (after any further wrapper
    prefixes) is exactly the table's key set; otherwise the keys are left as they
    are, for the validation to refuse by name.
    """
    state, wrappers = _strip_wrappers(state)
    notes = []
    if wrappers:
        notes.append(f"removed wrapper prefix {''.join(wrappers)!r} from every key")
    heads = {k.partition(".")[0] for k in state}
    if set(state) != set(table) and len(heads) == 1 and all("." in k for k in state):
        head = heads.pop() + "."
        inner, more = _strip_wrappers({k[len(head):]: v for k, v in state.items()})
        if set(inner) == set(table):
            state = inner
            notes.append(f"removed model name {head + ''.join(more)!r} from every key "
                         "(the rest is exactly the name table)")
    return state, notes


def torch_state_dict_to_flax(state_dict: Mapping[str, object], source: str = "<state_dict>"):
    """Converts a "PyTorch DeepLiDARFlow" state dict (numpy arrays or torch tensors).

    Args:
      state_dict: ``{key: array}`` in the layout of ``NAMING.md``. Any stack of
        wrapper prefixes on every key (``module.`` from DataParallel/DDP,
        ``_orig_mod.`` from torch.compile, e.g. ``module._orig_mod.``) is removed;
        then one leading name shared by every key (``model.``, ``net.``: a training
        framework's module attribute) is removed when the rest is exactly the name
        table. Both are noted in the report.
      source: name for messages and the report.

    Returns:
      ``(variables, ConversionReport)``.

    Raises:
      ConversionError: missing, unexpected, mis-shaped or non-float entries.
    """
    table = torch_name_table()
    state, notes = _strip_torch_prefixes(state_dict, table)
    arrays_in = {k: _as_numpy(v, source, k) for k, v in state.items()}
    found = {k: (tuple(v.shape), v.dtype.name) for k, v in arrays_in.items()}
    expected = torch_expected_shapes()
    skipped = _validate(source, found, expected, lambda n, shape, dtype: (None, None))
    arrays, report = {}, ConversionReport(source, "torch", skipped=skipped, notes=notes)
    for key, entry in table.items():
        arr = _to_float32(arrays_in[key])
        _check_unfilled(source, arrays, entry.path, key)
        arrays[entry.path] = arr.transpose(PT_TO_FLAX) if entry.is_kernel else arr
        report.converted[key] = entry.path
    variables = _assemble(source, arrays)
    report.parameter_count = int(sum(a.size for a in arrays.values()))
    return variables, report


def flax_to_torch_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """Flax variables -> "PyTorch DeepLiDARFlow" state dict of float32 numpy arrays.

    Load it with ``model.load_state_dict({k: torch.from_numpy(v) ...})``.
    """
    from deepliflow_jax.checkpoint import check_variables

    check_variables(variables)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables)["params"], sep="/")
    out = {}
    for key, entry in torch_name_table().items():
        arr = np.asarray(flat[entry.path], np.float32)
        out[key] = np.array(arr.transpose(FLAX_TO_PT) if entry.is_kernel else arr, order="C")
    return out


def _as_numpy(value, source: str, key: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()  # numpy has no bfloat16; the upcast is exact
        return t.numpy()
    if np.isscalar(value) or isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise ValueError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")


# weights_only checkpoints often wrap the state dict together with training state
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
# numpy type codes whose dtypes a training checkpoint may pickle: bool, ints, floats, complex
_NUMPY_CODES = "?bhilqBHILQefdgFDG"


def numpy_safe_globals() -> list:
    """The allow-list of numpy reconstructors for ``torch.load(..., weights_only=True)``.

    numpy scalars (``np.float64(2.1)``, ``np.int64(3)``: ``multiarray.scalar``) and
    numeric arrays (``multiarray._reconstruct``, ``ndarray``), with their dtypes
    (``np.dtype`` and the numeric dtype classes, not object, string or structured
    ones), under numpy 2's ``numpy._core`` and numpy 1's ``numpy.core`` module names.
    Used scoped (``torch.serialization.safe_globals``), never added globally.

    Returns:
      A list for ``torch.serialization.safe_globals``: classes/functions and
      ``(function, qualified name)`` pairs.
    """
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover (numpy 1)
        from numpy.core import multiarray
    out: list = [np.dtype, np.ndarray]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        out += [(multiarray.scalar, f"{module}.scalar"),
                (multiarray._reconstruct, f"{module}._reconstruct")]
    for cls in dict.fromkeys(type(np.dtype(c)) for c in _NUMPY_CODES):
        if cls is not np.dtype:  # numpy < 1.25 has no per-dtype classes
            out.append(cls)
    return out


_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global|but got <class '([^']+)'>")


def _disallowed_globals(torch, path: Path, err: Exception) -> list[str]:
    """The globals that made a weights-only load fail (all of them where torch can list them)."""
    names = {a or b for a, b in _UNSAFE_GLOBAL.findall(str(err))}
    if names:
        try:  # zip checkpoints: every global the pickle refers to, not only the first
            names |= set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 (legacy files: the error's name is what we have)
            pass
    return sorted(names)


def load_torch_file(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads a PyTorch weights file without unpickling arbitrary objects.

    ``.safetensors`` is read with ``safetensors``; ``.pt``/``.pth``/``.bin`` with
    ``torch.load(..., weights_only=True)`` and, scoped to that call, the numpy
    scalar/array/dtype reconstructors of ``numpy_safe_globals`` (training
    checkpoints keep ``np.float64`` metrics beside the weights). A training
    checkpoint dict with a ``state_dict``/``model_state_dict``/``model`` entry
    yields that entry; its other items are reported as skipped.

    Args:
      path: the file.

    Returns:
      ``({key: numpy array}, {skipped item: reason})``.

    Raises:
      FileNotFoundError: missing file.
      ValueError: unknown suffix, a TF checkpoint, a file holding objects outside
        the allow-list (named in the message), or an unreadable/corrupted file.
    """
    path = Path(path)
    if path.is_dir() or path.name.endswith((".index", ".meta")) or ".data-" in path.name \
            or Path(str(path) + ".index").is_file():
        raise ValueError(f"{path} looks like a TF checkpoint; use --format=tf")
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch weights file not found: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(path), {}
    if path.suffix not in TORCH_SUFFIXES:
        raise ValueError(f"{path}: unknown PyTorch weights suffix {path.suffix!r}; expected "
                         f"{', '.join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))}")
    try:
        import torch
    except ImportError as err:
        raise ValueError(f"reading {path} needs PyTorch: pip install 'deepliflow_jax[torch]'"
                         ) from err
    with torch.serialization.safe_globals(numpy_safe_globals()):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            names = _disallowed_globals(torch, path, err)
            if names:
                raise ValueError(
                    f"{path} holds objects that are not allowed in a weights-only load: "
                    f"{', '.join(names)} (only tensors, Python containers and scalars, and "
                    "numpy scalars/arrays are read; nothing else is unpickled)") from err
            raise ValueError(f"unreadable PyTorch file {path} (corrupted, truncated, or not a "
                             f"PyTorch checkpoint): {type(err).__name__}: {err}") from err
        except Exception as err:  # zip, EOF and torch errors: a damaged file
            raise ValueError(f"unreadable PyTorch file {path} (corrupted, truncated, or not a "
                             f"PyTorch checkpoint): {type(err).__name__}: {err}") from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    skipped = {}
    for key in _STATE_DICT_KEYS:
        if isinstance(obj.get(key), Mapping):
            skipped = {f"{k}": "training checkpoint item" for k in obj if k != key}
            obj = obj[key]
            break
    return {k: _as_numpy(v, str(path), k) for k, v in obj.items()}, skipped


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        # torch framework when available: numpy cannot hold bfloat16 tensors
        try:
            import torch  # noqa: F401

            framework = "pt"
        except ImportError:
            framework = "np"
        with safe_open(str(path), framework=framework) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                out[key] = _as_numpy(f.get_tensor(key), str(path), key)
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise ValueError(f"unreadable safetensors file {path} (corrupted or truncated?): "
                         f"{err}") from err
    return out


def torch_to_flax(path: PathLike):
    """Converts a PyTorch weights file (``.pt``/``.pth``/``.safetensors``).

    Returns:
      ``(variables, ConversionReport)``.

    Raises:
      FileNotFoundError, ValueError: see ``load_torch_file``; ``ConversionError``.
    """
    state, extra = load_torch_file(path)
    variables, report = torch_state_dict_to_flax(state, source=str(Path(path)))
    report.skipped.update(extra)
    return variables, report


def _atomic_write(path: Path, overwrite: bool, write) -> Path:
    path = path.absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {path} already exists; pass --overwrite to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a folder; name a .pt/.pth/.safetensors file")
    return fileio.write_with(path, write)  # the old file or the complete new one, always


def save_torch_file(state_dict: Mapping[str, np.ndarray], path: PathLike,
                    overwrite: bool = False, metadata: Mapping[str, str] | None = None) -> Path:
    """Writes a state dict as ``.safetensors`` or ``.pt``/``.pth`` (atomically).

    Args:
      state_dict: ``{key: numpy array}`` (e.g. ``flax_to_torch_state_dict``).
      path: output file; the suffix picks the format.
      overwrite: replace an existing file.
      metadata: string metadata (safetensors header only).

    Returns:
      The absolute path.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      ValueError: unknown suffix.
    """
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.numpy import save_file

        def write(tmp):
            save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp,
                      metadata=dict(metadata or {}))
    elif path.suffix in TORCH_SUFFIXES:
        import torch

        def write(tmp):
            torch.save({k: torch.from_numpy(np.ascontiguousarray(v))
                        for k, v in state_dict.items()}, tmp)
    else:
        raise ValueError(f"{path}: output suffix must be one of "
                         f"{', '.join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))}")
    return _atomic_write(path, overwrite, write)


# ----------------------------------------------------------------------------- end to end

def convert_checkpoint(fmt: str, input_path: PathLike, output_dir: PathLike,
                       overwrite: bool = False, verify_crc: bool = True,
                       with_optimizer_state: bool = False) -> ConversionReport:
    """Converts a TF or PyTorch checkpoint into an Orbax checkpoint directory.

    Args:
      fmt: ``'tf'`` or ``'torch'``.
      input_path: TF checkpoint prefix, or PyTorch ``.pt``/``.pth``/``.safetensors``.
      output_dir: the checkpoint directory to create (see ``deepliflow_jax.checkpoint``).
      overwrite: replace an existing output.
      verify_crc: TF only: check tensor checksums.
      with_optimizer_state: TF only: also keep the Adam state (slots m and v, the beta
        powers; see ``tf_optimizer_state``) in the checkpoint (``DIR/optimizer``,
        described in the metadata's ``"optimizer"``), so that fine-tuning continues the
        original's Adam (``deepliflow_jax.checkpoint.load_optimizer_state``).

    Returns:
      The ``ConversionReport``.

    Raises:
      ValueError: unknown format, or any conversion problem (nothing is written;
        ``ConversionError`` lists every missing, unexpected, mis-shaped or
        non-float entry; with ``with_optimizer_state``, a PyTorch input or missing
        Adam slots or beta powers).
      FileNotFoundError: missing input.
      FileExistsError: output exists and ``overwrite`` is False, or it is not a
        checkpoint ("refusing to overwrite DIR: it is not a deepliflow_jax checkpoint
        (holds ...); remove it or choose another path"), checked before reading the
        input.

    Example:
      A TF checkpoint in the original release's naming, written here from random
      weights with this package's own tensor-bundle writer, converted and loaded:

      >>> import tempfile
      >>> from pathlib import Path
      >>> from deepliflow_jax.checkpoint import load_checkpoint
      >>> from deepliflow_jax.model.build import init_params
      >>> from weights_convert import tf_bundle
      >>> from weights_convert.convert import flax_to_tf_tensors
      >>> tmp = tempfile.TemporaryDirectory()
      >>> root = Path(tmp.name)
      >>> prefix = tf_bundle.write_bundle(root / "model.ckpt", flax_to_tf_tensors(init_params(0)))
      >>> report = convert_checkpoint("tf", prefix, root / "converted")
      >>> print(report.summary())
      converted 257 tensors (8,296,404 parameters) from tf checkpoint .../model.ckpt
      >>> sorted(load_checkpoint(root / "converted")["params"])[:2]
      ['context_network', 'guidance_network']
      >>> convert_checkpoint("onnx", prefix, root / "other")
      Traceback (most recent call last):
      ...
      ValueError: format must be one of ('tf', 'torch'), got 'onnx'
      >>> tmp.cleanup()
    """
    from deepliflow_jax.checkpoint import check_save_target, save_checkpoint

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if with_optimizer_state and fmt != "tf":
        raise ValueError("--with_optimizer_state keeps a TF training checkpoint's Adam slots; "
                         f"a {fmt} weights file holds none")
    out = Path(output_dir)
    check_save_target(out, overwrite)  # fail before reading a large input (also: not ours)
    if fmt == "tf":
        variables, report = tf_to_flax(input_path, verify_crc=verify_crc)
    else:
        variables, report = torch_to_flax(input_path)
    optimizer = info = None
    if with_optimizer_state:
        optimizer, info = tf_optimizer_state(report)
        report.notes.append(
            f"kept the Adam state: m and v ({info['slots']['m']}, {info['slots']['v']}) of "
            f"{len(report.converted)} tensors, {info['adam_steps']} Adam steps (beta powers)")
    meta = report.metadata()
    if info is not None:
        meta["optimizer"] = info
    save_checkpoint(out, variables, meta, overwrite=overwrite, optimizer=optimizer)
    return report


def export_torch(checkpoint_dir: PathLike, output_path: PathLike,
                 overwrite: bool = False) -> Path:
    """Writes an Orbax checkpoint directory as a PyTorch state dict file.

    Args:
      checkpoint_dir: from ``convert_checkpoint`` / ``save_checkpoint``.
      output_path: ``.safetensors`` or ``.pt``/``.pth`` file.
      overwrite: replace an existing file.

    Returns:
      The absolute output path.
    """
    from deepliflow_jax.checkpoint import load_checkpoint, load_metadata

    state = flax_to_torch_state_dict(load_checkpoint(checkpoint_dir))
    meta = {k: str(v) for k, v in load_metadata(checkpoint_dir).items()
            if isinstance(v, (str, int, float))}
    meta["exported_from"] = str(Path(checkpoint_dir).absolute())
    return save_torch_file(state, output_path, overwrite=overwrite, metadata=meta)
