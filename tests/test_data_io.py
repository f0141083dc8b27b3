"""PNG / PFM I/O: files written by an independent encoder, the shared real PNGs, errors."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from deepliflow_jax.data import io

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "deeplidarflow_examples"


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def encode_png_independent(array: np.ndarray, filters=(0, 1, 2, 3, 4)) -> bytes:
    """A minimal PNG encoder written from the spec (struct + zlib), independent of pypng.

    Rows cycle through the given filter types so a decoder's un-filtering is exercised.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    h, w, planes = array.shape
    depth = 16 if array.dtype == np.uint16 else 8
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[planes]
    raw = array.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    bpp = planes * depth // 8
    if tuple(filters) == (0,):  # no filtering: vectorised, fast enough for full frames
        rows = np.concatenate([np.zeros((h, 1), np.uint8), raw], axis=1)
        return _png_file(w, h, depth, color_type, zlib.compress(rows.tobytes()))
    out = bytearray()
    prev = [0] * raw.shape[1]
    for y in range(h):
        row = [int(v) for v in raw[y]]
        ftype = filters[y % len(filters)]
        line = []
        for x, value in enumerate(row):
            a = row[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[ftype]
            line.append((value - pred) % 256)
        out.append(ftype)
        out += bytes(line)
        prev = row

    return _png_file(w, h, depth, color_type, zlib.compress(bytes(out)))


def _png_file(w, h, depth, color_type, idat: bytes) -> bytes:
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def decode_png_independent(data: bytes) -> np.ndarray:
    """Decodes a non-interlaced PNG written with filter 0 (what pypng writes), from the
    spec, to check our writer without using pypng."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h, depth, color_type = header[:4]
    planes = {0: 1, 4: 2, 2: 3, 6: 4}[color_type]
    stride = w * planes * depth // 8
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, stride + 1)
    assert (raw[:, 0] == 0).all(), "only filter type 0 is handled here"
    pixels = raw[:, 1:].copy()
    if depth == 16:
        pixels = pixels.view(">u2").astype(np.uint16)
    pixels = pixels.reshape(h, w, planes)
    return pixels[:, :, 0] if planes == 1 else pixels


@pytest.mark.parametrize("dtype,planes", [(np.uint16, 3), (np.uint16, 1), (np.uint8, 3),
                                          (np.uint8, 4), (np.uint8, 1)])
def test_read_png_on_independently_encoded_files(tmp_path, dtype, planes):
    rng = np.random.default_rng(0)
    shape = (7, 9) if planes == 1 else (7, 9, planes)
    array = rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=np.int64).astype(dtype)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png_independent(array))
    out = io.read_png(path)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("dtype,planes", [(np.uint16, 3), (np.uint16, 1), (np.uint8, 3)])
def test_write_png_is_decoded_by_an_independent_decoder(tmp_path, dtype, planes):
    rng = np.random.default_rng(1)
    shape = (5, 6) if planes == 1 else (5, 6, planes)
    array = rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=np.int64).astype(dtype)
    io.write_png(tmp_path / "y.png", array, compression=1)
    np.testing.assert_array_equal(decode_png_independent((tmp_path / "y.png").read_bytes()),
                                  array)


def test_shared_example_pngs_keep_their_bit_depth():
    disp = io.read_png(SHARED / "ex_1_disp_10.png")
    assert disp.dtype == np.uint16 and disp.shape == (375, 1242)
    # About 5,000 LiDAR points with disparities in a plausible KITTI range (value / 256).
    assert 4000 < np.count_nonzero(disp) < 6000
    assert 1.0 < disp[disp > 0].min() / 256 and disp.max() / 256 < 255
    # Sub-pixel precision survives: an 8-bit decode could not have odd low bytes.
    assert np.any(disp[disp > 0] % 256 != 0)
    image = io.read_png(SHARED / "ex_2_im_10.png")
    assert image.dtype == np.uint8 and image.shape == (540, 960, 4)


def test_png_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        io.read_png(tmp_path / "missing.png")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="broken.png"):
        io.read_png(bad)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(encode_png_independent(np.zeros((4, 4), np.uint8))[:40])
    with pytest.raises(ValueError, match="truncated.png"):
        io.read_png(truncated)
    with pytest.raises(ValueError, match="dtype"):
        io.write_png(tmp_path / "f.png", np.zeros((2, 2), np.float32))


def _pfm_big_endian(array: np.ndarray) -> bytes:
    # Written by hand: big-endian (positive scale), rows bottom-to-top.
    header = b"PF\n" if array.ndim == 3 else b"Pf\n"
    h, w = array.shape[:2]
    return (header + f"{w} {h}\n".encode() + b"1.0\n"
            + np.flipud(array).astype(">f4").tobytes())


def test_pfm_reads_big_endian_files_top_down(tmp_path):
    grey = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    colour = np.random.default_rng(2).normal(size=(2, 5, 3)).astype(np.float32)
    (tmp_path / "g.pfm").write_bytes(_pfm_big_endian(grey))
    (tmp_path / "c.pfm").write_bytes(_pfm_big_endian(colour))
    data, scale = io.read_pfm(tmp_path / "g.pfm")
    np.testing.assert_array_equal(data, grey)
    assert scale == 1.0
    np.testing.assert_array_equal(io.read_pfm(tmp_path / "c.pfm")[0], colour)


def test_pfm_roundtrip_and_errors(tmp_path):
    grey = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    io.write_pfm(tmp_path / "r.pfm", grey, scale=2.0)
    data, scale = io.read_pfm(tmp_path / "r.pfm")
    np.testing.assert_array_equal(data, grey)
    assert scale == 2.0
    assert (tmp_path / "r.pfm").read_bytes().splitlines()[2] == b"-2.0"  # little-endian
    (tmp_path / "bad.pfm").write_bytes(b"P6\n1 1\n1\n\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="bad.pfm"):
        io.read_pfm(tmp_path / "bad.pfm")
    (tmp_path / "short.pfm").write_bytes(b"Pf\n4 4\n-1.0\n" + b"\x00" * 8)
    with pytest.raises(ValueError, match="short.pfm"):
        io.read_pfm(tmp_path / "short.pfm")
    with pytest.raises(ValueError, match="x.jpg"):
        io.read_ft3d_file(tmp_path / "x.jpg")
