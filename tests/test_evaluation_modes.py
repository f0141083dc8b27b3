"""The devkit validity beside the original's, non-finite predictions, and diverged training.

KITTI files are written here with pypng (not the reader's own writer); every expected
number is computed by hand in the comments.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import png
import pytest

from deepliflow_jax import metrics
from deepliflow_jax.data import kitti
from deepliflow_jax.train.state import create_train_state
from deepliflow_jax.train.trainer import Trainer
from tests.fakes import evaluated

# ----------------------------------------------------------------------------- devkit

# Frame 000000, 2 x 3 pixels, (u, v, d0, d1) ground truth; None = invalid in the file.
#   A (0,0): all valid                       pred exact
#   B (0,1): flow invalid (KITTI 0,0,0)      pred flow (0, 0): original gt is -512 -> Fl
#   C (0,2): d1 invalid (0)                  pred d1 10: error 10, 10 / 0 -> D1 (original)
#   D (1,0): d0 invalid, d1 / flow valid     pred flow (0, 0) vs (8, 0): Fl (devkit only)
#   E (1,1): all valid                       pred d0 54 vs 50: error 4 > 3, 8 % > 5 % -> D0
#   F (1,2): nothing valid                   pred 99: ignored by both
FLOW = [[(10, 0), None, (5, 5)], [(8, 0), (20, 0), None]]
D0 = [[20, 30, 40], [0, 50, 0]]
D1 = [[20, 30, 0], [25, 48, 0]]
PRED = np.array([[(10, 0, 20, 20), (0, 0, 30, 30), (5, 5, 40, 10)],
                 [(0, 0, 77, 25), (20, 0, 54, 48), (99, 99, 99, 99)]], np.float32)
# Frame 000001: every map valid everywhere, predicted exactly (6 inlier pixels).
D_ALL = [[10, 20, 30], [40, 50, 60]]
FLOW_ALL = [[(1, 1)] * 3] * 2


def _png16(path: Path, rows, channels: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(rows, np.uint16).reshape(len(rows), -1)
    with open(path, "wb") as f:
        png.Writer(arr.shape[1] // channels, arr.shape[0], greyscale=channels == 1,
                   bitdepth=16).write(f, arr.tolist())


def _write_frame(root: Path, name: str, d0, d1, flow) -> None:
    paths = kitti.frame_paths(root, name)
    rgb = np.full((2, 3 * 3), 128, np.uint8)
    for key in ("image0", "image1"):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        with open(paths[key], "wb") as f:
            png.Writer(3, 2, greyscale=False, bitdepth=8).write(f, rgb.tolist())
    _png16(paths["disp0"], np.asarray(d0) * 256, 1)
    _png16(paths["disp1"], np.asarray(d1) * 256, 1)
    _png16(paths["disp1_second_view"], np.asarray(d1) * 256, 1)
    raw = np.zeros((2, 3, 3), np.int64)
    for i in range(2):
        for j in range(3):
            if flow[i][j] is not None:
                raw[i, j] = (flow[i][j][0] * 64 + 2**15, flow[i][j][1] * 64 + 2**15, 1)
    _png16(paths["flow"], raw, 3)


@pytest.fixture()
def two_frames(tmp_path):
    _write_frame(tmp_path, "000000", D0, D1, FLOW)
    _write_frame(tmp_path, "000001", D_ALL, D_ALL, FLOW_ALL)
    return tmp_path


def test_reader_keeps_each_maps_validity_and_devkit_ground_truth(two_frames):
    orig = kitti.load_frame(two_frames, "000000")
    dev = kitti.load_frame(two_frames, "000000", validity="devkit")
    # original: B keeps the decoded -512 flow, D (d0 invalid) is zeroed
    np.testing.assert_array_equal(orig.gt[0, 1], [-512, -512, 30, 30])
    np.testing.assert_array_equal(orig.gt[1, 0], 0.0)
    # devkit: B's invalid flow is 0, D keeps its flow and d1
    np.testing.assert_array_equal(dev.gt[0, 1], [0, 0, 30, 30])
    np.testing.assert_array_equal(dev.gt[1, 0], [8, 0, 0, 25])
    expected_valid = np.array([[(1, 1, 1), (1, 1, 0), (1, 0, 1)],
                               [(0, 1, 1), (1, 1, 1), (0, 0, 0)]], bool)
    np.testing.assert_array_equal(orig.gt_valid, expected_valid)
    np.testing.assert_array_equal(dev.gt_valid, expected_valid)
    with pytest.raises(ValueError, match="validity must be one of"):
        kitti.KittiSceneFlow(two_frames, "all", validity="leaderboard")


def test_devkit_and_original_give_the_hand_computed_numbers(two_frames):
    sets = {v: kitti.KittiSceneFlow(two_frames, "all", validity=v)
            for v in metrics.VALIDITY_MODES}
    # frame 0 alone; original: pixels A B C E; D0 = E, D1 = C, Fl = B, SF = B C E
    s = sets["original"][0]
    m = metrics.batch_metrics_np(PRED, s.gt)
    assert (m["d0"], m["d1"], m["fl"], m["sf"]) == pytest.approx((25, 25, 25, 75))
    epe_b = 512 * np.sqrt(2)
    assert m["epe"] == pytest.approx((epe_b + 10 + 4) / 4, rel=1e-6)
    # devkit: D0 on A B C E (E), D1 on A B D E (none), Fl on A C D E (D), SF/EPE on A E (E)
    s = sets["devkit"][0]
    for m in (metrics.batch_metrics_np(PRED, s.gt, valid=s.gt_valid, validity="devkit"),
              {k: float(v) for k, v in metrics.batch_metrics(
                  jnp.asarray(PRED), jnp.asarray(s.gt), valid=jnp.asarray(s.gt_valid),
                  validity="devkit").items()}):
        assert (m["d0"], m["d1"], m["fl"], m["sf"]) == pytest.approx((25, 0, 25, 50))
        assert m["epe"] == pytest.approx(2.0) and m["nonfinite"] == 0
    # the set: frame 1 is predicted exactly
    preds = [PRED, np.asarray(sets["original"][1].gt)]
    orig = metrics.evaluate_np([(p, s.gt) for p, s in zip(preds, sets["original"],
                                                         strict=True)])
    # original: mean over the two frames of (25, 25, 25, 75) and 0
    assert (orig["d0"], orig["d1"], orig["fl"], orig["sf"]) == pytest.approx(
        (12.5, 12.5, 12.5, 37.5))
    assert orig["epe"] == pytest.approx((epe_b + 14) / 4 / 2, rel=1e-6)
    dev = metrics.evaluate_np([(p, s.gt, s.gt_valid) for p, s in zip(preds, sets["devkit"],
                                                                    strict=True)],
                              validity="devkit")
    # devkit pools pixels: D0 1 / (4 + 6), D1 0 / (4 + 6), Fl 1 / (4 + 6), SF 1 / (2 + 6)
    assert (dev["d0"], dev["d1"], dev["fl"], dev["sf"]) == pytest.approx((10, 0, 10, 12.5))
    assert dev["epe"] == pytest.approx(4 / 8) and dev["frames"] == 2
    with pytest.raises(ValueError, match="validity='devkit' needs valid"):
        metrics.batch_metrics_np(PRED, s.gt, validity="devkit")
    with pytest.raises(ValueError, match="validity must be one of"):
        metrics.evaluate_np([(PRED, s.gt)], validity="kitti")


@pytest.mark.slow
def test_evaluate_devkit_counts_what_numpy_counts(small_variables, tiny_world, tiny_data):
    """The compiled devkit evaluation == the NumPy devkit rule on the same predictions."""
    import deepliflow_jax as dl
    from deepliflow_jax.api import _state, _trainer

    variables = small_variables  # any network: the rule is what is compared
    dev = dl.load_dataset(tiny_world, validity="devkit")
    assert (dev.validity, tiny_data.validity) == ("devkit", "original")
    batches = dev.val_batches(dev.num_samples)
    trainer = _trainer(dev, variables["params"])
    got, outputs = trainer.evaluate(_state(trainer, variables["params"], 0.0, 0), batches,
                                    keep_outputs=True, validity="devkit")
    ref = metrics.evaluate_np([(o, g, v) for b, out in zip(batches, outputs, strict=True)
                               for o, g, v in zip(out, b["gt"], b["valid"], strict=True)],
                              validity="devkit")
    for k in metrics.METRIC_NAMES:
        assert got[k] == pytest.approx(ref[k], rel=1e-5), k
    assert got["nonfinite"] == 0
    assert dl.evaluate(variables, dev) == {**got, "frames": 1}
    with pytest.raises(ValueError, match="loaded with validity='original'"):
        dl.evaluate(variables, tiny_data, validity="devkit")


def test_devkit_pools_pixels_over_frames_in_the_trainer_and_the_study(small_variables,
                                                                    tiny_world, tmp_path):
    """Frames with very different valid-pixel counts: the trainer's and the study's devkit
    numbers are the NumPy devkit path's totals over pixels, not a mean of frame rates."""
    import deepliflow_jax as dl
    from deepliflow_jax.api import _state, _trainer
    from deepliflow_jax.study import make_config
    from deepliflow_jax.study.runner import Study

    dev = dl.load_dataset(tiny_world, validity="devkit")
    (batch,) = dev.val_batches(dev.num_samples)  # one 64x192 frame
    trainer = _trainer(dev, small_variables["params"])
    state = _state(trainer, small_variables["params"], 0.0, 0)
    _, (pred,) = trainer.evaluate(state, [batch], keep_outputs=True, validity="devkit")
    # frame 2: 20 pixels predicted exactly (0 % outliers); frame 3: the last 16 rows only
    all_valid = np.flatnonzero(batch["valid"][0].all(axis=-1))[:20]
    few = np.zeros_like(batch["valid"])
    few[0].reshape(-1, 3)[all_valid] = True
    rows = batch["valid"].copy()
    rows[:, :-16] = False
    batches = [batch, dict(batch, gt=pred.copy(), valid=few), dict(batch, valid=rows)]
    counts = [b["valid"].sum(axis=(0, 1, 2)) for b in batches]
    assert all(c.min() > 0 for c in counts) and counts[1].max() == 20, counts
    frames = [(pred[0], b["gt"][0], b["valid"][0]) for b in batches]
    pooled = metrics.evaluate_np(frames, validity="devkit")
    per_frame = metrics.evaluate_np(frames, aggregate="frame", validity="devkit")
    assert pooled["sf"] > 5.0  # so that the two aggregations are far apart
    for k in ("d0", "d1", "fl", "sf"):
        assert abs(pooled[k] - per_frame[k]) > 1.0, k
    got = trainer.evaluate(state, batches, validity="devkit")
    for k in metrics.METRIC_NAMES:
        assert got[k] == pytest.approx(pooled[k], rel=1e-5), k

    # the per-frame counts behind them (what the study's intervals resample), the pooled
    # numbers unchanged to the bit
    again, frame_counts = trainer.evaluate(state, batches, validity="devkit", with_counts=True)
    assert again == got
    assert {k: v.shape for k, v in frame_counts.items()} == {
        k: (3,) for k in (*metrics.COUNT_KEYS, *metrics.METRIC_NAMES)}
    np.testing.assert_array_equal(frame_counts["count_d0"], [c[0] for c in counts])
    assert metrics.as_floats(metrics.metrics_from_counts(frame_counts, "pixel")) == got
    one = trainer.evaluate(state, batches[1:2], validity="devkit", with_counts=True)[1]
    assert {k: v[1] for k, v in frame_counts.items()} == {k: v[0] for k, v in one.items()}
    _, outputs, both = trainer.evaluate(state, batches, validity="devkit", keep_outputs=True,
                                        with_counts=True)
    assert len(outputs) == 3
    assert all(np.array_equal(both[k], frame_counts[k]) for k in frame_counts)

    study = Study(make_config("tiny", validity="devkit"), tmp_path / "study")
    study.trainer = trainer
    study.data = SimpleNamespace(num_samples=dev.num_samples,
                                 samples_for=lambda n: dev.num_samples,
                                 val_batches=lambda n: batches)
    assert study._evaluate(state, study.val_batches()) == got
    # a record's metrics and the counts it keeps for the intervals
    recorded = study._evaluate_recorded(state)
    assert recorded["metrics"] == got
    assert recorded["frame_counts"] == {k: v.tolist() for k, v in frame_counts.items()}


# ----------------------------------------------------------------------------- non-finite


def _nonfinite_case():
    gt = np.zeros((2, 3, 4), np.float32)
    gt[..., :2] = 2.0
    gt[..., 2:] = 20.0
    gt[1, 2] = 0.0  # invalid: its NaN below is not evaluated
    pred = gt.copy()
    pred[0, 0, 0] = np.nan  # u only
    pred[0, 1, 2] = np.inf  # d0
    pred[0, 2, 3] = -np.inf  # d1
    pred[1, 2] = np.nan
    return pred, gt


def test_non_finite_predictions_are_outliers_in_every_rate():
    pred, gt = _nonfinite_case()
    valid = np.ones((2, 3, 3), bool)
    valid[1, 2] = False
    # 5 evaluated pixels, 3 of them non-finite: 60 % in every rate
    for m in (metrics.batch_metrics_np(pred, gt),
              {k: float(v) for k, v in jax.jit(metrics.batch_metrics)(pred, gt).items()},
              metrics.evaluate_np([(pred, gt)]),
              metrics.evaluate_np([(pred, gt, valid)], validity="devkit"),
              metrics.batch_metrics_np(pred, gt, valid=valid, validity="devkit")):
        for k in ("d0", "d1", "fl", "sf"):
            assert m[k] == pytest.approx(60.0), k
        assert m["nonfinite"] == 3 and not np.isfinite(m["epe"])
    # a NaN model: every valid pixel an outlier, never a perfect row
    m = metrics.evaluate_np([(np.full_like(gt, np.nan), gt)])
    assert m["sf"] == 100.0 and m["nonfinite"] == 5 and np.isnan(m["epe"])


# ----------------------------------------------------------------------------- divergence


def test_check_training_names_step_and_learning_rate():
    from deepliflow_jax.train.trainer import DivergenceError, check_training

    check_training([0, 1], [1.0, jnp.float32(2.0)], 1e-4, {"w": jnp.ones(3)})  # fine
    with pytest.raises(DivergenceError, match=r"at step 4 \(learning rate 0\.01\): the loss "
                                              r"is inf"):
        check_training([3, 4, 5], [1.0, jnp.inf, jnp.nan], 0.01)
    with pytest.raises(FloatingPointError, match=r"step 7 .*parameters are not finite"):
        check_training([7], [1.0], 0.5, {"a": jnp.ones(2), "b": jnp.array([0.0, jnp.nan])})


@pytest.mark.slow
def test_finetune_that_diverges_raises_naming_step_and_lr(small_variables, tiny_data):
    import deepliflow_jax as dl
    from deepliflow_jax.train.trainer import DivergenceError

    # the 8-wide network trains with the tiny study's step (its executable, or its trainer)
    with pytest.raises(DivergenceError, match=r"diverged at step 1 \(learning rate 1e\+06\): "
                                              r"the loss is nan") as info:
        dl.finetune(small_variables, tiny_data, steps=2, lr=1e6)
    assert (info.value.step, info.value.lr) == (1, 1e6)


class _FakeTrainer:
    """The trainer's interface without a network: pruned (masked) states diverge."""

    fit = Trainer.fit  # the real loop over the fake steps
    channel_masked = False

    def new_state(self, params, *, lr=1e-4, masks=None, bits=0, adam=None):
        self.diverges = masks is not None  # the configuration about to be trained
        return create_train_state(params, optax.inject_hyperparams(optax.adam)(learning_rate=lr))

    def train_step(self, state, batch):
        bad = self.diverges
        params = jax.tree.map(lambda x: x * (np.nan if bad else 1.0), state.params)
        return (state._replace(params=params, step=state.step + 1),
                {"loss": jnp.float32(np.nan if bad else 1.0)})

    def evaluate(self, state, batches, keep_outputs=False, validity="original",
                 with_counts=False):
        return evaluated({"epe": 1.0, "d0": 1.0, "d1": 1.0, "fl": 1.0, "sf": 2.0,
                          "nonfinite": 0}, with_counts)

    def compressed_params(self, state):
        return state.params


def test_study_records_a_diverged_configuration_and_goes_on(tmp_path, monkeypatch):
    from deepliflow_jax.study import make_config
    from deepliflow_jax.study.runner import Study

    data = SimpleNamespace(num_samples=1, samples_for=lambda n: 1, val_batches=lambda n: [{}],
                           train_batch=lambda pos, n, reg_scale=1.0: {})

    def prepare(self):
        self.data, self.trainer = data, _FakeTrainer()

    monkeypatch.setattr(Study, "prepare", prepare)
    monkeypatch.setattr(Study, "_baseline_params", lambda self: {"w": np.arange(1.0, 11.0)})
    # no baseline checkpoint is written here: its record alone marks it done
    monkeypatch.setattr(Study, "_baseline_done", lambda self, key: self.records.has(key))
    monkeypatch.setattr(Study, "_qualitative",  # Fig. 5 is not the point: its file marks it done
                        lambda self, *a: (self.dir / "fig5_qualitative.png").write_bytes(b""))
    cfg = make_config("tiny", experiments=("aware_prune", "aware_quant"), runtime_repeats=0)
    Study(cfg, tmp_path).run()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["validity"] == "original"
    failed = results["records"]["aware_prune_10"]
    assert "metrics" not in failed and failed["failed_step"] == 1
    assert failed["failed"].startswith("fine-tuning diverged at step 1 (learning rate 0.0001)")
    assert results["records"]["aware_quant_8"]["metrics"]["sf"] == 2.0  # the next one ran
    tables = (tmp_path / "tables.md").read_text()
    assert "| aware | 10% | 32 bits | failed | failed |" in tables
    assert "| aware lr1=0.0001 | failed | failed |" in tables
    assert "validity 'original'" in tables
    assert "aware_prune_10,aware,10.0,0," in (tmp_path / "results.csv").read_text()


def test_study_config_validity_and_resume():
    from deepliflow_jax.study import make_config
    from deepliflow_jax.study.config import resume_conflicts

    cfg = make_config("tiny", validity="devkit")
    assert cfg.validity == "devkit"
    with pytest.raises(ValueError, match="validity must be one of"):
        make_config("tiny", validity="kitti")
    saved = json.loads(json.dumps(make_config("tiny").to_dict()))
    assert resume_conflicts(saved, cfg) == ["validity"]
    del saved["validity"]  # a folder written before the field existed: the original's
    assert resume_conflicts(saved, make_config("tiny")) == []
    assert resume_conflicts(saved, cfg) == ["validity"]
