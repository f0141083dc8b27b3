"""Data for the study: frames in memory, deterministic LiDAR draws per position."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from deepliflow_jax.data.kitti import KittiSceneFlow
from deepliflow_jax.data.lidar import frame_rng
from deepliflow_jax.data.pipeline import gt_valid_map, preprocess_sample
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
    """

    train: list
    val: list
    dataset_type: str
    seed: int
    validity: str = "original"

    def samples_for(self, cfg: StudyConfig, num_samples: int | None = None) -> int:
        n = cfg.num_samples if num_samples is None else num_samples
        if cfg.data == "synthetic":
            return effective_samples(n, cfg.height, cfg.width)
        return n

    def train_batch(self, position: int, num_samples: int, reg_scale: float = 1.0) -> dict:
        """Batch of one frame (the paper's batch size) for training step ``position``.

        Frames follow a fresh seeded permutation each epoch and the LiDAR draw
        depends on (seed, frame, epoch), so a resumed run sees the same data.
        ``reg_scale`` multiplies the original's L2 term (traced: no recompile).
        """
        n = len(self.train)
        epoch, i = divmod(int(position), n)
        index = int(np.random.default_rng([self.seed, epoch]).permutation(n)[i])
        rng = frame_rng(self.seed, index, epoch + 1)
        frames, gt = preprocess_sample(self.train[index], self.dataset_type, num_samples, rng)
        return {"frames": frames[None], "gt": gt[None],
                "reg_scale": np.float32(reg_scale)}

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


def load_study_data(cfg: StudyConfig, root: Path) -> StudyData:
    """Decodes the train/val splits of ``root`` into memory.

    KITTI uses the original release's 180/20 split; the synthetic world a 9:1
    split of its own (see ``write_nine_to_one_split``). The validation frames' ground
    truth follows ``cfg.validity``; the training frames' the original's.
    """
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
                     "KITTI", cfg.seed, cfg.validity)
