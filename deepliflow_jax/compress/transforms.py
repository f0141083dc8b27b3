"""Optax-style transforms that keep pruning masks and quantizer settings in state.

Like jaxpruner, compression lives in the optimizer state, so one checkpoint of
the train state restores masks and bit widths with the params and moments.

* :func:`pruned` wraps an inner optax transform. Gradients are masked before the
  inner update (so Adam's moments at pruned entries stay exactly zero), the inner
  state's params-shaped subtrees (moments) are masked too, and the outgoing update
  is ``-param`` at pruned entries, so ``optax.apply_updates`` leaves them at
  exactly 0.0 whatever the inner transform does (weight decay included). With a
  schedule (gradual pruning) the masks are recomputed from the params inside the
  jitted update at the schedule's steps.
* :func:`quantized` holds per-leaf bit widths (and the activation bit width) in
  state; it does not change updates, the straight-through estimator in the forward
  pass already shapes the gradient.
* :func:`compress` = ``quantized(pruned(inner))``. The forward parameters are
  ``fake_quant(mask * w)``: prune first, quantize the survivors; zero is a level,
  so pruned weights stay zero and quantization adds the zeros of its zero bin.

Both return a :class:`CompressionTransformation`: an optax ``(init, update)`` pair
plus ``forward(params, state)`` (the params the forward pass must use) and
``intercept(state)`` (a context manager for activation quantization). The train
step calls both; wrappers compose, the outermost one must be the one passed in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from deepliflow_jax.compress.prune import _check_masks, compute_masks, dense_masks
from deepliflow_jax.compress.quantize import QuantConfig, activation_quantization, quantize_tree
from deepliflow_jax.compress.schedules import PruningSchedule
from deepliflow_jax.compress.select import Pattern, map_with_path, select


class CompressionTransformation(NamedTuple):
    """An optax transform with compression hooks for the forward pass.

    Attributes:
      init: ``params -> state``.
      update: ``(updates, state, params) -> (updates, state)``; params required.
      forward: ``(params, state) -> params`` used in the forward pass.
      intercept: ``state -> context manager`` wrapping the model call.
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]
    forward: Callable[[Any, Any], Any]
    intercept: Callable[[Any], contextlib.AbstractContextManager]


class MaskState(NamedTuple):
    """State of :func:`pruned`.

    Attributes:
      count: number of updates applied (int32), drives the schedule.
      masks: boolean pytree like the params, True = kept.
      inner_state: state of the wrapped transform.
    """

    count: jnp.ndarray
    masks: Any
    inner_state: Any


class QuantState(NamedTuple):
    """State of :func:`quantized`.

    Attributes:
      bits: int32 scalar per params leaf; 0 for leaves kept in float.
      act_bits: int32 scalar activation bit width, 0 = float activations.
      inner_state: state of the wrapped transform.
    """

    bits: Any
    act_bits: jnp.ndarray
    inner_state: Any


def _inner_forward(inner: Any, params: Any, state: Any) -> Any:
    fwd = getattr(inner, "forward", None)
    return params if fwd is None else fwd(params, state)


def _inner_intercept(inner: Any, state: Any) -> contextlib.AbstractContextManager:
    hook = getattr(inner, "intercept", None)
    return contextlib.nullcontext() if hook is None else hook(state)


def _mask_params_like(tree: Any, masks: Any) -> Any:
    """Zeroes masked entries in every subtree of ``tree`` shaped like the params."""
    treedef = jax.tree.structure(masks)
    shapes = [jnp.shape(m) for m in jax.tree.leaves(masks)]

    def params_like(node: Any) -> bool:
        if jax.tree.structure(node) != treedef:
            return False
        return [jnp.shape(x) for x in jax.tree.leaves(node)] == shapes

    def mask_node(node: Any) -> Any:
        if not params_like(node):
            return node
        return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), node, masks)

    return jax.tree.map(mask_node, tree, is_leaf=params_like)


def pruned(
    inner: optax.GradientTransformation,
    masks: Any = None,
    *,
    schedule: PruningSchedule | None = None,
    scope: str = "global",
    include: Pattern = r".*",
    exclude: Pattern = None,
) -> CompressionTransformation:
    """Keeps pruned entries at exactly zero through an inner optimizer.

    Args:
      inner: the optimizer, e.g. ``optax.adam(1e-4)`` (may itself be a
        :class:`CompressionTransformation`).
      masks: initial boolean masks (e.g. from :func:`prune`), or None for all
        True. Stored in the state at ``init``; afterwards the state's masks rule.
      schedule: optional gradual pruning schedule; at its update steps the masks
        are extended to ``schedule.percent(step)`` % by magnitude (see
        :func:`compute_masks`) inside the jitted update.
      scope, include, exclude: selection and scope for scheduled pruning.

    Returns:
      A :class:`CompressionTransformation` with :class:`MaskState` state.
    """

    def init(params):
        if masks is None:
            m = dense_masks(params)
        else:
            _check_masks(masks, params)
            m = jax.tree.map(lambda x: jnp.asarray(x, bool), masks)
        if schedule is not None:
            select(params, include, exclude, what="parameters to prune")
        inner_state = _mask_params_like(inner.init(params), m)
        return MaskState(jnp.zeros((), jnp.int32), m, inner_state)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("pruned() needs params in update() to keep pruned entries at zero")
        m = state.masks
        if schedule is not None:
            selection = select(params, include, exclude, what="parameters to prune")
            m = jax.lax.cond(
                schedule.update(state.count),
                lambda: compute_masks(
                    params, schedule.percent(state.count), selection, scope=scope, masks=m
                ),
                lambda: m,
            )
        # Masked gradients keep Adam's moments at pruned entries exactly zero.
        updates = jax.tree.map(lambda g, k: jnp.where(k, g, jnp.zeros_like(g)), updates, m)
        inner_state = _mask_params_like(state.inner_state, m)
        new, inner_state = inner.update(updates, inner_state, params)
        # -p at pruned entries: p + (-p) is exactly +0.0 after apply_updates.
        new = jax.tree.map(
            lambda u, k, p: jnp.where(k, u, -jnp.asarray(p, u.dtype)), new, m, params
        )
        return new, MaskState(state.count + 1, m, _mask_params_like(inner_state, m))

    def forward(params, state):
        params = jax.tree.map(lambda p, k: jnp.where(k, p, jnp.zeros_like(p)), params, state.masks)
        return _inner_forward(inner, params, state.inner_state)

    def intercept(state):
        return _inner_intercept(inner, state.inner_state)

    return CompressionTransformation(init, update, forward, intercept)


def quantized(
    inner: optax.GradientTransformation, config: QuantConfig
) -> CompressionTransformation:
    """Fake quantization (straight-through) of the forward pass, settings in state.

    Args:
      inner: the optimizer (or a :func:`pruned` transform, which then acts first
        in the forward pass: ``fake_quant(mask * w)``).
      config: :class:`QuantConfig`; bit widths go into the state, the static
        parts (granularity, selection) stay in the config.

    Returns:
      A :class:`CompressionTransformation` with :class:`QuantState` state.
    """

    def init(params):
        select(params, config.include, config.exclude, what="parameters to quantize")
        bits = _bits_tree(params, config)
        act = jnp.asarray(config.act_bits or 0, jnp.int32)
        return QuantState(bits, act, inner.init(params))

    def update(updates, state, params=None):
        updates, inner_state = inner.update(updates, state.inner_state, params)
        return updates, state._replace(inner_state=inner_state)

    def forward(params, state):
        params = _inner_forward(inner, params, state.inner_state)
        return quantize_tree(params, config, state.bits)

    def intercept(state):
        if config.act_bits is None:
            return _inner_intercept(inner, state.inner_state)
        stack = contextlib.ExitStack()
        stack.enter_context(_inner_intercept(inner, state.inner_state))
        stack.enter_context(
            activation_quantization(
                state.act_bits,
                include=config.act_include,
                clip=config.act_clip,
                symmetric=config.symmetric,
            )
        )
        return stack

    return CompressionTransformation(init, update, forward, intercept)


def _bits_tree(params: Any, config: QuantConfig) -> Any:
    return map_with_path(
        lambda path, _: jnp.asarray(config.bits if config.selected(path) else 0, jnp.int32),
        params,
    )


def compress(
    inner: optax.GradientTransformation,
    *,
    masks: Any = None,
    schedule: PruningSchedule | None = None,
    quant: QuantConfig | None = None,
    scope: str = "global",
    include: Pattern = r".*",
    exclude: Pattern = None,
) -> CompressionTransformation:
    """Pruning and/or quantization-aware fine-tuning: ``quantized(pruned(inner))``.

    Args:
      inner: the optimizer.
      masks: fixed masks (post-training pruned model fine-tuned), or None.
      schedule: gradual pruning schedule (with or without initial masks).
      quant: quantizer config, or None for float weights.
      scope, include, exclude: selection for the scheduled pruning.

    Returns:
      The composed :class:`CompressionTransformation`. The forward params are
      ``fake_quant(mask * w)`` (prune, then quantize).
    """
    tx = pruned(inner, masks, schedule=schedule, scope=scope, include=include, exclude=exclude)
    return tx if quant is None else quantized(tx, quant)


def find_state(opt_state: Any, kind: type) -> Any:
    """The first node of type ``kind`` (e.g. :class:`MaskState`) in an optimizer state."""
    found = []

    def visit(node):
        if isinstance(node, kind) and not found:
            found.append(node)
        return node

    jax.tree.map(visit, opt_state, is_leaf=lambda n: isinstance(n, kind))
    return found[0] if found else None


def get_masks(opt_state: Any) -> Any:
    """Masks held in an optimizer state, or None."""
    state = find_state(opt_state, MaskState)
    return None if state is None else state.masks


def get_bits(opt_state: Any) -> Any:
    """Per-leaf weight bit widths held in an optimizer state, or None."""
    state = find_state(opt_state, QuantState)
    return None if state is None else state.bits


def forward_params(tx: Any, params: Any, opt_state: Any) -> Any:
    """Params as the forward pass sees them (masked, fake-quantized) for any tx."""
    return _inner_forward(tx, params, opt_state)


def intercept(tx: Any, opt_state: Any) -> contextlib.AbstractContextManager:
    """The transform's activation-quantization context (a no-op for plain optax)."""
    return _inner_intercept(tx, opt_state)
