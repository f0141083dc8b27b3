"""Packed encoding of a pruned and/or quantized model (the ``packed`` checkpoint kind).

:func:`pack_params` turns float parameters, pruning masks and a quantizer config
into plain arrays that a standard container stores (``deepliflow_jax.checkpoint``
writes them with Orbax); :func:`unpack_params` turns them back into the float
parameters the forward pass uses. Per leaf, under its ``/``-joined path:

* quantized leaves (``encoding: "codes"``): ``codes``, the integer codes in the
  smallest integer dtype that holds them (int8 for symmetric codes of up to 8
  bits, uint8 for affine ones, int16/uint16 up to 16 bits), ``scale`` (float32,
  one per tensor or per channel, broadcastable against the leaf) and, for
  affine (asymmetric) codes only, ``zero_point`` (int32, same shape; symmetric
  codes have zero point 0); the value is ``(codes - zero_point) * scale``.
  When it takes fewer bits (``size + nonzero * bits < size * bits``), the
  *sparse* form stores only the codes that differ from the zero point
  (``codes``, 1-D) and ``nonzero``, a 1-bit-per-entry mask (``np.packbits``,
  little bit order, row-major).
* float leaves (``encoding: "float"``: unselected leaves, width 0, or no
  quantizer): ``values`` (float32), or the ``nonzero`` mask + the nonzero values
  when sparser (``size + 32 * nonzero < 32 * size``).

An all-zero sparse leaf stores no ``codes``/``values`` (containers refuse empty
arrays). The *layout* (a JSON-ready dict: the quantizer config and, per leaf,
shape, dtype, encoding, bits, sparse, nonzero count, scale shape) says how to
read them; the checkpoint keeps it in its JSON metadata (``"packing"``).

Codes are whole bytes, not bit-packed: containers (Orbax's zstd) entropy-code
them, which leaves fewer bits than ``bits`` when the codes are not uniform.
Encoding and decoding run the quantizer's one arithmetic (:mod:`.codec`) in numpy
(fast on a whole network, no compiles), so the unpacked params equal
``tx.forward(params, opt_state)`` bit for bit.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from deepliflow_jax.compress.codec import decode, encode_tensor
from deepliflow_jax.compress.prune import _check_masks
from deepliflow_jax.compress.quantize import QuantConfig, check_bits
from deepliflow_jax.compress.select import flatten, unflatten

PACKED_VERSION = 1
ENCODINGS = ("codes", "float")


def code_dtype(bits: int, symmetric: bool) -> np.dtype:
    """The smallest integer dtype holding ``bits``-bit codes (signed when symmetric)."""
    if symmetric:
        return np.dtype(np.int8 if bits <= 8 else np.int16)
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


def pack_params(
    params: Any,
    *,
    quant: QuantConfig | None = None,
    masks: Any = None,
    bits: Any = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Packed arrays and their layout for a pruned and/or quantized model.

    Args:
      params: float parameter pytree of nested dicts (the master weights), e.g.
        ``{'params': ...}``.
      quant: quantizer config, or None to store floats (sparse where pruned); per
        channel, the scales run over each leaf's ``quant.axis_for`` (its output channels).
      masks: boolean pruning masks (same tree), applied first (prune, then quantize).
      bits: optional per-leaf bit widths (e.g. ``get_bits(opt_state)``)
        overriding ``quant.bits`` on the selected leaves; 0 stores a leaf as
        float, as the forward pass keeps it.

    Returns:
      ``(arrays, layout)``: ``arrays`` maps ``"<leaf path>/<codes|scale|
      zero_point|nonzero|values>"`` to numpy arrays (see the module docstring);
      ``layout`` is ``{"version", "quant": config dict or None, "leaves": {leaf
      path: {"shape", "dtype", "encoding", "bits", "sparse", "nonzero"} (+
      "scale_shape" for codes)}}``.

    Raises:
      ValueError: masks of another structure or not boolean; a bit width outside [2, 16].
    """
    if masks is not None:
        _check_masks(masks, params)
        params = jax.tree.map(
            lambda p, m: np.where(np.asarray(m), np.asarray(p), np.zeros((), np.asarray(p).dtype)),
            params,
            masks,
        )
    flat_bits = flatten(bits) if bits is not None else {}
    arrays: dict[str, np.ndarray] = {}
    leaves: dict[str, dict[str, Any]] = {}
    for name, leaf in flatten(params).items():
        x = np.asarray(leaf)
        b = int(flat_bits.get(name, quant.bits)) if quant is not None else 0
        if quant is not None and quant.selected(name) and b:  # width 0: float leaf
            b = check_bits(b)
            codes, scale, zp = encode_tensor(x, b, axis=quant.axis_for(name, x.ndim),
                                             symmetric=quant.symmetric)
            stored = np.broadcast_to(zp, x.shape) != codes
            sparse = x.size + int(stored.sum()) * b < x.size * b
            payload = codes.astype(code_dtype(b, quant.symmetric))
            arrays[f"{name}/scale"] = scale
            if not quant.symmetric:  # symmetric zero points are 0: not stored
                arrays[f"{name}/zero_point"] = zp
            entry = {"encoding": "codes", "bits": b, "scale_shape": list(scale.shape)}
            key = "codes"
        else:
            payload = np.asarray(x, np.float32)
            stored = payload.view(np.uint32) != 0  # by bits: a -0.0 is stored, bit-exact
            sparse = x.size + 32 * int(stored.sum()) < 32 * x.size
            entry = {"encoding": "float", "bits": 32}
            key = "values"
        if sparse:
            arrays[f"{name}/nonzero"] = np.packbits(stored.ravel(), bitorder="little")
            payload = payload.ravel()[stored.ravel()]
        if payload.size:
            arrays[f"{name}/{key}"] = payload
        leaves[name] = {**entry, "shape": list(x.shape), "dtype": np.dtype(x.dtype).name,
                        "sparse": bool(sparse), "nonzero": int(stored.sum())}
    layout = {"version": PACKED_VERSION, "quant": None if quant is None else quant.to_dict(),
              "leaves": leaves}
    return arrays, layout


def packed_arrays(layout: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{array path: (shape, dtype name)}`` that ``layout`` needs (without reading them).

    Raises:
      ValueError: a malformed layout (unknown version or encoding, missing fields).
    """
    if not isinstance(layout, dict) or layout.get("version") != PACKED_VERSION:
        got = layout.get("version") if isinstance(layout, dict) else type(layout).__name__
        raise ValueError(f"unsupported packed layout version {got!r} (this version reads "
                         f"{PACKED_VERSION})")
    quant = layout.get("quant") or {}
    out = {}
    for name, e in layout["leaves"].items():
        try:
            shape, sparse, nonzero = tuple(e["shape"]), bool(e["sparse"]), int(e["nonzero"])
            encoding, bits = e["encoding"], int(e["bits"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"packed layout entry of {name} is malformed: {err!r}") from err
        if encoding not in ENCODINGS:
            raise ValueError(f"packed layout entry of {name}: unknown encoding {encoding!r} "
                             f"(known: {', '.join(ENCODINGS)})")
        size = int(np.prod(shape, dtype=np.int64))
        if sparse:
            out[f"{name}/nonzero"] = ((-(-size // 8),), "uint8")
        if encoding == "codes":
            try:
                scale_shape = tuple(e["scale_shape"])
            except (KeyError, TypeError) as err:
                raise ValueError(f"packed layout entry of {name} is malformed: {err!r}") from err
            out[f"{name}/scale"] = (scale_shape, "float32")
            symmetric = bool(quant.get("symmetric", True))
            if not symmetric:
                out[f"{name}/zero_point"] = (scale_shape, "int32")
            dtype = code_dtype(bits, symmetric).name
            count = (nonzero,) if sparse else shape
            if nonzero or not sparse:
                out[f"{name}/codes"] = (count, dtype)
        elif nonzero or not sparse:
            out[f"{name}/values"] = ((nonzero,) if sparse else shape, "float32")
    return out


def unpack_params(arrays: dict[str, Any], layout: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`pack_params`: the float params the forward pass uses.

    Args:
      arrays: ``{array path: array}`` as :func:`pack_params` returns them.
      layout: its layout.

    Returns:
      Nested dicts of numpy arrays (each leaf in its recorded dtype), equal bit
      for bit to the masked and fake-quantized params of the forward pass.

    Raises:
      ValueError: an array the layout needs is missing or mis-shaped.
    """
    need = packed_arrays(layout)
    for key, (shape, _) in need.items():
        if key not in arrays:
            raise ValueError(f"packed model lacks the array {key}")
        if tuple(np.shape(arrays[key])) != tuple(shape):
            raise ValueError(f"packed array {key} has shape {list(np.shape(arrays[key]))}, "
                             f"its layout says {list(shape)}")
    flat = {}
    for name, e in layout["leaves"].items():
        shape = tuple(e["shape"])
        size = int(np.prod(shape, dtype=np.int64))
        stored = None
        if e["sparse"]:
            stored = np.unpackbits(np.asarray(arrays[f"{name}/nonzero"], np.uint8), count=size,
                                   bitorder="little").astype(bool)
        if e["encoding"] == "codes":
            scale = np.asarray(arrays[f"{name}/scale"], np.float32)
            zp = np.asarray(arrays.get(f"{name}/zero_point", np.zeros(scale.shape, np.int32)),
                            np.int32)
            if stored is None:
                codes = np.asarray(arrays[f"{name}/codes"]).astype(np.int32)
            else:  # absent entries hold the zero point's code (value +0.0)
                codes = np.broadcast_to(zp, shape).astype(np.int32).ravel()
                if e["nonzero"]:
                    codes[stored] = np.asarray(arrays[f"{name}/codes"])
                codes = codes.reshape(shape)
            value = decode(codes, scale, zp)
        else:
            if stored is None:
                value = np.asarray(arrays[f"{name}/values"], np.float32)
            else:
                value = np.zeros(size, np.float32)
                if e["nonzero"]:
                    value[stored] = np.asarray(arrays[f"{name}/values"], np.float32)
                value = value.reshape(shape)
        flat[name] = value.astype(e["dtype"])
    return unflatten(flat)
