"""FlyingThings3D reader (PFM and PNG) for pre-training, as the original loads it.

Layout under ``root``::

  frames_finalpass/{TRAIN,TEST}/{A,B,C}/NNNN/left/XXXX.png          RGB(A) frames
  disparity/{split}/{letter}/NNNN/left/XXXX.pfm                       disparity
  disparity_change/{split}/{letter}/NNNN/into_future/left/XXXX.pfm    d1 - d0
  optical_flow/{split}/{letter}/NNNN/into_future/left/OpticalFlowIntoFuture_XXXX_L.pfm

Frames 6..14 of each scene are paired with the next frame. TRAIN and VAL both read the
``TRAIN`` folders after dropping the scenes the original excludes (``EXCLUDED_SCENES``);
VAL is the last 50 of each letter and TRAIN the rest; TEST reads all ``TEST`` scenes.
Ground truth is ``(u, v, d0, d0 + disparity change)`` and every disparity is valid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepliflow_jax.data.io import PathLike, read_ft3d_file
from deepliflow_jax.data.kitti import SceneFlowSample

LETTERS = ("A", "B", "C")
FIRST_FRAME, LAST_FRAME = 6, 14  # pairs (6, 7) ... (14, 15)
NUM_VAL_SCENES = 50
# Scene positions (in the sorted TRAIN folder of each letter) the original leaves out.
EXCLUDED_SCENES = {
    "A": frozenset({12, 18, 96, 132, 186, 441, 456, 483, 653, 676, 728,
                    60, 91, 169, 179, 364, 398, 518, 521, 658}),
    "B": frozenset({18, 172, 316, 400, 459, 53, 189, 424, 668}),
    "C": frozenset({31, 80, 140, 260, 323, 398, 419, 651}),
}
NUM_SCENES_PER_LETTER = 746
MODES = ("TRAIN", "VAL", "TEST")


def _folder(mode: str) -> str:
    return "TEST" if mode == "TEST" else "TRAIN"


def select_scenes(scenes: list[str], letter: str, mode: str) -> list[str]:
    """Scenes of one letter used by ``mode`` (positions index the sorted folder list).

    Args:
      scenes: sorted scene folder names of the letter.
      letter: ``"A"``, ``"B"`` or ``"C"``.
      mode: ``"TRAIN"``, ``"VAL"`` or ``"TEST"``.
    """
    if mode == "TEST":
        return list(scenes)
    # The original indexes with range(746) minus the exclusions; beyond 746 nothing is kept.
    kept = [s for i, s in enumerate(scenes)
            if i < NUM_SCENES_PER_LETTER and i not in EXCLUDED_SCENES[letter]]
    return kept[:-NUM_VAL_SCENES] if mode == "TRAIN" else kept[-NUM_VAL_SCENES:]


def list_frames(root: PathLike, mode: str) -> list[tuple[str, str]]:
    """(scene, frame) pairs of ``mode`` in the original's order (not shuffled).

    Args:
      root: FlyingThings3D root.
      mode: ``"TRAIN"``, ``"VAL"`` or ``"TEST"``.

    Returns:
      e.g. ``[("A/0000", "0006"), ...]``.

    Raises:
      ValueError: unknown mode or no frames.
      FileNotFoundError: the root or a letter folder is missing (named).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"No FlyingThings3D data set at {root}")
    frames = []
    for letter in LETTERS:
        folder = root / "disparity_change" / _folder(mode) / letter
        if not folder.is_dir():
            raise FileNotFoundError(f"Missing folder {folder}")
        scenes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        for scene in select_scenes(scenes, letter, mode):
            frames += [(f"{letter}/{scene}", f"{i:04d}")
                       for i in range(FIRST_FRAME, LAST_FRAME + 1)]
    if not frames:
        raise ValueError(f"No {mode} scenes under {root / 'disparity_change'}")
    return frames


def frame_paths(root: PathLike, mode: str, scene: str, frame: str) -> dict[str, Path]:
    """Paths of one FT3D frame pair's files (keys image0, image1, disp0, disp1,
    disp_change, flow)."""
    root = Path(root)
    split = _folder(mode)
    nxt = f"{int(frame) + 1:04d}"
    return {
        "image0": root / "frames_finalpass" / split / scene / "left" / f"{frame}.png",
        "image1": root / "frames_finalpass" / split / scene / "left" / f"{nxt}.png",
        "disp0": root / "disparity" / split / scene / "left" / f"{frame}.pfm",
        "disp1": root / "disparity" / split / scene / "left" / f"{nxt}.pfm",
        "disp_change": root / "disparity_change" / split / scene / "into_future" / "left"
        / f"{frame}.pfm",
        "flow": root / "optical_flow" / split / scene / "into_future" / "left"
        / f"OpticalFlowIntoFuture_{frame}_L.pfm",
    }


def _image(path: Path) -> np.ndarray:
    image = read_ft3d_file(path)
    if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise ValueError(f"Expected an 8-bit RGB(A) image, got {image.dtype} {image.shape}: "
                         f"{path}")
    return image[:, :, :3].astype(np.float32) / np.float32(255.0)


def _map(path: Path, hw: tuple[int, int], channels: int) -> np.ndarray:
    data = np.asarray(read_ft3d_file(path), np.float32)
    if data.shape[:2] != hw:
        raise ValueError(f"Size {data.shape[:2]} differs from the image size {hw}: {path}")
    if channels == 1 and data.ndim != 2:
        raise ValueError(f"Expected a single-channel map, got {data.shape}: {path}")
    if channels > 1 and (data.ndim != 3 or data.shape[2] < channels):
        raise ValueError(f"Expected >= {channels} channels, got {data.shape}: {path}")
    return data


def load_frame(root: PathLike, mode: str, scene: str, frame: str) -> SceneFlowSample:
    """Loads one FT3D frame pair as the original ``SceneFlow.__getitem__``.

    Args:
      root: FlyingThings3D root.
      mode: ``"TRAIN"``, ``"VAL"`` or ``"TEST"`` (picks the TRAIN or TEST folders).
      scene: e.g. ``"A/0000"``.
      frame: e.g. ``"0006"``.

    Returns:
      ``SceneFlowSample`` with all disparities valid and gt (u, v, d0, d0 + change).

    Raises:
      FileNotFoundError / ValueError naming the file.
    """
    paths = frame_paths(root, mode, scene, frame)
    image0 = _image(paths["image0"])
    hw = image0.shape[:2]
    image1 = _image(paths["image1"])
    if image1.shape[:2] != hw:
        raise ValueError(f"Size {image1.shape[:2]} differs from {hw}: {paths['image1']}")
    d0 = _map(paths["disp0"], hw, 1)
    d1 = _map(paths["disp1"], hw, 1)
    change = _map(paths["disp_change"], hw, 1)
    flow = _map(paths["flow"], hw, 2)
    gt = np.stack([flow[:, :, 0], flow[:, :, 1], d0, d0 + change], axis=-1)
    ones = np.ones(hw, bool)
    return SceneFlowSample(image0=image0, image1=image1, disp0=d0, disp1=d1, valid0=ones,
                           valid1=ones.copy(), gt=gt.astype(np.float32), flow_valid=ones.copy(),
                           name=f"{scene}/{frame}", d1_valid=ones.copy())


class FlyingThings3D:
    """FlyingThings3D frame pairs of one mode, indexable like the original dataset.

    Args:
      root: FlyingThings3D root.
      mode: ``"TRAIN"``, ``"VAL"`` or ``"TEST"``.
    """

    dataset_type = "FT3D"

    def __init__(self, root: PathLike, mode: str = "TEST"):
        self.root = Path(root).expanduser()
        self.mode = mode
        self.frames = list_frames(self.root, mode)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> SceneFlowSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        scene, frame = self.frames[index]
        return load_frame(self.root, self.mode, scene, frame)

    def __repr__(self) -> str:
        return f"FlyingThings3D(root={str(self.root)!r}, mode={self.mode!r}, frames={len(self)})"
