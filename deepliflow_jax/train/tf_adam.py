"""TF 1.x's Adam (``tf.train.AdamOptimizer``) as an optax transform, state and all.

The original's ``train.py`` trains with ``tf.train.AdamOptimizer(learning_rate=LR,
name='Adam_optimizer')`` (TF 1.14 defaults ``beta1=0.9``, ``beta2=0.999``,
``epsilon=1e-8``). Its dense update, TF's ``ApplyAdam`` kernel
(``tensorflow/core/kernels/training_ops.cc``), with ``beta1_power = beta1 ** t`` at
update ``t = 1, 2, ...``::

    alpha = lr * sqrt(1 - beta2_power) / (1 - beta1_power)
    m += (g - m) * (1 - beta1)
    v += (g * g - v) * (1 - beta2)
    var -= m * alpha / (sqrt(v) + epsilon)

``optax.adam`` divides bias-corrected moments instead, ``m_hat / (sqrt(v_hat) + eps)``:
the same step except for the epsilon, which TF1 effectively scales by
``sqrt(1 - beta2 ** t)`` (at ``t = 1`` about 32x smaller in optax's form, i.e. a
different step wherever ``|g|`` is near ``eps``), until the bias corrections fade.

TF keeps ``beta1_power`` and ``beta2_power`` as float32 variables, starts them at
``beta1`` and ``beta2`` and multiplies them after every update
(``AdamOptimizer._finish``); a checkpoint stores them with the slots ``m`` and ``v``.
:class:`TF1AdamState` keeps exactly those, so a state seeded from the original's
checkpoint (``weights_convert --with_optimizer_state``, :func:`state_from_checkpoint`)
continues its Adam bit for bit, including the powers' float32 rounding and their
underflow to 0 (``beta1_power`` after about 980 updates, ``beta2_power`` after about
103,000), after which ``alpha`` is ``lr``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# tf.train.AdamOptimizer's defaults, which the original's train.py keeps
TF1_BETA1, TF1_BETA2, TF1_EPSILON = 0.9, 0.999, 1e-8


class TF1AdamState(NamedTuple):
    """TF1 Adam's state: the two slots and the two beta powers of ``AdamOptimizer``.

    Attributes:
      count: Adam updates taken (int32). Informational: the update uses the powers.
        From a TF checkpoint it is recovered from the powers (:func:`steps_from_powers`).
      mu: ``m`` (TF slot ``<var>/Adam_optimizer`` in the original), the params' tree.
      nu: ``v`` (TF slot ``<var>/Adam_optimizer_1``).
      beta1_power, beta2_power: float32 ``beta ** (count + 1)`` as TF's running products
        (TF variables ``train/beta1_power``, ``train/beta2_power``).
    """

    count: jnp.ndarray
    mu: optax.Updates
    nu: optax.Updates
    beta1_power: jnp.ndarray
    beta2_power: jnp.ndarray


def tf1_adam(learning_rate: float | optax.Schedule, b1: float = TF1_BETA1,
             b2: float = TF1_BETA2, eps: float = TF1_EPSILON) -> optax.GradientTransformation:
    """``tf.train.AdamOptimizer`` (TF 1.x ``ApplyAdam``) as an optax transform.

    Wrap it in ``optax.inject_hyperparams`` to change the rate in the state (the
    trainer does). The updates are ``-(m * alpha) / (sqrt(v) + eps)`` with
    ``alpha = lr * sqrt(1 - beta2_power) / (1 - beta1_power)`` (module docstring),
    computed in the moments' dtype in TF's order of operations.

    Args:
      learning_rate: a float, or an optax schedule of the update count.
      b1, b2, eps: TF's ``beta1``, ``beta2``, ``epsilon`` (defaults: TF 1.14's, the
        original's).

    Returns:
      An ``optax.GradientTransformation`` with :class:`TF1AdamState`.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = tf1_adam(0.1)
      >>> params = {"w": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([1.0, -4.0])}, state)
      >>> [round(float(u), 6) for u in updates["w"]], int(state.count)
      ([-0.1, 0.1], 1)
      >>> round(float(state.beta1_power), 6), round(float(state.beta2_power), 6)
      (0.81, 0.998001)
    """

    def init(params: Any) -> TF1AdamState:
        zeros = lambda p: jnp.zeros_like(p)  # noqa: E731
        # copies: under inject_hyperparams b1 and b2 are state arrays themselves, and a
        # donating step must not receive one buffer twice
        return TF1AdamState(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params),
                            jax.tree.map(zeros, params), jnp.array(b1, jnp.float32, copy=True),
                            jnp.array(b2, jnp.float32, copy=True))

    def update(grads: Any, state: TF1AdamState, params: Any = None):
        del params
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        beta1 = jnp.asarray(b1, jnp.float32)
        beta2 = jnp.asarray(b2, jnp.float32)
        one = jnp.float32(1.0)
        alpha = jnp.asarray(lr, jnp.float32) * jnp.sqrt(one - state.beta2_power) / (
            one - state.beta1_power)
        mu = jax.tree.map(lambda m, g: m + (g - m) * (one - beta1).astype(m.dtype),
                          state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (g * g - v) * (one - beta2).astype(v.dtype),
                          state.nu, grads)
        updates = jax.tree.map(
            lambda m, v: -(m * alpha.astype(m.dtype)) / (jnp.sqrt(v) + jnp.asarray(eps, v.dtype)),
            mu, nu)
        return updates, TF1AdamState(optax.safe_int32_increment(state.count), mu, nu,
                                     state.beta1_power * beta1, state.beta2_power * beta2)

    return optax.GradientTransformation(init, update)


def steps_from_powers(beta1_power: float, beta2_power: float, b1: float = TF1_BETA1,
                      b2: float = TF1_BETA2) -> int:
    """Adam updates taken, from TF's beta powers (``beta ** (steps + 1)``).

    The longer-lived ``beta2_power`` is used where ``beta1_power`` has underflowed; once
    both are 0 (after about 103,000 updates) the result is the smallest count at which
    ``beta2 ** (count + 1)`` is below float32's smallest subnormal: a lower bound. The
    update never needs the count (it uses the powers themselves).

    Args:
      beta1_power, beta2_power: the checkpoint's ``beta1_power`` and ``beta2_power``.
      b1, b2: the betas the powers are of.

    Returns:
      The number of Adam updates taken (>= 0).

    Raises:
      ValueError: a power outside ``(0, beta]`` that is not 0, or not finite.

    Example:
      >>> steps_from_powers(0.9 ** 301, 0.999 ** 301)
      300
      >>> steps_from_powers(0.0, 0.999 ** 5001)
      5000
    """
    for name, power, beta in (("beta1_power", beta1_power, b1),
                              ("beta2_power", beta2_power, b2)):
        if not math.isfinite(power) or power < 0 or power > beta * (1 + 1e-6):
            raise ValueError(f"{name} = {power} is not a power of {beta} (expected "
                             f"0 <= {name} <= {beta})")
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    if beta1_power >= float(np.finfo(np.float32).tiny):  # a normal float: the most precise
        return max(0, round(math.log(beta1_power) / math.log(b1)) - 1)
    if beta2_power > 0:
        return max(0, round(math.log(beta2_power) / math.log(b2)) - 1)
    return math.ceil(math.log(tiny) / math.log(b2)) - 1


def state_from_checkpoint(params: Any, optimizer: dict) -> TF1AdamState:
    """A :class:`TF1AdamState` from a checkpoint's optimizer item.

    Args:
      params: the parameters the state is for (its tree and shapes).
      optimizer: ``deepliflow_jax.checkpoint.load_optimizer_state``'s tree:
        ``{"mu": {"params": ...}, "nu": {"params": ...}, "beta1_power",
        "beta2_power", "count"}``.

    Returns:
      The state (float32 moments, the powers as stored).

    Raises:
      ValueError: a moment tree that does not match ``params`` (naming the first
        difference), or a missing entry.
    """
    missing = [k for k in ("mu", "nu", "beta1_power", "beta2_power", "count")
               if k not in optimizer]
    if missing:
        raise ValueError(f"the optimizer state lacks {missing} (expected mu, nu, beta1_power, "
                         "beta2_power, count)")
    moments = []
    for name in ("mu", "nu"):
        tree = optimizer[name]["params"] if "params" in optimizer[name] else optimizer[name]
        want, got = jax.tree.structure(params), jax.tree.structure(tree)
        if want != got:
            raise ValueError(f"the optimizer state's {name} is not a tree of the parameters' "
                             f"structure ({got.num_leaves} leaves, the parameters have "
                             f"{want.num_leaves})")
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        for (path, p), x in zip(flat, jax.tree.leaves(tree), strict=True):
            if np.shape(p) != np.shape(x):
                raise ValueError(f"the optimizer state's {name} at {jax.tree_util.keystr(path)} "
                                 f"is {list(np.shape(x))}, the parameter is "
                                 f"{list(np.shape(p))}")
        moments.append(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree))
    return TF1AdamState(jnp.asarray(optimizer["count"], jnp.int32), moments[0], moments[1],
                        jnp.asarray(optimizer["beta1_power"], jnp.float32),
                        jnp.asarray(optimizer["beta2_power"], jnp.float32))
