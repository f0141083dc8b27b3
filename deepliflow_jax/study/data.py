"""Data for the study: frames in memory, deterministic LiDAR draws per position.

Training batches follow the original's KITTI fine-tuning where the configuration says so
(``data_loader/data_generator.py``): ``batch_size`` frames centre-cropped to ``crop``,
a LiDAR count drawn per frame visit from ``train_samples``, and the photometric
augmentation (``augment``) of the whole batch; validation frames are never augmented.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from deepliflow_jax.data.augment import augment_frames
from deepliflow_jax.data.kitti import KittiSceneFlow
from deepliflow_jax.data.lidar import frame_rng
from deepliflow_jax.data.pipeline import gt_valid_map, load_batch, preprocess_sample
from deepliflow_jax.data.preprocess import rgb_mean
from deepliflow_jax.fileio import write_text_atomic
from deepliflow_jax.study.config import StudyConfig, effective_samples


@dataclasses.dataclass
class StudyData:
    """Train and validation frames of one study, decoded once.

    Attributes:
      train, val: lists of ``SceneFlowSample``.
      dataset_type: ``"KITTI"`` (RGB means and disparity statistics).
      seed: LiDAR / order seed.
      validity: ground truth of the ``val`` frames, ``"original"`` or ``"devkit"``
        (``data.kitti``); ``train`` always has the original's.
      batch_size: training frames per batch (``StudyConfig.batch_size``).
      crop: centre crop of the training frames, or None (``StudyConfig.crop``).
      augment: training augmentation, ``StudyConfig.augment``.
    """

    train: list
    val: list
    dataset_type: str
    seed: int
    validity: str = "original"
    batch_size: int = 1
    crop: tuple[int, int] | None = None
    augment: str = "none"

    def samples_for(self, cfg: StudyConfig, num_samples: int | tuple[int, ...] | None = None
                    ) -> int | tuple[int, ...]:
        """LiDAR count(s) at this data set's size for counts at KITTI resolution.

        ``num_samples`` None: ``cfg.num_samples``; a tuple (``cfg.train_samples``): each.
        """
        n = cfg.num_samples if num_samples is None else num_samples
        if isinstance(n, tuple | list):
            return tuple(self.samples_for(cfg, int(k)) for k in n)
        if cfg.data == "synthetic":
            return effective_samples(n, cfg.height, cfg.width)
        return n

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


def make_synthetic(cfg: StudyConfig, root: Path, progress: bool = True) -> Path:
    """Generates (or completes) the synthetic world for ``cfg`` under ``root``."""
    from deepliflow_jax.data.synthetic import generate_dataset

    generate_dataset(root, cfg.num_scenes, cfg.height, cfg.width, seed=cfg.seed,
                     progress=progress)
    return root


def write_nine_to_one_split(path: Path, num_frames: int) -> Path:
    """Every tenth frame (9, 19, ...) is validation: the original's 9:1 ratio at any size.

    (The original's own 180/20 split file has no test frame among the first 10.)
    """
    lines = ["1" if i % 10 == 9 else "" for i in range(num_frames)]
    text = "\n".join(lines) + "\n"
    if not (path.is_file() and path.read_text() == text):  # workers of a study share it
        write_text_atomic(path, text)
    return path


def load_study_data(cfg: StudyConfig, root: str | Path) -> StudyData:
    """Decodes the train/val splits of ``root`` (a folder, ``str`` or ``Path``) into memory.

    KITTI uses the original release's 180/20 split; the synthetic world a 9:1
    split of its own (see ``write_nine_to_one_split``). The validation frames' ground
    truth follows ``cfg.validity``; the training frames' the original's.

    Raises:
      ValueError: a split without frames.
    """
    root = Path(root)
    split_file = None
    if cfg.data == "synthetic":
        split_file = write_nine_to_one_split(root / "study_split.txt", cfg.num_scenes)
    train = KittiSceneFlow(root, "train", split_file)
    val = KittiSceneFlow(root, "test", split_file, validity=cfg.validity)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"{root}: need frames in both splits, got {len(train)} train and "
                         f"{len(val)} test frames")
    val_idx = range(len(val)) if cfg.max_val_frames is None else range(
        min(cfg.max_val_frames, len(val)))
    return StudyData([train[i] for i in range(len(train))], [val[i] for i in val_idx],
                     "KITTI", cfg.seed, cfg.validity, batch_size=cfg.batch_size,
                     crop=None if cfg.crop is None else tuple(cfg.crop), augment=cfg.augment)
