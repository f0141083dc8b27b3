"""Masks and quantizer settings in optimizer state; pruned weights stay zero."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepliflow_jax.compress.prune import prune
from deepliflow_jax.compress.quantize import QuantConfig, quantize_tree
from deepliflow_jax.compress.schedules import polynomial_schedule
from deepliflow_jax.compress.transforms import (
    MaskState,
    compress,
    find_state,
    forward_params,
    get_bits,
    get_masks,
    pruned,
)


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv2")(x))
        return nn.Conv(2, (3, 3), name="out")(x)


NET = TinyNet()
X = jnp.asarray(np.random.RandomState(0).randn(2, 8, 8, 3), jnp.float32)
Y = jnp.asarray(np.random.RandomState(1).randn(2, 4, 4, 2), jnp.float32)
_RS = np.random.RandomState(2)
# Built in numpy (compiling NET.init costs seconds); nonzero biases as in a trained model.
PARAMS = jax.tree.map(
    lambda a: jnp.asarray(a, jnp.float32),
    {
        "params": {
            "conv1": {"kernel": 0.3 * _RS.randn(3, 3, 3, 4), "bias": 0.05 + 0.1 * _RS.randn(4)},
            "conv2": {"kernel": 0.3 * _RS.randn(3, 3, 4, 4), "bias": 0.05 + 0.1 * _RS.randn(4)},
            "out": {"kernel": 0.3 * _RS.randn(3, 3, 4, 2), "bias": 0.05 + 0.1 * _RS.randn(2)},
        }
    },
)


def _train(tx, params, steps):
    def loss(p, state):
        return jnp.mean((NET.apply(tx.forward(p, state), X) - Y) ** 2)

    @jax.jit
    def run(params, state):
        def body(carry, _):
            p, s = carry
            value, g = jax.value_and_grad(loss)(p, s)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), value

        return jax.lax.scan(body, (params, state), None, length=steps)

    (params, state), losses = run(params, tx.init(params))
    return params, state, losses


def test_pruned_weights_and_moments_stay_exactly_zero_under_adamw():
    start, masks = prune(PARAMS, 50)
    # Decoupled weight decay and a schedule: the inner update is nonzero everywhere.
    inner = optax.adamw(1e-2, weight_decay=0.1)
    params, state, losses = _train(pruned(inner, masks), start, 50)
    assert float(losses[-1]) < float(losses[0])
    adam = find_state(state, optax.ScaleByAdamState)
    for p, m, mu, nu, p0 in zip(
        jax.tree.leaves(params),
        jax.tree.leaves(masks),
        jax.tree.leaves(adam.mu),
        jax.tree.leaves(adam.nu),
        jax.tree.leaves(start),
        strict=True,
    ):
        p, m = np.asarray(p), np.asarray(m)
        assert np.all(p[~m] == 0.0) and not np.signbit(p[~m]).any()
        assert np.all(np.asarray(mu)[~m] == 0.0) and np.all(np.asarray(nu)[~m] == 0.0)
        assert np.all(p[m] != np.asarray(p0)[m])  # survivors did train
    for a, b in zip(jax.tree.leaves(get_masks(state)), jax.tree.leaves(masks), strict=True):
        np.testing.assert_array_equal(a, b)


def test_masks_force_zero_even_if_params_were_not_pruned():
    _, masks = prune(PARAMS, 30)
    params, _, _ = _train(pruned(optax.adam(1e-3), masks), PARAMS, 1)  # unpruned start
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks), strict=True):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)


def test_forward_is_fake_quant_of_masked_params_and_bits_in_state():
    start, masks = prune(PARAMS, 40)
    cfg = QuantConfig(bits=5, exclude=r"bias$")
    tx = compress(optax.adam(1e-3), masks=masks, quant=cfg)
    state = tx.init(start)
    bits = get_bits(state)
    assert int(bits["params"]["conv1"]["kernel"]) == 5 and int(bits["params"]["out"]["bias"]) == 0
    fwd = jax.jit(tx.forward)(PARAMS, state)  # masks apply in the forward pass too
    ref = quantize_tree(jax.tree.map(lambda p, m: jnp.where(m, p, 0.0), PARAMS, masks), cfg)
    # (eager reference: the jitted forward must equal it bit for bit)
    for a, b in zip(jax.tree.leaves(fwd), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)
    k = np.asarray(fwd["params"]["conv1"]["kernel"])
    assert len(np.unique(k)) <= 2**5 - 1
    assert np.all(k[~np.asarray(masks["params"]["conv1"]["kernel"])] == 0)
    np.testing.assert_array_equal(fwd["params"]["out"]["bias"], start["params"]["out"]["bias"])
    assert forward_params(optax.adam(1e-3), PARAMS, None) is PARAMS  # plain optax: identity


def test_no_nan_at_6_bits_and_90_percent_sparsity():
    start, masks = prune(PARAMS, 90)
    tx = compress(optax.adam(1e-3), masks=masks, quant=QuantConfig(bits=6, act_bits=6))
    params, state, losses = _train(tx, start, 5)
    assert np.all(np.isfinite(np.asarray(losses)))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((params, state)))


def test_gradual_polynomial_pruning_inside_jit():
    tx = pruned(optax.adam(1e-2), schedule=polynomial_schedule(80, 2, 8, frequency=3))
    params, state, _ = _train(tx, PARAMS, 10)
    n = sum(x.size for x in jax.tree.leaves(PARAMS))
    num_pruned = sum(int((~np.asarray(m)).sum()) for m in jax.tree.leaves(state.masks))
    assert num_pruned == int(0.8 * n)
    zeros = sum(int((np.asarray(p) == 0).sum()) for p in jax.tree.leaves(params))
    assert zeros >= num_pruned
    assert isinstance(state, MaskState) and int(state.count) == 10


def test_bad_masks_and_missing_params():
    _, masks = prune(PARAMS, 10)
    bad = {"params": {k: v for k, v in masks["params"].items() if k != "out"}}
    with pytest.raises(ValueError, match="masks tree does not match.*params/out"):
        pruned(optax.adam(1e-3), bad).init(PARAMS)
    tx = pruned(optax.adam(1e-3), masks)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(PARAMS, tx.init(PARAMS))
    with pytest.raises(ValueError, match="selects no parameters to quantize"):
        compress(optax.adam(1e-3), quant=QuantConfig(include=r"nothing")).init(PARAMS)
