"""Train state and the paper's optimizer / learning-rate protocol.

Everything a run needs to continue bit-exactly is in :class:`TrainState`: the
params, the optimizer state (which holds pruning masks and quantizer settings,
see :mod:`deepliflow_jax.compress.transforms`), the step, the RNG and the data
position. It is a plain NamedTuple pytree, so it jits, shards and checkpoints.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
    """Complete, checkpointable training state.

    Attributes:
      step: number of optimizer steps taken (int32 scalar).
      params: float master parameters.
      opt_state: optimizer state (includes compression state when used).
      rng: raw PRNG key data (uint32[2]), split once per step.
      data_pos: index of the next batch the data function must produce.
    """

    step: jnp.ndarray
    params: Any
    opt_state: Any
    rng: jnp.ndarray
    data_pos: jnp.ndarray


def create_train_state(
    params: Any, tx: Any, seed: int | jnp.ndarray = 0, data_pos: int = 0
) -> TrainState:
    """Builds the initial state.

    Args:
      params: parameter pytree (e.g. pruned pre-trained weights).
      tx: optax transform (or a :class:`CompressionTransformation`).
      seed: int seed, or a PRNG key (typed or raw).
      data_pos: starting data position.

    Returns:
      A :class:`TrainState` at step 0, holding copies of ``params``.
    """
    if isinstance(seed, int):
        rng = jax.random.PRNGKey(seed)
    elif jnp.issubdtype(jnp.asarray(seed).dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(seed)
    else:
        rng = jnp.asarray(seed, jnp.uint32)
    # own copies: train steps donate their state, and must never delete the caller's
    # arrays (e.g. a loaded baseline that later configurations start from again)
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=rng,
        data_pos=jnp.asarray(data_pos, jnp.int32),
    )


def paper_lr_schedule(
    finetune_steps: int,
    *,
    lr: float = 1e-4,
    refine_factor: float = 0.1,
    refine_every: int | None = None,
    num_refines: int = 1,
) -> optax.Schedule:
    """lr for the original's fine-tuning length, then "refine" at ``lr * factor``.

    Alhimdiat et al. fine-tune "with the same learning rate and number of epochs
    as the original" (1e-4) and then refine with a 10x lower rate (1e-5); their
    ablation lowers it 10x "for each 100 epochs". With ``refine_every`` set, the
    rate drops by ``refine_factor`` again every ``refine_every`` steps after
    ``finetune_steps``, ``num_refines`` times in all.

    Returns:
      A piecewise-constant optax schedule.
    """
    if finetune_steps < 0 or num_refines < 1:
        raise ValueError(
            f"need finetune_steps >= 0 and num_refines >= 1, got {finetune_steps}, {num_refines}"
        )
    boundaries = {finetune_steps: refine_factor}
    if refine_every is not None:
        for i in range(1, num_refines):
            boundaries[finetune_steps + i * refine_every] = refine_factor
    return optax.piecewise_constant_schedule(lr, boundaries)


def paper_optimizer(
    finetune_steps: int,
    *,
    lr: float = 1e-4,
    refine_factor: float = 0.1,
    refine_every: int | None = None,
    num_refines: int = 1,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Adam with :func:`paper_lr_schedule` (batch size 1 is the data's business).

    The original's L2 regulariser belongs in the loss (pass it as the train
    step's ``regularizer``), as in the TF original, not as decoupled decay.
    """
    schedule = paper_lr_schedule(
        finetune_steps,
        lr=lr,
        refine_factor=refine_factor,
        refine_every=refine_every,
        num_refines=num_refines,
    )
    return optax.adam(schedule, b1=b1, b2=b2, eps=eps)
