"""Pure-Python reader and writer of TensorFlow's tensor-bundle checkpoint format (V2).

A checkpoint ``PREFIX`` is ``PREFIX.index`` plus ``PREFIX.data-00000-of-0000N``
(and a ``PREFIX.meta`` graph, which is not needed to read the values). No
TensorFlow is needed here:

* ``.index`` is a LevelDB-style SSTable (TF's ``tsl/lib/io/table``): data blocks
  of prefix-compressed ``(key, value)`` entries with restart points, an empty
  meta-index block, an index block mapping separator keys to data-block handles,
  and a 48-byte footer (two varint block handles, padding, magic
  ``0xdb4775248b80fb57``). Every block is followed by a compression byte (0 =
  none; TF writes bundles uncompressed) and a masked CRC-32C of block + byte.
* The entry with the empty key is a ``BundleHeaderProto`` (num_shards,
  endianness, version); every other key is a tensor name whose value is a
  ``BundleEntryProto``: dtype (1), shape (2, ``TensorShapeProto``), shard_id (3),
  offset (4), size (5), masked crc32c (6, fixed32), slices (7). Protobufs are
  decoded by hand from the wire format (varints, length-delimited, fixed32).
* ``.data-*`` files hold the raw little-endian tensor bytes at those offsets.
* Partitioned variables (``tf.train.Saver`` of a variable made with a partitioner,
  and its optimizer slots): ``BundleWriter::AddSlice`` stores a full-tensor entry
  with dtype, shape and one ``TensorSliceProto`` per slice (field 7: repeated
  ``Extent {start (1), length (2)}``; an empty extent is the whole dimension) and no
  data, plus one ordinary entry per slice under the key
  ``EncodeTensorNameSlice(name, slice)`` (``saved_tensor_slice_util.cc``):
  OrderedCode ``NumIncreasing(0)``, ``String(name)``, ``NumIncreasing(rank)``, then
  ``SignedNumIncreasing(start)``, ``SignedNumIncreasing(length)`` per dimension
  (``0, -1`` for a whole dimension). The reader decodes these keys and reassembles
  the full tensor, after checking that the slices tile its shape exactly.

The writer produces the same bytes as TF's ``BundleWriter`` for a single shard
(same block size, restart interval, separator keys, field order and alignment),
so its output is readable by TensorFlow.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from deepliflow_jax import fileio

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # 2 * (10 + 10) bytes of block handles + 8 of magic
BLOCK_TRAILER_SIZE = 5
BLOCK_SIZE = 262144  # tsl table Options defaults, which BundleWriter keeps
RESTART_INTERVAL = 16

# tensorflow/core/framework/types.proto -> numpy (little endian)
DTYPES = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
}
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
               7: "string", 9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16"}
_DTYPE_ENUM = {v.newbyteorder("<") if v.itemsize > 1 else v: k for k, v in DTYPES.items()}

PathLike = str | os.PathLike
Slice = tuple[tuple[int, int], ...]  # (start, length) per dimension
FULL_EXTENT = -1  # TF's TensorSlice::kFullExtent: the whole dimension


class BundleEntry(NamedTuple):
    """One tensor of the bundle, as its ``BundleEntryProto`` describes it."""

    name: str
    dtype: int  # TF DataType enum
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored; None if absent
    # a partitioned variable's slices, as ``(start, length)`` per dimension with
    # length ``FULL_EXTENT`` for a whole dimension; () for an ordinary tensor
    slices: tuple[Slice, ...]

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"DataType {self.dtype}")


class Bundle(NamedTuple):
    """The parsed ``.index``: header fields and the entries by name.

    ``entries`` holds one entry per tensor (for a partitioned variable, its
    full-tensor entry); ``slice_data`` the data entries of each partitioned
    variable's slices, ``{name: {slice: entry}}``.
    """

    prefix: Path
    num_shards: int
    big_endian: bool
    entries: dict[str, BundleEntry]
    slice_data: dict[str, dict[Slice, BundleEntry]]


class BundleError(ValueError):
    """Entries of a checkpoint index that cannot be decoded or do not fit together.

    Attributes:
      checkpoint: the checkpoint prefix.
      problems: one line per problem, each naming its entry (or the key's bytes).
    """

    def __init__(self, checkpoint: Path, problems: list[str]):
        self.checkpoint = checkpoint
        self.problems = list(problems)
        super().__init__(f"{checkpoint}: {len(self.problems)} undecodable or inconsistent "
                         "entries in the checkpoint index:\n  " + "\n  ".join(self.problems))


class PartitionedTensor(NamedTuple):
    """A partitioned variable as ``tf.train.Saver`` stores it, for ``write_bundle``.

    Attributes:
      shape: the full tensor's shape.
      parts: ``((slice, array), ...)`` in the order saved; ``slice`` gives
        ``(start, length)`` per dimension (``(0, FULL_EXTENT)``: the whole dimension).
    """

    shape: tuple[int, ...]
    parts: tuple[tuple[Slice, np.ndarray], ...]


# ----------------------------------------------------------------------------- CRC-32C

_CRC_POLY = 0x82F63B78  # Castagnoli, reflected
_CRC_MASK_DELTA = 0xA282EAD8


def _crc_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_CRC_POLY), t >> 1).astype(np.uint32)
    return t


_CRC_TABLE = _crc_table()
_CRC_TABLE_LIST = [int(x) for x in _CRC_TABLE]


def _crc_update(register: int, data: bytes) -> int:
    table = _CRC_TABLE_LIST
    for byte in data:
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _zeros_operator(n: int) -> list[list[int]]:
    """Byte tables of the linear map 'feed n zero bytes' on the CRC register."""
    cols = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    for _ in range(n):
        cols = _CRC_TABLE[cols & 0xFF] ^ (cols >> 8)
    values = np.arange(256)
    tables = []
    for k in range(4):
        acc = np.zeros(256, np.uint32)
        for bit in range(8):
            acc ^= np.where((values >> bit) & 1, cols[8 * k + bit], 0).astype(np.uint32)
        tables.append([int(x) for x in acc])
    return tables


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TF's ``crc32c::Value``.

    Large inputs are split into K lanes of L bytes whose registers numpy updates
    side by side (at most 1024 vectorised steps); CRC linearity then chains the
    lanes: ``reg(A + B) = Z_len(B)(reg(A)) ^ reg_0(B)`` where ``Z_n`` feeds n zero
    bytes. Tens of MB take well under a second without a C extension.

    Args:
      data: the bytes.

    Returns:
      The CRC as an unsigned 32-bit int.
    """
    buf = np.frombuffer(memoryview(data).cast("B"), np.uint8)
    n = buf.size
    if n < 65536:
        return _crc_update(0xFFFFFFFF, buf.tobytes()) ^ 0xFFFFFFFF
    lane = min(int(np.sqrt(n)) + 1, 1024)  # measured sweet spot of numpy steps vs lanes
    k = n // lane
    cols = np.ascontiguousarray(buf[: k * lane].reshape(k, lane).T)
    regs = np.zeros(k, np.uint32)
    for j in range(lane):
        regs = _CRC_TABLE[(regs ^ cols[j]) & 0xFF] ^ (regs >> 8)
    z0, z1, z2, z3 = _zeros_operator(lane)
    reg = 0xFFFFFFFF
    for r in regs.tolist():
        reg = z0[reg & 255] ^ z1[(reg >> 8) & 255] ^ z2[(reg >> 16) & 255] ^ z3[reg >> 24] ^ r
    return _crc_update(reg, buf[k * lane:].tobytes()) ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB/TF ``crc32c::Mask``: rotate right by 15 and add a constant."""
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """Inverse of ``mask_crc``."""
    rot = (masked - _CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ----------------------------------------------------------------------------- wire format

def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError(f"{where}: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"{where}: varint longer than 10 bytes")


def _put_varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1  # protobuf encodes negative int64 as 10-byte two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _proto_fields(buf: bytes, where: str):
    """Yields ``(field_number, wire_type, value)``; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ValueError(f"{where}: truncated fixed64 field {field}")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos, where)
            if pos + length > len(buf):
                raise ValueError(f"{where}: field {field} runs past the end of its message")
            value = buf[pos:pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ValueError(f"{where}: truncated fixed32 field {field}")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"{where}: unsupported protobuf wire type {wire} (field {field})")
        yield field, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_shape(buf: bytes, where: str) -> tuple[int, ...]:
    dims = []
    for field, wire, value in _proto_fields(buf, where):
        if field == 2 and wire == 2:  # repeated Dim dim
            size = 0
            for f, w, v in _proto_fields(value, where):
                if f == 1 and w == 0:
                    size = _signed64(v)
            dims.append(size)
        elif field == 3 and wire == 0 and value:
            raise ValueError(f"{where}: tensor of unknown rank")
    if any(d < 0 for d in dims):
        raise ValueError(f"{where}: negative dimension in shape {dims}")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> BundleEntry:
    dtype, shape, shard, offset, size, crc, slices = 0, (), 0, 0, 0, None, []
    where = f"entry {name!r}"
    for field, wire, value in _proto_fields(buf, where):
        if field == 1 and wire == 0:
            dtype = value
        elif field == 2 and wire == 2:
            shape = _parse_shape(value, f"shape of {where}")
        elif field == 3 and wire == 0:
            shard = value
        elif field == 4 and wire == 0:
            offset = _signed64(value)
        elif field == 5 and wire == 0:
            size = _signed64(value)
        elif field == 6 and wire == 5:
            crc = value
        elif field == 7 and wire == 2:
            slices.append(_parse_slice(value, f"slice of {where}"))
        elif field == 7:
            raise ValueError(f"{where}: field 7 (slices) has wire type {wire}, expected 2")
    return BundleEntry(name, dtype, shape, shard, offset, size, crc, tuple(slices))


# ----------------------------------------------------------------------------- slice keys

# OrderedCode (tensorflow/core/lib/strings/ordered_code.cc), the three forms slice keys use.

def _oc_num(value: int) -> bytes:
    """``WriteNumIncreasing``: a length byte, then the value big-endian without leading 0s."""
    body = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(body)]) + body


def _oc_string(text: bytes) -> bytes:
    """``WriteString``: 0x00 -> 00 ff, 0xff -> ff 00, then the separator 00 01."""
    escapes = {0x00: b"\x00\xff", 0xFF: b"\xff\x00"}
    return b"".join(escapes.get(byte, bytes([byte])) for byte in text) + b"\x00\x01"


def _oc_signed(value: int) -> bytes:
    """``WriteSignedNumIncreasing``: n bytes hold [-2^(7n-1), 2^(7n-1)), two's complement,
    the first n bits flipped (the sign bit, n - 1 length bits, a delimiter)."""
    magnitude = ~value if value < 0 else value
    n = 1
    while magnitude >= 1 << (7 * n - 1):
        n += 1
    header = ((1 << n) - 1) << (7 * n)
    return ((value % (1 << 8 * n)) ^ header).to_bytes(n, "big")


def _oc_read_num(key: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(key):
        raise ValueError(f"ends at byte {pos} where a number was expected")
    n = key[pos]
    if n > 8 or pos + 1 + n > len(key):
        raise ValueError(f"bad unsigned number at byte {pos} (length byte {n})")
    return int.from_bytes(key[pos + 1:pos + 1 + n], "big"), pos + 1 + n


def _oc_read_string(key: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    while pos + 1 < len(key):
        byte, nxt = key[pos], key[pos + 1]
        if byte == 0x00 and nxt == 0x01:
            return bytes(out), pos + 2
        if byte in (0x00, 0xFF):
            if (byte, nxt) not in ((0x00, 0xFF), (0xFF, 0x00)):
                raise ValueError(f"bad escape {bytes([byte, nxt])!r} in the name at byte {pos}")
            out.append(byte)
            pos += 2
        else:
            out.append(byte)
            pos += 1
    raise ValueError("the tensor name has no terminator (00 01)")


def _oc_read_signed(key: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(key):
        raise ValueError(f"ends at byte {pos} where a signed number was expected")
    flip = 0 if key[pos] & 0x80 else 0xFF  # negative numbers: header bits are zeros
    n = 0
    while n < 11 and pos + n // 8 < len(key) and (key[pos + n // 8] ^ flip) << (n % 8) & 0x80:
        n += 1  # the sign bit and the length bits: n ones
    body = key[pos:pos + n]
    if not 1 <= n <= 10 or len(body) < n:
        raise ValueError(f"bad signed number at byte {pos}")
    raw = int.from_bytes(body, "big") ^ (((1 << n) - 1) << (7 * n))
    value = raw - (1 << 8 * n) if flip else raw
    if not -(1 << 63) <= value < 1 << 63 or _oc_signed(value) != body:
        raise ValueError(f"bad signed number at byte {pos}")  # not TF's (minimal) encoding
    return value, pos + n


def encode_slice_key(name: str, spec: Slice) -> bytes:
    """TF's ``checkpoint::EncodeTensorNameSlice``: the bundle key of one slice's data.

    Args:
      name: the full tensor's name.
      spec: ``(start, length)`` per dimension; ``(0, FULL_EXTENT)`` for a whole one.

    Returns:
      The key: OrderedCode ``0``, ``name``, rank, then start and length of each dimension.
    """
    out = _oc_num(0) + _oc_string(name.encode("utf-8")) + _oc_num(len(spec))
    return out + b"".join(_oc_signed(start) + _oc_signed(length) for start, length in spec)


def decode_slice_key(key: bytes) -> tuple[str, Slice]:
    """TF's ``checkpoint::DecodeTensorNameSlice``, strict: the inverse of ``encode_slice_key``.

    Args:
      key: a bundle key starting with byte 0.

    Returns:
      ``(name, slice)``; a whole dimension is ``(0, FULL_EXTENT)``.

    Raises:
      ValueError: what in the key is not TF's encoding (and at which byte).
    """
    lead, pos = _oc_read_num(key, 0)
    if lead != 0:
        raise ValueError(f"leading number {lead}, expected 0")
    raw_name, pos = _oc_read_string(key, pos)
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"the tensor name {raw_name!r} is not UTF-8 text") from err
    rank, pos = _oc_read_num(key, pos)
    if rank == 0:
        raise ValueError(f"slice of {name!r} has rank 0")
    spec = []
    for d in range(rank):
        start, pos = _oc_read_signed(key, pos)
        length, pos = _oc_read_signed(key, pos)
        if length < 0 and (start, length) != (0, FULL_EXTENT):
            raise ValueError(f"slice of {name!r}: dimension {d} has start {start}, length "
                             f"{length}")
        spec.append((start, length))
    if pos != len(key):
        raise ValueError(f"{len(key) - pos} bytes after the slice of {name!r}")
    return name, tuple(spec)


def _show_key(key: bytes) -> str:
    return repr(key if len(key) <= 96 else key[:96] + b"...")


def slice_text(spec: Slice) -> str:
    """``[0:2, :]``: a slice in numpy's notation, for messages."""
    return "[" + ", ".join(":" if length == FULL_EXTENT else f"{start}:{start + length}"
                           for start, length in spec) + "]"


def _parse_slice(buf: bytes, where: str) -> Slice:
    spec = []
    for field, wire, value in _proto_fields(buf, where):
        if field != 1 or wire != 2:
            continue
        start, length = 0, None
        for f, w, v in _proto_fields(value, where):
            if f == 1 and w == 0:
                start = _signed64(v)
            elif f == 2 and w == 0:
                length = _signed64(v)
        spec.append((start, FULL_EXTENT if length is None else length))
    return tuple(spec)


def _check_partitioned(e: BundleEntry, data: dict[Slice, BundleEntry]) -> list[str]:
    """Problems of one partitioned variable: each slice inside the shape, with a data
    entry of its dtype and shape, and the slices tiling the shape exactly (TF's
    ``TensorSliceSet`` refuses overlaps; its ``QueryMeta`` refuses gaps)."""
    name, shape = e.name, e.shape
    problems, boxes = [], []
    for spec in e.slices:
        where = f"{name}: slice {slice_text(spec)}"
        if len(spec) != len(shape):
            problems.append(f"{where} has rank {len(spec)}, the tensor {list(shape)} has rank "
                            f"{len(shape)}")
            continue
        bad = [d for d, ((start, length), size) in enumerate(zip(spec, shape))
               if (start, length) != (0, FULL_EXTENT)
               and not (start >= 0 and length > 0 and start + length <= size)]
        if bad:
            problems.append(f"{where} exceeds the shape {list(shape)} (dimension {bad[0]})")
            continue
        box = tuple((0, size) if length == FULL_EXTENT else (start, start + length)
                    for (start, length), size in zip(spec, shape))
        part = data.get(spec)
        want = tuple(hi - lo for lo, hi in box)
        if part is None:
            problems.append(f"{where} is listed, but its data entry (key "
                            f"{_show_key(encode_slice_key(name, spec))}) is missing")
        elif part.dtype != e.dtype or part.shape != want or part.slices:
            problems.append(f"{where} is stored as {part.dtype_name}{list(part.shape)}"
                            f"{' with slices' if part.slices else ''}, expected "
                            f"{e.dtype_name}{list(want)}")
        for other_spec, other in boxes:
            if all(max(lo, o_lo) < min(hi, o_hi) for (lo, hi), (o_lo, o_hi) in zip(box, other)):
                problems.append(f"{where} overlaps slice {slice_text(other_spec)}")
        boxes.append((spec, box))
    for spec in data:
        if spec not in e.slices:
            problems.append(f"{name}: slice {slice_text(spec)} has a data entry, but the "
                            "tensor's entry does not list it")
    if not problems:
        covered = sum(int(np.prod([hi - lo for lo, hi in box], dtype=np.int64))
                      for _, box in boxes)
        total = int(np.prod(shape, dtype=np.int64))
        if covered != total:  # in bounds and disjoint, so fewer: a gap
            problems.append(f"{name}: its {len(boxes)} slices cover {covered} of the {total} "
                            f"elements of {list(shape)}: a gap")
    return problems


# ----------------------------------------------------------------------------- SSTable

def _read_block(data: bytes, offset: int, size: int, where: str) -> bytes:
    end = offset + size + BLOCK_TRAILER_SIZE
    if offset < 0 or size < 0 or end > len(data):
        raise ValueError(f"{where}: block at {offset} (+{size}) runs past the end of the "
                         f"file ({len(data)} bytes): truncated or corrupted")
    block = data[offset:offset + size]
    kind = data[offset + size]
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if unmask_crc(stored) != crc32c(data[offset:offset + size + 1]):
        raise ValueError(f"{where}: checksum mismatch in block at offset {offset}: corrupted")
    if kind != 0:
        raise ValueError(f"{where}: block at offset {offset} is compressed (type {kind}); "
                         "only uncompressed tables (what TF's BundleWriter writes) are supported")
    return block


def _block_entries(block: bytes, where: str):
    if len(block) < 4:
        raise ValueError(f"{where}: block of {len(block)} bytes is too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < 0:
        raise ValueError(f"{where}: bad restart array ({num_restarts} restarts)")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, where)
        unshared, pos = _varint(block, pos, where)
        vlen, pos = _varint(block, pos, where)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise ValueError(f"{where}: corrupted block entry at {pos}")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + vlen]
        pos += vlen


def _parse_handle(buf: bytes, pos: int, where: str) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, where)
    size, pos = _varint(buf, pos, where)
    return offset, size, pos


def resolve_prefix(path: PathLike) -> Path:
    """The checkpoint prefix for a prefix, a ``.index``/``.data-*``/``.meta`` file or a folder.

    A folder must hold exactly one ``*.index`` file.

    Raises:
      FileNotFoundError: no ``PREFIX.index`` found.
      ValueError: a folder with several checkpoints.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.index"))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise (FileNotFoundError if not found else ValueError)(
                f"{path}: expected one TF checkpoint (*.index) in the folder, found {what}: "
                f"{[p.name for p in found]}; pass the checkpoint prefix instead")
        path = found[0]
    name = path.name
    for suffix in (".index", ".meta"):
        if name.endswith(suffix):
            path = path.with_name(name[: -len(suffix)])
    if ".data-" in path.name:
        path = path.with_name(path.name.split(".data-")[0])
    index = path.with_name(path.name + ".index")
    if not index.is_file():
        raise FileNotFoundError(f"TF checkpoint index not found: {index} (the --input of a TF "
                                "checkpoint is its prefix, e.g. model/DeepLiDARFlow-KITTI)")
    return path


def read_index(prefix: PathLike) -> Bundle:
    """Parses ``PREFIX.index``.

    Args:
      prefix: checkpoint prefix (or its ``.index`` file, or a folder with one).

    Returns:
      The ``Bundle`` (entries keyed by tensor name, in file order = sorted; a
      partitioned variable's slices in ``slice_data``).

    Raises:
      FileNotFoundError: missing index.
      BundleError: entries that cannot be decoded (a key neither UTF-8 nor TF's slice
        encoding, a malformed entry) or a partitioned variable whose slices do not tile
        its shape exactly (overlapping, leaving a gap, outside the shape, of another
        rank, a missing or mis-shaped slice entry); every problem is listed.
      ValueError: not a tensor-bundle index, truncated, corrupted or unsupported.
    """
    prefix = resolve_prefix(prefix)
    index = prefix.with_name(prefix.name + ".index")
    data = index.read_bytes()
    where = str(index)
    if len(data) < FOOTER_SIZE:
        raise ValueError(f"{where}: {len(data)} bytes, too short for a TF checkpoint index "
                         "(truncated?)")
    magic = struct.unpack_from("<Q", data, len(data) - 8)[0]
    if magic != TABLE_MAGIC:
        raise ValueError(f"{where}: bad table magic {magic:#x}: not a TF checkpoint index "
                         "(or truncated)")
    footer = data[len(data) - FOOTER_SIZE:]
    _, _, pos = _parse_handle(footer, 0, where)  # meta-index block: unused
    index_offset, index_size, _ = _parse_handle(footer, pos, where)
    index_block = _read_block(data, index_offset, index_size, where)
    header = None
    entries: dict[str, BundleEntry] = {}
    slice_data: dict[str, dict[Slice, BundleEntry]] = {}
    problems = []
    for _, handle in _block_entries(index_block, where):
        offset, size, _ = _parse_handle(handle, 0, where)
        for key, value in _block_entries(_read_block(data, offset, size, where), where):
            if key == b"":
                header = value
                continue
            try:
                if key[0] == 0:  # TF's slice keys start with OrderedCode 0; names cannot
                    try:
                        name, spec = decode_slice_key(key)
                    except ValueError as err:
                        raise ValueError(f"slice key {_show_key(key)}: {err}") from None
                    slice_data.setdefault(name, {})[spec] = _parse_entry(
                        f"{name}{slice_text(spec)}", value)
                    continue
                try:
                    name = key.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise ValueError(f"entry key {_show_key(key)} is neither UTF-8 text ({err}) "
                                     "nor a TF slice key (those start with byte 0)") from None
                entries[name] = _parse_entry(name, value)
            except ValueError as err:  # collect all, name each entry
                problems.append(str(err))
    if header is None:
        raise ValueError(f"{where}: no bundle header entry: not a TF V2 checkpoint index")
    for name, e in entries.items():
        if e.slices:
            problems += _check_partitioned(e, slice_data.get(name, {}))
    for name in sorted(set(slice_data) - {n for n, e in entries.items() if e.slices}):
        problems.append(f"{name}: slice entries {[slice_text(s) for s in slice_data[name]]} of "
                        "a tensor whose entry is " + ("not partitioned" if name in entries
                                                      else "missing"))
    if problems:
        raise BundleError(prefix, problems)
    num_shards, big_endian = 1, False
    for field, wire, value in _proto_fields(header, f"{where}, header"):
        if field == 1 and wire == 0:
            num_shards = value
        elif field == 2 and wire == 0:
            big_endian = value == 1
    return Bundle(prefix, num_shards, big_endian, entries, slice_data)


def data_path(prefix: PathLike, shard: int, num_shards: int) -> Path:
    """``PREFIX.data-SSSSS-of-NNNNN``."""
    prefix = Path(prefix)
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")


def read_tensors(bundle: Bundle, names=None, verify_crc: bool = True) -> dict[str, np.ndarray]:
    """Reads tensors of a parsed bundle.

    Args:
      bundle: from ``read_index``.
      names: the tensors to read (default all); the others are not decoded.
      verify_crc: check each tensor's CRC-32C.

    Returns:
      ``{name: array}`` (native byte order); partitioned variables reassembled.

    Raises:
      FileNotFoundError: a data shard is missing.
      ValueError: unknown name, unsupported dtype, a size that does not match dtype
        and shape, data past the end of the shard, or a CRC mismatch (of a partitioned
        variable's slice: named ``name[start:stop, ...]``).
    """
    names = list(bundle.entries) if names is None else list(names)
    unknown = [n for n in names if n not in bundle.entries]
    if unknown:
        raise ValueError(f"{bundle.prefix}: no such tensors in the checkpoint: {unknown}")
    files: dict[int, object] = {}
    out = {}
    try:
        for name in names:
            out[name] = _read_one(bundle, bundle.entries[name], files, verify_crc)
    finally:
        for f in files.values():
            f.close()
    return out


def _read_one(bundle: Bundle, e: BundleEntry, files: dict, verify_crc: bool) -> np.ndarray:
    name = e.name
    if e.dtype not in DTYPES:
        raise ValueError(f"{bundle.prefix}: tensor {name!r} has unsupported dtype {e.dtype_name}")
    if e.slices:  # a partitioned variable: read_index checked that its slices tile it
        out = np.empty(e.shape, DTYPES[e.dtype].newbyteorder("="))
        for spec in e.slices:
            index = tuple(slice(None) if length == FULL_EXTENT else slice(start, start + length)
                          for start, length in spec)
            out[index] = _read_one(bundle, bundle.slice_data[name][spec], files, verify_crc)
        return out
    dtype = DTYPES[e.dtype]
    if bundle.big_endian:
        dtype = dtype.newbyteorder(">")
    expected = int(np.prod(e.shape, dtype=np.int64)) * dtype.itemsize
    if e.size != expected:
        raise ValueError(f"{bundle.prefix}: tensor {name!r} stores {e.size} bytes, but "
                         f"{e.dtype_name}{list(e.shape)} needs {expected}")
    if e.shard_id >= bundle.num_shards:
        raise ValueError(f"{bundle.prefix}: tensor {name!r} is in shard {e.shard_id} of "
                         f"{bundle.num_shards}")
    path = data_path(bundle.prefix, e.shard_id, bundle.num_shards)
    if e.shard_id not in files:
        if not path.is_file():
            raise FileNotFoundError(f"TF checkpoint data file not found: {path}")
        files[e.shard_id] = open(path, "rb")  # noqa: SIM115 (closed by read_tensors)
    f = files[e.shard_id]
    f.seek(max(e.offset, 0))
    raw = f.read(e.size)
    if e.offset < 0 or len(raw) != e.size:
        raise ValueError(f"{path}: tensor {name!r} at bytes {e.offset}..{e.offset + e.size} runs "
                         f"past the end of the file ({path.stat().st_size} bytes): truncated")
    if verify_crc and e.crc32c is not None and unmask_crc(e.crc32c) != crc32c(raw):
        raise ValueError(f"{path}: checksum mismatch for tensor {name!r}: the data file is "
                         "corrupted")
    return np.frombuffer(raw, dtype).reshape(e.shape).astype(dtype.newbyteorder("="))


def read_bundle(prefix: PathLike, names=None, verify_crc: bool = True) -> dict[str, np.ndarray]:
    """``read_tensors(read_index(prefix), names, verify_crc)``."""
    return read_tensors(read_index(prefix), names, verify_crc)


# ----------------------------------------------------------------------------- writer

def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    # leveldb BytewiseComparator::FindShortestSeparator
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n:
        byte = start[i]
        if byte < 0xFF and byte + 1 < limit[i]:
            return start[:i] + bytes([byte + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    # leveldb BytewiseComparator::FindShortSuccessor
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


class _BlockBuilder:
    def __init__(self, restart_interval: int = RESTART_INTERVAL):
        self.interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            n = min(len(self.last), len(key))
            while shared < n and self.last[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += _put_varint(shared) + _put_varint(len(key) - shared)
        self.buf += _put_varint(len(value)) + key[shared:] + value
        self.last = key
        self.counter += 1

    def size(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return bytes(self.buf + b"".join(struct.pack("<I", r) for r in self.restarts)
                     + struct.pack("<I", len(self.restarts)))

    def empty(self) -> bool:
        return not self.buf


def _write_table(items: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()

    def put_block(contents: bytes) -> bytes:
        handle = _put_varint(len(out)) + _put_varint(len(contents))
        out.extend(contents + b"\x00")
        out.extend(struct.pack("<I", mask_crc(crc32c(contents + b"\x00"))))
        return handle

    index = _BlockBuilder(restart_interval=1)  # as leveldb's TableBuilder
    block = _BlockBuilder()
    pending = None  # handle of the last flushed block, waiting for its separator key
    last = b""
    for key, value in items:
        if pending is not None:
            index.add(_shortest_separator(last, key), pending)
            pending = None
        block.add(key, value)
        last = key
        if block.size() >= BLOCK_SIZE:
            pending = put_block(block.finish())
            block = _BlockBuilder()
    if not block.empty():
        pending = put_block(block.finish())
    if pending is not None:
        index.add(_short_successor(last), pending)
    meta_handle = put_block(_BlockBuilder().finish())
    index_handle = put_block(index.finish())
    footer = meta_handle + index_handle
    out.extend(footer + b"\x00" * (FOOTER_SIZE - 8 - len(footer)))
    out.extend(struct.pack("<Q", TABLE_MAGIC))
    return bytes(out)


def _field_varint(field: int, value: int) -> bytes:
    return _put_varint(field << 3) + _put_varint(value)


def _field_bytes(field: int, value: bytes) -> bytes:
    return _put_varint(field << 3 | 2) + _put_varint(len(value)) + value


def _entry_proto(dtype: int, shape, offset: int, size: int, crc: int) -> bytes:
    msg = _field_varint(1, dtype) + _field_bytes(2, _shape_proto(shape))
    if offset:
        msg += _field_varint(4, offset)
    if size:
        msg += _field_varint(5, size)
    return msg + _put_varint(6 << 3 | 5) + struct.pack("<I", crc)


def _shape_proto(shape) -> bytes:
    return b"".join(_field_bytes(2, _field_varint(1, d) if d else b"") for d in shape)


def _sliced_entry_proto(dtype: int, shape, slices) -> bytes:
    """BundleWriter::AddSlice's full-tensor entry: dtype, shape, slices, no data."""
    msg = _field_varint(1, dtype) + _field_bytes(2, _shape_proto(shape))
    for spec in slices:
        # TensorSlice::AsProto: an empty Extent for a whole dimension; proto3 drops start 0,
        # keeps length (a oneof member)
        extents = b"".join(
            _field_bytes(1, b"" if (start, length) == (0, FULL_EXTENT) else
                         (_field_varint(1, start) if start else b"") + _field_varint(2, length))
            for start, length in spec)
        msg += _field_bytes(7, extents)
    return msg


def partition(value: np.ndarray, axis: int, num_slices: int) -> PartitionedTensor:
    """Splits ``value`` as ``tf.fixed_size_partitioner(num_slices, axis)`` and saves it.

    TF's partitioned variables (``variable_scope._get_partitioned_variable``) give the
    first ``size % num_slices`` slices one more row along ``axis``; ``Saver`` writes each
    slice's spec with explicit ``offset,length`` on every dimension
    (``Variable.SaveSliceInfo.spec``).

    Args:
      value: the full tensor (rank >= 1).
      axis: the partitioned dimension.
      num_slices: the number of slices, 1 <= num_slices <= value.shape[axis].

    Returns:
      The ``PartitionedTensor`` for ``write_bundle``.

    Raises:
      ValueError: a scalar, or ``num_slices`` out of range.
    """
    value = np.asarray(value)
    if value.ndim == 0 or not 1 <= num_slices <= value.shape[axis]:
        raise ValueError(f"cannot split a tensor of shape {list(value.shape)} into "
                         f"{num_slices} slices along axis {axis}")
    size = value.shape[axis]
    parts, start = [], 0
    for i in range(num_slices):
        length = size // num_slices + (i < size % num_slices)
        spec = tuple((start, length) if d == axis % value.ndim else (0, n)
                     for d, n in enumerate(value.shape))
        parts.append((spec, value[tuple(slice(a, a + n) for a, n in spec)]))
        start += length
    return PartitionedTensor(value.shape, tuple(parts))


def write_bundle(prefix: PathLike, tensors: Mapping[str, np.ndarray | PartitionedTensor]) -> Path:
    """Writes ``PREFIX.index`` and ``PREFIX.data-00000-of-00001`` (one shard, no ``.meta``).

    Byte-compatible with TF's ``BundleWriter``: tensors stored in sorted-name order,
    no alignment padding, masked CRC-32C per tensor. A ``PartitionedTensor`` is written
    as ``BundleWriter::AddSlice`` does (see the module docstring): its slices' data in
    the order given, a full-tensor entry listing them. Its slices are written as given,
    not checked (fixtures of broken checkpoints need that); ``read_index`` checks them.

    Args:
      prefix: checkpoint prefix; its folder must exist.
      tensors: ``{name: array or PartitionedTensor}`` with dtypes float32/float64/
        float16/int8..int64/uint8/uint16/bool (names non-empty).

    Returns:
      The prefix as a Path.

    Raises:
      ValueError: empty name, unsupported dtype, or a partitioned tensor whose slices
        differ in dtype.
      FileExistsError: ``PREFIX.index`` exists.
    """
    prefix = Path(prefix)
    index_file = prefix.with_name(prefix.name + ".index")
    if index_file.exists():  # two files cannot be replaced together atomically
        raise FileExistsError(f"TF checkpoint {prefix} already exists ({index_file.name}); "
                              "write_bundle never overwrites one: remove it or choose another "
                              "prefix")
    items, chunks, offset = [], [], 0

    def add(key: bytes, where: str, arr) -> int:
        nonlocal offset
        arr = np.asarray(arr)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
        if dtype not in _DTYPE_ENUM:
            raise ValueError(f"tensor {where}: unsupported dtype {arr.dtype}")
        raw = np.ascontiguousarray(arr, dtype).tobytes()
        items.append((key, _entry_proto(_DTYPE_ENUM[dtype], arr.shape, offset, len(raw),
                                        mask_crc(crc32c(raw)))))
        chunks.append(raw)
        offset += len(raw)
        return _DTYPE_ENUM[dtype]

    for name in sorted(tensors):
        if not name:
            raise ValueError("tensor names must be non-empty (the empty key is the header)")
        value = tensors[name]
        if not isinstance(value, PartitionedTensor):
            add(name.encode("utf-8"), repr(name), value)
            continue
        dtypes = {add(encode_slice_key(name, spec), f"{name!r} slice {slice_text(spec)}", part)
                  for spec, part in value.parts}
        if len(dtypes) != 1:
            raise ValueError(f"tensor {name!r}: its slices have different dtypes "
                             f"{sorted(DTYPE_NAMES[d] for d in dtypes)}")
        items.append((name.encode("utf-8"),
                      _sliced_entry_proto(dtypes.pop(), value.shape,
                                          [spec for spec, _ in value.parts])))
    items.sort(key=lambda item: item[0])  # the table's key order (slice keys first)
    # BundleHeaderProto: num_shards = 1, endianness LITTLE (default), version {producer: 1}
    header = _field_varint(1, 1) + _field_bytes(3, _field_varint(1, 1))
    table = _write_table([(b"", header)] + items)
    # each file atomic, the index last: readers find a bundle by its index, so an
    # interruption leaves no bundle or the whole one (a data file alone is a leftover)
    fileio.atomic_write(data_path(prefix, 0, 1), lambda f: f.writelines(chunks))
    fileio.write_bytes_atomic(index_file, table)
    return prefix
