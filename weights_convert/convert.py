"""Checkpoint conversion: TF release / PyTorch state dict <-> Flax variables.

Pure functions; the CLI (``python -m weights_convert``) is a thin wrapper.

Every conversion goes through an explicit name table (``tf_names.tf_name_table``,
``torch_names.torch_name_table``) and is validated before any tensor is read:

* each table entry must be in the source with the expected shape and a float
  dtype (shapes come from ``jax.eval_shape`` of the model, transformed into the
  source layout);
* every source entry must be either a model tensor of the table or a known
  non-model entry (optimizer slots of a model variable such as ``<var>/Adam``,
  ``<var>/Adam_1`` or the original's ``<var>/Adam_optimizer{,_1}``; ``beta1_power``,
  ``beta2_power``, ``global_step``; for PyTorch files, non-weight items of a
  training checkpoint dict), which are reported as skipped;
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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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


class ConversionError(ValueError):
    """A source checkpoint that does not fit the model; ``problems`` lists every issue."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"cannot convert {source}: {len(problems)} problems (nothing written):"
                         "\n  " + "\n  ".join(problems))


@dataclass
class ConversionReport:
    """What a conversion did: source entries used (-> Flax path) and skipped (-> reason)."""

    source: str
    format: str
    converted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    parameter_count: int = 0

    def metadata(self) -> dict:
        """JSON-ready metadata for ``deepliflow_jax.checkpoint.save_checkpoint``."""
        return {
            "source": self.source,
            "format": self.format,
            "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "parameter_count": self.parameter_count,
            "converted_tensors": len(self.converted),
            "skipped": dict(sorted(self.skipped.items())),
        }

    def summary(self) -> str:
        """A few human-readable lines."""
        reasons: dict[str, int] = {}
        for r in self.skipped.values():
            reasons[r] = reasons.get(r, 0) + 1
        lines = [f"converted {len(self.converted)} tensors ({self.parameter_count:,} parameters) "
                 f"from {self.format} checkpoint {self.source}"]
        lines += [f"skipped {n} x {r}" for r, n in sorted(reasons.items())]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- shared core

def _flax_shapes() -> dict[str, tuple[int, ...]]:
    from deepliflow_jax.model.api import param_shapes

    flat = flax.traverse_util.flatten_dict(param_shapes()["params"], sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def _validate(source: str, found: Mapping[str, tuple[tuple[int, ...], str]],
              table: Mapping[str, tuple[str, tuple[int, ...]]], skip_reason) -> dict[str, str]:
    """Checks a source against the table; returns the skipped entries or raises.

    Args:
      source: name for messages.
      found: ``{source name: (shape, dtype name)}``.
      table: ``{source name: (flax path, expected source shape)}``.
      skip_reason: ``name -> reason or None`` for entries outside the table.
    """
    problems, skipped = [], {}
    for name in sorted(set(table) - set(found)):
        problems.append(f"missing: {name} {list(table[name][1])} (-> {table[name][0]})")
    for name in sorted(set(found) - set(table)):
        reason = skip_reason(name)
        if reason is None:
            problems.append(f"unexpected: {name} {found[name][1]}{list(found[name][0])}")
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

def tf_skip_reason(name: str, table: Mapping[str, object] | None = None) -> str | None:
    """Why a TF checkpoint entry outside the model table is skipped (None: unexpected)."""
    table = tf_name_table() if table is None else table
    if name == _TF_OBJECT_GRAPH:
        return "TF2 object graph"
    if _TF_NON_MODEL.match(name):
        return "optimizer/step counter"
    base, _, slot = name.rpartition("/")
    if base in table and slot:
        return f"optimizer slot ({slot})"
    return None


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
      tensors: ``{original TF variable name: array}``; non-model entries allowed.
      source: name for messages and the report.

    Returns:
      ``(variables, ConversionReport)``.

    Raises:
      ConversionError: missing, unexpected, mis-shaped or non-float entries.
    """
    found = {k: (tuple(np.shape(v)), np.asarray(v).dtype.name) for k, v in tensors.items()}
    return _tf_convert(source, found, lambda names: {n: tensors[n] for n in names})


def _tf_convert(source: str, found, read):
    expected = tf_expected_shapes()
    table = tf_name_table()
    skipped = _validate(source, found, expected, lambda n: tf_skip_reason(n, table))
    values = read(sorted(expected))
    arrays, report = {}, ConversionReport(source, "tf", skipped=skipped)
    for name, entry in table.items():
        arr = _to_float32(values[name])
        _check_unfilled(source, arrays, entry.path, name)
        arrays[entry.path] = arr.reshape(-1) if entry.squeeze_bias else arr
        report.converted[name] = entry.path
    variables = _assemble(source, arrays)
    report.parameter_count = int(sum(a.size for a in arrays.values()))
    return variables, report


def tf_to_flax(prefix: PathLike, verify_crc: bool = True):
    """Converts an original TF release checkpoint (tensor bundle) to Flax variables.

    Only the index is read before validation; optimizer slots are never decoded.

    Args:
      prefix: checkpoint prefix (``PREFIX.index`` + ``PREFIX.data-*``), its
        ``.index`` file, or a folder holding one checkpoint.
      verify_crc: check the CRC-32C of every model tensor.

    Returns:
      ``(variables, ConversionReport)``.

    Raises:
      FileNotFoundError: index or data file missing.
      ValueError: unreadable/corrupted files (``ConversionError`` for a checkpoint
        that does not fit the model).
    """
    path = Path(prefix)
    if path.is_file() and path.suffix in TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,):
        raise ValueError(f"{path} looks like a PyTorch file; use --format=torch")
    bundle = tf_bundle.read_index(prefix)
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


def _strip_wrappers(state: Mapping[str, object]) -> tuple[dict, str | None]:
    """Removes a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}, prefix
    return dict(state), None


def torch_state_dict_to_flax(state_dict: Mapping[str, object], source: str = "<state_dict>"):
    """Converts a "PyTorch DeepLiDARFlow" state dict (numpy arrays or torch tensors).

    Args:
      state_dict: ``{key: array}`` in the layout of ``NAMING.md``; a ``module.``
        or ``_orig_mod.`` prefix on every key is removed.
      source: name for messages and the report.

    Returns:
      ``(variables, ConversionReport)``.

    Raises:
      ConversionError: missing, unexpected, mis-shaped or non-float entries.
    """
    state, _ = _strip_wrappers(state_dict)
    arrays_in = {k: _as_numpy(v, source, k) for k, v in state.items()}
    found = {k: (tuple(v.shape), v.dtype.name) for k, v in arrays_in.items()}
    expected = torch_expected_shapes()
    skipped = _validate(source, found, expected, lambda n: None)
    table = torch_name_table()
    arrays, report = {}, ConversionReport(source, "torch", skipped=skipped)
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


def load_torch_file(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads a PyTorch weights file without unpickling arbitrary objects.

    ``.safetensors`` is read with ``safetensors.numpy``; ``.pt``/``.pth``/``.bin``
    with ``torch.load(..., weights_only=True)``. A training checkpoint dict with a
    ``state_dict``/``model_state_dict``/``model`` entry yields that entry; its other
    items are reported as skipped.

    Args:
      path: the file.

    Returns:
      ``({key: numpy array}, {skipped item: reason})``.

    Raises:
      FileNotFoundError: missing file.
      ValueError: unknown suffix, a TF checkpoint, or an unreadable/corrupted file.
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
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors: all mean an unusable file
        raise ValueError(f"unreadable PyTorch file {path} (corrupted, truncated, or not a "
                         f"weights-only checkpoint): {type(err).__name__}: {err}") from err
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
                       overwrite: bool = False, verify_crc: bool = True) -> ConversionReport:
    """Converts a TF or PyTorch checkpoint into an Orbax checkpoint directory.

    Args:
      fmt: ``'tf'`` or ``'torch'``.
      input_path: TF checkpoint prefix, or PyTorch ``.pt``/``.pth``/``.safetensors``.
      output_dir: the checkpoint directory to create (see ``deepliflow_jax.checkpoint``).
      overwrite: replace an existing output.
      verify_crc: TF only: check tensor checksums.

    Returns:
      The ``ConversionReport``.

    Raises:
      ValueError: unknown format, or any conversion problem (nothing is written;
        ``ConversionError`` lists every missing, unexpected, mis-shaped or
        non-float entry).
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
      >>> from deepliflow_jax.model.api import init_params
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
    from deepliflow_jax.checkpoint import check_output, save_checkpoint

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out = Path(output_dir)
    check_output(out, overwrite)  # fail before reading a large input (also: not ours)
    if fmt == "tf":
        variables, report = tf_to_flax(input_path, verify_crc=verify_crc)
    else:
        variables, report = torch_to_flax(input_path)
    save_checkpoint(out, variables, report.metadata(), overwrite=overwrite)
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
