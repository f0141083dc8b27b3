"""The learning rates the study and the API really train at (lr1 = 1e-4, then lr2 = 1e-5).

The first Adam step moves every entry by about ``lr * sign(grad)``: one step from the same
state at 1e-5 moves the parameters 10x less than at 1e-4, which pins the rate held in the
optimizer state, not only the number written in a log.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.study import make_config
from deepliflow_jax.study.runner import Study
from deepliflow_jax.train.sharding import jit_step
from deepliflow_jax.train.trainer import Trainer, get_trainer, set_learning_rate
from tests.fakes import evaluated


def _injected(opt_state):
    """The ``inject_hyperparams`` state(s) inside a (compressed) optimizer state."""
    found = []
    is_inj = lambda n: hasattr(n, "hyperparams") and hasattr(n, "inner_state")  # noqa: E731
    jax.tree.map(lambda n: found.append(n) if is_inj(n) else None, opt_state, is_leaf=is_inj)
    return found


def _lr(state):
    (inj,) = _injected(state.opt_state)
    return float(inj.hyperparams["learning_rate"])


def test_set_learning_rate_switches_the_rate_the_trainers_adam_steps_with():
    engine = get_trainer(None, 0)  # the study's transform (no model compile here)
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                       "bias": jnp.asarray(rng.normal(size=4), jnp.float32)}}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    state1 = engine.new_state(params, lr=1e-4, bits=8)
    state2 = set_learning_rate(state1, 1e-5)
    assert _lr(state1) == pytest.approx(1e-4) and _lr(state2) == pytest.approx(1e-5)
    assert _lr(set_learning_rate(state2, 3e-4)) == pytest.approx(3e-4)
    # one Adam step from the same state: 10x smaller at 1e-5
    moves = []
    for state in (state1, state2):
        updates, _ = engine.tx.update(grads, state.opt_state, state.params)
        moves.append(np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)]))
    np.testing.assert_allclose(np.abs(moves[0]), 1e-4, rtol=1e-3)  # lr * |sign(g)|
    np.testing.assert_allclose(moves[0], 10.0 * moves[1], rtol=1e-5)


class _ScriptedTrainer(Trainer):
    """The study's trainer with a scripted model: a step records the rate it trains at,
    validation returns the SF outlier rate scripted for the number of steps taken."""

    def __init__(self, sf_by_step):
        super().__init__()
        self.sf_by_step = sf_by_step
        self.rates = []

    def train_step(self, state, batch):
        self.rates.append(_lr(state))
        return state._replace(step=state.step + 1), {"loss": jnp.float32(1.0)}

    def evaluate(self, state, batches, keep_outputs=False, validity="original",
                 with_counts=False):
        sf = self.sf_by_step[int(state.step)]
        return evaluated({"epe": sf / 10.0, "sf": sf, "d0": 0.0, "d1": 0.0, "fl": 0.0},
                         with_counts)


class _Data:
    num_samples = 7

    def samples_for(self, num_samples):
        return 7

    def train_batch(self, position, num_samples, reg_scale=1.0):
        return {"position": position}

    def val_batches(self, num_samples):
        return [{}]


@pytest.mark.parametrize("sf_by_step,best_step,lr1_sf", [
    ({2: 5.0, 4: 3.0, 6: 4.0}, 4, 3.0),  # refining makes it worse: step 4 is kept
    ({2: 5.0, 4: 3.0, 6: 2.5}, 6, 3.0),  # refining helps
])
def test_aware_training_runs_lr1_then_lr2_and_keeps_the_best(tmp_path, sf_by_step, best_step,
                                                             lr1_sf):
    cfg = make_config("tiny", finetune_steps=4, refine_steps=2, eval_every=2,
                      lidar_sweep=(2048,), runtime_repeats=0)
    study = Study(cfg, tmp_path)
    study.trainer, study.data = _ScriptedTrainer(sf_by_step), _Data()
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)}}
    rec = study.aware("aware_quant_8", params, 0.0, 8)
    assert study.trainer.rates == pytest.approx([1e-4] * 4 + [1e-5] * 2)
    assert [(h["step"], h["phase"], h["sf"]) for h in rec["history"]] == [
        (2, "lr1", 5.0), (4, "lr1", 3.0), (6, "lr2", sf_by_step[6])]
    assert rec["steps"] == 6 and rec["bits"] == 8
    assert rec["phases"]["lr1"]["sf"] == lr1_sf
    assert rec["phases"]["lr2"]["sf"] == rec["metrics"]["sf"] == sf_by_step[best_step]
    assert rec["metrics"]["sf"] == min(h["sf"] for h in rec["history"])


def test_finetune_trains_at_its_lr(small_variables, tiny_data):
    """``finetune(lr=...)`` through the one compiled step (the tiny study's, 8 channels a
    group: the rate is the point, not the network)."""
    from deepliflow_jax.api import finetune

    variables = small_variables
    at_1e4, _ = finetune(variables, tiny_data, steps=1, l2=False, lr=1e-4)
    at_1e5, history = finetune(variables, tiny_data, steps=1, l2=False, lr=1e-5)
    assert np.isfinite(history[0]["loss"])
    before = jax.tree.leaves(variables["params"])
    d4 = np.concatenate([np.ravel(np.asarray(a) - np.asarray(b))
                         for a, b in zip(jax.tree.leaves(at_1e4["params"]), before, strict=True)])
    d5 = np.concatenate([np.ravel(np.asarray(a) - np.asarray(b))
                         for a, b in zip(jax.tree.leaves(at_1e5["params"]), before, strict=True)])
    # the first Adam step: |move| <= lr, about lr where the gradient is not tiny
    assert np.abs(d4).max() == pytest.approx(1e-4, rel=1e-2)
    assert np.abs(d5).max() == pytest.approx(1e-5, rel=1e-2)
    assert np.linalg.norm(d4) / np.linalg.norm(d5) == pytest.approx(10.0, rel=1e-2)


def test_a_new_learning_rate_never_retraces_the_step():
    """Phases and resumed fits switch the rate between steps; the step must stay one trace.

    An unplaced scalar in a replicated state is another input type to ``jax.jit``: the
    whole-network step would be traced and compiled a second time at every switch.
    """
    engine = get_trainer(None, 0)
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)}}
    traces = []

    def step(state, batch):
        traces.append(1)
        return state._replace(params=jax.tree.map(lambda p: p * batch, state.params)), batch

    fn = jit_step(step, engine.mesh, donate=False)
    state = engine.new_state(params, lr=1e-4)
    for phase_lr in (3e-4, 1e-5):  # a phase sets its rate, then takes two steps
        state = set_learning_rate(state, phase_lr)
        for _ in range(2):
            state, _ = fn(state, jnp.float32(1.0))
    assert len(traces) == 1
    assert _lr(state) == pytest.approx(1e-5)
