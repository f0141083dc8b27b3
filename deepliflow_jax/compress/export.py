"""Compact export of a pruned and/or quantized model, and loading it back.

One file: an 8-byte magic, the length of a JSON manifest, the manifest, then one
byte blob with, per leaf:

* quantized leaves: integer codes bit-packed at exactly ``bits`` bits each, plus
  float32 scales (one per tensor or per channel) and int32 zero points. If it is
  smaller, a *sparse* form is used instead: a 1-bit-per-entry bitmask of nonzero
  codes (``np.packbits``) and the packed codes of the nonzero entries only.
* float leaves: float32, or the bitmask + nonzero float32 values when sparser.

The manifest records shapes, dtypes, bit widths, layout, each array's offset in
the blob and the :class:`QuantConfig`; there is no per-array container overhead,
so the size on disk is the encoding's own. Encoding and decoding run in numpy
with exactly the float32 operations of
:func:`~deepliflow_jax.compress.quantize.encode` / ``decode`` (fast on a whole
network, no compiles), so :func:`load_compressed` returns params equal to
``tx.forward(params, opt_state)`` bit for bit.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.compress.prune import _check_masks
from deepliflow_jax.compress.quantize import QuantConfig, check_bits, qrange
from deepliflow_jax.compress.select import flatten, unflatten
from deepliflow_jax.fileio import atomic_write

FORMAT_VERSION = 1
MAGIC = b"DLFCMP01"


def _write(path: str, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Header + manifest + blob, written atomically (``deepliflow_jax.fileio``)."""
    index, offset = {}, 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        index[name] = {"offset": offset, "dtype": a.dtype.str, "shape": list(a.shape)}
        offset += a.nbytes
    header = json.dumps({**manifest, "arrays": index}, separators=(",", ":")).encode()

    def write(f):
        f.write(MAGIC + len(header).to_bytes(8, "little") + header)
        for a in arrays.values():
            f.write(np.ascontiguousarray(a).tobytes())

    atomic_write(path, write)  # a reader never sees a half-written file


def _read(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:8] != MAGIC:
        raise ValueError(f"{path} is not a compressed export (bad magic {raw[:8]!r})")
    n = int.from_bytes(raw[8:16], "little")
    manifest = json.loads(raw[16 : 16 + n].decode())
    blob = memoryview(raw)[16 + n :]
    arrays = {}
    for name, meta in manifest.pop("arrays").items():
        dtype = np.dtype(meta["dtype"])
        count = int(np.prod(meta["shape"], dtype=np.int64))
        a = np.frombuffer(blob, dtype, count=count, offset=meta["offset"])
        arrays[name] = a.reshape(meta["shape"])
    return manifest, arrays


_CHUNK = 1 << 20  # values per packing chunk (a multiple of 8: chunks stay byte-aligned)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Packs non-negative integers ``< 2**bits`` at ``bits`` bits each (uint8 stream).

    Value ``i`` occupies bits ``[i * bits, (i + 1) * bits)`` of the stream, least
    significant bit first.
    """
    values = np.asarray(values).astype("<u4").ravel()
    out = [np.zeros(0, np.uint8)]
    for start in range(0, values.size, _CHUNK):
        chunk = values[start : start + _CHUNK]
        planes = np.unpackbits(chunk.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
        out.append(np.packbits(planes[:, :bits].ravel(), bitorder="little"))
    return np.concatenate(out)


def unpack_bits(buf: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` for ``count`` values (uint32)."""
    buf = np.asarray(buf, np.uint8)
    out = [np.zeros(0, np.uint32)]
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        first = start * bits // 8  # byte-aligned: start is a multiple of 8
        planes = np.unpackbits(buf[first : first + -(-n * bits // 8)], bitorder="little")
        planes = planes[: n * bits].reshape(n, bits)
        planes = np.pad(planes, ((0, 0), (0, 32 - bits)))
        out.append(np.packbits(planes, axis=1, bitorder="little").view("<u4").ravel())
    return np.concatenate(out).astype(np.uint32)


def _encode_leaf(x: np.ndarray, bits: int, axis: int | None, symmetric: bool):
    """Codes, scale, zero point and qmin of one leaf, in numpy.

    Mirrors :func:`compute_scale` and :func:`encode` operation for operation
    (float32 throughout, explicit reciprocals, round half to even), so the codes
    are those of the jitted forward pass; the export tests check it bit for bit.
    """
    x = np.asarray(x, np.float32)
    red = (
        None
        if axis is None or x.ndim < 2
        else tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    )
    keep = red is not None
    qmin, qmax = qrange(bits, symmetric)
    one = np.float32(1)
    if symmetric:
        amax = np.max(np.abs(x), axis=red, keepdims=keep)
        scale = np.where(amax > 0, amax * (one / np.float32(qmax)), one).astype(np.float32)
        zp = np.zeros(scale.shape, np.int32)
    else:
        lo = np.minimum(np.min(x, axis=red, keepdims=keep), np.float32(0))
        hi = np.maximum(np.max(x, axis=red, keepdims=keep), np.float32(0))
        scale = np.where(hi > lo, (hi - lo) * (one / np.float32(qmax - qmin)), one)
        scale = scale.astype(np.float32)
        zp = np.clip(np.round(-lo * (one / scale)), qmin, qmax).astype(np.int32)
    codes = np.round(x * (one / scale)) + zp.astype(np.float32)
    codes = np.clip(codes, qmin, qmax).astype(np.int32)
    return codes, scale, zp, qmin


def _decode(codes: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`decode` (int32 difference, float32 product)."""
    return (codes.astype(np.int32) - zp).astype(np.float32) * scale.astype(np.float32)


def export_compressed(
    path: str | os.PathLike,
    params: Any,
    *,
    quant: QuantConfig | None = None,
    masks: Any = None,
    bits: Any = None,
) -> dict[str, Any]:
    """Writes a compact compressed checkpoint.

    Args:
      path: output file.
      params: float parameter pytree (the master weights).
      quant: quantizer config, or None to store floats (sparse where pruned).
      masks: pruning masks, applied first (prune, then quantize).
      bits: optional per-leaf bit widths (e.g. ``get_bits(opt_state)``)
        overriding ``quant.bits`` on the selected leaves; 0 stores a leaf as
        float, as the forward pass keeps it.

    Returns:
      A report: ``bytes_on_disk``, ``float32_bytes`` (all params as float32),
      ``ratio`` (float32 / on disk), ``path`` and per-layer ``layers`` entries
      ``{"bits", "sparse", "bytes"}`` (payload bytes before zip overhead).
    """
    if masks is not None:
        _check_masks(masks, params)
        params = jax.tree.map(
            lambda p, m: np.where(np.asarray(m), np.asarray(p), np.zeros((), np.asarray(p).dtype)),
            params,
            masks,
        )
    flat = flatten(params)
    flat_bits = flatten(bits) if bits is not None else {}
    arrays: dict[str, np.ndarray] = {}
    manifest: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "quant": None if quant is None else quant.to_dict(),
        "leaves": [],
    }
    layers = {}
    float32_bytes = 0
    for i, (name, leaf) in enumerate(flat.items()):
        x = np.asarray(leaf)
        float32_bytes += 4 * x.size
        entry: dict[str, Any] = {"path": name, "shape": list(x.shape), "dtype": str(x.dtype)}
        key = f"leaf{i}"
        b = int(flat_bits.get(name, quant.bits)) if quant is not None else 0
        if quant is not None and quant.selected(name) and b:  # width 0: float leaf
            b = check_bits(b)
            axis = quant.axis_for(name, x.ndim)
            codes, scale, zp, qmin = _encode_leaf(x, b, axis, quant.symmetric)
            nonzero = (codes != zp).ravel()
            unsigned = (codes - qmin).ravel()
            sparse = x.size + int(nonzero.sum()) * b < x.size * b
            if sparse:
                arrays[f"{key}.nonzero"] = np.packbits(nonzero, bitorder="little")
                unsigned = unsigned[nonzero]
            arrays[f"{key}.codes"] = pack_bits(unsigned, b)
            arrays[f"{key}.scale"] = scale
            arrays[f"{key}.zero_point"] = zp
            entry.update(kind="quant", bits=b, qmin=int(qmin), sparse=bool(sparse))
        else:
            values = np.asarray(x, np.float32).ravel()
            nonzero = values != 0
            sparse = x.size + 32 * int(nonzero.sum()) < 32 * x.size
            if sparse:
                arrays[f"{key}.nonzero"] = np.packbits(nonzero, bitorder="little")
                values = values[nonzero]
            arrays[f"{key}.values"] = values
            entry.update(kind="float", bits=32, sparse=bool(sparse))
        layers[name] = {
            "bits": entry["bits"],
            "sparse": entry["sparse"],
            "bytes": sum(a.nbytes for k, a in arrays.items() if k.startswith(key + ".")),
        }
        manifest["leaves"].append(entry)
    path = os.fspath(path)
    _write(path, manifest, arrays)
    on_disk = os.path.getsize(path)
    return {
        "path": path,
        "bytes_on_disk": on_disk,
        "float32_bytes": float32_bytes,
        "ratio": float32_bytes / on_disk,
        "layers": layers,
    }


def load_compressed(path: str | os.PathLike) -> Any:
    """Loads :func:`export_compressed` output as dequantized float params (nested dicts)."""
    manifest, data = _read(os.fspath(path))
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported export format version {manifest.get('version')}")
    flat = {}
    for i, entry in enumerate(manifest["leaves"]):
        key = f"leaf{i}"
        shape = tuple(entry["shape"])
        size = int(np.prod(shape, dtype=np.int64))
        nonzero = None
        if entry["sparse"]:
            nonzero = np.unpackbits(data[f"{key}.nonzero"], count=size, bitorder="little")
            nonzero = nonzero.astype(bool)
        if entry["kind"] == "quant":
            zp = data[f"{key}.zero_point"]
            count = size if nonzero is None else int(nonzero.sum())
            unsigned = unpack_bits(data[f"{key}.codes"], entry["bits"], count)
            stored = unsigned.astype(np.int64) + entry["qmin"]
            if nonzero is None:
                codes = stored
            else:
                # Absent entries hold the zero point's code (value 0.0).
                codes = np.broadcast_to(zp, shape).astype(np.int64).ravel().copy()
                codes[nonzero] = stored
            value = _decode(codes.reshape(shape), data[f"{key}.scale"], zp)
        else:
            values = data[f"{key}.values"]
            if nonzero is not None:
                full = np.zeros(size, np.float32)
                full[nonzero] = values
                values = full
            value = values.reshape(shape)
        flat[entry["path"]] = jnp.asarray(value.astype(entry["dtype"]))
    return unflatten(flat)


def export_size_report(params: Any, report: dict[str, Any]) -> str:
    """One-line human summary of an export report."""
    n = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    return (
        f"{n} params: {report['bytes_on_disk']} B on disk vs {report['float32_bytes']} B "
        f"float32 ({report['ratio']:.2f}x smaller)"
    )
