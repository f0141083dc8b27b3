"""Pure train step with compression inside jit, paper protocol, loop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepliflow_jax.compress.modes import aware_training
from deepliflow_jax.compress.quantize import QuantConfig, activation_quantization, fake_quant
from deepliflow_jax.compress.transforms import get_masks
from deepliflow_jax.train.checkpoint import Checkpointer
from deepliflow_jax.train.loop import epoch_order, fine_tune, fit
from deepliflow_jax.train.state import create_train_state, paper_lr_schedule, paper_optimizer
from deepliflow_jax.train.step import l2_regularizer, make_eval_fn, make_train_step


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
    params, tx = aware_training(
        optax.adam(1e-2), PARAMS, percent=50, quant=QuantConfig(bits=6, act_bits=8)
    )
    reg = l2_regularizer(1e-3)
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


def test_no_nan_at_6_bits_and_90_percent_sparsity_with_paper_optimizer():
    params, tx = aware_training(
        paper_optimizer(3), PARAMS, percent=90, quant=QuantConfig(bits=6, act_bits=6)
    )
    step = jax.jit(make_train_step(apply_fn, loss_fn, tx, regularizer=l2_regularizer(4e-4)))
    state = create_train_state(params, tx)
    for pos in range(5):
        state, metrics = step(state, data_fn(pos))
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


def test_paper_lr_schedule():
    s = paper_lr_schedule(100)
    assert float(s(0)) == pytest.approx(1e-4) and float(s(99)) == pytest.approx(1e-4)
    assert float(s(100)) == pytest.approx(1e-5) and float(s(10_000)) == pytest.approx(1e-5)
    s = paper_lr_schedule(10, refine_every=5, num_refines=3)
    assert [float(s(t)) for t in (9, 10, 15, 20)] == pytest.approx([1e-4, 1e-5, 1e-6, 1e-7])


def test_epoch_order_is_a_reproducible_permutation_per_epoch():
    order = epoch_order(7, seed=3)
    e0 = [order(i) for i in range(7)]
    e1 = [order(i) for i in range(7, 14)]
    assert sorted(e0) == sorted(e1) == list(range(7)) and e0 != e1
    assert e0 == [epoch_order(7, seed=3)(i) for i in range(7)]


def test_fit_runs_to_num_steps_and_logs():
    tx = optax.adam(1e-2)
    step = jax.jit(make_train_step(apply_fn, loss_fn, tx))
    state = create_train_state(PARAMS, tx)
    evals = []

    def eval_fn(s):
        evals.append(int(s.step))
        return {"epe": 1.0}

    state, history = fit(state, step, data_fn, 6, eval_fn=eval_fn, eval_every=4, log_every=2)
    assert int(state.step) == 6 and evals == [4, 6]
    assert [h["step"] for h in history] == [2, 4, 6]
    assert "val_epe" in history[1] and "loss" in history[0]


def test_fine_tune_protocol_keeps_best_and_resumes(tmp_path):
    calls = []

    def eval_fn(state):
        calls.append(int(state.step))
        # Pretend the outlier rate is best at step 4.
        return {"sf_outlier": abs(int(state.step) - 4) + 10.0, "epe": 1.0}

    kwargs = dict(
        finetune_steps=4,
        refine_steps=2,
        lr=1e-2,
        percent=50,
        quant=QuantConfig(bits=6),
        l2_weight=1e-4,
        eval_fn=eval_fn,
        eval_every=2,
        workdir=str(tmp_path),
        save_every=3,
        log_every=0,
    )
    state, history, tx = fine_tune(PARAMS, apply_fn, loss_fn, data_fn, **kwargs)
    assert int(state.step) == 6 and calls == [2, 4, 6]
    assert [h["val_sf_outlier"] for h in history] == [12.0, 10.0, 12.0]
    with Checkpointer(tmp_path, best_metric="sf_outlier") as ck:
        assert ck.best_step() == 4 and ck.latest_step() == 6
        best, meta = ck.restore_best(state)
    assert meta["metadata"]["quant"]["bits"] == 6 and meta["metadata"]["percent"] == 50
    assert int(best.step) == 4
    for p, m in zip(jax.tree.leaves(best.params), jax.tree.leaves(get_masks(best.opt_state))):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
    again, _, _ = fine_tune(PARAMS, apply_fn, loss_fn, data_fn, **kwargs)  # resumes: done
    assert calls == [2, 4, 6] and int(again.step) == 6
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(state), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert callable(tx.forward)


def test_reg_scale_in_the_batch_scales_the_regularizer_without_recompiling():
    params = {"w": {"kernel": jnp.full((3,), 2.0)}}
    tx = optax.sgd(0.0)
    step = jax.jit(make_train_step(lambda p, b, r: p["w"]["kernel"] * b["x"],
                                   lambda out, b: jnp.mean(out), tx,
                                   regularizer=l2_regularizer(0.5)))
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
