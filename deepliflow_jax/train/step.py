"""Pure train / eval steps, generic over ``(apply_fn, loss_fn, tx)``.

The forward pass uses the compressed params the transform dictates
(``tx.forward``: masked, fake-quantized with a straight-through gradient) under
``tx.intercept`` (activation quantization), while gradients flow to and updates
apply to the float master params. Wrap the step in one ``jax.jit`` (or use
:func:`deepliflow_jax.train.sharding.jit_step`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from deepliflow_jax.compress.transforms import forward_params, intercept
from deepliflow_jax.train.state import TrainState

ApplyFn = Callable[[Any, Any, jnp.ndarray], Any]
LossFn = Callable[[Any, Any], Any]


def _split_loss(value: Any) -> tuple[jnp.ndarray, Mapping[str, Any]]:
    if isinstance(value, tuple):
        loss, aux = value
        return loss, dict(aux)
    return value, {}


def make_train_step(
    apply_fn: ApplyFn,
    loss_fn: LossFn,
    tx: Any,
    *,
    regularizer: Callable[[Any], jnp.ndarray] | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jnp.ndarray]]]:
    """Builds ``step(state, batch) -> (state, metrics)``.

    Args:
      apply_fn: ``(params, batch, rng) -> outputs``; receives the *compressed*
        params (e.g. ``lambda p, b, r: model.apply(p, b["frames"])``).
      loss_fn: ``(outputs, batch) -> loss`` or ``(loss, metrics_dict)``; the
        mean over the (global) batch.
      tx: optax transform or :class:`CompressionTransformation` (the same object
        whose ``init`` built ``state.opt_state``).
      regularizer: optional ``params -> scalar`` on the float master params
        (e.g. ``deepliflow_jax.losses.l2_regularizer``, the original's L2 term). A batch that
        is a mapping with a ``reg_scale`` entry scales it (traced, no recompile).

    Returns:
      The pure step. Metrics: ``loss`` (total), ``data_loss``, ``reg``,
      ``grad_norm`` and the loss function's own metrics.
    """

    def objective(params, opt_state, batch, rng):
        fwd = forward_params(tx, params, opt_state)
        with intercept(tx, opt_state):
            outputs = apply_fn(fwd, batch, rng)
        data_loss, aux = _split_loss(loss_fn(outputs, batch))
        reg = regularizer(params) if regularizer is not None else jnp.zeros((), jnp.float32)
        if isinstance(batch, Mapping) and "reg_scale" in batch:
            # a traced scale: runs with and without the L2 term share one executable
            reg = reg * jnp.asarray(batch["reg_scale"], jnp.float32)
        return data_loss + reg, {"data_loss": data_loss, "reg": reg, **aux}

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jnp.ndarray]]:
        rng, step_rng = jax.random.split(state.rng)
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state.opt_state, batch, step_rng
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            rng=rng,
            data_pos=state.data_pos + 1,
        )
        metrics = {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads), **aux}
        return new_state, metrics

    return step


def make_eval_fn(apply_fn: ApplyFn, tx: Any) -> Callable[[TrainState, Any], Any]:
    """``(state, batch) -> outputs`` with the compressed params (what is deployed).

    The RNG passed to ``apply_fn`` is fixed (key 0): evaluation is deterministic.
    """

    def evaluate(state: TrainState, batch: Any) -> Any:
        fwd = forward_params(tx, state.params, state.opt_state)
        with intercept(tx, state.opt_state):
            return apply_fn(fwd, batch, jax.random.PRNGKey(0))

    return evaluate
