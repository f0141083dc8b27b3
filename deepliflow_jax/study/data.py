"""The study's data: its synthetic world, and the one data set type built from its config.

Everything about frames, splits and batches is in :mod:`deepliflow_jax.data.dataset`;
here a :class:`~deepliflow_jax.study.config.StudyConfig` is turned into its arguments.
"""

from __future__ import annotations

from pathlib import Path

from deepliflow_jax.data.dataset import Dataset, effective_samples, load_dataset
from deepliflow_jax.data.synthetic import KITTI_SIZE, generate_dataset
from deepliflow_jax.study.config import StudyConfig


def make_synthetic(cfg: StudyConfig, root: Path, progress: bool = True) -> Path:
    """Generates (or completes) the synthetic world for ``cfg`` under ``root``."""
    generate_dataset(root, cfg.num_scenes, cfg.height, cfg.width, seed=cfg.seed,
                     progress=progress)
    return root


def study_dataset(cfg: StudyConfig, root: str | Path) -> Dataset:
    """The data set of ``cfg`` read from ``root`` (a folder, ``str`` or ``Path``).

    A synthetic study splits its ``num_scenes`` frames 9:1 and scales the LiDAR counts to
    its ``height`` x ``width`` (the KITTI density); a KITTI study uses the original
    release's 180/20 split. The training batches follow ``batch_size``, ``crop`` and
    ``augment``; ``Dataset.num_samples`` is ``cfg.num_samples`` at the data set's size.

    Raises:
      FileNotFoundError, ValueError: as :func:`~deepliflow_jax.data.dataset.load_dataset`.
    """
    synthetic = cfg.data == "synthetic"
    size = (cfg.height, cfg.width) if synthetic else KITTI_SIZE
    return load_dataset(root, split="nine_to_one" if synthetic else "original",
                        num_frames=cfg.num_scenes if synthetic else None, frame_size=size,
                        validity=cfg.validity, num_samples=effective_samples(cfg.num_samples,
                                                                             *size),
                        seed=cfg.seed, batch_size=cfg.batch_size, crop=cfg.crop,
                        augment=cfg.augment, max_val_frames=cfg.max_val_frames,
                        interp_size=cfg.interp_size)
