"""The original's KITTI fine-tuning protocol in the study (``paper`` preset), field by field.

Each setting is checked where it reaches the data or the step: hand-made frames through
``Dataset.train_batch`` (LiDAR counts, batch and crop, augmentation), scripted train
steps through ``fit`` and ``Study.aware`` (phase 2 from the best state, the restored Adam
state, the counts passed on). No network is compiled here.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.data.dataset import Dataset
from deepliflow_jax.data.kitti import SceneFlowSample
from deepliflow_jax.data.lidar import TRAIN_SAMPLES
from deepliflow_jax.data.preprocess import center_crop, rgb_mean
from deepliflow_jax.study import config as study_config
from deepliflow_jax.study import make_config
from deepliflow_jax.study.runner import Study
from deepliflow_jax.train import trainer as trainer_module
from deepliflow_jax.train.state import TrainState
from deepliflow_jax.train.tf_adam import TF1AdamState
from deepliflow_jax.train.trainer import Phase, Trainer, fit
from tests.fakes import evaluated


def _sample(index, h=120, w=200):
    """A frame pair whose every pixel has a disparity; its RGB value names the frame."""
    rng = np.random.default_rng(index)
    image = np.full((h, w, 3), 0.01 * (index + 1), np.float32)
    disp = rng.uniform(5, 60, (2, h, w)).astype(np.float32)
    gt = rng.normal(size=(h, w, 4)).astype(np.float32)
    gt[..., 2] = np.abs(gt[..., 2]) + 1
    full = np.ones((h, w), bool)
    return SceneFlowSample(image, image.copy(), disp[0], disp[1], full, full, gt, full,
                           str(index))


def _frame_of(frames):
    """The frame index encoded in ``_sample``'s colour (mean-subtracted, unaugmented)."""
    value = float(frames[0, 0, 0, 0, 0] + np.ravel(rgb_mean("KITTI"))[0])
    return int(round(value / 0.01)) - 1


def _data(n=10, **fields):
    return Dataset([_sample(i) for i in range(n)], [_sample(100)], "KITTI", seed=3, **fields)


# ----------------------------------------------------------------------------- the preset

def test_paper_preset_holds_the_originals_values(tmp_path):
    paper = study_config.PRESETS["paper"]
    # run_finetune.sh, train.py, data_generator.py, README (see StudyConfig)
    assert (paper.batch_size, paper.crop) == (2, (370, 1220))
    assert paper.train_samples == (100, 500, 1000, 5000, 10000) == TRAIN_SAMPLES
    assert paper.augment == "original" and paper.optimizer == "tf1_adam"
    assert paper.restore_optimizer and paper.phase2_from_best
    assert (paper.lr1, paper.lr2) == (1e-4, 1e-5)
    assert paper.eval_every == 90 == 180 // 2  # every epoch of 180 frames at batch 2
    assert paper.finetune_steps == paper.refine_steps == 90 * 100
    cfg = make_config("paper", data_dir=str(tmp_path), checkpoint=str(tmp_path))
    assert cfg.crop == (370, 1220)
    # the cheap presets keep the earlier (default) behaviour
    for name in ("demo", "tiny"):
        cheap = study_config.PRESETS[name]
        assert (cheap.batch_size, cheap.crop, cheap.train_samples, cheap.augment,
                cheap.optimizer, cheap.restore_optimizer) == (1, None, None, "none", "adam",
                                                              False)
    assert set(study_config.OPTIMIZERS) == set(trainer_module.OPTIMIZERS)


def test_protocol_settings_are_validated(tmp_path):
    kitti = {"data_dir": str(tmp_path), "checkpoint": str(tmp_path)}
    with pytest.raises(ValueError, match=r"batch_size 2 on KITTI needs a crop .*\(370, 1220\)"):
        # (a None override keeps the preset's value: replace it)
        study_config.validate(dataclasses.replace(make_config("paper", **kitti), crop=None))
    with pytest.raises(ValueError, match="restore_optimizer continues a converted TF "
                                         "checkpoint's Adam: it needs optimizer='tf1_adam'"):
        make_config("paper", optimizer="adam", **kitti)
    with pytest.raises(ValueError, match="augment must be one of"):
        make_config("tiny", augment="heavy")
    with pytest.raises(ValueError, match=r"crop \(128, 128\) is larger than the frames 64x192"):
        make_config("tiny", crop=(128, 128))
    with pytest.raises(ValueError, match="network input 60x192 is not a multiple of 64; set "
                                         "height/width \\(synthetic\\), crop or interp_size"):
        make_config("tiny", crop=(60, 192))
    with pytest.raises(ValueError,
                       match=r"train_samples\[1\] must be a positive LiDAR sample count, got 0"):
        make_config("tiny", train_samples=(100, 0))


# ----------------------------------------------------------------------------- the data

def test_training_lidar_count_is_drawn_per_frame_visit():
    """One of the counts per frame and epoch, the same for t and t+1 (train.py SAMPLES)."""
    data = _data()
    seen: dict[int, list[int]] = {}
    for position in range(3 * len(data.train)):
        frames = data.train_batch(position, TRAIN_SAMPLES)["frames"]
        points = [int(np.count_nonzero(frames[0, t, ..., 3])) for t in (0, 1)]
        # Bernoulli draws of N of 24,000 pixels: N within a few standard deviations
        nearest = [min(TRAIN_SAMPLES, key=lambda n, p=p: abs(n - p)) for p in points]
        assert nearest[0] == nearest[1], points
        assert abs(points[0] - nearest[0]) < 5 * np.sqrt(nearest[0]) + 5, points
        seen.setdefault(_frame_of(frames), []).append(nearest[0])
    assert sorted(seen) == list(range(len(data.train)))  # every frame once per epoch
    assert {n for counts in seen.values() for n in counts} == set(TRAIN_SAMPLES)
    assert any(len(set(counts)) > 1 for counts in seen.values())  # redrawn per epoch
    fixed = data.train_batch(0, 1000)["frames"]
    assert abs(np.count_nonzero(fixed[0, 0, ..., 3]) - 1000) < 5 * np.sqrt(1000)


def test_batch_of_two_is_centre_cropped_and_reaches_the_loss_at_the_crop():
    """Batch 2 at 370x1220 from frames of KITTI's sizes; the network's output (hence the
    loss) has the crop's size (traced, not compiled)."""
    samples = [_sample(i, 375, 1242) for i in range(2)] + [_sample(i, 370, 1224)
                                                            for i in range(2, 4)]
    data = Dataset(samples, samples[:1], "KITTI", seed=0, batch_size=2, crop=(370, 1220))
    assert data.steps_per_epoch() == 2
    batches = [data.train_batch(p, 5000) for p in range(2)]
    for batch in batches:
        assert batch["frames"].shape == (2, 2, 370, 1220, 4)
        assert batch["gt"].shape == (2, 370, 1220, 4)
    gts = {float(g[0, 0, 0]) for b in batches for g in b["gt"]}
    want = {float(center_crop(s.gt, (370, 1220))[0, 0, 0]) for s in samples}
    assert gts == want  # the four frames, each centre-cropped
    trainer = Trainer((384, 1216))
    from deepliflow_jax.model.build import param_shapes

    params = param_shapes()["params"]
    batch = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)
             for k, v in batches[0].items()}
    sceneflow, _ = jax.eval_shape(trainer._apply, params, batch, None)
    # scene flow at the crop; kitti_loss resizes every level to the batch's gt (the crop)
    assert sceneflow.shape == (2, 370, 1220, 4)
    loss = jax.eval_shape(lambda p, b: trainer._loss(trainer._apply(p, b, None), b), params,
                          batch)
    assert loss.shape == ()


def test_augmentation_changes_training_batches_only():
    plain, augmented, rgb = _data(), _data(augment="original"), _data(augment="rgb")
    a, b = plain.train_batch(5, 1000), augmented.train_batch(5, 1000)
    np.testing.assert_array_equal(a["gt"], b["gt"])
    np.testing.assert_array_equal(a["frames"][..., 3], b["frames"][..., 3])  # LiDAR kept
    assert not np.allclose(a["frames"][..., :3], b["frames"][..., :3])
    # the original's quirk: its clips act on the mean-subtracted colours
    assert a["frames"][..., :3].min() < 0 <= b["frames"][..., :3].min()
    assert b["frames"][..., :3].max() <= 1.0
    np.testing.assert_array_equal(b["frames"], augmented.train_batch(5, 1000)["frames"])
    assert not np.allclose(b["frames"], augmented.train_batch(6 + 10, 1000)["frames"])
    assert not np.allclose(b["frames"], rgb.train_batch(5, 1000)["frames"])
    for x, y in zip(plain.val_batches(1000), augmented.val_batches(1000), strict=True):
        np.testing.assert_array_equal(x["frames"], y["frames"])


# ----------------------------------------------------------------------------- the loop

def _scripted(sf_by_step):
    """A train step adding 1 to the parameters and the optimizer counter, and a validation
    that returns the SF outlier rate scripted for the step count."""
    calls = []

    def step(state, batch):
        calls.append((int(state.step), float(state.params["w"]), int(state.opt_state["n"])))
        return state._replace(step=state.step + 1, params={"w": state.params["w"] + 1.0},
                              opt_state={"n": state.opt_state["n"] + 1}), \
            {"loss": jnp.float32(1.0)}

    def evaluate(state):
        return {"sf": sf_by_step[int(state.step)]}

    return calls, step, evaluate


def _start():
    return TrainState(jnp.int32(0), {"w": jnp.float32(0.0)}, {"n": jnp.int32(0)},
                      jax.random.PRNGKey(0), jnp.int32(0))


@pytest.mark.parametrize("restart", [True, False])
def test_phase_two_starts_from_the_best_phase_one_state(restart):
    sf = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 2.0, 6: 0.5}
    calls, step, evaluate = _scripted(sf)
    result = fit(step, _start(), lambda pos: {}, [Phase("lr1", 1e-4, 4), Phase("lr2", 1e-5, 2)],
                 evaluate=evaluate, eval_every=1, restart_from_best=restart)
    first_of_phase2 = calls[4]
    if restart:  # the best of phase 1 is after step 2: parameters and optimizer state
        assert first_of_phase2 == (4, 2.0, 2)
    else:
        assert first_of_phase2 == (4, 4.0, 4)
    assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.selected_step == 6 and int(result.state.step) == 6
    assert float(result.state.params["w"]) == (4.0 if restart else 6.0)


def test_phase_two_keeps_the_phase_one_best_when_it_does_no_better():
    calls, step, evaluate = _scripted({1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 2.0, 6: 1.5})
    result = fit(step, _start(), lambda pos: {}, [Phase("lr1", 1e-4, 4), Phase("lr2", 1e-5, 2)],
                 evaluate=evaluate, eval_every=1, restart_from_best=True)
    assert result.selected_step == 2 and float(result.state.params["w"]) == 2.0
    assert result.per_phase == {"lr1": {"sf": 1.0}, "lr2": {"sf": 1.0}}


def test_the_first_step_is_timed_apart_and_the_progress_bar_starts_after_it():
    calls, step, _ = _scripted({})
    events = []

    def bar(steps, total, name):  # created when the loop reaches it
        events.append(("bar", name, total, len(calls)))
        return steps

    def first(seconds):
        assert seconds > 0
        events.append(("first step", len(calls)))

    phases = [Phase("lr1", 1e-4, 3), Phase("lr2", 1e-5, 2)]
    fit(step, _start(), lambda pos: {}, phases, progress=bar, on_first_step=first)
    # the bar of the first phase counts the 2 steps after the compiling one
    assert events == [("first step", 1), ("bar", "lr1", 2, 1), ("bar", "lr2", 2, 3)]
    assert len(calls) == 5
    events.clear()
    fit(step, _start(), lambda pos: {}, phases, progress=bar)  # no timing: one bar a phase
    assert events == [("bar", "lr1", 3, 5), ("bar", "lr2", 2, 8)]


class _Engine(Trainer):
    """The study's trainer (TF1 Adam) with a scripted step and validation."""

    def __init__(self):
        super().__init__(optimizer="tf1_adam")
        self.seen = []

    def train_step(self, state, batch):
        (adam,) = [n for n in jax.tree.leaves(
            state.opt_state, is_leaf=lambda n: isinstance(n, TF1AdamState))
            if isinstance(n, TF1AdamState)]
        self.seen.append({"batch": batch, "params": jax.device_get(state.params),
                          "adam": jax.device_get(adam)})
        params = jax.tree.map(lambda p: p + 1.0, state.params)
        return state._replace(step=state.step + 1, params=params), {"loss": jnp.float32(1.0)}

    def evaluate(self, state, batches, keep_outputs=False, validity="original",
                 with_counts=False):
        sf = {2: 3.0, 4: 5.0, 5: 4.0}[int(state.step)]
        return evaluated({"epe": 1.0, "sf": sf, "d0": 0.0, "d1": 0.0, "fl": 0.0}, with_counts)


class _Data:
    num_samples = ("scaled", None)

    def samples_for(self, num_samples):
        return ("scaled", num_samples)

    def train_batch(self, position, num_samples, reg_scale=1.0):
        return {"position": position, "num_samples": num_samples}

    def val_batches(self, num_samples):
        return [{}]


def test_study_aware_run_follows_the_protocol(tmp_path):
    """Study.aware: the checkpoint's Adam state reaches the first step, the training
    LiDAR counts reach the batches, and lr2 restarts from the best lr1 state. (The
    optimizer item is read from disk in test_checkpoint / test_convert_tf; here it is
    set as ``Study`` keeps it, for a small tree.)"""
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)}}
    cfg = make_config("tiny", checkpoint=str(tmp_path / "ckpt"), optimizer="tf1_adam",
                      restore_optimizer=True, phase2_from_best=True, train_samples=(100, 5000),
                      finetune_steps=4, refine_steps=1, eval_every=2, lidar_sweep=(2048,),
                      runtime_repeats=0)
    study = Study(cfg, tmp_path / "results")
    study.trainer, study.data = _Engine(), _Data()
    study._optimizer_state = {
        "mu": {"params": jax.tree.map(lambda p: np.full(p.shape, 0.5, np.float32), params)},
        "nu": {"params": jax.tree.map(lambda p: np.full(p.shape, 0.25, np.float32), params)},
        "beta1_power": np.float32(0.9 ** 8), "beta2_power": np.float32(0.999 ** 8),
        "count": np.int64(7)}
    study._finish = lambda key, kind, state, extra: {**extra, "state": state}
    rec = study.aware("aware_quant_8", params, 0.0, 8)
    first = study.trainer.seen[0]
    assert int(first["adam"].count) == 7
    assert float(first["adam"].beta2_power) == np.float32(0.999 ** 8)
    for got in jax.tree.leaves(first["adam"].nu):
        np.testing.assert_array_equal(got, 0.25)
    assert {s["batch"]["num_samples"] for s in study.trainer.seen} == {("scaled", (100, 5000))}
    # best lr1 state after step 2 (sf 3.0 < 5.0): lr2's step sees its parameters
    kernel = [float(s["params"]["conv"]["kernel"].ravel()[0]) for s in study.trainer.seen]
    assert kernel == [1.0, 2.0, 3.0, 4.0, 3.0]
    assert [h["step"] for h in rec["history"]] == [2, 4, 5]
