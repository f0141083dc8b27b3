"""KITTI Scene Flow 2015 reader (and writers) for the layout the original release expects.

Layout under ``root`` (the ``data_scene_flow`` folder)::

  training/image_2/NNNNNN_10.png, NNNNNN_11.png     8-bit RGB frames t and t+1
  training/disp_occ_0/NNNNNN_10.png                 16-bit disparity at t (GT d0)
  training/disp_occ_1/NNNNNN_10.png                 16-bit disparity at t+1 seen at t (GT d1)
  training/flow_occ/NNNNNN_10.png                   16-bit RGB optical flow (u, v, valid)
  training/disp_occ_1_transformedOnSecFrame/NNNNNN_10.png
                                                    d1 de-warped into the view at t+1: the
                                                    LiDAR source of the second frame

A folder without ground truth (the KITTI test split, ``testing/``) holds only the network
inputs, in the same layout (``load_inputs``, ``list_input_frames``)::

  testing/image_2/NNNNNN_10.png, NNNNNN_11.png      8-bit RGB frames t and t+1
  testing/disp_occ_0/NNNNNN_10.png                  16-bit LiDAR disparity at t
  testing/disp_occ_1_transformedOnSecFrame/NNNNNN_10.png
                                                    16-bit LiDAR disparity at t+1 (view t+1)

Encodings: disparity = value / 256 with 0 = invalid; flow = (value - 2**15) / 64 for the
first two channels and the third channel is 1 where the flow is valid (KITTI's devkit
writes invalid pixels as (0, 0, 0), so an invalid flow decodes to (-512, -512)).

Ground truth by ``validity`` (see ``deepliflow_jax.metrics``):

* ``"original"`` (default; ``load_kitti_sf`` + ``get_eval``): ``(u, v, d0, d1)`` is zeroed
  wherever ``d0 <= 0`` and every loss and metric keeps only pixels with
  ``gt[..., 2] > 0``. The flow's valid channel is never read (an invalid flow inside that
  mask keeps its decoded value, (-512, -512) as KITTI writes it) and an invalid ``d1``
  (0) inside that mask is kept as the value 0.
* ``"devkit"`` (the KITTI devkit): each quantity is kept where its own map is valid and
  is 0 elsewhere (an invalid flow is (0, 0), not -512); nothing is zeroed by ``d0``.

Either way the sample keeps the validity of each map (``d1_valid``, ``flow_valid``,
together with ``gt[..., 2] > 0`` as ``gt_valid``) so the devkit's per-quantity rule can
be applied. Training uses the ``"original"`` ground truth.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path

import numpy as np

from deepliflow_jax.data.io import PathLike, read_png, write_png

SPLIT = "training"
TEST_SPLIT = "testing"
IMAGE_DIR = "image_2"
DISP0_DIR = "disp_occ_0"
DISP1_DIR = "disp_occ_1"
FLOW_DIR = "flow_occ"
DISP1_SECOND_VIEW_DIR = "disp_occ_1_transformedOnSecFrame"
REQUIRED_DIRS = (IMAGE_DIR, DISP0_DIR, DISP1_DIR, FLOW_DIR, DISP1_SECOND_VIEW_DIR)
# the network's inputs among frame_paths' files (all a frame without ground truth has)
INPUT_FILES = {"image0": "RGB frame t", "image1": "RGB frame t+1",
               "disp0": "LiDAR disparity at t",
               "disp1_second_view": "LiDAR disparity at t+1"}

VALIDITY_MODES = ("original", "devkit")

FLOW_OFFSET = 2.0**15
FLOW_SCALE = 64.0
DISP_SCALE = 256.0
SPLIT_FILE_NAME = "kitti_sceneflow_test_split.txt"


@dataclasses.dataclass(frozen=True)
class FrameInputs:
    """One frame pair's network inputs, without ground truth (e.g. a KITTI test frame).

    Attributes:
      image0, image1: float32 ``[H, W, 3]`` RGB in [0, 1] at t and t+1.
      disp0, disp1: float32 ``[H, W]`` disparities the LiDAR is sampled from at t and
        t+1 (KITTI: ``disp_occ_0`` and ``disp_occ_1_transformedOnSecFrame``), 0 = none.
      valid0, valid1: bool ``[H, W]``, where ``disp0`` / ``disp1`` may be sampled.
      name: frame identifier (KITTI ``NNNNNN``).
    """

    image0: np.ndarray
    image1: np.ndarray
    disp0: np.ndarray
    disp1: np.ndarray
    valid0: np.ndarray
    valid1: np.ndarray
    name: str


@dataclasses.dataclass(frozen=True)
class SceneFlowSample:
    """One frame pair with the inputs and ground truth the original loaders return.

    Attributes:
      image0, image1: float32 ``[H, W, 3]`` RGB in [0, 1] at t and t+1.
      disp0, disp1: float32 ``[H, W]`` dense disparities the LiDAR is sampled from
        (KITTI: ``disp_occ_0`` and ``disp_occ_1_transformedOnSecFrame``), 0 = none.
      valid0, valid1: bool ``[H, W]``, where ``disp0`` / ``disp1`` may be sampled.
      gt: float32 ``[H, W, 4]`` (u, v, d0, d1) in pixels: zero where ``d0 <= 0``
        (``"original"`` validity) or where each quantity is invalid (``"devkit"``).
      flow_valid: bool ``[H, W]``, the flow's own valid flag (all True for FT3D).
      name: frame identifier (KITTI ``NNNNNN``; FT3D ``A/0000/0006``).
      d1_valid: bool ``[H, W]``, where the ``d1`` ground truth is valid (KITTI
        ``disp_occ_1 > 0``; all True for FT3D); None: ``gt[..., 3] > 0``.
    """

    image0: np.ndarray
    image1: np.ndarray
    disp0: np.ndarray
    disp1: np.ndarray
    valid0: np.ndarray
    valid1: np.ndarray
    gt: np.ndarray
    flow_valid: np.ndarray
    name: str
    d1_valid: np.ndarray | None = None

    @property
    def gt_valid(self) -> np.ndarray:
        """bool ``[H, W, 3]``: validity of the (d0, d1, flow) ground truth (d0: ``gt > 0``)."""
        d1 = self.gt[..., 3] > 0 if self.d1_valid is None else self.d1_valid
        return np.stack([self.gt[..., 2] > 0, np.asarray(d1, bool),
                         np.asarray(self.flow_valid, bool)], axis=-1)


def check_validity(validity: str) -> str:
    """Returns ``validity`` if it is one of ``VALIDITY_MODES`` (``"original"``, ``"devkit"``).

    Raises:
      ValueError: naming the argument and the modes.
    """
    if validity not in VALIDITY_MODES:
        raise ValueError(f"validity must be one of {VALIDITY_MODES}, got {validity!r}")
    return validity


def read_rgb(path: PathLike) -> np.ndarray:
    """Reads an 8-bit RGB(A) image as float32 ``[H, W, 3]`` in [0, 1] (value / 255).

    Raises:
      FileNotFoundError / ValueError naming the file (missing, unreadable, not colour,
      not 8-bit).
    """
    image = read_png(path)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"Expected an RGB or RGBA image, got shape {image.shape}: {path}")
    if image.dtype != np.uint8:
        raise ValueError(f"Expected an 8-bit image, got {image.dtype}: {path}")
    return image[:, :, :3].astype(np.float32) / np.float32(255.0)


def read_disparity(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a KITTI 16-bit disparity map.

    Args:
      path: grey 16-bit PNG, disparity = value / 256, 0 = invalid.

    Returns:
      ``(disparity, valid)``: float32 ``[H, W]`` and bool ``[H, W]`` (``disparity > 0``).

    Raises:
      FileNotFoundError / ValueError naming the file.
    """
    raw = read_png(path)
    if raw.ndim != 2:
        raise ValueError(f"Expected a single-channel disparity map, got {raw.shape}: {path}")
    disp = raw.astype(np.float32) / np.float32(DISP_SCALE)
    return disp, disp > 0


def read_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a KITTI 16-bit RGB optical-flow map.

    Args:
      path: 16-bit RGB PNG; u, v = (value - 2**15) / 64; third channel = valid.

    Returns:
      ``(flow, valid)``: float32 ``[H, W, 2]`` and bool ``[H, W]``.

    Raises:
      FileNotFoundError / ValueError naming the file (e.g. an 8-bit file).
    """
    raw = read_png(path)
    if raw.ndim != 3 or raw.shape[2] != 3:
        raise ValueError(f"Expected a 3-channel flow map, got shape {raw.shape}: {path}")
    if raw.dtype != np.uint16:
        raise ValueError(f"Expected a 16-bit flow map, got {raw.dtype}: {path}")
    flow = (raw[:, :, :2].astype(np.float32) - np.float32(FLOW_OFFSET)) / np.float32(FLOW_SCALE)
    return flow, raw[:, :, 2] > 0


def encode_disparity(disp: np.ndarray, keep_tiny: bool = True) -> np.ndarray:
    """Disparity in pixels (<= 0 or non-finite = invalid) -> KITTI uint16 values.

    ``keep_tiny``: a positive disparity that rounds to 0 (at most 1/512 px) is written as
    code 1 (ground truth: still valid); False writes the 0 it rounds to, i.e. missing
    (what a submission PNG of that value holds; ``data.submission``).
    """
    disp = np.asarray(disp, np.float32)
    valid = np.isfinite(disp) & (disp > 0)
    value = np.clip(np.round(np.where(valid, disp, 0.0) * np.float32(DISP_SCALE)), 0, 65535)
    if keep_tiny:
        value = np.where(valid, np.maximum(value, 1), 0)
    return value.astype(np.uint16)


def encode_flow(flow: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Flow ``[H, W, 2]`` in pixels + bool mask -> KITTI uint16 ``[H, W, 3]`` (invalid = 0)."""
    flow = np.asarray(flow, np.float32)
    # Two isfinite maps: much faster than .all(axis=-1) over a length-2 axis.
    valid = np.asarray(valid, bool) & np.isfinite(flow[..., 0]) & np.isfinite(flow[..., 1])
    out = np.zeros(flow.shape[:2] + (3,), np.uint16)
    for c in range(2):
        value = np.clip(np.round(flow[..., c] * np.float32(FLOW_SCALE) + np.float32(FLOW_OFFSET)),
                        0, 65535)
        out[..., c] = np.where(valid, value, 0)
    out[..., 2] = valid
    return out


def write_disparity(path: PathLike, disp: np.ndarray, compression: int = 6) -> None:
    """Writes a disparity map in KITTI's 16-bit encoding (see ``encode_disparity``)."""
    write_png(path, encode_disparity(disp), compression)


def write_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray, compression: int = 6) -> None:
    """Writes an optical-flow map in KITTI's 16-bit RGB encoding (see ``encode_flow``)."""
    write_png(path, encode_flow(flow, valid), compression)


def frame_paths(root: PathLike, name: str, folder: str = SPLIT) -> dict[str, Path]:
    """Paths of one frame's files.

    Args:
      root: dataset root (containing ``training/``).
      name: frame id, e.g. ``"000007"``.
      folder: the split's folder under ``root``: ``"training"`` or ``"testing"``
        (``TEST_SPLIT``: only the ``INPUT_FILES`` are there).

    Returns:
      Dict with keys image0, image1, disp0, disp1, flow, disp1_second_view.
    """
    base = Path(root) / folder
    return {
        "image0": base / IMAGE_DIR / f"{name}_10.png",
        "image1": base / IMAGE_DIR / f"{name}_11.png",
        "disp0": base / DISP0_DIR / f"{name}_10.png",
        "disp1": base / DISP1_DIR / f"{name}_10.png",
        "flow": base / FLOW_DIR / f"{name}_10.png",
        "disp1_second_view": base / DISP1_SECOND_VIEW_DIR / f"{name}_10.png",
    }


def _check_shape(shape, expected, path) -> None:
    if tuple(shape[:2]) != tuple(expected):
        raise ValueError(f"Size {tuple(shape[:2])} differs from the frame's image size "
                         f"{tuple(expected)}: {path}")


def load_frame(root: PathLike, name: str, validity: str = "original") -> SceneFlowSample:
    """Loads one KITTI frame pair as the original ``SceneFlow.__getitem__`` does.

    Args:
      root: dataset root (containing ``training/``).
      name: frame id, e.g. ``"000007"``.
      validity: ``"original"`` or ``"devkit"``: how ``gt`` treats invalid pixels
        (module doc).

    Returns:
      A ``SceneFlowSample``.

    Raises:
      FileNotFoundError: a file is missing (named).
      ValueError: unknown ``validity``; a file is unreadable or its size differs from
        image t (named).
    """
    check_validity(validity)
    inputs = load_inputs(root, name, SPLIT)
    paths = frame_paths(root, name)
    hw = inputs.image0.shape[:2]
    d0 = inputs.disp0  # the ground truth d0 is the LiDAR source at t
    d1, d1_valid = read_disparity(paths["disp1"])
    _check_shape(d1.shape, hw, paths["disp1"])
    flow, flow_valid = read_flow(paths["flow"])
    _check_shape(flow.shape, hw, paths["flow"])
    gt = np.concatenate([flow, d0[..., None], d1[..., None]], axis=-1)
    if validity == "original":
        gt[d0 <= 0] = 0.0
    else:  # d0 and d1 are already 0 where invalid; the flow decodes to -512 there
        gt[~flow_valid, :2] = 0.0
    return SceneFlowSample(image0=inputs.image0, image1=inputs.image1, disp0=d0,
                           disp1=inputs.disp1, valid0=inputs.valid0, valid1=inputs.valid1,
                           gt=gt, flow_valid=flow_valid, name=name, d1_valid=d1_valid)


def load_inputs(root: PathLike, name: str, folder: str = TEST_SPLIT) -> FrameInputs:
    """Loads one frame pair's network inputs (``INPUT_FILES``), no ground truth needed.

    Args:
      root: dataset root (containing ``folder``).
      name: frame id, e.g. ``"000007"``.
      folder: ``"testing"`` (the KITTI test split, default) or ``"training"``.

    Returns:
      A ``FrameInputs``.

    Raises:
      FileNotFoundError: a file is missing (named).
      ValueError: a file is unreadable or its size differs from image t (named).
    """
    paths = frame_paths(root, name, folder)
    image0 = read_rgb(paths["image0"])
    hw = image0.shape[:2]
    image1 = read_rgb(paths["image1"])
    _check_shape(image1.shape, hw, paths["image1"])
    d0, valid0 = read_disparity(paths["disp0"])
    _check_shape(d0.shape, hw, paths["disp0"])
    d1, valid1 = read_disparity(paths["disp1_second_view"])
    _check_shape(d1.shape, hw, paths["disp1_second_view"])
    return FrameInputs(image0=image0, image1=image1, disp0=d0, disp1=d1, valid0=valid0,
                       valid1=valid1, name=name)


def list_input_frames(root: PathLike, folder: str = TEST_SPLIT) -> list[str]:
    """Every frame of a folder of network inputs (``INPUT_FILES``; no ground truth needed).

    The frames are the ``image_2/NNNNNN_10.png`` files, sorted; every input file of every
    frame is checked to exist, so a run stops before it starts rather than at frame 150.

    Args:
      root: dataset root (containing ``folder``).
      folder: ``"testing"`` (the KITTI test split, default) or ``"training"``.

    Returns:
      Sorted frame ids.

    Raises:
      FileNotFoundError: no ``root/folder/image_2`` folder, or a frame's input file is
        missing (the file and what it is are named).
      ValueError: no ``*_10.png`` frames.
    """
    images = Path(root).expanduser() / folder / IMAGE_DIR
    if not images.is_dir():
        raise FileNotFoundError(f"Missing folder {images} (the frames' RGB images)")
    names = sorted(p.name[:-len("_10.png")] for p in images.glob("*_10.png"))
    if not names:
        raise ValueError(f"No *_10.png files in {images}")
    for name in names:
        paths = frame_paths(Path(root).expanduser(), name, folder)
        for key, what in INPUT_FILES.items():
            if not paths[key].is_file():
                raise FileNotFoundError(f"Missing input file {paths[key]} ({what} of frame "
                                        f"{name})")
    return names


def read_split_file(path: PathLike | None = None) -> list[bool]:
    """Reads a split file: line ``n`` is non-empty when frame ``n`` is a test frame.

    Args:
      path: split file; ``None`` reads the original release's 180/20 split shipped in
        this package.

    Returns:
      ``is_test`` flags, one per line.

    Raises:
      FileNotFoundError: the file does not exist.
    """
    if path is None:
        text = importlib.resources.files("deepliflow_jax.data").joinpath(
            SPLIT_FILE_NAME).read_text()
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No such split file: {path}")
        text = path.read_text()
    return [line.strip() != "" for line in text.splitlines()]


def list_frames(root: PathLike, split: str = "test", split_file: PathLike | None = None
                ) -> list[str]:
    """Lists frame ids as the original ``make_dataset`` (sorted, from ``flow_occ``).

    Args:
      root: dataset root (containing ``training/``).
      split: ``"train"`` (the 180 fine-tuning frames), ``"test"`` (the 20) or ``"all"``.
      split_file: split file (format of ``read_split_file``); ``None`` = the original's.

    Returns:
      Sorted frame ids (the original shuffles the train list; the pipeline does that).

    Raises:
      FileNotFoundError: the root or one of the expected folders is missing (named).
      ValueError: unknown split, no frames, or a frame beyond the split file.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    base = Path(root).expanduser() / SPLIT
    if not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"No KITTI scene flow data set at {root}")
    for folder in REQUIRED_DIRS:
        if not (base / folder).is_dir():
            raise FileNotFoundError(f"Missing folder {base / folder}"
                                    + (" (the original's de-warped second-frame disparities)"
                                       if folder == DISP1_SECOND_VIEW_DIR else ""))
    names = sorted(p.name.split("_10.")[0] for p in (base / FLOW_DIR).glob("*_10.png"))
    if not names:
        raise ValueError(f"No *_10.png files in {base / FLOW_DIR}")
    if split == "all":
        return names
    is_test = read_split_file(split_file)
    where = split_file if split_file is not None else f"the packaged {SPLIT_FILE_NAME}"
    chosen = []
    for name in names:
        if not name.isdigit():
            raise ValueError(f"Frame id {name!r} in {base / FLOW_DIR} is not a number")
        index = int(name)
        if index >= len(is_test):
            raise ValueError(f"Frame {name} is beyond the {len(is_test)} lines of {where}")
        if is_test[index] == (split == "test"):
            chosen.append(name)
    return chosen


class KittiSceneFlow:
    """KITTI Scene Flow 2015 frames of one split, indexable like the original dataset.

    Args:
      root: dataset root (containing ``training/``).
      split: ``"train"``, ``"test"`` or ``"all"``.
      split_file: split file; ``None`` = the original's 180/20 split.
      validity: ``"original"`` or ``"devkit"`` ground truth (see ``load_frame``).
    """

    dataset_type = "KITTI"

    def __init__(self, root: PathLike, split: str = "test",
                 split_file: PathLike | None = None, validity: str = "original"):
        self.root = Path(root).expanduser()
        self.split = split
        self.validity = check_validity(validity)
        self.frames = list_frames(self.root, split, split_file)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> SceneFlowSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        return load_frame(self.root, self.frames[index], self.validity)

    def __repr__(self) -> str:
        return (f"KittiSceneFlow(root={str(self.root)!r}, split={self.split!r}, "
                f"validity={self.validity!r}, frames={len(self)})")
