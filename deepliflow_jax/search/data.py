"""The data a compression run needs, and the trained dense model it starts from."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from deepliflow_jax.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from deepliflow_jax.study.config import make_config
from deepliflow_jax.study.data import load_study_data, make_synthetic
from deepliflow_jax.train.recipe import pretrain
from deepliflow_jax.train.trainer import Trainer


@dataclasses.dataclass
class TradeoffData:
    """What the run needs from the data: training batches, the validation batch, calibration."""

    train_batch: Callable[[int, int], dict]
    val: dict
    samples: int
    description: str


def synthetic_data(data_dir: str | os.PathLike, seed: int = 0) -> TradeoffData:
    """The study's synthetic KITTI-format world (``demo`` preset: 80 scenes, 64x192).

    Generated into ``data_dir`` if missing (as the study does); split 9:1.
    """

    cfg = make_config("demo", seed=seed)
    root = Path(data_dir)
    make_synthetic(cfg, root, progress=False)
    data = load_study_data(cfg, root)
    n = data.samples_for(cfg)
    val = data.val_batches(n)
    if len(val) != 1:
        raise ValueError(f"expected one validation batch of equal-size frames, got {len(val)}")
    desc = (f"synthetic KITTI-format world ({root}): {len(data.train)} training / "
            f"{len(data.val)} validation frames at {cfg.height}x{cfg.width}, {n} LiDAR points "
            "per frame")
    return TradeoffData(data.train_batch, val[0], n, desc)


def data_beside(checkpoint: str | os.PathLike, data_dir: str | os.PathLike | None,
                workdir: str | os.PathLike, seed: int = 0) -> TradeoffData:
    """:func:`synthetic_data` from ``data_dir``; None: the world next to ``checkpoint`` (a
    study's ``synthetic_kitti``) when there is one, else ``workdir/synthetic_kitti``."""
    if data_dir is None:
        sibling = Path(checkpoint).parent / "synthetic_kitti"
        data_dir = sibling if sibling.is_dir() else Path(workdir) / "synthetic_kitti"
    return synthetic_data(data_dir, seed)


def baseline_params(checkpoint: str | os.PathLike | None, data: TradeoffData,
                    cfg: Any, save_to: str | os.PathLike, log=print) -> Any:
    """The trained dense model: ``checkpoint`` if it exists, else pre-trained here (the
    training recipe's :func:`~deepliflow_jax.train.recipe.pretrain`, the study's) and saved.

    ``cfg`` gives ``pretrain_steps``, ``pretrain_lr`` and ``seed`` (a
    :class:`~deepliflow_jax.search.tradeoff.TradeoffConfig`).

    Raises:
      ValueError: the checkpoint is not the original (dense) architecture.
    """
    for path in (checkpoint, save_to):
        if path and checkpoint_exists(path):  # also settles an interrupted save there
            log(f"baseline: {path}")
            return jax.device_get(load_checkpoint(path, widths=None)["params"])
    log(f"baseline: no checkpoint; pre-training {cfg.pretrain_steps} steps at lr "
        f"{cfg.pretrain_lr}")
    n = data.samples
    params = pretrain(Trainer(seed=cfg.seed), lambda pos: data.train_batch(pos, n),
                      cfg.pretrain_steps, cfg.pretrain_lr, seed=cfg.seed,
                      on_first_step=lambda s: log(f"  first step (compile) {s:.0f} s"))
    save_checkpoint(save_to, {"params": params}, {"source": "structured_tradeoff pre-training",
                                                  "pretrain_steps": cfg.pretrain_steps})
    return params
