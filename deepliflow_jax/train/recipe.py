"""The training recipe: the one driver of :func:`.trainer.fit` that every caller uses.

* :func:`pretrain`: a model from scratch (the study's synthetic baseline, the compression
  search's and the trade-off's dense baseline when no checkpoint is given);
* :func:`fine_tune`: a given model, its pruning masks, weight bit widths, channel masks
  and starting Adam state held through phases of learning rates, the best state by
  validation kept (the study's aware sweeps and dynamic threshold, ``api.finetune``,
  the search's and the trade-off's fine-tuning of every compressed model).

Both build the train state with :meth:`Trainer.new_state` and run
:meth:`Trainer.fit`; what differs between callers is arguments, not code.

Pre-training's initialisation and L2 term (:data:`PRETRAIN_KERNEL_GAIN`,
:data:`PRETRAIN_L2`) depart from the original's: its ``utils/tf_utils.py``
(``convolution``, ``upconvolution``) draws every kernel with
``xavier_initializer(uniform=False)`` and its ``train.py`` adds the layers' L2 terms to
the loss (``loss_with_L2``) for its 650 epochs on FlyingThings3D. Pre-training here is a
few hundred steps on a small synthetic world standing in for the released weights, and
there the original's choices leave a poor model: with Xavier the signal shrinks through
the deep leaky-ReLU(0.1) chain (level-6 flow ~1e-6 at initialisation,
``model.build.init_params``), and the L2 term drives every weight with a small data
gradient to ~0. Fine-tuning keeps the original's L2 term (``l2=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from deepliflow_jax.model.build import init_params
from deepliflow_jax.model.channels import widths_of
from deepliflow_jax.train.tf_adam import TF1AdamState
from deepliflow_jax.train.trainer import FitResult, Phase, Trainer

#: pre-training's kernel initialisation: He-scaled TF1 Xavier (``init_params(kernel_gain=)``)
PRETRAIN_KERNEL_GAIN = math.sqrt(2.0)
#: pre-training trains without the original's L2 term (see the module docstring)
PRETRAIN_L2 = False


def paper_phases(lr1: float, steps1: int, lr2: float, steps2: int) -> list[Phase]:
    """The paper's two phases: ``steps1`` steps at ``lr1`` (``"lr1"``), then ``steps2`` at
    ``lr2`` (``"lr2"``; the original's README: 1e-4, then 1e-5). A phase of 0 steps is
    skipped by :func:`.trainer.fit`."""
    return [Phase("lr1", lr1, int(steps1)), Phase("lr2", lr2, int(steps2))]


def initial_params(seed: int, widths: Mapping[str, int] | None = None) -> Any:
    """Pre-training's starting point: ``init_params(seed, kernel_gain=PRETRAIN_KERNEL_GAIN,
    widths=widths)["params"]`` (bare tree on the host)."""
    return init_params(seed, kernel_gain=PRETRAIN_KERNEL_GAIN, widths=widths)["params"]


def pretrain(trainer: Trainer, batch_fn: Callable[[int], dict], steps: int, lr: float, *,
             seed: int, widths: Mapping[str, int] | None = None,
             on_step: Callable[[int, dict], None] | None = None,
             progress: Callable[[Iterable, int, str], Iterable] | None = None,
             on_first_step: Callable[[float], None] | None = None) -> Any:
    """A model trained from scratch: :func:`initial_params`, then ``steps`` Adam steps at
    ``lr`` without the L2 term (one phase, ``"pre-train"``, no validation: the last state).

    Args:
      trainer: the trainer of the architecture (``widths``'s).
      batch_fn: data position (from 0) -> training batch.
      steps: number of steps (0: the initialisation is returned).
      lr: learning rate.
      seed: initialisation seed.
      widths: channel widths of a structured model (None: the original network).
      on_step, progress, on_first_step: as :func:`.trainer.fit`'s.

    Returns:
      The bare parameter tree on the host.

    Raises:
      DivergenceError: a non-finite loss or parameters.
    """
    params = initial_params(seed, widths)
    if not steps:
        return params
    fit = fine_tune(trainer, params, batch_fn, [Phase("pre-train", lr, int(steps))],
                    l2=PRETRAIN_L2, on_step=on_step, progress=progress,
                    on_first_step=on_first_step)
    return fit.state.params


def fine_tune(trainer: Trainer, params: Any, batch_fn: Callable[[int], dict],
              phases: Sequence[Phase], *, masks: Any = None, bits: Any = 0,
              adam: TF1AdamState | None = None, l2: bool = True, channel_masks: Any = None,
              evaluate: Callable[[Any], dict] | None = None, eval_every: int = 0,
              select: str = "sf", start: int = 0, restart_from_best: bool = False,
              on_step: Callable[[int, dict], None] | None = None,
              on_eval: Callable[[int, dict], None] | None = None,
              progress: Callable[[Iterable, int, str], Iterable] | None = None,
              on_first_step: Callable[[float], None] | None = None) -> FitResult:
    """Fine-tunes ``params`` through ``phases`` with ``trainer`` (:meth:`Trainer.fit`).

    The train state starts at the first phase's learning rate with ``masks``, ``bits``
    and ``adam`` (:meth:`Trainer.new_state`); each phase sets its rate. The paper's
    protocol is ``paper_phases(1e-4, n, 1e-5, m)``, selection by the validation SF
    outlier rate (``select="sf"``) and, as the original's ``--best_checkpoint`` second
    run, ``restart_from_best=True``.

    Args:
      trainer: the trainer of the architecture (a ``Trainer(channel_masked=True)`` for a
        channel-pruned model trained as the full one).
      params: bare parameter tree to start from (not modified; host or device).
      batch_fn: data position -> batch (``{"frames", "gt", ...}``).
      phases: :class:`Phase` list (at least one).
      masks: unstructured pruning masks like ``params`` (None: dense).
      bits: weight bit width, one for every leaf or a tree like ``params`` (0: float).
      adam: a ``tf1_adam`` trainer's starting Adam state (``tf_adam.state_from_checkpoint``;
        None: fresh).
      l2: keep the original's L2 term in the loss (False: every batch's ``reg_scale`` is 0;
        one executable serves both).
      channel_masks: ``{group: 0/1 [width]}`` for a channel-masked trainer, added to every
        batch (None: all ones, the dense model).
      evaluate, eval_every, select, start, restart_from_best, on_step, on_eval, progress,
        on_first_step: as :func:`.trainer.fit`'s (``evaluate`` takes the train state).

    Returns:
      :class:`FitResult`.

    Raises:
      ValueError: no phases, ``channel_masks`` for a trainer that is not channel-masked,
        ``adam`` for one that is not ``tf1_adam``.
      DivergenceError: a non-finite loss or parameters (its ``history`` holds the
        validations before it).
    """
    if not phases:
        raise ValueError("phases is empty: give at least one Phase(name, lr, steps)")
    if channel_masks is not None and not trainer.channel_masked:
        raise ValueError("channel_masks needs a Trainer(channel_masked=True)")
    if trainer.channel_masked and channel_masks is None:
        channel_masks = {k: np.ones(v, np.float32) for k, v in widths_of(params).items()}
    extra: dict[str, Any] = {}
    if not l2:
        extra["reg_scale"] = np.float32(0.0)  # traced: no second executable
    if channel_masks is not None:
        extra["channel_masks"] = channel_masks

    def batch(pos: int) -> dict:
        b = batch_fn(pos)
        return {**b, **extra} if extra else b

    state = trainer.new_state(params, lr=phases[0].lr, masks=masks, bits=bits, adam=adam)
    return trainer.fit(state, batch, phases, evaluate=evaluate, eval_every=eval_every,
                       select=select, start=start, restart_from_best=restart_from_best,
                       on_step=on_step, on_eval=on_eval, progress=progress,
                       on_first_step=on_first_step)
