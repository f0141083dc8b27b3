"""The one trainer: a compiled train step and evaluation for every configuration.

Pruning masks, weight bit widths and the learning rate all live in the train
state (``QuantState(bits, ..., MaskState(masks, ..., adam with injected lr))``),
so dense, pruned, quantized and hybrid runs, post-training and aware, share the
same two XLA executables: a sweep compiles once, not once per configuration.
A bit width of 0 keeps a tensor in float. The learning rate is a hyperparameter
in the state (:func:`set_learning_rate`): the one mechanism for the paper's phases
(1e-4, then 1e-5) and for any schedule.

:func:`fit` (:meth:`Trainer.fit`) is the one fine-tuning loop, which every caller reaches
through :mod:`.recipe` (pre-training, fine-tuning): phases of steps at a learning rate
each, validation every ``eval_every`` steps and at the end of a phase, the best state by
a validation metric kept (the original's model selection: the lowest SF outlier rate), a
non-finite loss or parameters stopping it with :class:`DivergenceError`.

Data parallel: ``Trainer(devices=n)`` (or a device list or mesh) splits every
batch over a 1-D mesh of ``n`` devices and keeps the train state (parameters,
masks, bit widths, Adam) replicated (``deepliflow_jax.train.sharding``); the
result equals the one-device run up to float summation order.

Structured models: ``Trainer(widths=...)`` trains a physically smaller network;
``Trainer(channel_masked=True)`` trains the full network with pruned channels
zeroed at every producer (``batch["channel_masks"]``, see
``deepliflow_jax.compress.structured.mask_outputs``), one executable for every
pruning ratio.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from deepliflow_jax.compress.prune import SELECT_ALL
from deepliflow_jax.compress.quantize import QuantConfig
from deepliflow_jax.compress.structured import mask_outputs
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
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, check_conv_impl
from deepliflow_jax.model.widths import freeze_widths
from deepliflow_jax.train.resume import Checkpointer
from deepliflow_jax.train.sharding import (
    jit_step,
    make_mesh,
    replicate,
    replicated,
    shard_batch,
)
from deepliflow_jax.train.state import TrainState, create_train_state
from deepliflow_jax.train.step import make_train_step
from deepliflow_jax.train.tf_adam import TF1AdamState, tf1_adam

# the trainer's optimizers: optax's Adam, or TF1's (the original's train.py; see tf_adam)
OPTIMIZERS = {"adam": optax.adam, "tf1_adam": tf1_adam}


class DivergenceError(FloatingPointError):
    """Fine-tuning produced a non-finite loss or non-finite parameters; no weights are kept.

    Attributes:
      step: the step whose loss was non-finite, or after which the parameters were.
      lr: the learning rate of that step.
      reason: what was non-finite.
    """

    def __init__(self, step: int, lr: float, reason: str):
        self.step, self.lr, self.reason = int(step), float(lr), reason
        #: the validations before the divergence (set by :meth:`Trainer.fit`)
        self.history: list[dict] = []
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


class Phase(NamedTuple):
    """Steps at one learning rate (the paper: ``Phase("lr1", 1e-4, n), Phase("lr2", 1e-5, m)``)."""

    name: str
    lr: float
    steps: int


class FitResult(NamedTuple):
    """What :meth:`Trainer.fit` returns.

    Attributes:
      state: the selected train state on the host: the best by validation when
        ``fit`` evaluates, else the last one.
      history: one dict per validation: ``{"step": steps done, "phase", **metrics}``.
      per_phase: ``{phase name: metrics of the state selected so far}`` at each phase end
        (empty without evaluation).
      steps: steps taken.
      selected_step: the step count of ``state``.
    """

    state: Any
    history: list[dict]
    per_phase: dict[str, dict]
    steps: int
    selected_step: int


def kitti_training_loss(outputs: Any, batch: Mapping) -> jnp.ndarray:
    """The trainer's default loss: the original's multi-scale KITTI loss
    (``losses.kitti_loss``) of DeepLiDARFlow's level flows (``outputs[1]["flows"]``)
    against ``batch["gt"]``."""
    return kitti_loss(outputs[1]["flows"], batch["gt"])


class Trainer:
    """Train/eval machinery for one architecture and network input size.

    The model and the loss are arguments (defaults: DeepLiDARFlow, the KITTI loss), so
    that the loop is tested with a small model. A model is a flax module whose
    ``apply({"params": p}, frames, interp_size, out_size=None)`` returns ``(scene flow
    [B, H, W, 4], aux)`` (``out_size``: the ground truth's ``(H, W)``; the prediction
    is evaluated against ``batch["gt"]`` as DeepLiDARFlow's); a loss is
    ``(outputs, batch) -> scalar`` or ``(scalar, {name: scalar})``, the mean over the
    batch; the original's L2 term (``losses.l2_regularizer``, conv kernels) is added.

    Args:
      interp_size: network input size (None: the frames' size).
      seed: training RNG seed.
      widths: channel widths of a structured model (None: the original network).
      channel_masked: train the full network under channel masks that every batch
        carries as ``batch["channel_masks"]`` (``{group: 0/1 [width]}``).
      dtype: compute dtype of the network (parameters and updates stay float32).
      devices: data parallel over a count of this process's devices, a device list or
        a ``jax.sharding.Mesh`` with a ``"data"`` axis (None: one device). Training
        batches must divide over them; evaluation batches that do not run replicated.
      optimizer: ``"adam"`` (``optax.adam``) or ``"tf1_adam"`` (TF 1.x's ``ApplyAdam``,
        the original's; its state can continue a TF checkpoint's, see ``new_state``).
      conv_impl: the network's conv implementation (``deepliflow_jax.model.layers``;
        default ``"auto"``, the fastest exact form on the backend, resolved when the
        step is traced; ``"xla"``, the plain reference; any explicit form wins).
      model: the network (None: ``DeepLiDARFlow(widths, dtype, conv_impl)``); a given
        model is used as it is (``widths``, ``dtype`` and ``conv_impl`` must be left
        at their defaults).
      loss: the data loss (None: :func:`kitti_training_loss`).

    Raises:
      ValueError: widths with ``channel_masked``, a device count this process does
        not have, an unknown optimizer, or a ``model`` with ``widths``, ``dtype`` or
        ``conv_impl``.
    """

    def __init__(self, interp_size: tuple[int, int] | None = None, seed: int = 0,
                 widths: Any = None, channel_masked: bool = False, dtype: Any = jnp.float32,
                 devices: int | Sequence[jax.Device] | Mesh | None = None,
                 optimizer: str = "adam", conv_impl: str = CONV_IMPL_DEFAULT,
                 model: Any = None, loss: Callable[[Any, Any], Any] | None = None):
        if channel_masked and widths is not None:
            raise ValueError("channel-masked training runs the full model: widths must be None")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if model is not None and (widths is not None or jnp.dtype(dtype) != jnp.float32
                                  or conv_impl != CONV_IMPL_DEFAULT):
            raise ValueError("widths, dtype and conv_impl build the default DeepLiDARFlow: "
                             "leave them at their defaults with a given model")
        self.optimizer = optimizer
        #: the 1-D data-parallel mesh every step and evaluation runs on
        self.mesh = devices if isinstance(devices, Mesh) else make_mesh(
            1 if devices is None else devices)
        self.model = model if model is not None else DeepLiDARFlow(
            widths=freeze_widths(widths), dtype=dtype, conv_impl=conv_impl)
        self.loss = kitti_training_loss if loss is None else loss
        self.interp_size = interp_size
        self.seed = seed
        self.channel_masked = channel_masked
        self.quant = QuantConfig(bits=16, include=SELECT_ALL)
        self.tx = self._tx(1e-4, None)
        #: the pure step ``(state, batch) -> (state, metrics)``: the loss (the original's
        #: KITTI loss by default) plus the original's L2 term (scaled by
        #: ``batch["reg_scale"]``), Adam through the compression transform; jitted with
        #: donation as :meth:`train_step`
        self.step_fn = make_train_step(self._apply, self._loss, self.tx,
                                       regularizer=lambda p: l2_regularizer(p))
        self._step = jit_step(self.step_fn, self.mesh, donate=True)
        self._eval = jax.jit(self._eval_counts, static_argnames="validity")
        #: :meth:`forward_fn` jitted once (the study times every configuration with it)
        self.forward = jax.jit(self.forward_fn)
        self._init = jax.jit(self._init_fn, out_shardings=replicated(self.mesh))

    # -- functions traced once -------------------------------------------------
    def _channel_masks(self, batch: Mapping) -> contextlib.AbstractContextManager:
        if self.channel_masked:
            return mask_outputs(batch["channel_masks"])
        return contextlib.nullcontext()

    def _apply(self, params, batch, rng):
        del rng
        gt = batch["gt"]
        with self._channel_masks(batch):
            return self.model.apply({"params": params}, batch["frames"], self.interp_size,
                                    gt.shape[1:3])

    def _loss(self, outputs, batch):
        return self.loss(outputs, batch)

    def _eval_counts(self, params, opt_state, batch, validity="original"):
        fwd = forward_params(self.tx, params, opt_state)
        gt = batch["gt"]
        with self._channel_masks(batch):
            sf, _ = self.model.apply({"params": fwd}, batch["frames"], self.interp_size,
                                     gt.shape[1:3])
        return frame_counts(sf, gt, None, batch.get("valid"), validity), sf

    def forward_fn(self, params: Any, frames: jnp.ndarray) -> jnp.ndarray:
        """The pure forward ``(params, frames [B, 2, H, W, 4]) -> scene flow [B, H, W, 4]``.

        ``params`` as the forward pass uses them (:meth:`compressed_params`): what the
        run-time timer compiles.
        """
        return self.model.apply({"params": params}, frames, self.interp_size)[0]

    # -- state -----------------------------------------------------------------
    def _tx(self, lr: float, masks: Any):
        return compress(optax.inject_hyperparams(OPTIMIZERS[self.optimizer])(learning_rate=lr),
                        masks=masks, quant=self.quant)

    def new_state(self, params: Any, *, lr: float = 1e-4, masks: Any = None,
                  bits: Any = 0, adam: TF1AdamState | None = None) -> TrainState:
        """A fresh train state: Adam at ``lr``, ``masks`` (None = dense), ``bits`` (0 = float):
        one width for every leaf, or a tree of per-leaf widths like ``params``.

        ``adam``: a ``tf1_adam`` trainer's starting Adam state (e.g. the original's,
        ``tf_adam.state_from_checkpoint``) instead of zeros; moments of pruned entries
        are zeroed. Raises ``ValueError`` for another optimizer.
        """
        if isinstance(bits, int | np.integer):
            bits_tree = jax.tree.map(lambda _: np.int32(bits), params)
        else:
            bits_tree = jax.tree.map(lambda _, b: np.asarray(b, np.int32), params, bits)
        state = self._init(params, masks, bits_tree, np.float32(lr))
        if adam is None:
            return state
        if self.optimizer != "tf1_adam":
            raise ValueError("a starting Adam state (adam=...) continues TF1's Adam: use "
                             f"Trainer(optimizer='tf1_adam'), not {self.optimizer!r}")
        m = find_state(state.opt_state, MaskState).masks
        keep = lambda t: jax.tree.map(  # noqa: E731
            lambda x, k: jnp.where(k, jnp.asarray(x, jnp.float32), 0.0), t, m)
        own = lambda x: jnp.array(x, copy=True)  # noqa: E731 (a step donates its state)
        opt_state = _replace_state(state.opt_state, TF1AdamState, count=own(adam.count),
                                   mu=keep(adam.mu), nu=keep(adam.nu),
                                   beta1_power=own(adam.beta1_power),
                                   beta2_power=own(adam.beta2_power))
        return replicate(state._replace(opt_state=opt_state), self.mesh)

    def _init_fn(self, params: Any, masks: Any, bits: Any, lr: Any) -> TrainState:
        # traced once per tree structure: eagerly, the ~2,000 small ops of Adam's,
        # the masks' and the bit widths' initial state took ~1 s per configuration.
        # The outputs are new buffers: a donating step never deletes the caller's
        # parameters or masks.
        state = create_train_state(params, self._tx(lr, masks), self.seed)
        return state._replace(opt_state=_replace_state(state.opt_state, QuantState,
                                                       bits=bits))

    def place(self, state: Any) -> Any:
        """``state`` replicated on this trainer's mesh (unchanged if it already is there)."""
        leaf = jax.tree.leaves(state)[0]
        devices = set(self.mesh.devices.flat)
        if isinstance(leaf, jax.Array) and leaf.sharding.device_set == devices:
            return state
        return replicate(state, self.mesh)

    @staticmethod
    def masks_of(state: TrainState) -> Any:
        return find_state(state.opt_state, MaskState).masks

    def compressed_params(self, state: TrainState) -> Any:
        """The params the forward pass uses (masked, fake-quantized), on the host."""
        # placed like the step's states, so that every caller shares one trace
        return jax.device_get(jax.jit(forward_params, static_argnums=0)(
            self.tx, *self.place((state.params, state.opt_state))))

    # -- work ------------------------------------------------------------------
    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One optimizer step; ``batch`` is split over the mesh's devices.

        Raises:
          ValueError: the batch does not divide over the devices ("batch leaf with shape
            ... does not split over N local devices ...").
        """
        batch = shard_batch(batch, self.mesh, unbatched=("channel_masks",))
        return self._step(self.place(state), batch)

    def evaluate(self, state: TrainState, batches: list[dict], keep_outputs: bool = False,
                 validity: str = "original", with_counts: bool = False):
        """EPE and outlier rates over ``batches`` (see ``deepliflow_jax.metrics``).

        Args:
          state: the train state (its masks and bit widths apply).
          batches: dicts with ``frames``, ``gt`` and, for ``"devkit"``, ``valid``.
          keep_outputs: also return the predictions (one array per batch).
          validity: ``"original"`` (frame-averaged, as the original) or ``"devkit"``
            (per-quantity validity, pixels pooled over the set).
          with_counts: also return the per-frame counts the metrics are pooled from
            (``metrics.frame_counts``' keys, float32 ``[frames]`` each; e.g. for
            ``metrics.bootstrap_interval``). The metrics are the same either way.

        Returns:
          ``{'epe', 'd0', 'd1', 'fl', 'sf', 'nonfinite'}``, then the outputs (with
          ``keep_outputs``), then the counts (with ``with_counts``), as a tuple when
          either is asked for.

        Raises:
          ValueError: unknown ``validity``, or ``"devkit"`` with a batch without ``valid``.
        """
        devkit = check_validity(validity) == "devkit"
        counts, outputs = [], []
        for b in batches:
            if devkit and "valid" not in b:
                raise ValueError("validity='devkit' needs each batch's 'valid' masks "
                                 "(Dataset.val_batches provides them)")
            batch = {k: b[k] for k in ("frames", "gt", "channel_masks") if k in b}
            if devkit:
                batch["valid"] = b["valid"]
            c, sf = self._eval(*self.place((state.params, state.opt_state)),
                               self._eval_batch(batch), validity=validity)
            counts.append(jax.device_get(c))
            if keep_outputs:
                outputs.append(np.asarray(sf))
        merged = {k: np.concatenate([c[k] for c in counts]) for k in counts[0]}
        with np.errstate(divide="ignore", invalid="ignore"):
            metrics = as_floats(metrics_from_counts(merged, default_aggregate(validity)))
        extra = (outputs,) * keep_outputs + (merged,) * with_counts
        return (metrics, *extra) if extra else metrics

    def _eval_batch(self, batch: dict) -> dict:
        # split like a training batch when it divides over the devices, else replicated
        if len(batch["gt"]) % self.mesh.size:
            return replicate(batch, self.mesh)
        return shard_batch(batch, self.mesh, unbatched=("channel_masks",))

    def fit(self, state: TrainState, batch_fn: Callable[[int], dict], phases: Sequence[Phase],
            **kwargs: Any) -> FitResult:
        """:func:`fit` with this trainer's compiled step (same arguments after ``state``)."""
        return fit(self.train_step, state, batch_fn, phases, **kwargs)


def set_learning_rate(state: TrainState, lr: float) -> TrainState:
    """``state`` with the learning rate of its ``optax.inject_hyperparams`` optimizer set.

    The learning rate is a traced value in the optimizer state: changing it never
    recompiles the step. The new value keeps the old one's placement (a replicated
    state stays replicated): an uncommitted scalar would give the jitted step another
    input type, hence a second trace and compile of the whole network.
    """
    def swap(node):
        hp = dict(node.hyperparams)
        old, new = hp["learning_rate"], jnp.asarray(lr, jnp.float32)
        hp["learning_rate"] = (jax.device_put(new, old.sharding)
                               if isinstance(old, jax.Array) else new)
        return node._replace(hyperparams=hp)

    is_inj = lambda n: hasattr(n, "hyperparams") and hasattr(n, "inner_state")  # noqa: E731
    opt = jax.tree.map(lambda n: swap(n) if is_inj(n) else n, state.opt_state, is_leaf=is_inj)
    return state._replace(opt_state=opt)


def fit(train_step: Callable[[TrainState, Any], tuple[TrainState, dict]], state: TrainState,
        batch_fn: Callable[[int], Any], phases: Sequence[Phase], *,
        evaluate: Callable[[TrainState], dict] | None = None, eval_every: int = 0,
        select: str = "sf", start: int = 0,
        on_step: Callable[[int, dict], None] | None = None,
        on_eval: Callable[[int, dict], None] | None = None,
        progress: Callable[[Iterable, int, str], Iterable] | None = None,
        checkpointer: Checkpointer | None = None,
        restart_from_best: bool = False,
        on_first_step: Callable[[float], None] | None = None) -> FitResult:
    """The fine-tuning loop: ``phases`` of optimizer steps, best state by validation.

    Each phase sets its learning rate in the state (:func:`set_learning_rate`) and
    takes its steps on ``batch_fn(position)``, positions counting on from
    ``start``. With ``evaluate``, the state is validated every ``eval_every``
    steps of a phase and after its last step; the state with the lowest
    ``metrics[select]`` is kept (the first validation always replaces the
    starting state: something fine-tuned is returned), and each phase ends by
    evaluating that state (``per_phase``). The original's model selection
    (``train.py``: keep the checkpoint of the lowest validation SF outlier rate)
    is ``select="sf"``.

    Losses are checked where the loop waits for the device anyway (at each
    validation and at the end of a phase), and the parameters with them.

    With a ``checkpointer`` the run resumes: the latest checkpoint (if any)
    replaces ``state`` and the steps it holds are skipped, the best one restores
    the selection; the state is saved on the checkpointer's ``save_every`` grid,
    at every validation (with its metrics) and after the last step.

    Args:
      train_step: ``(state, batch) -> (state, metrics)``, jitted (e.g.
        :meth:`Trainer.train_step`); its optimizer is an ``inject_hyperparams`` one.
      state: the starting state (donated by a donating step: do not reuse it).
      batch_fn: data position -> batch.
      phases: :class:`Phase` list.
      evaluate: train state -> validation metrics (e.g.
        ``lambda s: trainer.evaluate(s, val_batches)``); None: no selection, the last
        state is returned.
      eval_every: validate every this many steps of a phase (0: at phase ends only).
      select: the metric minimised by the selection.
      start: data position of the first step.
      on_step: called after every step with ``(position, metrics)`` (device arrays:
        fetching them waits for the step).
      on_eval: called at every validation with ``(steps done, values)``: the step's
        metrics, ``val_*`` metrics and ``lr``.
      progress: wraps each phase's ``range`` of steps (e.g. a progress bar), given the
        iterable, its length and the phase's name. With ``on_first_step`` the run's first
        step is taken before the bar starts: the bar's rate counts steps, not the compile.
      checkpointer: a :class:`~deepliflow_jax.train.resume.Checkpointer` whose
        ``best_metric`` is ``select`` (or None), to resume an interrupted run.
      restart_from_best: each phase after the first starts from the best state so far
        (its parameters and optimizer state; the step count, RNG and data position go
        on), the selection carried over: the original's second phase, ``train.py
        --best_checkpoint True`` (``load_model`` restores the best checkpoint of
        ``utils/checkpointsaver.py``'s ``best_checkpoints``, whose bookkeeping the new
        ``BestCheckpointSaver`` keeps). Without a validation yet, the phase goes on from
        the last state.
      on_first_step: called once with the wall time (s) of this invocation's first step,
        waited for: compiling the train step (or loading it from the compilation cache)
        plus one step, to be reported apart from the step rate.

    Returns:
      :class:`FitResult` (``history`` holds this invocation's validations).

    Raises:
      DivergenceError: a non-finite loss or non-finite parameters, naming the step
        (counted from 1 within the run) and the learning rate.
      ValueError: a checkpointer that keeps the best by another metric.
    """
    history: list[dict] = []
    try:
        return _fit(train_step, state, batch_fn, phases, history=history, evaluate=evaluate,
                    eval_every=eval_every, select=select, start=start, on_step=on_step,
                    on_eval=on_eval, progress=progress, checkpointer=checkpointer,
                    restart_from_best=restart_from_best, on_first_step=on_first_step)
    except DivergenceError as err:
        err.history = history
        raise


def _steps(steps: range, name: str, progress, first_apart: bool) -> Iterable[int]:
    """``steps``, through ``progress``; with ``first_apart`` the first one before the bar
    starts (it is created after that step ran, so it never counts the compile)."""
    if first_apart:
        yield from steps[:1]
        steps = steps[1:]
    yield from progress(steps, len(steps), name) if progress else steps


def _fit(train_step, state, batch_fn, phases, *, history: list[dict], evaluate, eval_every: int,
         select: str, start: int, on_step, on_eval, progress, checkpointer,
         restart_from_best: bool, on_first_step) -> FitResult:
    """:func:`fit`'s loop (its arguments by keyword); ``history`` is filled as it goes, so
    that a :class:`DivergenceError` can carry the validations before it."""
    per_phase: dict[str, dict] = {}
    best_value, best_state, selected = math.inf, None, 0
    first_step = int(state.step)
    done = 0
    if checkpointer is not None:
        if checkpointer.best_metric not in (None, select):
            raise ValueError(f"the checkpointer keeps the best by {checkpointer.best_metric!r}, "
                             f"the selection is by {select!r}")
        restored, _ = checkpointer.restore(state)
        if restored is not None:
            state, done = restored, int(restored.step) - first_step
        if checkpointer.best_metric is not None and checkpointer.best_step() is not None:
            best_state, meta = checkpointer.restore_best(state)
            best_state = jax.device_get(best_state)
            best_value = float(meta["metrics"][select])
            selected = int(best_state.step) - first_step
    total = sum(p.steps for p in phases)
    offset = 0  # steps of the phases before this one
    for number, phase in enumerate(phases):
        skip = min(max(done - offset, 0), phase.steps)
        offset += phase.steps
        if skip == phase.steps:
            continue
        if restart_from_best and number and not skip and best_state is not None:
            state = state._replace(params=best_state.params, opt_state=best_state.opt_state)
        state = set_learning_rate(state, phase.lr)
        pending: list[tuple[int, Any]] = []  # losses still on the device
        first_apart, t_first = on_first_step is not None, time.perf_counter()
        for i in _steps(range(skip, phase.steps), phase.name, progress, first_apart):
            pos = int(start) + done
            state, metrics = train_step(state, batch_fn(pos))
            if on_step is not None:
                on_step(pos, metrics)
            if on_first_step is not None:
                jax.block_until_ready(metrics["loss"])
                on_first_step(time.perf_counter() - t_first)
                on_first_step = None
            done += 1
            pending.append((done, metrics["loss"]))
            last = i + 1 == phase.steps
            val = None
            if evaluate is not None and (last or (eval_every and (i + 1) % eval_every == 0)):
                check_training([d for d, _ in pending], [x for _, x in pending], phase.lr,
                               state.params)
                pending = []
                val = evaluate(state)
                if on_eval is not None:
                    on_eval(done, {**{k: float(v) for k, v in jax.device_get(metrics).items()},
                                   **{f"val_{k}": v for k, v in val.items()}, "lr": phase.lr})
                history.append({"step": done, "phase": phase.name, **val})
                if val[select] < best_value:
                    best_value, best_state, selected = val[select], jax.device_get(state), done
            if checkpointer is not None:
                checkpointer.save(state, metrics=val, force=val is not None or done == total)
        if pending:
            check_training([d for d, _ in pending], [x for _, x in pending], phase.lr,
                           state.params)
        if evaluate is not None and best_state is not None:
            per_phase[phase.name] = evaluate(best_state)
    if checkpointer is not None:
        checkpointer.wait()
    if best_state is None:
        best_state, selected = jax.device_get(state), done
    return FitResult(best_state, history, per_phase, done, selected)


def get_trainer(interp_size: tuple[int, int] | None = None, seed: int = 0,
                devices: int | Sequence[jax.Device] | None = None,
                optimizer: str = "adam", widths: Mapping[str, int] | None = None,
                conv_impl: str = CONV_IMPL_DEFAULT) -> Trainer:
    """A shared :class:`Trainer`, so that the study, the API and a resumed study in the
    same process do not compile again.

    ``devices``, ``optimizer``, ``widths`` and ``conv_impl`` as :class:`Trainer`'s
    (None: one device, the original network; ``"auto"``: the fastest exact form).
    """
    mesh = make_mesh(1 if devices is None else devices)
    # one cache key however the arguments are spelled
    return _shared_trainer(None if interp_size is None else tuple(interp_size), int(seed),
                           tuple(mesh.devices.flat), optimizer, freeze_widths(widths),
                           check_conv_impl(conv_impl))


@functools.lru_cache(maxsize=4)
def _shared_trainer(interp_size, seed, devices, optimizer, widths, conv_impl) -> Trainer:
    return Trainer(interp_size, seed, widths=widths, devices=list(devices), optimizer=optimizer,
                   conv_impl=conv_impl)


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
