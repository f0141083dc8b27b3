"""The train state: what a fine-tuning run carries from step to step.

(The optimizer and the learning-rate phases of the paper's protocol are in
:mod:`.trainer` and :mod:`.tf_adam`; saving and resuming this state in :mod:`.resume`.)

Everything a run needs to continue bit-exactly is in :class:`TrainState`: the
params, the optimizer state (which holds pruning masks and quantizer settings,
see :mod:`deepliflow_jax.compress.transforms`), the step, the RNG and the data
position. It is a plain NamedTuple pytree, so it jits, shards and checkpoints.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


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
