"""Post-training and aware-training compression, and the dynamic-threshold search.

Order when pruning and quantization are combined (both modes): **prune, then
quantize**. Pruning ranks the float magnitudes; the quantizer's scale comes from
the surviving weights (``max|w|`` is unchanged by removing the smallest ones) and
zero is one of its levels, so pruned weights stay exactly zero and quantization
adds the zeros of its zero bin (``|w| < scale / 2``) on top. In aware training the
forward pass sees ``fake_quant(mask * w)`` and the straight-through gradient is
masked, so the float master weights at pruned entries stay 0.0.

* Post-training: :func:`post_training` on a trained model, no data needed.
* Aware training: :func:`aware_training` returns pruned params and an optimizer
  that keeps masks and quantizer settings in its state; fine-tune with
  :func:`deepliflow_jax.train.step.make_train_step`. The paper fine-tunes with
  Adam, batch 1, lr 1e-4 for the original's length, then "refines" at 1e-5.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jax
import optax

from deepliflow_jax.compress.prune import dense_masks, prune, sparsity_report
from deepliflow_jax.compress.quantize import QuantConfig, quantize_tree
from deepliflow_jax.compress.schedules import (
    PruningSchedule,
    dynamic_threshold_init,
    dynamic_threshold_update,
)
from deepliflow_jax.compress.select import Pattern, select
from deepliflow_jax.compress.transforms import CompressionTransformation, compress

log = logging.getLogger(__name__)


def _as_config(quant: QuantConfig | int | None) -> QuantConfig | None:
    if quant is None or isinstance(quant, QuantConfig):
        return quant
    return QuantConfig(bits=quant)


def post_training(
    params: Any,
    *,
    percent: float | None = None,
    quant: QuantConfig | int | None = None,
    scope: str = "global",
    include: Pattern = r".*",
    exclude: Pattern = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Post-training pruning and/or quantization (prune first, then quantize).

    Args:
      params: trained parameter pytree.
      percent: pruning percentage in [0, 100), or None for no pruning.
      quant: a :class:`QuantConfig`, a bit width, or None for float weights.
      scope, include, exclude: pruning scope and selection (quantization uses
        the config's own selection).

    Returns:
      ``(params, masks, report)``; masks are None without pruning. The report
      has ``"pruning"`` (sparsity after pruning), ``"final"`` (after both) and
      ``"quantization_zeros"`` (zeros quantization added on its selection).
    """
    config = _as_config(quant)
    masks = None
    report: dict[str, Any] = {}
    if percent is not None:
        params, masks = prune(params, percent, scope=scope, include=include, exclude=exclude)
        report["pruning"] = sparsity_report(params, masks, include=include, exclude=exclude)
    if config is not None:
        select(params, config.include, config.exclude, what="parameters to quantize")
        before = sparsity_report(params, include=config.include, exclude=config.exclude)
        params = jax.jit(quantize_tree, static_argnums=1)(params, config)
        after = sparsity_report(params, include=config.include, exclude=config.exclude)
        created = after["total"]["zeros"] - before["total"]["zeros"]
        report["quantization_zeros"] = {
            "bits": config.bits,
            "created": created,
            "created_fraction": created / max(after["total"]["size"], 1),
        }
    report["final"] = sparsity_report(params, masks)
    return params, masks, report


def aware_training(
    inner: optax.GradientTransformation,
    params: Any,
    *,
    percent: float | None = None,
    schedule: PruningSchedule | None = None,
    quant: QuantConfig | int | None = None,
    scope: str = "global",
    include: Pattern = r".*",
    exclude: Pattern = None,
) -> tuple[Any, CompressionTransformation]:
    """Sets up compression-aware fine-tuning.

    Args:
      inner: optimizer, e.g. ``optax.inject_hyperparams(optax.adam)(learning_rate=1e-4)``.
      params: trained parameter pytree.
      percent: one-shot pruning before fine-tuning (masks then fixed), or None.
      schedule: gradual pruning during fine-tuning (e.g. polynomial), or None.
      quant: quantization-aware training config / bit width, or None.
      scope, include, exclude: pruning scope and selection.

    Returns:
      ``(params, tx)``: params pruned by ``percent`` and the transform holding
      masks and quantizer settings (initialise it with ``tx.init(params)``).
    """
    masks = None
    if percent is not None:
        params, masks = prune(params, percent, scope=scope, include=include, exclude=exclude)
    tx = compress(
        inner,
        masks=masks,
        schedule=schedule,
        quant=_as_config(quant),
        scope=scope,
        include=include,
        exclude=exclude,
    )
    return params, tx


def dynamic_threshold_prune(
    params: Any,
    evaluate_fn: Callable[[Any], float],
    *,
    finetune_fn: Callable[[Any, Any], Any] | None = None,
    baseline_epe: float | None = None,
    start: float = 5.0,
    increment: float = 5.0,
    tolerance: float = 0.05,
    relative: bool = True,
    backoff: float = 0.5,
    min_increment: float = 1.0,
    max_percent: float = 95.0,
    max_iterations: int = 100,
    scope: str = "global",
    include: Pattern = r".*",
    exclude: Pattern = None,
    log_fn: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Any, Any, tuple[dict[str, Any], ...]]:
    """The paper's dynamic threshold: raise the percentile while EPE holds.

    Each candidate percentile prunes the last *accepted* params further (so a
    rejected step is undone by construction), optionally fine-tunes them, and
    evaluates. See :func:`dynamic_threshold_update` for the accept/back-off rule.

    Args:
      params: trained parameter pytree.
      evaluate_fn: ``params -> validation EPE``.
      finetune_fn: optional ``(params, masks) -> params`` (aware pruning); must
        keep masked entries at zero (fine-tune with
        :func:`~deepliflow_jax.compress.transforms.pruned`).
      baseline_epe: EPE of the uncompressed model (evaluated if None).
      start, increment, tolerance, relative, backoff, min_increment, max_percent:
        see :func:`dynamic_threshold_update`.
      max_iterations: hard cap on evaluations.
      scope, include, exclude: pruning scope and selection.
      log_fn: called with each log entry as it is made (default: logging.info).

    Returns:
      ``(params, masks, log)`` at the highest accepted percentile (the dense
      params and all-True masks if none passed) and the per-step log.
    """
    if baseline_epe is None:
        baseline_epe = float(evaluate_fn(params))
    best_params = params
    best_masks = dense_masks(params)
    state = dynamic_threshold_init(start, increment)
    for _ in range(max_iterations):
        if state.done:
            break
        cand_params, cand_masks = prune(
            best_params,
            state.candidate,
            scope=scope,
            include=include,
            exclude=exclude,
            masks=best_masks,
        )
        if finetune_fn is not None:
            cand_params = finetune_fn(cand_params, cand_masks)
        epe = float(evaluate_fn(cand_params))
        state = dynamic_threshold_update(
            state,
            epe,
            baseline_epe,
            tolerance=tolerance,
            relative=relative,
            backoff=backoff,
            min_increment=min_increment,
            max_percent=max_percent,
        )
        entry = dict(state.log[-1])
        entry["sparsity"] = sparsity_report(cand_params, include=include, exclude=exclude)["total"][
            "sparsity"
        ]
        state = state._replace(log=(*state.log[:-1], entry))
        (log_fn or (lambda e: log.info("dynamic threshold: %s", e)))(entry)
        if entry["accepted"]:
            best_params, best_masks = cand_params, cand_masks
    return best_params, best_masks, state.log
