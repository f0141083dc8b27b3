"""Metrics against hand-computed cases and an independent NumPy version of get_eval."""

import jax
import numpy as np
import pytest

from deepliflow_jax import metrics


def reference_get_eval(out_sf, gt_sf):
    """deeplidarflow.get_eval written out again, op for op, in NumPy (float32)."""
    gt_mask = gt_sf[..., 2] > 0.0
    gt_m = gt_sf[gt_mask].astype(np.float32)
    out_m = out_sf[gt_mask].astype(np.float32)
    error = np.abs(out_m - gt_m)
    sf_epe = np.mean(np.sqrt(np.sum(error**2, axis=-1)))
    flow_mag = np.sqrt(np.sum(gt_m[:, :2] ** 2, axis=-1))
    flow_epe = np.sqrt(np.sum(error[:, :2] ** 2, axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        d0 = np.logical_and(error[:, 2] > 3.0, (error[:, 2] / gt_m[:, 2]) > 0.05)
        d1 = np.logical_and(error[:, 3] > 3.0, (error[:, 3] / gt_m[:, 3]) > 0.05)
        fl = np.logical_and(flow_epe > 3.0, (flow_epe / flow_mag) > 0.05)
    sf = np.logical_or(fl, np.logical_or(d0, d1))
    return {"d0": d0.mean() * 100, "d1": d1.mean() * 100, "fl": fl.mean() * 100,
            "sf": sf.mean() * 100, "epe": sf_epe}


def _hand_case():
    gt = np.zeros((2, 3, 4), np.float32)
    pred = np.zeros((2, 3, 4), np.float32)
    gt[0, 0], pred[0, 0] = (10, 0, 50, 40), (10, 4, 50, 40)  # Fl outlier, error 4
    gt[0, 1], pred[0, 1] = (0, 0, 20, 20), (0, 0, 24, 20)  # D0 outlier, error 4
    gt[0, 2], pred[0, 2] = (100, 0, 80, 60), (104, 0, 80, 63.5)  # 4 px flow is < 5 %; D1
    gt[1, 0], pred[1, 0] = (5, 5, 30, 0), (5, 5, 30, 2)  # d1 gt 0 inside the mask, err 2
    gt[1, 1], pred[1, 1] = (0, 0, 0, 0), (99, 99, 99, 99)  # invalid: ignored
    gt[1, 2], pred[1, 2] = (0, 0, 10, 10), (0, 0, 10, 10)  # exact
    return pred, gt


def test_hand_computed_frame():
    pred, gt = _hand_case()
    m = metrics.batch_metrics_np(pred, gt)
    # 5 valid pixels; one Fl, one D0, one D1 outlier, on three different pixels.
    assert m["fl"] == pytest.approx(20.0) and m["d0"] == pytest.approx(20.0)
    assert m["d1"] == pytest.approx(20.0) and m["sf"] == pytest.approx(60.0)
    assert m["epe"] == pytest.approx((4 + 4 + np.sqrt(16 + 3.5**2) + 2 + 0) / 5, rel=1e-6)
    # A d1 error above 3 px where the d1 ground truth is 0 is an outlier (x / 0 = inf).
    pred[1, 0, 3] = 4.0
    assert metrics.batch_metrics_np(pred, gt)["d1"] == pytest.approx(40.0)
    jm = metrics.batch_metrics(pred, gt)
    assert float(jm["d1"]) == pytest.approx(40.0) and float(jm["sf"]) == pytest.approx(80.0)


def test_frame_and_pixel_aggregation():
    gt = np.zeros((2, 2, 2, 4), np.float32)
    gt[..., 2:] = 10.0
    gt[0, 1:, :, 2] = 0.0  # frame 0 has 2 valid pixels, frame 1 has 4
    pred = gt.copy()
    pred[0, 0, 0, 2] = 20.0  # one D0 outlier in frame 0
    counts = metrics.frame_counts(pred, gt)
    np.testing.assert_array_equal(np.asarray(counts["count"]), [2, 4])
    np.testing.assert_array_equal(np.asarray(counts["d0"]), [1, 0])
    per_frame = metrics.metrics_from_counts(counts, "frame")
    per_pixel = metrics.metrics_from_counts(counts, "pixel")
    assert float(per_frame["d0"]) == pytest.approx((50.0 + 0.0) / 2)
    assert float(per_pixel["d0"]) == pytest.approx(100.0 / 6)
    assert float(per_frame["epe"]) == pytest.approx((10 / 2 + 0) / 2)
    assert float(per_pixel["epe"]) == pytest.approx(10 / 6)
    # The original's evaluation: the mean over frames of get_eval (batch size 1).
    ev = metrics.evaluate_np(zip(pred, gt, strict=True), "frame")
    assert ev["d0"] == pytest.approx(25.0) and ev["frames"] == 2
    assert metrics.evaluate_np(zip(pred, gt, strict=True), "pixel")["d0"] == pytest.approx(
        100.0 / 6)
    with pytest.raises(ValueError, match="aggregate"):
        metrics.metrics_from_counts(counts, "image")


def test_jit_numpy_and_reference_agree_on_random_scenes():
    rng = np.random.default_rng(0)
    gt = rng.uniform(-40, 40, (3, 9, 11, 4)).astype(np.float32)
    gt[..., 2:] = rng.uniform(0, 80, (3, 9, 11, 2))
    gt[rng.uniform(size=(3, 9, 11)) < 0.3] = 0.0  # invalid pixels, zeroed as the loader
    gt[0, 0, 0, 3] = 0.0  # invalid d1 inside the mask
    pred = gt + rng.normal(0, 4, gt.shape).astype(np.float32)
    ref = reference_get_eval(pred, gt)
    npm = metrics.batch_metrics_np(pred, gt)
    jm = jax.jit(metrics.batch_metrics)(pred, gt)
    for k in metrics.METRIC_NAMES:
        assert npm[k] == pytest.approx(ref[k], rel=1e-5), k
        assert float(jm[k]) == pytest.approx(ref[k], rel=1e-5), k
    assert 5 < ref["sf"] < 95  # the case exercises both outcomes
    acc = metrics.MetricAccumulator()
    acc.add(pred[:2], gt[:2])
    acc.add_counts(jax.jit(metrics.frame_counts)(pred[2:], gt[2:]))
    frame_mean = {k: np.mean([reference_get_eval(p, g)[k] for p, g in zip(pred, gt,
                                                                          strict=True)])
                  for k in metrics.METRIC_NAMES}
    res = acc.result("frame")
    for k in metrics.METRIC_NAMES:
        assert res[k] == pytest.approx(frame_mean[k], rel=1e-5), k
    assert acc.num_frames == 3
    assert acc.result("pixel")["sf"] == pytest.approx(ref["sf"], rel=1e-5)


def test_custom_mask_and_bad_shapes():
    pred, gt = _hand_case()
    mask = np.zeros((2, 3), bool)
    mask[0, 1] = True  # only the D0 outlier
    assert metrics.batch_metrics_np(pred, gt, mask)["d0"] == pytest.approx(100.0)
    assert float(metrics.batch_metrics(pred, gt, mask)["d0"]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="pred"):
        metrics.batch_metrics_np(pred[..., :3], gt[..., :3])
    with pytest.raises(ValueError, match="no frames"):
        metrics.MetricAccumulator().result()


# ----------------------------------------------------------------------------- bootstrap


def _random_counts(n, seed=0):
    """Per-frame counts of ``n`` frames with varying valid-pixel counts and error levels."""
    rng = np.random.default_rng(seed)
    count = rng.integers(50, 500, n).astype(np.float64)
    level = rng.uniform(0.5, 4.0, n)  # the frame's mean EPE
    out = {"count": count, "epe": level * count, "nonfinite": np.zeros(n)}
    for name in ("d0", "d1", "fl", "sf"):
        out[name] = np.floor(count * rng.uniform(0.0, 0.6, n))
        out[f"count_{name}"] = count
    out.pop("count_sf")
    return out


@pytest.mark.parametrize("aggregate", ["frame", "pixel"])
def test_bootstrap_interval_holds_the_pooled_value_and_shrinks_with_more_frames(aggregate):
    widths = []
    for n in (8, 400):
        counts = _random_counts(n)
        pooled = metrics.metrics_from_counts(counts, aggregate)
        got = metrics.bootstrap_interval(counts, aggregate)
        for k in metrics.METRIC_NAMES:
            low, high = got[k]
            assert low < pooled[k] < high, (n, k)
        widths.append(got["epe"][1] - got["epe"][0])
    assert widths[1] < widths[0] / 4  # ~ 1 / sqrt(N): 50x the frames, ~7x narrower


def test_bootstrap_is_seeded_and_paired_on_the_same_frames():
    counts = _random_counts(30)
    a = metrics.bootstrap_interval(counts, "pixel")
    assert metrics.bootstrap_interval(counts, "pixel") == a  # a rerun: the same interval
    assert metrics.bootstrap_interval(counts, "pixel", seed=1) != a
    # a model paired with itself: every resample's difference is 0, exactly
    same = metrics.bootstrap_interval(counts, "pixel", baseline=dict(counts))
    assert same == {k: (0.0, 0.0) for k in metrics.METRIC_NAMES}
    # 0.05 px worse on every pixel: the frames' spread hides it in the marginal intervals,
    # the paired interval (same resampled frames) shows it
    worse = {**counts, "epe": counts["epe"] + 0.05 * counts["count"]}
    b = metrics.bootstrap_interval(worse, "pixel")
    assert b["epe"][0] < a["epe"][1]  # the marginal intervals overlap
    low, high = metrics.bootstrap_interval(worse, "pixel", baseline=counts)["epe"]
    assert low == pytest.approx(0.05, abs=1e-5) and high == pytest.approx(0.05, abs=1e-5)
    # the values are the differences of the two models' resampled values, draw by draw
    diff = metrics.bootstrap_metrics(worse, "pixel", baseline=counts, resamples=50)
    each = [metrics.bootstrap_metrics(c, "pixel", resamples=50) for c in (worse, counts)]
    np.testing.assert_array_equal(diff["epe"], each[0]["epe"] - each[1]["epe"])
    assert np.ptp(diff["epe"]) < 1e-5 < np.ptp(each[0]["epe"])


def test_bootstrap_resamples_frames_and_pools_their_counts():
    """Two frames: 1 pixel, an outlier (100 %), and 99 pixels, none. A resample of frames
    pools its counts: {1, 1} 100 %, {1, 99} 1 % (the devkit's pooling; 50 % is the frame
    mean), {99, 99} 0 %."""
    counts = {"count": [1.0, 99.0], "epe": [7.0, 99.0], "d0": [1.0, 0.0], "d1": [0.0, 0.0],
              "fl": [0.0, 0.0], "sf": [1.0, 0.0]}
    pixel = metrics.bootstrap_metrics(counts, "pixel")
    frame = metrics.bootstrap_metrics(counts, "frame")
    assert set(np.round(pixel["sf"], 4)) == {100.0, 1.0, 0.0}
    assert set(np.round(frame["sf"], 4)) == {100.0, 50.0, 0.0}
    assert set(np.round(pixel["epe"], 4)) == {7.0, 1.06, 1.0}
    assert pixel["sf"].shape == (metrics.BOOTSTRAP_RESAMPLES,)
    # about half the resamples hold both frames
    assert 0.4 < np.mean(np.round(pixel["sf"], 4) == 1.0) < 0.6


def test_bootstrap_refuses_what_it_cannot_resample():
    counts = _random_counts(4)
    with pytest.raises(ValueError, match="no frames"):
        metrics.bootstrap_interval({k: v[:0] for k, v in counts.items()})
    with pytest.raises(ValueError, match="baseline has 3 frames, counts 4"):
        metrics.bootstrap_interval(counts, baseline={k: v[:3] for k, v in counts.items()})
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        metrics.bootstrap_interval(counts, confidence=95)
    with pytest.raises(ValueError, match="resamples must be an integer >= 1"):
        metrics.bootstrap_interval(counts, resamples=0)


def test_metrics_from_counts_of_rows_is_each_row_pooled():
    """[R, N] counts (the bootstrap's resamples): row r is the [N] set of row r."""
    counts = _random_counts(6)
    rows = {k: np.stack([v, v[::-1], v[[0, 0, 1, 1, 2, 2]]]) for k, v in counts.items()}
    for aggregate in ("frame", "pixel"):
        got = metrics.metrics_from_counts(rows, aggregate)
        for r in range(3):
            one = metrics.metrics_from_counts({k: v[r] for k, v in rows.items()}, aggregate)
            for k in (*metrics.METRIC_NAMES, "nonfinite"):
                assert got[k][r] == one[k], (aggregate, r, k)
