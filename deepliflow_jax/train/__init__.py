"""Fine-tuning: the train state, the one train step and trainer, the one recipe
(pre-training, fine-tuning), Orbax train-state checkpoints (resume), data-parallel
sharding."""

from deepliflow_jax.train.recipe import fine_tune, paper_phases, pretrain
from deepliflow_jax.train.resume import Checkpointer, abstract_like
from deepliflow_jax.train.sharding import (
    initialize_distributed,
    jit_step,
    make_mesh,
    replicate,
    shard_batch,
)
from deepliflow_jax.train.state import TrainState, create_train_state
from deepliflow_jax.train.step import make_eval_fn, make_train_step
from deepliflow_jax.train.trainer import (
    DivergenceError,
    FitResult,
    Phase,
    Trainer,
    fit,
    get_trainer,
    set_learning_rate,
)

__all__ = [
    "Checkpointer",
    "DivergenceError",
    "FitResult",
    "Phase",
    "TrainState",
    "Trainer",
    "abstract_like",
    "create_train_state",
    "fine_tune",
    "fit",
    "get_trainer",
    "initialize_distributed",
    "jit_step",
    "make_eval_fn",
    "make_mesh",
    "make_train_step",
    "paper_phases",
    "pretrain",
    "replicate",
    "set_learning_rate",
    "shard_batch",
]
