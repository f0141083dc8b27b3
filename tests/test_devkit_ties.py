"""Exact ties at the 5 % threshold: the devkit's arithmetic, the same jitted and in NumPy.

``evaluate_scene_flow.cpp`` computes ``fabs(d_gt - d_est) / fabs(d_gt)`` and
``sqrt(fu*fu + fv*fv) / F_gt.getFlowMagnitude()`` in float (float operands; ``fabs`` and
``sqrt`` of a float are the float overloads) and compares with ``REL_THRESH``, the double
0.05. The float32 nearest 0.05 is 0.0500000007..., above the double: a pixel whose error is
exactly 5 % of the truth (and > 3 px) is a devkit outlier. The original's ``get_eval``
compares in float32 (``tf.div(...) > 0.05``): the same pixel is not an outlier there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax import metrics

# (u, v, d0, d1) truth and estimate, one pixel each
TRUTH = (42.0, 56.0, 70.0, 60.0)  # |flow| = 70 exactly


def _tie_case():
    """Four pixels: a D0 tie, a D1 tie, an Fl tie, an exact pixel (row 0) and row 1 the same
    ties just below 5 % (never outliers)."""
    gt = np.array([[TRUTH, (42, 56, 70, 70), TRUTH, TRUTH]] * 2, np.float32)
    pred = np.array([[(42, 56, 73.5, 60), (42, 56, 70, 66.5), (42, 59.5, 70, 60), TRUTH],
                     [(42, 56, 73.49, 60), (42, 56, 70, 66.51), (42, 59.49, 70, 60), TRUTH]],
                    np.float32)
    return pred, gt


EXPECTED = {  # row 0: tie pixels are devkit outliers and not the original's; row 1: never
    "devkit": {"d0": [[1, 0, 0, 0], [0] * 4], "d1": [[0, 1, 0, 0], [0] * 4],
               "fl": [[0, 0, 1, 0], [0] * 4], "sf": [[1, 1, 1, 0], [0] * 4]},
    "original": {k: [[0] * 4, [0] * 4] for k in ("d0", "d1", "fl", "sf")},
}

_jit_maps = jax.jit(metrics.outlier_maps, static_argnames="validity")


@pytest.mark.parametrize("validity", metrics.VALIDITY_MODES)
def test_tie_pixels_follow_each_modes_arithmetic_jitted_and_numpy(validity):
    pred, gt = _tie_case()
    for maps in (metrics.outlier_maps(pred, gt, validity=validity),
                 _jit_maps(jnp.asarray(pred), jnp.asarray(gt), validity=validity)):
        for name, flags in EXPECTED[validity].items():
            np.testing.assert_array_equal(np.asarray(maps[name]), np.array(flags, bool),
                                          err_msg=f"{validity} {name}")
    # the rates: 3 of the 8 pixels are D0 / D1 / Fl / SF outliers in devkit mode
    valid = np.ones(gt.shape[:-1] + (3,), bool)
    rates = {"devkit": (12.5, 12.5, 12.5, 37.5), "original": (0.0, 0.0, 0.0, 0.0)}[validity]
    kw = {"valid": valid} if validity == "devkit" else {}
    for m in (metrics.batch_metrics_np(pred, gt, validity=validity, **kw),
              metrics.batch_metrics(jnp.asarray(pred), jnp.asarray(gt), validity=validity,
                                    **{k: jnp.asarray(v) for k, v in kw.items()}),
              metrics.evaluate_np([(pred, gt, valid)], validity=validity)):
        assert tuple(float(m[k]) for k in ("d0", "d1", "fl", "sf")) == rates


def _devkit_reference(pred, gt):
    """The devkit's per-pixel rule written out: float32 operands, float64 comparison."""
    f32 = np.float32
    out = {}
    for name, c in (("d0", 2), ("d1", 3)):
        e = np.abs(gt[..., c] - pred[..., c]).astype(f32)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (e / np.abs(gt[..., c])).astype(f32)
        out[name] = (e.astype(np.float64) > 3.0) & (ratio.astype(np.float64) > 0.05)
    fu = (gt[..., 0] - pred[..., 0]).astype(f32)
    fv = (gt[..., 1] - pred[..., 1]).astype(f32)
    dist = np.sqrt(fu * fu + fv * fv)
    mag = np.sqrt(gt[..., 0] * gt[..., 0] + gt[..., 1] * gt[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (dist / mag).astype(f32)
    out["fl"] = (dist.astype(np.float64) > 3.0) & (ratio.astype(np.float64) > 0.05)
    return out


@pytest.mark.parametrize("validity", metrics.VALIDITY_MODES)
def test_jitted_and_numpy_agree_pixel_for_pixel_near_the_threshold(validity):
    """Errors drawn at 5 % of the truth: XLA's x / sqrt(y) -> x * rsqrt(y) must not leak in."""
    rng = np.random.default_rng(0)
    n = 50_000
    gt = np.empty((n, 4), np.float32)
    gt[:, :2] = rng.uniform(-150, 150, (n, 2))
    gt[:, 2:] = rng.uniform(61, 200, (n, 2))
    mag = np.hypot(gt[:, 0].astype(np.float64), gt[:, 1].astype(np.float64))
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = np.maximum(0.05 * mag, 3.0 + 1e-3)
    pred = gt.copy()
    pred[:, 0] += (radius * np.cos(angle)).astype(np.float32)
    pred[:, 1] += (radius * np.sin(angle)).astype(np.float32)
    pred[:, 2:] += np.float32(0.05) * gt[:, 2:]
    pred, gt = pred.reshape(1, 250, 200, 4), gt.reshape(1, 250, 200, 4)
    numpy_maps = metrics.outlier_maps(pred, gt, validity=validity)
    jit_maps = _jit_maps(jnp.asarray(pred), jnp.asarray(gt), validity=validity)
    ref = _devkit_reference(pred, gt)
    for name in ("d0", "d1", "fl", "sf"):
        np.testing.assert_array_equal(np.asarray(jit_maps[name]), numpy_maps[name],
                                      err_msg=name)
    if validity == "devkit":
        for name in ("d0", "d1", "fl"):
            np.testing.assert_array_equal(numpy_maps[name], ref[name], err_msg=name)
            assert 0 < ref[name].mean() < 1  # both sides of the threshold are drawn


def test_devkit_threshold_is_the_smallest_float32_above_the_double():
    t = metrics.DEVKIT_REL_MIN
    assert t.dtype == np.float32
    assert float(t) > metrics.REL_THRESH
    assert float(np.nextafter(t, np.float32(0))) <= metrics.REL_THRESH
