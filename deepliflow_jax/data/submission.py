"""KITTI scene flow 2015 submissions: the files, and what the devkit makes of them.

Layout of a submission folder (what the KITTI server and the devkit's
``evaluate_scene_flow.cpp`` read, ``NNNNNN`` the frame id)::

  disp_0/NNNNNN_10.png   16-bit grey: disparity at t x 256, 0 = missing
  disp_1/NNNNNN_10.png   16-bit grey: disparity at t+1 (seen at t) x 256, 0 = missing
  flow/NNNNNN_10.png     16-bit RGB: u x 64 + 2**15, v x 64 + 2**15, 1 = valid (0 = missing)

plus this package's marker ``deepliflow_submission.json`` (upload only the three folders:
``zip -r submission.zip disp_0 disp_1 flow``).

The devkit scores what the PNGs hold (``io_disp.h``, ``io_flow.h``): disparities rounded
to 1/256 px and flows to 1/64 px; a missing disparity (<= 0, non-finite, or rounding to
code 0: at most 1/512 px) or flow (non-finite) is filled by ``interpolateBackground``
before the comparison. ``devkit_estimate`` returns that estimate, and
``metrics.evaluate_np(..., validity="devkit", as_submission=True)`` scores it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from deepliflow_jax.data.io import PathLike, write_png
from deepliflow_jax.data.kitti import (
    DISP_SCALE,
    FLOW_OFFSET,
    FLOW_SCALE,
    encode_disparity,
    encode_flow,
)
from deepliflow_jax.fileio import replace_dir

DISP0_DIR, DISP1_DIR, FLOW_DIR = "disp_0", "disp_1", "flow"
SUBMISSION_DIRS = (DISP0_DIR, DISP1_DIR, FLOW_DIR)
MARKER = "deepliflow_submission.json"
KIND = "a deepliflow_jax KITTI submission folder"
# io_disp.h: a disparity the devkit reads as missing is -1 (isValid is d >= 0)
DEVKIT_MISSING_DISPARITY = -1.0


def _check_frame(sceneflow, name: str = "sceneflow") -> np.ndarray:
    sceneflow = np.asarray(sceneflow, np.float32)
    if sceneflow.ndim != 3 or sceneflow.shape[-1] != 4:
        raise ValueError(f"{name} must be [H, W, 4] (u, v, d0, d1 in pixels), got "
                         f"{list(sceneflow.shape)}")
    return sceneflow


def encode_submission(sceneflow) -> dict[str, np.ndarray]:
    """One frame's scene flow as the uint16 codes of its three submission PNGs.

    Args:
      sceneflow: ``[H, W, 4]`` (u, v, d0, d1) in pixels.

    Returns:
      ``{"disp_0": [H, W], "disp_1": [H, W], "flow": [H, W, 3]}`` uint16 (KITTI
      encoding; a disparity that rounds to 0, is <= 0 or not finite is missing (0); a
      non-finite flow is missing; values are clipped to 16 bits).

    Raises:
      ValueError: ``sceneflow`` is not ``[H, W, 4]``.
    """
    sceneflow = _check_frame(sceneflow)
    flow = sceneflow[..., :2]
    return {DISP0_DIR: encode_disparity(sceneflow[..., 2], keep_tiny=False),
            DISP1_DIR: encode_disparity(sceneflow[..., 3], keep_tiny=False),
            FLOW_DIR: encode_flow(flow, np.ones(flow.shape[:2], bool))}


def decode_submission(codes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """What the devkit reads from a submission's codes (``readDisparityMap``, ``readFlowField``).

    Args:
      codes: as ``encode_submission`` (or read from the PNGs).

    Returns:
      ``(sceneflow, valid)``: float32 ``[H, W, 4]`` (a missing disparity is -1, a missing
      flow (0, 0)) and bool ``[H, W, 3]`` (d0, d1, flow present).
    """
    disps, present = [], []
    for key in (DISP0_DIR, DISP1_DIR):
        code = np.asarray(codes[key])
        disps.append(np.where(code > 0, code.astype(np.float32) / np.float32(DISP_SCALE),
                              np.float32(DEVKIT_MISSING_DISPARITY)))
        present.append(code > 0)
    raw = np.asarray(codes[FLOW_DIR])
    flow_valid = raw[..., 2] > 0
    flow = (raw[..., :2].astype(np.float32) - np.float32(FLOW_OFFSET)) / np.float32(FLOW_SCALE)
    flow = np.where(flow_valid[..., None], flow, np.float32(0.0))
    sceneflow = np.concatenate([flow, disps[0][..., None], disps[1][..., None]], axis=-1)
    return sceneflow.astype(np.float32), np.stack([*present, flow_valid], axis=-1)


def interpolate_background(values, valid) -> tuple[np.ndarray, np.ndarray]:
    """The devkit's ``interpolateBackground`` (``io_disp.h`` / ``io_flow.h``), vectorised.

    Per row: a run of missing pixels with a valid pixel on each side takes, per channel,
    the smaller of those two values; missing pixels before the row's first valid pixel
    take its value, those after the last valid pixel take that one's. Then per column:
    rows above the first row with any valid pixel take that row's values, rows below the
    last such row take its values (a row without a valid pixel between two with stays
    missing, as in the devkit).

    Args:
      values: ``[H, W]`` (disparity) or ``[H, W, C]`` (flow, C = 2), float.
      valid: bool ``[H, W]``.

    Returns:
      ``(values, valid)`` after the fill (float32; still-missing pixels keep their input
      value).
    """
    values = np.array(values, np.float32)
    valid = np.asarray(valid, bool)
    grey = values.ndim == 2
    if grey:
        values = values[..., None]
    if values.shape[:2] != valid.shape:
        raise ValueError(f"values {list(values.shape)} and valid {list(valid.shape)} must "
                         "share [H, W]")
    height, width = valid.shape
    cols = np.arange(width)
    # the nearest valid column at or before / at or after each pixel (-1 / width: none)
    before = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    after = np.minimum.accumulate(np.where(valid, cols, width)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(height)[:, None]
    left = values[rows, np.clip(before, 0, width - 1)]
    right = values[rows, np.clip(after, 0, width - 1)]
    has_left, has_right = before >= 0, after < width
    out = values.copy()
    gap = ~valid & has_left & has_right
    out[gap] = np.minimum(left, right)[gap]
    lead = ~valid & ~has_left & has_right
    out[lead] = right[lead]
    trail = ~valid & has_left & ~has_right
    out[trail] = left[trail]
    row_valid = valid.any(axis=1)  # after the row pass: whole rows valid or missing
    filled = np.repeat(row_valid[:, None], width, axis=1)
    if row_valid.any():
        first = int(np.argmax(row_valid))
        last = height - 1 - int(np.argmax(row_valid[::-1]))
        out[:first] = out[first]
        out[last + 1:] = out[last]
        filled[:first] = True
        filled[last + 1:] = True
    return (out[..., 0] if grey else out), filled


def devkit_estimate(sceneflow) -> np.ndarray:
    """The estimate the devkit compares with the ground truth for this prediction.

    The prediction goes through the submission encoding (``encode_submission``), is read
    back as the devkit reads it (``decode_submission``) and each map's missing pixels are
    filled by ``interpolate_background`` (``D_ipol``, ``F_ipol`` in
    ``evaluate_scene_flow.cpp``); a map with no valid pixel keeps -1 (disparity) or
    (0, 0) (flow).

    Args:
      sceneflow: ``[H, W, 4]`` (u, v, d0, d1) in pixels.

    Returns:
      float32 ``[H, W, 4]``.

    Raises:
      ValueError: ``sceneflow`` is not ``[H, W, 4]``.
    """
    decoded, present = decode_submission(encode_submission(sceneflow))
    d0, _ = interpolate_background(decoded[..., 2], present[..., 0])
    d1, _ = interpolate_background(decoded[..., 3], present[..., 1])
    flow, _ = interpolate_background(decoded[..., :2], present[..., 2])
    return np.concatenate([flow, d0[..., None], d1[..., None]], axis=-1)


def frame_file(name: str) -> str:
    """A frame's submission file name, ``NNNNNN_10.png`` (the name of frame t).

    Raises:
      ValueError: ``name`` is empty or holds a path separator.
    """
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or \
            name in (".", ".."):
        raise ValueError(f"frame name must be a file-name stem such as '000000', got {name!r}")
    return f"{name}_10.png"


def write_submission_frame(directory: PathLike, name: str, sceneflow,
                           compression: int = 6) -> dict[str, Path]:
    """Writes one frame's three submission PNGs under ``directory`` (each atomically).

    Args:
      directory: the submission folder (``disp_0/``, ``disp_1/``, ``flow/`` are created).
      name: frame id, e.g. ``"000000"``.
      sceneflow: ``[H, W, 4]`` (u, v, d0, d1) in pixels.
      compression: zlib level.

    Returns:
      ``{"disp_0": path, "disp_1": path, "flow": path}``.

    Raises:
      ValueError: a bad ``name`` or ``sceneflow`` (named).
    """
    file = frame_file(name)
    codes = encode_submission(_check_frame(sceneflow, f"sceneflow of frame {name}"))
    paths = {}
    for key in SUBMISSION_DIRS:
        paths[key] = Path(directory) / key / file
        write_png(paths[key], codes[key], compression)
    return paths


def write_submission(directory: PathLike, frames: Iterable[tuple[str, np.ndarray]], *,
                     overwrite: bool = False, info: dict | None = None) -> Path:
    """Writes a KITTI scene flow submission folder (module docstring), crash-safe.

    The folder is checked before the first frame is drawn from ``frames`` (a generator
    may run the network lazily); it is written whole to a hidden sibling and renamed
    into place (``fileio.replace_dir``), with ``deepliflow_submission.json`` last.

    Args:
      directory: the folder to create (an empty folder is filled).
      frames: ``(name, sceneflow [H, W, 4])`` pairs, e.g. ``("000000", prediction)``.
      overwrite: replace an existing submission folder of this package.
      info: JSON-able notes kept in the marker (e.g. the checkpoint).

    Returns:
      The folder, absolute.

    Raises:
      FileExistsError: ``directory`` is not empty and ``overwrite`` is False, or it is
        not a submission folder of this package (then never replaced).
      ValueError: no frames, a repeated frame name, or a bad frame (named).
    """
    path = Path(directory).expanduser().absolute()
    if path.is_dir() and not any(path.iterdir()):
        overwrite = True  # an empty folder holds nothing to lose
    text = json.dumps({"format": "KITTI scene flow 2015 submission",
                       "folders": list(SUBMISSION_DIRS), **(info or {})}, indent=2) + "\n"

    def fill(staged: Path) -> None:
        names = set()
        for name, sceneflow in frames:
            if name in names:
                raise ValueError(f"frame {name!r} is given twice")
            names.add(name)
            write_submission_frame(staged, name, sceneflow)
        if not names:
            raise ValueError("write_submission: no frames to write")

    return replace_dir(path, fill, marker=MARKER, marker_text=text, kind=KIND,
                       overwrite=overwrite, noun="submission folder")
