"""The training loop and the one recipe (``train/recipe.py``) on a small fake model.

``Trainer(model=..., loss=...)`` runs the real compiled step, ``fit`` and evaluation on
a per-pixel linear map instead of DeepLiDARFlow: the loop's behaviour (the phases'
learning rates, the selection of the best validation, masks held, the L2 switch) is
checked without compiling the network.
"""

import math
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.model.build import init_params
from deepliflow_jax.train import recipe
from deepliflow_jax.train.trainer import Phase, Trainer


class _PixelFlow(nn.Module):
    """Scene flow as a linear map of each pixel's channels of the two frames."""

    @nn.compact
    def __call__(self, frames, interp_size=None, out_size=None):
        b, _, h, w, c = frames.shape
        x = jnp.moveaxis(frames, 1, -2).reshape(b, h, w, 2 * c)
        sf = nn.Dense(4, name="head")(x)
        return sf, {"flows": [sf]}


def _l1(outputs, batch):
    return jnp.mean(jnp.abs(outputs[0] - batch["gt"])), {"l1": jnp.mean(jnp.abs(outputs[0]))}


def _world(seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.random((2, 2, 4, 6, 4)).astype(np.float32)
    x = np.moveaxis(frames, 1, -2).reshape(2, 4, 6, 8)
    w = rng.normal(scale=0.5, size=(8, 4)).astype(np.float32)
    gt = x @ w
    gt[..., 2:] = np.abs(gt[..., 2:]) + 0.5  # disparities > 0: every pixel valid
    params = _PixelFlow().init(jax.random.PRNGKey(seed), frames)["params"]
    return {"frames": frames, "gt": gt.astype(np.float32)}, jax.device_get(params)


@pytest.fixture(scope="module")
def trainer():
    return Trainer(model=_PixelFlow(), loss=_l1)


def test_fit_trains_a_fake_model_at_each_phases_rate(trainer):
    batch, params = _world()
    seen, states = [], {}

    def evaluate(state):  # the parameters after each step (and of the phases' best states)
        states[int(state.step)] = jax.device_get(state.params)
        return trainer.evaluate(state, [batch])

    # the state starts at lr 0: only the phases' rates can move it
    fit = trainer.fit(trainer.new_state(params, lr=0.0), lambda pos: batch,
                      [Phase("lr1", 3e-2, 40), Phase("frozen", 0.0, 3)], evaluate=evaluate,
                      eval_every=1, select="epe", on_step=lambda p, m: seen.append(m))
    losses = [float(m["loss"]) for m in seen]
    assert losses[39] < 0.5 * losses[0]
    assert float(seen[0]["l1"]) > 0 and float(seen[0]["reg"]) > 0  # the loss's metrics, L2
    # lr 0 in the second phase: Adam's steps do not move the parameters
    for k in range(41, 44):
        for a, b in zip(jax.tree.leaves(states[k]), jax.tree.leaves(states[40]), strict=True):
            np.testing.assert_array_equal(a, b)
    # the first Adam step moves an entry by at most the first phase's rate, about it where
    # the gradient is not tiny
    first = np.concatenate([np.ravel(np.asarray(a) - np.asarray(b)) for a, b in zip(
        jax.tree.leaves(states[1]), jax.tree.leaves(params), strict=True)])
    assert np.abs(first).max() == pytest.approx(3e-2, rel=1e-3)
    assert np.abs(first).max() <= 3e-2 * (1 + 1e-6)
    assert fit.steps == 43


def test_fit_keeps_the_best_validation_of_a_fake_model(trainer):
    batch, params = _world(1)
    # a good phase, then one whose rate throws the weights far off
    fit = trainer.fit(trainer.new_state(params), lambda pos: batch,
                      [Phase("lr1", 3e-2, 20), Phase("wild", 3.0, 5)],
                      evaluate=lambda s: trainer.evaluate(s, [batch]), eval_every=5,
                      select="epe")
    epes = [h["epe"] for h in fit.history]
    assert [h["step"] for h in fit.history] == [5, 10, 15, 20, 25]
    best = int(np.argmin(epes))
    assert fit.history[-1]["epe"] > 2 * epes[best]  # the last state is not the best
    assert fit.selected_step == fit.history[best]["step"] <= 20
    kept = trainer.evaluate(fit.state, [batch])
    assert kept["epe"] == pytest.approx(epes[best], rel=1e-6)
    assert fit.per_phase["wild"]["epe"] == pytest.approx(epes[best], rel=1e-6)


def test_recipe_fine_tune_holds_masks_and_switches_l2(trainer):
    batch, params = _world(2)
    params = jax.tree.map(lambda p: p + 0.1, params)  # no zero before pruning
    masks = jax.tree.map(lambda p: np.arange(p.size).reshape(p.shape) % 3 != 0, params)
    regs = {}
    for l2 in (True, False):
        seen = []
        fit = recipe.fine_tune(trainer, params, lambda pos: batch,
                               recipe.paper_phases(1e-2, 3, 1e-3, 2), masks=masks, l2=l2,
                               on_step=lambda p, m, seen=seen: seen.append(float(m["reg"])))
        regs[l2] = seen
        assert fit.steps == 5
        used = trainer.compressed_params(fit.state)
        for k, p, start in zip(jax.tree.leaves(masks), jax.tree.leaves(used),
                               jax.tree.leaves(params), strict=True):
            assert np.all(np.asarray(p)[~k] == 0) and np.all(np.asarray(start)[~k] != 0)
    assert all(r > 0 for r in regs[True]) and regs[False] == [0.0] * 5


def test_pretrain_trains_without_l2(trainer, monkeypatch):
    batch, params = _world(3)
    monkeypatch.setattr(recipe, "initial_params", lambda seed, widths=None: params)
    regs = []
    tuned = recipe.pretrain(trainer, lambda pos: batch, 3, 1e-2, seed=0,
                            on_step=lambda p, m: regs.append(float(m["reg"])))
    assert regs == [0.0] * 3
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(params), strict=True)]
    assert min(moved) > 1e-3


def test_study_and_search_pretrain_from_one_initialisation(tmp_path):
    """Both baselines start from the recipe's He-scaled kernels (0 steps: the start itself)."""
    from deepliflow_jax.search.data import baseline_params
    from deepliflow_jax.study import make_config
    from deepliflow_jax.study.config import model_widths
    from deepliflow_jax.study.runner import Study

    cfg = SimpleNamespace(pretrain_steps=0, pretrain_lr=1e-4, seed=3)
    searched = baseline_params(None, SimpleNamespace(num_samples=1), cfg, tmp_path / "search",
                               log=lambda s: None)
    want = init_params(3, kernel_gain=math.sqrt(2.0))["params"]
    for a, b in zip(jax.tree.leaves(searched), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    study_cfg = make_config("tiny", pretrain_steps=0, seed=3)
    study = Study(study_cfg, tmp_path / "study")
    study.data = SimpleNamespace(num_samples=1, samples_for=lambda n: 1)
    got = study._load_or_train_baseline()
    want = init_params(3, kernel_gain=math.sqrt(2.0), widths=model_widths(study_cfg))["params"]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fine_tune_refuses_bad_arguments(trainer):
    _, params = _world()
    with pytest.raises(ValueError, match="phases is empty"):
        recipe.fine_tune(trainer, params, lambda pos: {}, [])
    with pytest.raises(ValueError, match="channel_masks needs a Trainer\\(channel_masked=True\\)"):
        recipe.fine_tune(trainer, params, lambda pos: {}, [Phase("a", 1e-3, 1)],
                         channel_masks={"g": np.ones(2)})
    with pytest.raises(ValueError, match="leave them at their defaults with a given model"):
        Trainer(model=_PixelFlow(), widths={"a": 8})
