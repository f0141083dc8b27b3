"""Post-training and aware-training compression.

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

The paper's dynamic threshold (raise the percentile while fine-tuned validation EPE
holds) is the study's ``dynamic_prune`` part, ``deepliflow_jax.study.dynamic``, on the
state machine of :mod:`.schedules`.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from deepliflow_jax.compress.prune import prune, sparsity_report
from deepliflow_jax.compress.quantize import QuantConfig, quantize_tree
from deepliflow_jax.compress.schedules import PruningSchedule
from deepliflow_jax.compress.select import Pattern, select
from deepliflow_jax.compress.transforms import CompressionTransformation, compress


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
