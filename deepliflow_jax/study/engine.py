"""One compiled train step and one compiled evaluation for every configuration.

Pruning masks, weight bit widths and the learning rate all live in the train
state (``QuantState(bits, ..., MaskState(masks, ..., adam with injected lr))``),
so dense, pruned, quantized and hybrid runs, post-training and aware, share the
same two XLA executables: a sweep compiles once, not once per configuration.
A bit width of 0 keeps a tensor in float.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepliflow_jax.compress.prune import prune
from deepliflow_jax.compress.quantize import QuantConfig
from deepliflow_jax.compress.transforms import (
    MaskState,
    QuantState,
    compress,
    find_state,
    forward_params,
)
from deepliflow_jax.losses import kitti_loss, l2_regularizer
from deepliflow_jax.metrics import (
    as_floats,
    check_validity,
    default_aggregate,
    frame_counts,
    metrics_from_counts,
)
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.train.state import TrainState, create_train_state
from deepliflow_jax.train.step import make_train_step

# The paper prunes and quantizes weights *and* biases of every layer, per tensor.
SELECT_ALL = r".*"


class DivergenceError(FloatingPointError):
    """Fine-tuning produced a non-finite loss or non-finite parameters; no weights are kept.

    Attributes:
      step: the step whose loss was non-finite, or after which the parameters were.
      lr: the learning rate of that step.
      reason: what was non-finite.
    """

    def __init__(self, step: int, lr: float, reason: str):
        self.step, self.lr, self.reason = int(step), float(lr), reason
        super().__init__(f"fine-tuning diverged at step {self.step} (learning rate "
                         f"{self.lr:g}): {reason}; no weights are returned: lower the learning "
                         "rate (the paper fine-tunes at 1e-4, then 1e-5)")

    def __reduce__(self):
        return type(self), (self.step, self.lr, self.reason)


@jax.jit
def _all_finite(tree: Any) -> jnp.ndarray:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_training(steps: Sequence[int], losses: Sequence[Any], lr: float,
                   params: Any = None) -> None:
    """Raises :class:`DivergenceError` at the first non-finite loss, then on bad parameters.

    Call it where the loop already waits for the device (it fetches ``losses``).

    Args:
      steps: the step number of each loss (as the caller's log counts them).
      losses: scalar losses (host floats or device arrays).
      lr: the learning rate of these steps.
      params: optional parameters after the last of them (one jitted ``isfinite``).

    Raises:
      DivergenceError: naming the step and the learning rate.
    """
    for step, loss in zip(steps, jax.device_get(list(losses)), strict=True):
        if not math.isfinite(float(loss)):
            raise DivergenceError(step, lr, f"the loss is {float(loss)}")
    if params is not None and steps and not bool(_all_finite(params)):
        raise DivergenceError(steps[-1], lr, "the parameters are not finite")


def _replace_state(opt_state: Any, kind: type, **fields: Any) -> Any:
    return jax.tree.map(lambda n: n._replace(**fields) if isinstance(n, kind) else n,
                        opt_state, is_leaf=lambda n: isinstance(n, kind))


class Engine:
    """Train/eval machinery for one model size.

    Args:
      interp_size: network input size (None: the frames' size).
      seed: training RNG seed.
    """

    def __init__(self, interp_size: tuple[int, int] | None = None, seed: int = 0):
        self.model = DeepLiDARFlow()
        self.interp_size = interp_size
        self.seed = seed
        self.quant = QuantConfig(bits=16, include=SELECT_ALL)
        self.tx = self._tx(1e-4, None)
        step = make_train_step(self._apply, self._loss, self.tx,
                               regularizer=lambda p: l2_regularizer(p))
        self._step = jax.jit(step, donate_argnums=0)
        self._eval = jax.jit(self._eval_counts, static_argnames="validity")
        self._forward = jax.jit(self._apply_fwd)

    # -- functions traced once -------------------------------------------------
    def _apply(self, params, batch, rng):
        del rng
        gt = batch["gt"]
        return self.model.apply({"params": params}, batch["frames"], self.interp_size,
                                gt.shape[1:3])

    def _loss(self, outputs, batch):
        return kitti_loss(outputs[1]["flows"], batch["gt"])

    def _eval_counts(self, params, opt_state, frames, gt, valid, validity="original"):
        fwd = forward_params(self.tx, params, opt_state)
        sf, _ = self.model.apply({"params": fwd}, frames, self.interp_size, gt.shape[1:3])
        return frame_counts(sf, gt, None, valid, validity), sf

    def _apply_fwd(self, params, frames):
        return self.model.apply({"params": params}, frames, self.interp_size)[0]

    # -- state -----------------------------------------------------------------
    def _tx(self, lr: float, masks: Any):
        return compress(optax.inject_hyperparams(optax.adam)(learning_rate=lr), masks=masks,
                        quant=self.quant)

    def new_state(self, params: Any, *, lr: float = 1e-4, masks: Any = None,
                  bits: int = 0) -> TrainState:
        """A fresh train state: Adam at ``lr``, ``masks`` (None = dense), ``bits`` (0 = float)."""
        state = create_train_state(params, self._tx(lr, masks), self.seed)
        bits_tree = jax.tree.map(lambda _: jnp.asarray(bits, jnp.int32), params)
        return state._replace(opt_state=_replace_state(state.opt_state, QuantState,
                                                       bits=bits_tree))

    @staticmethod
    def set_lr(state: TrainState, lr: float) -> TrainState:
        def swap(node):
            hp = dict(node.hyperparams)
            hp["learning_rate"] = jnp.asarray(lr, jnp.float32)
            return node._replace(hyperparams=hp)

        is_inj = lambda n: hasattr(n, "hyperparams") and hasattr(n, "inner_state")  # noqa: E731
        opt = jax.tree.map(lambda n: swap(n) if is_inj(n) else n, state.opt_state,
                           is_leaf=is_inj)
        return state._replace(opt_state=opt)

    @staticmethod
    def masks_of(state: TrainState) -> Any:
        return find_state(state.opt_state, MaskState).masks

    def compressed_params(self, state: TrainState) -> Any:
        """The params the forward pass uses (masked, fake-quantized), on the host."""
        return jax.device_get(jax.jit(forward_params, static_argnums=0)(
            self.tx, state.params, state.opt_state))

    # -- work ------------------------------------------------------------------
    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return self._step(state, batch)

    def evaluate(self, state: TrainState, batches: list[dict], keep_outputs: bool = False,
                 validity: str = "original"):
        """EPE and outlier rates over ``batches`` (see ``deepliflow_jax.metrics``).

        Args:
          state: the train state (its masks and bit widths apply).
          batches: dicts with ``frames``, ``gt`` and, for ``"devkit"``, ``valid``.
          keep_outputs: also return the predictions (one array per batch).
          validity: ``"original"`` (frame-averaged, as the original) or ``"devkit"``
            (per-quantity validity, pixels pooled over the set).

        Returns:
          ``{'epe', 'd0', 'd1', 'fl', 'sf', 'nonfinite'}`` (and the outputs).

        Raises:
          ValueError: unknown ``validity``, or ``"devkit"`` with a batch without ``valid``.
        """
        devkit = check_validity(validity) == "devkit"
        counts, outputs = [], []
        for b in batches:
            if devkit and "valid" not in b:
                raise ValueError("validity='devkit' needs each batch's 'valid' masks "
                                 "(StudyData.val_batches provides them)")
            c, sf = self._eval(state.params, state.opt_state, b["frames"], b["gt"],
                               b["valid"] if devkit else None, validity=validity)
            counts.append(jax.device_get(c))
            if keep_outputs:
                outputs.append(np.asarray(sf))
        merged = {k: np.concatenate([c[k] for c in counts]) for k in counts[0]}
        with np.errstate(divide="ignore", invalid="ignore"):
            metrics = as_floats(metrics_from_counts(merged, default_aggregate(validity)))
        return (metrics, outputs) if keep_outputs else metrics

    def time_forward(self, params: Any, frames: np.ndarray, repeats: int) -> dict:
        """Median/p10/p90 ms of the jitted forward with these (compressed) params.

        One executable serves every configuration: masked or fake-quantized
        weights are still dense float tensors, so they run the same convolutions.
        """
        frames = jax.device_put(jnp.asarray(frames))
        params = jax.device_put(params)
        jax.block_until_ready(self._forward(params, frames))  # compile / warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(self._forward(params, frames))
            times.append((time.perf_counter() - t0) * 1e3)
        return {"median_ms": float(np.median(times)), "p10_ms": float(np.percentile(times, 10)),
                "p90_ms": float(np.percentile(times, 90)), "repeats": repeats}


@functools.lru_cache(maxsize=4)
def get_engine(interp_size: tuple[int, int] | None = None, seed: int = 0) -> Engine:
    """A shared :class:`Engine`, so a resumed study in the same process does not recompile."""
    return Engine(interp_size, seed)


def enable_compilation_cache(path: str | None = None) -> None:
    """Persists XLA executables across processes (a resumed study skips compiling).

    Sets JAX's process-wide ``jax_compilation_cache_dir`` (and stores only
    executables that took at least 2 s to compile). Leaves an already configured
    cache alone: if ``jax_compilation_cache_dir`` is set (by an earlier call, the
    ``JAX_COMPILATION_CACHE_DIR`` environment variable or the caller), nothing
    changes.

    Args:
      path: cache folder (created by JAX on first use); None means
        ``~/.cache/deepliflow_jax/xla``.

    Returns:
      None.

    Example:
      >>> import jax, os, tempfile
      >>> configured = jax.config.jax_compilation_cache_dir  # e.g. set by the tests
      >>> path = os.path.join(tempfile.mkdtemp(), "xla")
      >>> enable_compilation_cache(path)
      >>> jax.config.jax_compilation_cache_dir == (configured or path)
      True
      >>> enable_compilation_cache(os.path.join(tempfile.mkdtemp(), "other"))  # left alone
      >>> jax.config.jax_compilation_cache_dir == (configured or path)
      True
    """
    if jax.config.jax_compilation_cache_dir:
        return
    path = path or os.path.join(os.path.expanduser("~"), ".cache", "deepliflow_jax", "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def post_training_masks(params: Any, percent: float) -> tuple[Any, Any]:
    """Global percentile pruning of every weight and bias, as the paper."""
    if percent <= 0:
        return params, None
    return prune(params, percent, include=SELECT_ALL, scope="global")[:2]


def zero_fraction(params: Any) -> float:
    """Percentage of exactly-zero values over all parameters.

    Args:
      params: any pytree of arrays (e.g. ``{'params': ...}`` or a pruned tree).

    Returns:
      ``100 * (number of entries == 0) / (number of entries)`` over all leaves,
      a float in [0, 100].

    Raises:
      ZeroDivisionError: ``params`` holds no entries (no leaves, or only empty ones).

    Example:
      >>> import numpy as np
      >>> zero_fraction({"w": np.array([0.0, 1.5, 0.0, -2.0]), "b": np.zeros(4)})
      75.0
      >>> zero_fraction(prune({"w": np.arange(1.0, 11.0)}, 30.0)[0])
      30.0
    """
    leaves = jax.tree.leaves(params)
    zeros = sum(int(np.count_nonzero(np.asarray(x) == 0)) for x in leaves)
    return 100.0 * zeros / sum(int(np.size(x)) for x in leaves)
