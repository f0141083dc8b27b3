"""Pure train step with compression inside jit; the one fine-tuning loop (phases, best by
validation, resume)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepliflow_jax.compress.prune import prune
from deepliflow_jax.compress.quantize import QuantConfig, activation_quantization, fake_quant
from deepliflow_jax.compress.transforms import compress, get_masks
from deepliflow_jax.losses import l2_regularizer
from deepliflow_jax.train.resume import Checkpointer
from deepliflow_jax.train.state import create_train_state
from deepliflow_jax.train.step import make_eval_fn, make_train_step
from deepliflow_jax.train.trainer import Phase, fit


def prune_and_compress(inner, params, *, percent, quant):
    """``params`` pruned by ``percent`` and the transform keeping those zeros, quantized."""
    params, masks = prune(params, percent)
    return params, compress(inner, masks=masks, quant=quant)

def _reg(scale):
    return lambda p: l2_regularizer(p, scale)


def _lr(state):
    return float(state.opt_state.inner_state.inner_state.hyperparams["learning_rate"])


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv2")(x))
        return nn.Conv(2, (3, 3), name="out")(x)


NET = TinyNet()
RNG = np.random.RandomState(0)
DATA_X = RNG.randn(6, 8, 8, 3).astype(np.float32)
DATA_Y = RNG.randn(6, 4, 4, 2).astype(np.float32)
# Built in numpy (compiling NET.init costs seconds on a busy CPU).
PARAMS = jax.tree.map(
    lambda a: jnp.asarray(a, jnp.float32),
    {
        "params": {
            "conv1": {"kernel": 0.3 * RNG.randn(3, 3, 3, 4), "bias": 0.1 * RNG.randn(4)},
            "conv2": {"kernel": 0.3 * RNG.randn(3, 3, 4, 4), "bias": 0.1 * RNG.randn(4)},
            "out": {"kernel": 0.3 * RNG.randn(3, 3, 4, 2), "bias": 0.1 * RNG.randn(2)},
        }
    },
)


def apply_fn(params, batch, rng):
    del rng
    return NET.apply(params, batch["x"])


def loss_fn(out, batch):
    err = jnp.mean((out - batch["y"]) ** 2)
    return err, {"mae": jnp.mean(jnp.abs(out - batch["y"]))}


def data_fn(pos):
    i = pos % len(DATA_X)
    return {"x": DATA_X[i : i + 1], "y": DATA_Y[i : i + 1]}  # batch 1, as the paper


def test_compressed_train_step():
    params, tx = prune_and_compress(
        optax.adam(1e-2), PARAMS, percent=50, quant=QuantConfig(bits=6, act_bits=8)
    )
    reg = _reg(2e-3)  # the original's scale * sum(w**2) / 2
    step = jax.jit(make_train_step(apply_fn, loss_fn, tx, regularizer=reg))
    state = create_train_state(params, tx, seed=1)
    batch = data_fn(0)
    first = None
    for _ in range(25):
        state, metrics = step(state, batch)
        first = first if first is not None else metrics
    assert set(metrics) >= {"loss", "data_loss", "reg", "grad_norm", "mae"}
    assert float(metrics["data_loss"]) < 0.5 * float(first["data_loss"])
    expected_reg = 1e-3 * sum(
        float(jnp.sum(v["kernel"] ** 2)) for v in state.params["params"].values()
    )
    assert float(reg(state.params)) == pytest.approx(expected_reg, rel=1e-5)
    assert int(state.step) == 25 and int(state.data_pos) == 25
    assert not np.array_equal(state.rng, create_train_state(params, tx, seed=1).rng)
    for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(get_masks(state.opt_state))):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
    # Evaluation runs the compressed model: masked weights on the 6-bit grid and every
    # conv output fake-quantized to 8 bits, built here from the state's masks.
    out = np.asarray(jax.jit(make_eval_fn(apply_fn, tx))(state, batch))
    masks = get_masks(state.opt_state)

    @jax.jit
    def compressed(params, x, act_bits):
        weights = jax.tree.map(lambda p, m: fake_quant(jnp.where(m, p, 0.0), 6), params, masks)
        if act_bits is None:
            return NET.apply(weights, x)
        with activation_quantization(act_bits):
            return NET.apply(weights, x)

    np.testing.assert_array_equal(out, compressed(state.params, batch["x"], 8))
    assert np.abs(out - np.asarray(NET.apply(state.params, batch["x"]))).max() > 1e-3
    assert np.abs(out - np.asarray(compressed(state.params, batch["x"], None))).max() > 1e-4
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_no_nan_at_6_bits_and_90_percent_sparsity():
    params, tx = prune_and_compress(
        optax.adam(1e-4), PARAMS, percent=90, quant=QuantConfig(bits=6, act_bits=6)
    )
    step = jax.jit(make_train_step(apply_fn, loss_fn, tx, regularizer=_reg(8e-4)))
    state = create_train_state(params, tx)
    for pos in range(5):
        state, metrics = step(state, data_fn(pos))
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


def _aware(lr=1e-2):
    return prune_and_compress(optax.inject_hyperparams(optax.adam)(learning_rate=lr), PARAMS,
                          percent=50, quant=QuantConfig(bits=6))


def test_fit_phases_set_their_learning_rate_and_positions_count_on():
    params, tx = _aware()
    step = jax.jit(make_train_step(apply_fn, loss_fn, tx))
    seen, lrs = [], []

    def traced_step(state, batch):
        lrs.append(_lr(state))
        return step(state, batch)

    result = fit(traced_step, create_train_state(params, tx), lambda pos: seen.append(pos)
                 or data_fn(pos), [Phase("lr1", 1e-2, 3), Phase("lr2", 1e-3, 2)], start=7)
    assert seen == [7, 8, 9, 10, 11] and result.steps == result.selected_step == 5
    assert lrs == pytest.approx([1e-2] * 3 + [1e-3] * 2)
    assert _lr(result.state) == pytest.approx(1e-3) and int(result.state.step) == 5
    assert result.history == [] and result.per_phase == {}


def test_fit_keeps_the_best_by_validation_and_resumes(tmp_path):
    calls = []

    def evaluate(state):
        calls.append(int(state.step))
        # Pretend the outlier rate is best at step 4.
        return {"sf": abs(int(state.step) - 4) + 10.0, "epe": 1.0}

    params, tx = _aware()
    step = jax.jit(make_train_step(apply_fn, loss_fn, tx, regularizer=_reg(2e-4)))
    phases = [Phase("lr1", 1e-2, 4), Phase("lr2", 1e-3, 2)]

    def run():
        with Checkpointer(tmp_path, best_metric="sf", save_every=3) as ck:
            return fit(step, create_train_state(params, tx), data_fn, phases, evaluate=evaluate,
                       eval_every=2, checkpointer=ck)

    result = run()
    assert calls == [2, 4, 4, 6, 4]  # validations; the best state evaluated at phase ends
    assert [(h["step"], h["phase"], h["sf"]) for h in result.history] == [
        (2, "lr1", 12.0), (4, "lr1", 10.0), (6, "lr2", 12.0)]
    assert result.selected_step == 4 and int(result.state.step) == 4
    assert result.per_phase == {"lr1": {"sf": 10.0, "epe": 1.0}, "lr2": {"sf": 10.0, "epe": 1.0}}
    with Checkpointer(tmp_path, best_metric="sf") as ck:
        assert ck.best_step() == 4 and ck.latest_step() == 6
        latest, _ = ck.restore(result.state)
    assert _lr(latest) == pytest.approx(1e-3)  # the last phase ran at its own rate
    for p, m in zip(jax.tree.leaves(result.state.params),
                    jax.tree.leaves(get_masks(result.state.opt_state))):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
    again = run()  # resumes a finished run: no step, the same best state
    assert calls == [2, 4, 4, 6, 4] and again.steps == 6 and again.selected_step == 4
    for a, b in zip(jax.tree.leaves(again.state), jax.tree.leaves(result.state), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    with pytest.raises(ValueError, match="keeps the best by 'epe'"):
        fit(step, create_train_state(params, tx), data_fn, phases, evaluate=evaluate,
            checkpointer=Checkpointer(tmp_path / "other", best_metric="epe"))


def test_reg_scale_in_the_batch_scales_the_regularizer_without_recompiling():
    params = {"w": {"kernel": jnp.full((3,), 2.0)}}
    tx = optax.sgd(0.0)
    step = jax.jit(make_train_step(lambda p, b, r: p["w"]["kernel"] * b["x"],
                                   lambda out, b: jnp.mean(out), tx,
                                   regularizer=_reg(1.0)))
    state = create_train_state(params, tx)
    x = jnp.ones(3)
    _, m0 = step(state, {"x": x, "reg_scale": jnp.float32(0.0)})
    _, m2 = step(state, {"x": x, "reg_scale": jnp.float32(2.0)})
    assert float(m0["reg"]) == 0.0 and float(m0["loss"]) == pytest.approx(2.0)
    assert float(m2["reg"]) == pytest.approx(2.0 * 0.5 * 12.0)
    assert step._cache_size() == 1


def test_a_donating_step_never_deletes_the_callers_parameters():
    """The study starts every configuration from the same loaded (device) baseline."""
    tx = optax.adam(1e-2)
    step = jax.jit(make_train_step(apply_fn, loss_fn, tx), donate_argnums=0)
    params = jax.tree.map(jnp.asarray, PARAMS)  # device arrays, as load_checkpoint returns
    for _ in range(2):  # two configurations from the same parameters
        state, _ = step(create_train_state(params, tx), data_fn(0))
        jax.block_until_ready(state)
    assert not any(x.is_deleted() for x in jax.tree.leaves(params))
    np.testing.assert_array_equal(params["params"]["out"]["bias"], PARAMS["params"]["out"]["bias"])


def test_trainer_new_state_is_one_compiled_init_per_tree_structure():
    """Every configuration of a study starts with ``new_state``: one traced initialisation
    for dense and one for masked states, whatever the rate and bit widths, holding what
    was asked and new buffers that a donating step may consume."""
    from deepliflow_jax.compress.transforms import get_bits
    from deepliflow_jax.train.trainer import Trainer

    trainer = Trainer(seed=3)
    params = jax.tree.map(jnp.asarray, PARAMS)["params"]
    pruned, masks = prune({"params": params}, 50.0)
    asked = [dict(lr=1.25e-4), dict(lr=2.5e-5, bits=8), dict(lr=1e-3, masks=masks["params"]),
             dict(lr=5e-4, masks=masks["params"],
                  bits=jax.tree.map(lambda x: 4 if x.ndim > 1 else 0, params))]
    for kwargs in asked:
        state = trainer.new_state(pruned["params"], **kwargs)
        assert _lr(state) == pytest.approx(kwargs["lr"])
        bits = kwargs.get("bits", 0)
        want = jax.tree.map(lambda _, b=bits: b, params) if isinstance(bits, int) else bits
        assert jax.tree.map(int, get_bits(state.opt_state)) == want
        m = masks["params"] if "masks" in kwargs else jax.tree.map(lambda _: True, params)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                     get_masks(state.opt_state), m)
        jax.tree.map(np.testing.assert_array_equal, state.params, pruned["params"])
        assert int(state.step) == 0 and int(state.data_pos) == 0
        np.testing.assert_array_equal(state.rng, jax.random.PRNGKey(3))
        mine = {x.unsafe_buffer_pointer() for x in jax.tree.leaves((pruned, masks))}
        assert not mine & {x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)}
    assert trainer._init._cache_size() == 2
