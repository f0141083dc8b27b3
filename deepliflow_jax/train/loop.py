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

from deepliflow_jax.compress.modes import aware_training
from deepliflow_jax.train.checkpoint import Checkpointer
from deepliflow_jax.train.sharding import jit_step, replicate, shard_batch
from deepliflow_jax.train.state import TrainState, create_train_state, paper_optimizer
from deepliflow_jax.train.step import l2_regularizer, make_train_step

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


def fine_tune(
    params: Any,
    apply_fn: Callable[[Any, Any, Any], Any],
    loss_fn: Callable[[Any, Any], Any],
    data_fn: Callable[[int], Any],
    *,
    finetune_steps: int,
    refine_steps: int = 0,
    lr: float = 1e-4,
    refine_factor: float = 0.1,
    percent: float | None = None,
    schedule: Any = None,
    quant: Any = None,
    scope: str = "global",
    include: Any = r".*",
    exclude: Any = None,
    l2_weight: float = 0.0,
    l2_include: Any = r"kernel$",
    eval_fn: Callable[[TrainState], dict[str, float]] | None = None,
    eval_every: int = 0,
    workdir: str | None = None,
    best_metric: str | None = "sf_outlier",
    save_every: int = 1000,
    seed: int = 0,
    mesh: Any = None,
    log_every: int = 100,
    log_fn: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[TrainState, list[dict[str, float]], Any]:
    """The paper's aware-training protocol in one call (resumable).

    Adam at ``lr`` (1e-4) for ``finetune_steps`` (the original's fine-tuning
    length), then ``refine_steps`` at ``lr * refine_factor`` (1e-5); pruning
    (one-shot ``percent`` and/or gradual ``schedule``) and quantization
    (``quant``) held in the optimizer state; the original's L2 term on the
    loss; the best checkpoint by ``best_metric`` (min) of ``eval_fn``.

    Args:
      params: pre-trained params.
      apply_fn, loss_fn: see :func:`deepliflow_jax.train.step.make_train_step`.
      data_fn: ``position -> batch`` (batch 1 in the paper); with ``mesh`` it
        returns host arrays that are sharded here.
      eval_fn: ``state -> metrics`` (e.g. EPE and SF outlier rate of the
        compressed model, via :func:`~deepliflow_jax.train.step.make_eval_fn`).
      workdir: checkpoint directory (None: no checkpoints, no resume).
      mesh: optional data-parallel mesh (:func:`~.sharding.make_mesh`).
      Other args: as in :func:`deepliflow_jax.compress.modes.aware_training`,
        :func:`~.state.paper_optimizer` and :func:`fit`.

    Returns:
      ``(state, history, tx)``: the final state (the best one is in
      ``workdir/best``), the logged records, and the transform (for
      ``tx.forward`` / export).
    """
    inner = paper_optimizer(finetune_steps, lr=lr, refine_factor=refine_factor)
    params, tx = aware_training(
        inner,
        params,
        percent=percent,
        schedule=schedule,
        quant=quant,
        scope=scope,
        include=include,
        exclude=exclude,
    )
    reg = l2_regularizer(l2_weight, l2_include) if l2_weight else None
    step_fn = make_train_step(apply_fn, loss_fn, tx, regularizer=reg)
    state = create_train_state(params, tx, seed)
    if mesh is not None:
        state = replicate(state, mesh)
        step, batches = jit_step(step_fn, mesh), (lambda pos: shard_batch(data_fn(pos), mesh))
    else:
        step, batches = jax.jit(step_fn), data_fn
    ckpt = None
    if workdir is not None:
        quant_meta = getattr(quant, "to_dict", lambda: quant)()
        ckpt = Checkpointer(
            workdir,
            save_every=save_every,
            best_metric=best_metric if eval_fn else None,
            metadata={
                "percent": percent,
                "scope": scope,
                "quant": quant_meta,
                "finetune_steps": finetune_steps,
                "refine_steps": refine_steps,
                "lr": lr,
            },
        )
    try:
        state, history = fit(
            state,
            step,
            batches,
            finetune_steps + refine_steps,
            checkpointer=ckpt,
            eval_fn=eval_fn,
            eval_every=eval_every,
            log_every=log_every,
            log_fn=log_fn,
        )
    finally:
        if ckpt is not None:
            ckpt.close()
    return state, history, tx
