"""The one data set type: decoded train/validation frames and how they are batched.

:func:`load_dataset` reads a folder in the KITTI scene-flow layout (KITTI 2015 or a
synthetic world, ``data.synthetic``) into a :class:`Dataset`; the study, the search and
the functional API all use it. Training batches follow the original's KITTI fine-tuning
where the arguments say so (``data_loader/data_generator.py``): ``batch_size`` frames
centre-cropped to ``crop``, a LiDAR count drawn per frame visit, and the photometric
augmentation (``augment``) of the whole batch; validation frames are never augmented.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from deepliflow_jax.data.augment import augment_frames
from deepliflow_jax.data.io import PathLike
from deepliflow_jax.data.kitti import KittiSceneFlow, check_validity
from deepliflow_jax.data.lidar import frame_rng
from deepliflow_jax.data.pipeline import gt_valid_map, load_batch, preprocess_sample
from deepliflow_jax.data.preprocess import AUGMENT_MODES, KITTI_MODEL_SHAPE, rgb_mean
from deepliflow_jax.data.synthetic import KITTI_SIZE, META_FILE
from deepliflow_jax.fileio import write_text_atomic
from deepliflow_jax.scalars import check_number, check_numbers

# LiDAR points per KITTI frame when nothing else is said (the paper's default count)
DEFAULT_SAMPLES = 4096
# "original": the original release's 180/20 KITTI split (data.kitti); "nine_to_one": every
# tenth frame is validation (a synthetic world: the original's ratio at any size)
SPLITS = ("original", "nine_to_one")
NINE_TO_ONE_SPLIT_FILE = "study_split.txt"  # written into the data set's folder


def effective_samples(num_samples: int, height: int, width: int) -> int:
    """LiDAR points at ``height`` x ``width`` with the density of ``num_samples`` on KITTI.

    KITTI's frame is 375x1242 (``data.synthetic.KITTI_SIZE``): a 64x192 synthetic frame
    gets ``round(4096 * 64 * 192 / (375 * 1242)) = 108`` of the paper's 4096 points (at
    least 1).
    """
    scale = (height * width) / (KITTI_SIZE[0] * KITTI_SIZE[1])
    return max(1, round(num_samples * scale))


@dataclasses.dataclass
class Dataset:
    """Train and validation frames of a scene-flow data set, decoded once.

    Attributes:
      train, val: lists of ``SceneFlowSample``.
      dataset_type: ``"KITTI"`` (RGB means and disparity statistics).
      seed: LiDAR draw / training order / augmentation seed.
      validity: ground truth of the ``val`` frames, ``"original"`` or ``"devkit"``
        (``data.kitti``); ``train`` always has the original's.
      batch_size: training frames per batch.
      crop: centre crop ``(h, w)`` of the training frames, or None.
      augment: training augmentation, one of ``AUGMENT_MODES``.
      num_samples: LiDAR points per frame at this data set's size (what evaluations and
        the search use unless told otherwise).
      interp_size: network input size ``(h, w)``, multiples of 64 (None: the frame size).
      root: the folder it was read from (empty: built in memory).
      frame_size: the frame size ``(h, w)`` to which :meth:`samples_for` scales counts
        given at KITTI resolution (a synthetic world's size; KITTI's own: 375x1242, no
        change).

    Example:
      >>> data = Dataset(train=[], val=[], frame_size=(64, 192))  # load_dataset reads one
      >>> data.samples_for(4096), data.samples_for((100, 5000))  # the KITTI density
      (108, (3, 132))
    """

    train: list
    val: list
    dataset_type: str = "KITTI"
    seed: int = 0
    validity: str = "original"
    batch_size: int = 1
    crop: tuple[int, int] | None = None
    augment: str = "none"
    num_samples: int = DEFAULT_SAMPLES
    interp_size: tuple[int, int] | None = None
    root: str = ""
    frame_size: tuple[int, int] = KITTI_SIZE
    _val_batch: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    def samples_for(self, num_samples: int | Sequence[int]) -> int | tuple[int, ...]:
        """LiDAR count(s) at this data set's size for count(s) at KITTI resolution.

        The same density (:func:`effective_samples` at ``frame_size``); a sequence (the
        training counts) gives a tuple, each scaled.
        """
        if isinstance(num_samples, tuple | list):
            return tuple(self.samples_for(int(k)) for k in num_samples)
        return effective_samples(num_samples, *self.frame_size)

    def frame_sizes(self) -> list[tuple[int, int]]:
        """The distinct ``(h, w)`` of the frames of both splits, sorted."""
        return sorted({tuple(s.image0.shape[:2]) for s in [*self.train, *self.val]})

    @property
    def description(self) -> str:
        """One line for logs and reports: folder, frame counts, sizes, LiDAR points."""
        sizes = ", ".join(f"{h}x{w}" for h, w in self.frame_sizes())
        return (f"data set ({self.root or 'in memory'}): {len(self.train)} training / "
                f"{len(self.val)} validation frames at {sizes}, {self.num_samples} LiDAR "
                "points per frame")

    def steps_per_epoch(self) -> int:
        """Training steps of one pass over the training frames (an incomplete batch dropped)."""
        return max(1, len(self.train) // self.batch_size)

    def train_batch(self, position: int, num_samples: int | tuple[int, ...],
                    reg_scale: float = 1.0) -> dict:
        """The batch of training step ``position``.

        ``batch_size`` frames of a fresh seeded permutation each epoch (the last
        incomplete batch of an epoch is dropped), centre-cropped to ``crop``; each frame's
        LiDAR draw (and, for a tuple ``num_samples``, its count) depends on (seed, frame,
        epoch) (``data.pipeline.load_batch``), and the augmentation on (seed, position),
        so a resumed run sees the same data. ``reg_scale`` multiplies the original's L2
        term (traced: no recompile).

        Returns:
          ``{"frames": [B, 2, h, w, 4], "gt": [B, h, w, 4], "reg_scale"}`` (float32;
          ``h, w``: the crop, or the frames' size).
        """
        n, per_epoch = len(self.train), self.steps_per_epoch()
        epoch, i = divmod(int(position), per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        indices = order[i * self.batch_size:(i + 1) * self.batch_size]
        batch = load_batch(self.train, indices, num_samples, self.seed, epoch + 1, self.crop,
                           dataset_type=self.dataset_type)
        frames = batch["frames"]
        if self.augment != "none":
            frames = augment_batch(frames, self.augment, self.dataset_type, self.seed, position)
        return {"frames": frames, "gt": batch["gt"], "reg_scale": np.float32(reg_scale)}

    def val_batches(self, num_samples: int) -> list[dict]:
        """Validation frames, one LiDAR draw each (seeded: evaluations are reproducible).

        Frames of equal size are stacked into one batch: ``frames`` ``[B, 2, H, W, 4]``,
        ``gt`` ``[B, H, W, 4]`` and ``valid`` ``[B, H, W, 3]`` (``gt_valid_map``).
        """
        groups: dict[tuple, list] = {}
        for index, sample in enumerate(self.val):
            rng = frame_rng(self.seed, index, 0)
            frames, gt = preprocess_sample(sample, self.dataset_type, num_samples, rng)
            groups.setdefault(gt.shape, []).append((frames, gt, gt_valid_map(sample)))
        return [{"frames": np.stack([x[0] for x in g]), "gt": np.stack([x[1] for x in g]),
                 "valid": np.stack([x[2] for x in g])} for g in groups.values()]

    def val_batch(self) -> dict:
        """Every validation frame in one batch at ``num_samples`` (the search's), kept.

        Raises:
          ValueError: the validation frames differ in size (the message names the folder).
        """
        if self.num_samples not in self._val_batch:
            batches = self.val_batches(self.num_samples)
            if len(batches) != 1:
                raise ValueError(f"one validation batch (the search's) needs validation frames "
                                 f"of one size, but those of {self.root or 'the data set'} "
                                 f"have {len(batches)} sizes")
            self._val_batch[self.num_samples] = batches[0]
        return self._val_batch[self.num_samples]


_augment = jax.jit(augment_frames)  # compiled once per batch shape


def augment_batch(frames: np.ndarray, mode: str, dataset_type: str, seed: int,
                  position: int) -> np.ndarray:
    """The original's photometric augmentation of one training batch (``data.augment``).

    One draw for the whole batch from the key (seed, position), as the original's
    ``data_generator.augment_images`` (one ``tf.random_uniform`` per batch).

    Args:
      frames: ``[B, 2, H, W, 4]`` network input (mean-subtracted RGB, LiDAR).
      mode: ``"original"`` (the chain on the mean-subtracted RGB, its clips included, as
        the original) or ``"rgb"`` (on the colours: mean added back first).
      dataset_type: whose RGB mean (``"rgb"``).
      seed, position: the draw's key.

    Returns:
      float32 frames of the same shape, the LiDAR channel unchanged.

    Raises:
      ValueError: an unknown mode.
    """
    if mode not in ("original", "rgb"):
        raise ValueError(f"augmentation mode must be 'original' or 'rgb', got {mode!r}")
    key = jax.random.fold_in(jax.random.PRNGKey(seed), int(position))
    mean = rgb_mean(dataset_type) if mode == "rgb" else None
    return np.asarray(_augment(key, frames, mean))


def write_nine_to_one_split(path: Path, num_frames: int) -> Path:
    """Every tenth frame (9, 19, ...) is validation: the original's 9:1 ratio at any size.

    (The original's own 180/20 split file has no test frame among the first 10.)
    """
    lines = ["1" if i % 10 == 9 else "" for i in range(num_frames)]
    text = "\n".join(lines) + "\n"
    if not (path.is_file() and path.read_text() == text):  # workers of a study share it
        write_text_atomic(path, text)
    return path


def _size(value, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    size = check_numbers(value, name, "(height, width) > 0", integer=True, minimum=1)
    if len(size) != 2:
        raise ValueError(f"{name} must be (height, width) > 0 or None, got {value!r}")
    return size


def load_dataset(root: PathLike, *, split: str | None = None, num_frames: int | None = None,
                 frame_size: tuple[int, int] | None = None, validity: str = "original",
                 num_samples: int | None = None, seed: int = 0, batch_size: int = 1,
                 crop: tuple[int, int] | None = None, augment: str = "none",
                 max_val_frames: int | None = None,
                 interp_size: tuple[int, int] | None = None) -> Dataset:
    """Decodes the train/validation splits of a KITTI-layout folder into a :class:`Dataset`.

    A synthetic world (its folder has ``synthetic.json``, ``data.synthetic``) is split
    9:1 by default (every tenth frame is validation, ``write_nine_to_one_split`` writes
    ``study_split.txt`` there), a KITTI 2015 root by the original release's 180/20 split.
    The validation frames' ground truth follows ``validity``; the training frames' the
    original's.

    Args:
      root: the folder (with ``training/``), ``str`` or ``Path``.
      split: ``"original"`` or ``"nine_to_one"`` (``SPLITS``); None: by the folder, as above.
      num_frames: frames the 9:1 split covers (None: the synthetic world's ``num_scenes``).
      frame_size: ``(h, w)`` LiDAR counts at KITTI resolution are scaled to (the same
        density); None: a synthetic world's size, else KITTI's 375x1242 (no change).
      validity: ``"original"`` or ``"devkit"`` (``data.kitti.VALIDITY_MODES``).
      num_samples: LiDAR points per frame at this size (None: the density of
        ``DEFAULT_SAMPLES`` points on a KITTI frame, at ``frame_size``).
      seed: LiDAR draw / training order / augmentation seed (>= 0).
      batch_size: training frames per batch.
      crop: centre crop ``(h, w)`` of the training frames, or None.
      augment: training augmentation, one of ``AUGMENT_MODES``.
      max_val_frames: cap on validation frames (None: all).
      interp_size: network input size ``(h, w)`` (None: the frame size when every frame
        is a multiple of 64, else KITTI's 384x1216 for a KITTI root, else None).

    Returns:
      The :class:`Dataset`.

    Raises:
      FileNotFoundError: no ``training/`` folder in ``root``.
      ValueError: a bad argument (the message names it), or a split without frames (the
        message names the folder).

    Example:
      >>> data = load_dataset(root)  # root = data.synthetic.generate_dataset(...)'s folder
      >>> len(data.train), len(data.val), data.num_samples
      (9, 1, 108)
    """
    root = Path(root).expanduser()
    if not (root / "training").is_dir():
        raise FileNotFoundError(f"no data set at {root}: expected {root / 'training'} (a KITTI "
                                "scene flow 2015 root, or a synthetic world: "
                                "make_synthetic_dataset)")
    meta_path = root / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if split is None:
        split = "nine_to_one" if meta is not None else "original"
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)} or None, got {split!r}")
    validity = check_validity(validity)
    if augment not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {list(AUGMENT_MODES)}, got {augment!r}")
    seed = check_number(seed, "seed", integer=True, minimum=0)
    batch_size = check_number(batch_size, "batch_size", integer=True, minimum=1)
    if max_val_frames is not None:
        max_val_frames = check_number(max_val_frames, "max_val_frames", integer=True, minimum=1)
    if num_samples is not None:
        num_samples = check_number(num_samples, "num_samples", integer=True, minimum=1)
    crop, interp_size = _size(crop, "crop"), _size(interp_size, "interp_size")
    if frame_size is None:
        frame_size = (int(meta["height"]), int(meta["width"])) if meta is not None else KITTI_SIZE
    frame_size = _size(frame_size, "frame_size")
    split_file = None
    if split == "nine_to_one":
        if num_frames is None:
            if meta is None:
                raise ValueError(f"the nine_to_one split of {root} needs num_frames (the folder "
                                 f"has no {META_FILE} that counts its frames)")
            num_frames = int(meta["num_scenes"])
        num_frames = check_number(num_frames, "num_frames", integer=True, minimum=1)
        split_file = write_nine_to_one_split(root / NINE_TO_ONE_SPLIT_FILE, num_frames)
    train = KittiSceneFlow(root, "train", split_file)
    val = KittiSceneFlow(root, "test", split_file, validity=validity)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"{root}: need frames in both splits ({split}), got {len(train)} "
                         f"train and {len(val)} test frames")
    val_idx = range(len(val) if max_val_frames is None else min(max_val_frames, len(val)))
    data = Dataset([train[i] for i in range(len(train))], [val[i] for i in val_idx], "KITTI",
                   seed, validity, batch_size, crop, augment, root=str(root),
                   frame_size=frame_size)
    data.num_samples = data.samples_for(DEFAULT_SAMPLES) if num_samples is None else num_samples
    if interp_size is None and meta is None and not all(
            h % 64 == 0 and w % 64 == 0 for h, w in data.frame_sizes()):
        interp_size = KITTI_MODEL_SHAPE
    data.interp_size = interp_size
    return data
