"""The fine-tuning loop: resumable, evaluates, keeps the best checkpoint.

Data come from a deterministic ``data_fn(position) -> batch``; the position is
part of the train state, so a resumed run sees exactly the batches the
uninterrupted run would have seen (with the same RNG, the result is bit-exact on
a given machine). :func:`epoch_order` gives the shuffled-epoch order for batch 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from deepliflow_jax.train.checkpoint import Checkpointer
from deepliflow_jax.train.state import TrainState

log = logging.getLogger(__name__)


def epoch_order(num_examples: int, seed: int = 0) -> Callable[[int], int]:
    """``position -> example index``: a fresh permutation each epoch, reproducible.

    Args:
      num_examples: dataset size.
      seed: shuffling seed.

    Returns:
      A function mapping a global position (0, 1, 2, ...) to an example index.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")

    def index(position: int) -> int:
        epoch, i = divmod(int(position), num_examples)
        perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
        return int(perm[i])

    return index


def fit(
    state: TrainState,
    train_step: Callable[[TrainState, Any], tuple[TrainState, dict[str, Any]]],
    data_fn: Callable[[int], Any],
    num_steps: int,
    *,
    checkpointer: Checkpointer | None = None,
    eval_fn: Callable[[TrainState], dict[str, float]] | None = None,
    eval_every: int = 0,
    log_every: int = 100,
    log_fn: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Runs (or resumes) fine-tuning until ``state.step == num_steps``.

    Args:
      state: initial state; replaced by the latest checkpoint if one exists.
      train_step: jitted ``(state, batch) -> (state, metrics)``.
      data_fn: ``position -> batch`` (already sharded if the step expects it).
      num_steps: total optimizer steps of the run (not of this invocation).
      checkpointer: saves every ``checkpointer.save_every`` steps, at evals (with
        the metrics, for the best checkpoint) and at the end.
      eval_fn: ``state -> metrics`` on the validation set, e.g. EPE and the
        scene-flow outlier rate of the compressed model.
      eval_every: evaluate every this many steps (0: only at the end).
      log_every: log training metrics every this many steps.
      log_fn: receives each log record (default: ``logging.info``).

    Returns:
      ``(state, history)``; history holds the logged records of this invocation.
    """
    emit = log_fn or (lambda r: log.info("%s", r))
    if checkpointer is not None and checkpointer.latest_step() is not None:
        state, _ = checkpointer.restore(state)
        emit({"event": "resumed", "step": int(state.step)})
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    step = start = int(state.step)
    while step < num_steps:
        batch = data_fn(int(state.data_pos))
        state, metrics = train_step(state, batch)
        step += 1
        record = None
        if log_every and step % log_every == 0:
            record = {"step": step, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
            record["steps_per_s"] = (step - start) / max(time.perf_counter() - t0, 1e-9)
        val = None
        if eval_fn is not None and ((eval_every and step % eval_every == 0) or step == num_steps):
            val = {k: float(v) for k, v in eval_fn(state).items()}
            record = {**(record or {"step": step}), **{f"val_{k}": v for k, v in val.items()}}
        if record is not None:
            history.append(record)
            emit(record)
        if checkpointer is not None:
            checkpointer.save(state, metrics=val, force=step == num_steps or val is not None)
    if checkpointer is not None:
        checkpointer.wait()
    return state, history
