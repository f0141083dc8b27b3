"""Fine-tuning: pure train step, train state, Orbax checkpoints, sharding, loop."""

from deepliflow_jax.train.checkpoint import Checkpointer, abstract_like
from deepliflow_jax.train.loop import epoch_order, fine_tune, fit
from deepliflow_jax.train.sharding import (
    initialize_distributed,
    jit_step,
    make_mesh,
    replicate,
    shard_batch,
)
from deepliflow_jax.train.state import (
    TrainState,
    create_train_state,
    paper_lr_schedule,
    paper_optimizer,
)
from deepliflow_jax.train.step import l2_regularizer, make_eval_fn, make_train_step

__all__ = [
    "Checkpointer",
    "TrainState",
    "abstract_like",
    "create_train_state",
    "epoch_order",
    "fine_tune",
    "fit",
    "initialize_distributed",
    "jit_step",
    "l2_regularizer",
    "make_eval_fn",
    "make_mesh",
    "make_train_step",
    "paper_lr_schedule",
    "paper_optimizer",
    "replicate",
    "shard_batch",
]
