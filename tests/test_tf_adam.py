"""TF1's Adam (``train/tf_adam.py``) against TF's ``ApplyAdam`` formula computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepliflow_jax.train.tf_adam import TF1AdamState, state_from_checkpoint, steps_from_powers
from deepliflow_jax.train.tf_adam import tf1_adam as make_tf1_adam
from deepliflow_jax.train.trainer import Trainer, set_learning_rate


def apply_adam(var, m, v, g, lr, beta1_power, beta2_power, b1=0.9, b2=0.999, eps=1e-8):
    """TF 1.14 ``ApplyAdam`` (training_ops.cc) in float64, its constants as TF holds them
    (float32: ``1 - beta2`` is 0.0010000467, not 0.001)."""
    f32 = np.float32
    lr, eps = float(f32(lr)), float(f32(eps))
    c1, c2 = float(f32(1) - f32(b1)), float(f32(1) - f32(b2))
    alpha = lr * np.sqrt(1 - beta2_power) / (1 - beta1_power)
    m = m + (g - m) * c1
    v = v + (g * g - v) * c2
    return var - m * alpha / (np.sqrt(v) + eps), m, v


def test_step_one_by_hand_differs_from_optax_adam():
    """At t = 1 with |g| near eps the two rules differ ~4x; the numbers are worked by hand."""
    lr, g = 1e-3, 1e-7
    tf_tx, optax_tx = make_tf1_adam(lr), optax.adam(lr)
    params = jnp.zeros(1)
    tf_update, _ = tf_tx.update(jnp.full(1, g), tf_tx.init(params))
    optax_update, _ = optax_tx.update(jnp.full(1, g), optax_tx.init(params))
    # TF1: m = 1e-8, v = 1e-17, alpha = lr * sqrt(0.001) / 0.1 = 3.16228e-4,
    # step = 1e-8 * 3.16228e-4 / (3.16228e-9 + 1e-8) = 2.40253e-4
    assert float(tf_update[0]) == pytest.approx(-2.40253e-4, rel=1e-5)
    # optax: m_hat = 1e-7, v_hat = 1e-14, step = lr * 1e-7 / (1e-7 + 1e-8) = 9.09091e-4
    assert float(optax_update[0]) == pytest.approx(-9.09091e-4, rel=1e-5)


def test_several_steps_follow_apply_adam():
    rng = np.random.default_rng(0)
    lr = 1e-4
    # large and eps-sized gradients: the epsilon's place in the formula matters for the latter
    grads = [np.concatenate([rng.normal(size=4), 1e-8 * rng.normal(size=4)])
             for _ in range(4)]
    tx = make_tf1_adam(lr)
    var = np.linspace(-1, 1, 8)
    params = jnp.asarray(var, jnp.float32)
    state = tx.init(params)
    m = v = np.zeros(8)
    ref_optax, optax_tx = params, optax.adam(lr)
    optax_state = optax_tx.init(params)
    for t, g in enumerate(grads, start=1):
        var, m, v = apply_adam(var, m, v, g, lr, 0.9 ** t, 0.999 ** t)
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(np.asarray(params), var, rtol=1e-6, atol=1e-9,
                                   err_msg=f"step {t}")
        np.testing.assert_allclose(np.asarray(state.mu), m, rtol=1e-5, atol=1e-14)
        np.testing.assert_allclose(np.asarray(state.nu), v, rtol=1e-5, atol=1e-24)
        assert int(state.count) == t
        assert float(state.beta1_power) == pytest.approx(0.9 ** (t + 1), rel=1e-6)
        assert float(state.beta2_power) == pytest.approx(0.999 ** (t + 1), rel=1e-6)
        o_updates, optax_state = optax_tx.update(jnp.asarray(g, jnp.float32), optax_state)
        ref_optax = optax.apply_updates(ref_optax, o_updates)
    # the eps-sized entries moved differently under optax's rule
    moved_tf = np.abs(np.asarray(params) - np.linspace(-1, 1, 8))[4:]
    moved_optax = np.abs(np.asarray(ref_optax) - np.linspace(-1, 1, 8))[4:]
    assert np.all(moved_optax > 1.5 * moved_tf)


def test_underflowed_powers_step_at_the_plain_rate():
    """The released model's state: both powers 0 after >100,000 updates, alpha = lr."""
    tx = make_tf1_adam(1e-4)
    m, v, g = np.float32(0.02), np.float32(4e-4), np.float32(0.5)
    state = TF1AdamState(jnp.int32(200_000), jnp.full(1, m), jnp.full(1, v),
                         jnp.float32(0.0), jnp.float32(0.0))
    updates, new = tx.update(jnp.full(1, g), state)
    _, m1, v1 = apply_adam(0.0, float(m), float(v), float(g), 1e-4, 0.0, 0.0)
    assert float(updates[0]) == pytest.approx(-1e-4 * m1 / (np.sqrt(v1) + 1e-8), rel=1e-6)
    assert float(new.beta1_power) == 0.0 and int(new.count) == 200_001


def test_steps_from_powers():
    assert steps_from_powers(np.float32(0.9), np.float32(0.999)) == 0
    assert steps_from_powers(0.9 ** 301, 0.999 ** 301) == 300
    assert steps_from_powers(0.0, 0.999 ** 50_001) == 50_000
    assert steps_from_powers(0.0, 0.0) > 100_000  # a lower bound
    with pytest.raises(ValueError, match="beta1_power = 1.5 is not a power of 0.9"):
        steps_from_powers(1.5, 0.5)


def test_trainer_with_tf1_adam_continues_a_given_state():
    """``Trainer(optimizer='tf1_adam').new_state(adam=...)``: its first step is TF's next one,
    at the rate set in the state; pruned entries' moments are zeroed."""
    engine = Trainer(optimizer="tf1_adam")  # builds the transform; compiles nothing
    rng = np.random.default_rng(1)
    params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                       "bias": jnp.asarray(rng.normal(size=4), jnp.float32)}}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    mu = jax.tree.map(lambda p: jnp.asarray(1e-3 * rng.normal(size=p.shape), jnp.float32), params)
    nu = jax.tree.map(lambda p: jnp.asarray(1e-4 * rng.random(size=p.shape), jnp.float32), params)
    saved = {"mu": {"params": mu}, "nu": {"params": nu}, "count": 40,
             "beta1_power": np.float32(0.9 ** 41), "beta2_power": np.float32(0.999 ** 41)}
    state = set_learning_rate(
        engine.new_state(params, lr=1e-4, adam=state_from_checkpoint(params, saved)), 1e-5)
    updates, _ = engine.tx.update(grads, state.opt_state, state.params)
    for path in (("conv", "kernel"), ("conv", "bias")):
        p, g = params[path[0]][path[1]], grads[path[0]][path[1]]
        want, _, _ = apply_adam(np.asarray(p, np.float64), np.asarray(mu[path[0]][path[1]]),
                                np.asarray(nu[path[0]][path[1]]), np.asarray(g), 1e-5,
                                0.9 ** 41, 0.999 ** 41)
        got = np.asarray(p) + np.asarray(updates[path[0]][path[1]])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-10)
    masks = jax.tree.map(lambda p: jnp.arange(p.size).reshape(p.shape) % 2 == 0, params)
    pruned = engine.new_state(params, masks=masks, adam=state_from_checkpoint(params, saved))
    adam = jax.tree.leaves(pruned.opt_state, is_leaf=lambda n: isinstance(n, TF1AdamState))
    (adam,) = [n for n in adam if isinstance(n, TF1AdamState)]
    assert int(adam.count) == 40
    for moment, saved_moment in ((adam.mu, mu), (adam.nu, nu)):  # both moments
        for k, m, want in zip(jax.tree.leaves(masks), jax.tree.leaves(moment),
                              jax.tree.leaves(saved_moment), strict=True):
            np.testing.assert_array_equal(np.asarray(m), np.where(k, want, 0.0))
            assert np.all(np.asarray(want)[~np.asarray(k)] != 0)  # zeroed, not zero already
    with pytest.raises(ValueError, match="use Trainer\\(optimizer='tf1_adam'\\), not 'adam'"):
        Trainer().new_state(params, adam=state_from_checkpoint(params, saved))
    bad = dict(saved, nu={"params": {"conv": {"kernel": nu["conv"]["kernel"],
                                              "bias": jnp.zeros(5)}}})
    with pytest.raises(ValueError, match=r"nu at \['conv'\]\['bias'\] is \[5\], the parameter is"):
        state_from_checkpoint(params, bad)


def test_the_trainers_tf1_adam_state_survives_a_donating_step():
    """The compiled step donates its state: no two of its leaves may share a buffer (the
    beta powers start as the betas' values, held apart from the injected betas)."""
    from deepliflow_jax.train.step import make_train_step

    engine = Trainer(optimizer="tf1_adam")
    params = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32)}
    step = jax.jit(make_train_step(lambda p, b, r: p["w"] * b["x"],
                                   lambda out, b: jnp.sum(out ** 2), engine.tx),
                   donate_argnums=0)
    batch = {"x": jnp.arange(6, dtype=jnp.float32)}
    state = engine.new_state(params, lr=1e-3)
    for _ in range(2):
        state, metrics = step(state, batch)
    (adam,) = [n for n in jax.tree.leaves(state.opt_state, is_leaf=lambda n: isinstance(
        n, TF1AdamState)) if isinstance(n, TF1AdamState)]
    assert int(adam.count) == 2 and np.isfinite(float(metrics["loss"]))
    assert float(adam.beta1_power) == pytest.approx(0.9 ** 3, rel=1e-6)
    # two states seeded from one Adam state: each owns its buffers
    seed = state_from_checkpoint(params, {
        "mu": {"w": np.zeros(6, np.float32)}, "nu": {"w": np.ones(6, np.float32)},
        "beta1_power": 0.5, "beta2_power": 0.5, "count": 5})
    first, second = (engine.new_state(params, adam=seed) for _ in range(2))
    step(first, batch)
    _, metrics = step(second, batch)
    assert np.isfinite(float(metrics["loss"]))


def _running_power(beta: float, factors: int) -> np.float32:
    """TF's ``beta_power`` variable: float32 ``beta``, multiplied in float32 after each
    update (``factors`` = updates + 1)."""
    b, power = np.float32(beta), np.float32(beta)
    for _ in range(factors - 1):
        power = np.float32(power * b)
    return power


def test_restored_beta_powers_are_tfs_float32_running_products():
    """A TF checkpoint after 300 updates holds the running products of 301 float32 factors,
    which differ from ``float32(beta ** 301)``: restoring keeps them bit for bit, and each
    step multiplies them by the float32 beta as TF does."""
    p1, p2 = _running_power(0.9, 301), _running_power(0.999, 301)
    assert p1 != np.float32(0.9 ** 301) and p2 != np.float32(0.999 ** 301)  # a real fixture
    assert steps_from_powers(float(p1), float(p2)) == 300
    engine = Trainer(optimizer="tf1_adam")
    params = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32)}
    saved = {"mu": {"params": {"w": np.full(6, 1e-3, np.float32)}},
             "nu": {"params": {"w": np.full(6, 1e-4, np.float32)}}, "count": 300,
             "beta1_power": p1, "beta2_power": p2}
    state = engine.new_state(params, lr=1e-4, adam=state_from_checkpoint(params, saved))
    grads = {"w": jnp.ones(6, jnp.float32)}
    for factors in (301, 302, 303):
        (adam,) = [n for n in jax.tree.leaves(state.opt_state, is_leaf=lambda n: isinstance(
            n, TF1AdamState)) if isinstance(n, TF1AdamState)]
        assert np.asarray(adam.beta1_power).tobytes() == _running_power(0.9, factors).tobytes()
        assert np.asarray(adam.beta2_power).tobytes() == \
            _running_power(0.999, factors).tobytes()
        _, opt_state = engine.tx.update(grads, state.opt_state, state.params)
        state = state._replace(opt_state=opt_state)


def test_finetune_refuses_a_bad_optimizer_or_optimizer_state(small_variables, tiny_data):
    """Checked before anything is compiled, each error naming its argument."""
    from deepliflow_jax.api import finetune

    params = small_variables["params"]
    zeros = jax.tree.map(np.zeros_like, params)
    saved = {"mu": {"params": zeros}, "nu": {"params": zeros}, "count": 3,
             "beta1_power": 0.9 ** 4, "beta2_power": 0.999 ** 4}
    with pytest.raises(ValueError, match=r"optimizer must be one of \['adam', 'tf1_adam'\], "
                                         r"got 'sgd'"):
        finetune(small_variables, tiny_data, 1, optimizer="sgd")
    with pytest.raises(ValueError, match="optimizer_state continues TF1's Adam.*"
                                         "optimizer='tf1_adam'.*not optimizer='adam'"):
        finetune(small_variables, tiny_data, 1, optimizer_state=saved)
    with pytest.raises(ValueError, match="optimizer_state must be the mapping "
                                         "load_optimizer_state.*got list"):
        finetune(small_variables, tiny_data, 1, optimizer="tf1_adam", optimizer_state=[saved])
    with pytest.raises(ValueError, match="optimizer_state does not fit variables: .*lacks "
                                         r"\['count'\]"):
        finetune(small_variables, tiny_data, 1, optimizer="tf1_adam",
                 optimizer_state={k: v for k, v in saved.items() if k != "count"})
    with pytest.raises(ValueError, match="optimizer_state does not fit variables: the "
                                         "optimizer state's mu is not a tree"):
        finetune(small_variables, tiny_data, 1, optimizer="tf1_adam",
                 optimizer_state=dict(saved, mu={"params": {"w": np.zeros(3)}}))


def test_finetune_continues_a_given_tf1_adam_state(small_variables, tiny_data):
    """``finetune(optimizer="tf1_adam", optimizer_state=...)`` steps from the given moments:
    with a huge second moment the first step hardly moves the weights, where a fresh TF1
    Adam moves them by about the rate (the 8-channel network: the state is the point)."""
    from deepliflow_jax.api import finetune

    params = small_variables["params"]
    saved = {"mu": {"params": jax.tree.map(np.zeros_like, params)},
             "nu": {"params": jax.tree.map(lambda p: np.full(p.shape, 1e12, np.float32),
                                           params)},
             "count": 40, "beta1_power": np.float32(0.9 ** 41),
             "beta2_power": np.float32(0.999 ** 41)}

    def moved(**kwargs):
        tuned, history = finetune(small_variables, tiny_data, 1, l2=False, lr=1e-4,
                                  optimizer="tf1_adam", **kwargs)
        assert np.isfinite(history[0]["loss"])
        return max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
            jax.tree.leaves(tuned["params"]), jax.tree.leaves(params), strict=True))

    fresh, continued = moved(), moved(optimizer_state=saved)
    assert fresh == pytest.approx(1e-4, rel=1e-2)  # TF1's first step: about lr per entry
    assert continued < 1e-3 * fresh
