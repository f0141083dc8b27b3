"""Orbax checkpoints of the whole train state, latest and best.

Two ``orbax.checkpoint.CheckpointManager``s under one directory:

* ``latest/``: every save (rotating, ``max_to_keep``), for resuming.
* ``best/``: only saves whose validation metric improves (``best_metric``, e.g.
  the scene-flow outlier rate, ``best_mode="min"``), for the final model, as the
  original DeepLiDARFlow kept its best checkpoint.

Each checkpoint holds the :class:`~deepliflow_jax.train.state.TrainState` (params,
optimizer state with masks and quantizer bit widths, step, RNG, data position)
and a JSON item (metrics, the static compression config, user metadata). Orbax
writes to a temporary directory and commits it by rename, so a run killed mid-save
leaves the previous checkpoint as the latest complete one; the next ``Checkpointer``
deletes the temporary directory. A step that rotates out is first renamed (atomic)
into ``latest/.deleted`` and only then deleted, so an interrupted deletion never
leaves a half-deleted step among the checkpoints.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from deepliflow_jax.train.state import TrainState

TRASH = ".deleted"  # orbax's todelete_subdir: rotated-out steps are renamed here, then deleted


def abstract_like(state: Any) -> Any:
    """Shape/dtype/sharding skeleton of a state, the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpointer:
    """Latest + best checkpoints of a :class:`TrainState`.

    Args:
      directory: root directory (created).
      max_to_keep: latest checkpoints kept.
      save_every: ``save`` is a no-op unless ``step % save_every == 0`` or forced.
      best_metric: metrics key that selects the best checkpoint (None: no best).
      best_mode: ``"min"`` or ``"max"``.
      metadata: JSON-able dict stored with every checkpoint (e.g. the
        ``QuantConfig.to_dict()``, pruning settings, data config).
      async_save: let Orbax write in the background (``wait`` before reading).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 2,
        save_every: int = 1,
        best_metric: str | None = None,
        best_mode: str = "min",
        metadata: dict[str, Any] | None = None,
        async_save: bool = False,
    ):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.metadata = dict(metadata or {})
        self._latest = ocp.CheckpointManager(
            os.path.join(self.directory, "latest"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
                cleanup_tmp_directories=True, todelete_subdir=TRASH,
            ),
        )
        self._best = None
        self.best_value = None
        if best_metric is not None:
            self._best = ocp.CheckpointManager(
                os.path.join(self.directory, "best"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1,
                    best_fn=lambda m: m[best_metric],
                    best_mode=best_mode,
                    enable_async_checkpointing=async_save,
                    create=True,
                    cleanup_tmp_directories=True,
                    todelete_subdir=TRASH,
                ),
            )
        self._empty_trash()
        if self._best is not None:
            step = self._best.latest_step()
            if step is not None:
                meta = self._best.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                ).meta
                self.best_value = meta["metrics"][best_metric]

    def _empty_trash(self) -> None:
        """Deletes steps that rotated out (renamed into ``TRASH`` first, so never half-seen)."""
        for sub in ("latest", "best"):
            trash = os.path.join(self.directory, sub, TRASH)
            if os.path.isdir(trash):  # errors ignored: an async save may be renaming into it
                shutil.rmtree(trash, ignore_errors=True)

    def _args(self, state: TrainState, metrics: dict[str, Any] | None):
        meta = {
            "step": int(state.step),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "metadata": self.metadata,
        }
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.best_mode == "min" else value > self.best_value

    def save(
        self, state: TrainState, *, metrics: dict[str, Any] | None = None, force: bool = False
    ) -> bool:
        """Saves ``state`` as latest (per ``save_every``) and as best if it improves.

        Args:
          state: the train state.
          metrics: validation metrics at this step (used for the best checkpoint).
          force: save even off the ``save_every`` grid.

        Returns:
          Whether a latest checkpoint was written.
        """
        step = int(state.step)
        saved = False
        if (force or step % self.save_every == 0) and self._latest.latest_step() != step:
            saved = self._latest.save(step, args=self._args(state, metrics), force=True)
        if self._best is not None and metrics and self.best_metric in metrics:
            value = float(metrics[self.best_metric])
            if self._improves(value) and self._best.latest_step() != step:
                self._best.save(step, args=self._args(state, metrics), metrics=metrics, force=True)
                self.best_value = value
        self._empty_trash()
        return saved

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def best_step(self) -> int | None:
        return None if self._best is None else self._best.latest_step()

    def _restore(self, manager, like: TrainState, step: int | None):
        step = manager.latest_step() if step is None else step
        if step is None:
            return None, None
        out = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(like)), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, out.meta

    def restore(self, like: TrainState, step: int | None = None):
        """Restores the latest (or given) checkpoint into ``like``'s structure/shardings.

        Returns:
          ``(state, meta)``, or ``(None, None)`` if there is no checkpoint.
        """
        return self._restore(self._latest, like, step)

    def restore_best(self, like: TrainState):
        """Restores the best checkpoint: ``(state, meta)`` or ``(None, None)``."""
        if self._best is None:
            raise ValueError("this Checkpointer was created without best_metric")
        return self._restore(self._best, like, None)

    def wait(self) -> None:
        """Blocks until background saves are committed."""
        self._latest.wait_until_finished()
        if self._best is not None:
            self._best.wait_until_finished()
        self._empty_trash()

    def close(self) -> None:
        self.wait()
        self._latest.close()
        if self._best is not None:
            self._best.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
