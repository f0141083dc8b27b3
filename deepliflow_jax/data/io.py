"""PNG and PFM file I/O with the bit depths the KITTI and FlyingThings3D formats need.

PNGs are read and written with pypng, which keeps 16 bits per channel (Pillow
silently decodes KITTI's 16-bit RGB ``flow_occ`` maps as 8-bit). PFM is the
FlyingThings3D float format: a text header (``PF`` colour / ``Pf`` grey, width
height, scale whose sign gives the endianness) followed by rows stored
bottom-to-top, as the original ``readPFM`` decodes it.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np
import png

from deepliflow_jax.fileio import atomic_write

PathLike = str | os.PathLike


def _check_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}")
    return path


def read_png(path: PathLike) -> np.ndarray:
    """Reads a PNG at its stored bit depth.

    Args:
      path: PNG file.

    Returns:
      ``uint8`` (bit depth <= 8) or ``uint16`` array, ``[H, W]`` for grey images and
      ``[H, W, C]`` otherwise (C = 2 grey+alpha, 3 RGB, 4 RGBA). Palettes are expanded.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is not a readable PNG (message names the file).
    """
    path = _check_file(path)
    try:
        reader = png.Reader(filename=str(path))
        width, height, rows, info = reader.asDirect()
        bitdepth = info["bitdepth"]
        planes = info["planes"]
        dtype = np.uint16 if bitdepth > 8 else np.uint8
        data = np.empty((height, width * planes), dtype)
        for i, row in enumerate(rows):
            data[i] = np.asarray(row, dtype)
    except (png.Error, zlib.error, OSError, ValueError, IndexError) as err:
        raise ValueError(f"Unreadable PNG file {path}: {err}") from err
    if planes == 1:
        return data.reshape(height, width)
    return data.reshape(height, width, planes)


def png_size(path: PathLike) -> tuple[int, int]:
    """A PNG's ``(height, width)`` from its header, without decoding the image.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is not a readable PNG (message names the file).
    """
    path = _check_file(path)
    try:
        with open(path, "rb") as file:
            reader = png.Reader(file=file)
            reader.preamble()
            return int(reader.height), int(reader.width)
    except (png.Error, zlib.error, OSError, ValueError) as err:
        raise ValueError(f"Unreadable PNG file {path}: {err}") from err


def write_png(path: PathLike, array: np.ndarray, compression: int = 6) -> None:
    """Writes a grey / grey+alpha / RGB / RGBA PNG at 8 or 16 bits per channel.

    Args:
      path: output file (parent folders are created).
      array: ``uint8`` or ``uint16`` array, ``[H, W]`` or ``[H, W, C]`` with C in 1..4.
      compression: zlib level 0..9 (1 is much faster and about as small for smooth maps).

    Raises:
      ValueError: unsupported dtype or shape.
    """
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png({path}): dtype must be uint8 or uint16, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise ValueError(f"write_png({path}): shape must be [H, W] or [H, W, 1..4], got "
                         f"{array.shape}")
    height, width, planes = array.shape
    bitdepth = 16 if array.dtype == np.uint16 else 8
    writer = png.Writer(width=width, height=height, greyscale=planes <= 2,
                        alpha=planes in (2, 4), bitdepth=bitdepth, compression=compression)
    # Packed big-endian rows: pypng then skips its slow per-row Python repacking.
    packed = np.ascontiguousarray(array.astype(">u2" if bitdepth == 16 else np.uint8))
    packed = packed.reshape(height, -1).view(np.uint8)
    # never a half-written PNG: a resumed writer takes an existing file as done
    atomic_write(path, lambda f: writer.write_packed(f, packed))


def read_pfm(path: PathLike) -> tuple[np.ndarray, float]:
    """Reads a PFM file as the original ``readPFM`` does (rows flipped to top-down).

    Args:
      path: PFM file.

    Returns:
      ``(data, scale)``: float32 ``[H, W]`` (``Pf``) or ``[H, W, 3]`` (``PF``) and the
      absolute header scale.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: malformed header or truncated data (message names the file).
    """
    path = _check_file(path)
    with open(path, "rb") as f:
        header = f.readline().rstrip()
        if header not in (b"PF", b"Pf"):
            raise ValueError(f"Not a PFM file (header {header[:16]!r}): {path}")
        dims = f.readline().decode("ascii", errors="replace")
        match = re.match(r"^\s*(\d+)\s+(\d+)\s*$", dims)
        if not match:
            raise ValueError(f"Malformed PFM size line {dims!r}: {path}")
        width, height = int(match.group(1)), int(match.group(2))
        try:
            scale = float(f.readline().decode("ascii").strip())
        except ValueError as err:
            raise ValueError(f"Malformed PFM scale line: {path}") from err
        endian = "<" if scale < 0 else ">"
        channels = 3 if header == b"PF" else 1
        count = width * height * channels
        data = np.frombuffer(f.read(), dtype=endian + "f4")
    if data.size < count:
        raise ValueError(f"Truncated PFM data ({data.size} of {count} floats): {path}")
    shape = (height, width, channels) if channels == 3 else (height, width)
    data = np.flipud(data[:count].reshape(shape)).astype(np.float32)
    return data, abs(scale)


def write_pfm(path: PathLike, array: np.ndarray, scale: float = 1.0) -> None:
    """Writes a little-endian PFM (rows bottom-to-top, as the format stores them).

    Args:
      path: output file (parent folders are created).
      array: float ``[H, W]`` or ``[H, W, 3]``.
      scale: positive header scale; written negated to mark little-endian data.

    Raises:
      ValueError: unsupported shape.
    """
    array = np.asarray(array, np.float32)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"write_pfm({path}): shape must be [H, W] or [H, W, 3], got "
                         f"{array.shape}")
    header = b"PF\n" if array.ndim == 3 else b"Pf\n"
    height, width = array.shape[:2]
    atomic_write(path, lambda f: f.write(header + f"{width} {height}\n{-abs(scale)}\n".encode(
        "ascii") + np.flipud(array).astype("<f4").tobytes()))


def read_ft3d_file(path: PathLike) -> np.ndarray:
    """Reads a FlyingThings3D file by extension, as the original ``read_ft3d``.

    Args:
      path: ``.png`` (returned as stored) or ``.pfm`` (float32 data, scale dropped).

    Returns:
      The array.

    Raises:
      ValueError: unknown extension.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return read_png(path)
    if suffix == ".pfm":
        return read_pfm(path)[0]
    raise ValueError(f"Don't know how to read {path} (expected .png or .pfm)")
