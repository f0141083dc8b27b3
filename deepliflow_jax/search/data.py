"""The data a compression run needs, and the trained dense model it starts from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

from deepliflow_jax.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from deepliflow_jax.data.dataset import Dataset
from deepliflow_jax.study.config import make_config
from deepliflow_jax.study.data import make_synthetic, study_dataset
from deepliflow_jax.train.recipe import pretrain
from deepliflow_jax.train.trainer import Trainer


def data_beside(checkpoint: str | os.PathLike, data_dir: str | os.PathLike | None,
                workdir: str | os.PathLike, seed: int = 0) -> Dataset:
    """The study's synthetic KITTI-format world (``demo`` preset: 80 scenes, 64x192, split
    9:1), generated into ``data_dir`` if missing (as the study does).

    ``data_dir`` None: the world next to ``checkpoint`` (a study's ``synthetic_kitti``) when
    there is one, else ``workdir/synthetic_kitti``. The search uses its training batches
    and its one validation batch (``Dataset.val_batch``).
    """
    if data_dir is None:
        sibling = Path(checkpoint).parent / "synthetic_kitti"
        data_dir = sibling if sibling.is_dir() else Path(workdir) / "synthetic_kitti"
    cfg = make_config("demo", seed=seed)
    root = Path(data_dir)
    make_synthetic(cfg, root, progress=False)
    return study_dataset(cfg, root)


def baseline_params(checkpoint: str | os.PathLike | None, data: Dataset,
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
    n = data.num_samples
    params = pretrain(Trainer(seed=cfg.seed), lambda pos: data.train_batch(pos, n),
                      cfg.pretrain_steps, cfg.pretrain_lr, seed=cfg.seed,
                      on_first_step=lambda s: log(f"  first step (compile) {s:.0f} s"))
    save_checkpoint(save_to, {"params": params}, {"source": "structured_tradeoff pre-training",
                                                  "pretrain_steps": cfg.pretrain_steps})
    return params
