"""The search's and the trade-off's fine-tuning of a compressed model: the training recipe
(:mod:`deepliflow_jax.train.recipe`) with the search's log lines, per-step losses and
record fields, and the channel-pruned model shrunk after it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from deepliflow_jax.compress.structured import channel_masks, shrink
from deepliflow_jax.model.channels import widths_of
from deepliflow_jax.train import recipe
from deepliflow_jax.train.trainer import Trainer


@dataclasses.dataclass
class FineTuned:
    """A fine-tuning run of the trade-off: the params it selected and how it went.

    Attributes:
      params: bare parameter tree on the host (best by validation, or the last).
      losses: the loss of every step.
      selected_step: the step count of ``params``.
      history: ``[{"step", **validation metrics}]``.
    """

    params: Any
    losses: list[float]
    selected_step: int
    history: list[dict]

    def selection(self) -> dict[str, Any]:
        return {"selected_step": self.selected_step, "validation_history": self.history}


def fine_tune(trainer: Trainer, params: Any, batch_fn: Callable[[int], dict], steps: int,
              lr: float, refine_after: int | None = None, refine_factor: float = 0.1,
              log: Callable[[str], None] = print, channel_masks: Any = None,
              evaluate: Callable[[Any], dict] | None = None, eval_every: int = 0,
              select: str = "sf", masks: Any = None, bits: Any = 0) -> FineTuned:
    """``steps`` Adam steps from ``params`` by the training recipe
    (:func:`deepliflow_jax.train.recipe.fine_tune`), with the search's log lines and
    per-step losses.

    Two ways to fine-tune a pruned model:

    * ``Trainer(widths=...)`` trains the smaller model itself (its own compiled step);
    * ``Trainer(channel_masked=True)`` trains the *full* model with the removed
      channels zeroed at every producer (``structured.mask_outputs``; the masks
      travel in the batch, so one compiled step serves every pruning ratio and
      the dense model), and :func:`.structured.shrink` is applied afterwards.
      Both train the same function: the kept weights get the same gradients and
      Adam updates, and shrinking the fine-tuned full model reproduces it
      exactly (the removed normalized-conv inputs' weight mass, which the masked
      run keeps training, becomes the shrunken layer's ``conf_mass``).

    Args:
      trainer: the trainer of the architecture.
      params: bare parameter tree.
      batch_fn: position -> ``{"frames", "gt"}``.
      steps: number of steps.
      lr: Adam learning rate.
      refine_after: from this step on the rate is ``lr * refine_factor`` (the
        paper's "fine-tune, then refine at a 10x lower rate"); None: constant.
      refine_factor: see ``refine_after``.
      log: progress printer.
      channel_masks: ``{group: 0/1 [width]}`` for a channel-masked trainer (default
        all ones).
      evaluate: params -> validation metrics; with ``eval_every`` > 0 the params are
        evaluated every ``eval_every`` steps of a phase and after its last step, and
        the best by ``select`` are returned (the original's and the study's protocol:
        best validation SF outlier rate). The starting point is not a candidate:
        something fine-tuned is always returned.
      eval_every: see ``evaluate``; 0 returns the last step's params.
      select: the metric minimised by the selection.
      masks, bits: unstructured pruning masks and weight bit widths (one, or a tree
        like ``params``) held in the train state (:meth:`Trainer.new_state`).

    Returns:
      :class:`FineTuned`.

    Raises:
      DivergenceError: a non-finite loss or parameters.
    """
    if steps == 0:
        return FineTuned(params, [], 0, [])
    refine = steps if refine_after is None else min(int(refine_after), steps)
    losses: list[float] = []
    t0 = time.perf_counter()

    def on_step(pos: int, metrics: dict) -> None:
        losses.append(float(metrics["loss"]))
        if pos == 0:
            log(f"  first step (compile) {time.perf_counter() - t0:.0f} s, loss {losses[0]:.3f}")

    validate = None
    if evaluate is not None and eval_every:
        def validate(state):
            return evaluate(jax.device_get(state.params))
    fit = recipe.fine_tune(trainer, params, batch_fn,
                           recipe.paper_phases(lr, refine, lr * refine_factor, steps - refine),
                           masks=masks, bits=bits, channel_masks=channel_masks,
                           evaluate=validate, eval_every=eval_every, select=select,
                           on_step=on_step)
    summary = ""
    if fit.history:
        best = min(h[select] for h in fit.history)
        summary = f"; kept step {fit.selected_step} (best validation {select} {best:.2f})"
    log(f"  {steps} steps in {time.perf_counter() - t0:.0f} s; loss "
        f"{np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f}{summary}")
    history = [{k: v for k, v in h.items() if k != "phase"} for h in fit.history]
    return FineTuned(jax.device_get(fit.state.params), losses, fit.selected_step, history)


def fine_tune_pruned(trainer: Trainer, params: Any, keep: Mapping[str, np.ndarray],
                     batch_fn: Callable[[int], dict], steps: int, lr: float,
                     refine_after: int | None = None, *, masks: Any = None, bits: Any = 0,
                     evaluate: Callable[[Any], dict] | None = None, eval_every: int = 0,
                     log: Callable[[str], None] = print) -> tuple[FineTuned, dict]:
    """A channel-pruned model fine-tuned as the full model under its channel masks, shrunk.

    The one fine-tuning of every pruned model of the search and the trade-off: one
    compiled step (``trainer`` is ``channel_masked``) for every plan; see
    :func:`fine_tune` for the arguments.

    Args:
      params: the dense model's bare parameter tree (with any unstructured pruning
        already applied: ``masks`` then holds it during the steps).
      keep: ``{channel group: kept channel indices}`` (``structured.plan_pruning``).

    Returns:
      ``(run, {'params': shrunk parameters})``.

    Raises:
      ValueError: ``trainer`` is not channel-masked.
    """
    if not trainer.channel_masked:
        raise ValueError("fine_tune_pruned needs a Trainer(channel_masked=True)")
    run = fine_tune(trainer, params, batch_fn, steps, lr, refine_after, log=log,
                    channel_masks=channel_masks(widths_of(params), keep), masks=masks,
                    bits=bits, evaluate=evaluate, eval_every=eval_every)
    return run, shrink({"params": run.params}, keep)[0]
