"""Masked-out ground truth reaches neither the losses, the metrics nor their gradients.

A pixel that does not count (``d0 <= 0`` for the loss and the original's rule; the
``valid`` masks under ``"devkit"``) may hold anything in its ground truth: NaN, inf or
1e30 there must give what zeros give, jitted and in NumPy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax import losses, metrics

JUNK = (np.nan, np.inf, 1e30)
# the original's rule reads d0 itself: junk that keeps a pixel masked (d0 > 0 is False)
D0_JUNK = (np.nan, -np.inf, -1e30)


def _case():
    """A 2 x 2 x 3 batch: pixel (0, 1, 2) and (1, 0, 0) do not count (d0 = 0)."""
    rng = np.random.default_rng(3)
    gt = np.zeros((2, 2, 3, 4), np.float32)
    gt[..., :2] = rng.uniform(-30, 30, (2, 2, 3, 2))
    gt[..., 2:] = rng.uniform(5, 60, (2, 2, 3, 2))
    masked = [(0, 1, 2), (1, 0, 0)]
    for px in masked:
        gt[px] = 0.0
    pred = gt + rng.uniform(-8, 8, gt.shape).astype(np.float32)
    # devkit validity: d1 invalid at (0, 0, 1), flow invalid at (1, 1, 2), nothing at masked
    valid = np.ones((2, 2, 3, 3), bool)
    for px in masked:
        valid[px] = False
    valid[0, 0, 1, 1] = False
    valid[1, 1, 2, 2] = False
    return pred, gt, valid, masked


def _flows(pred):
    # the five levels: level 2 at full size carries the prediction, the others smaller
    small = [jnp.asarray(pred[:, :1, :2] / 20.0)] * 4
    return small + [jnp.asarray(pred / 20.0)]


_LOSS_AND_GRADS = jax.value_and_grad(losses.kitti_loss)


def _loss_and_grads(pred, gt, jit):
    fn = jax.jit(_LOSS_AND_GRADS) if jit else _LOSS_AND_GRADS
    value, grads = fn(_flows(pred), jnp.asarray(gt))
    return float(value), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("junk", JUNK)
def test_kitti_loss_and_gradients_ignore_what_masked_pixels_hold(junk, jit):
    pred, gt, _, masked = _case()
    ref_value, ref_grads = _loss_and_grads(pred, gt, jit)
    assert np.isfinite(ref_value)
    for channel in range(4):
        bad = gt.copy()
        for px in masked:
            bad[px + (channel,)] = D0_JUNK[JUNK.index(junk)] if channel == 2 else junk
        value, grads = _loss_and_grads(pred, bad, jit)
        assert value == ref_value, channel
        for g, r in zip(grads, ref_grads, strict=True):
            np.testing.assert_array_equal(g, r)


def _junk_gt(gt, valid, validity, junk, channel):
    """``gt`` with ``junk`` in ``channel`` wherever that channel is not read."""
    bad = gt.copy()
    if validity == "original":
        where = ~(gt[..., 2] > 0)
        value = D0_JUNK[JUNK.index(junk)] if channel == 2 else junk
    else:
        # channel 0, 1 are read where the flow is valid, 2 at d0, 3 at d1
        where = ~valid[..., 2] if channel < 2 else ~valid[..., channel - 2]
        value = junk
    bad[..., channel][where] = value
    return bad


@pytest.mark.parametrize("validity", metrics.VALIDITY_MODES)
@pytest.mark.parametrize("junk", JUNK)
def test_metrics_and_epe_gradient_ignore_what_masked_pixels_hold(validity, junk):
    pred, gt, valid, _ = _case()
    kw = {"valid": valid} if validity == "devkit" else {}
    jkw = {"valid": jnp.asarray(valid)} if validity == "devkit" else {}

    def jitted(g):
        return {k: float(v) for k, v in jax.jit(metrics.batch_metrics, static_argnames="validity")(
            jnp.asarray(pred), jnp.asarray(g), validity=validity, **jkw).items()}

    def epe_grad(g):
        def epe(p):
            return metrics.batch_metrics(p, jnp.asarray(g), validity=validity, **jkw)["epe"]
        return np.asarray(jax.jit(jax.grad(epe))(jnp.asarray(pred)))

    ref = {"np": metrics.batch_metrics_np(pred, gt, validity=validity, **kw),
           "jit": jitted(gt), "grad": epe_grad(gt),
           "set": metrics.evaluate_np([(p, g, v) for p, g, v in zip(pred, gt, valid,
                                                                    strict=True)],
                                      validity=validity)}
    assert all(np.isfinite(v) for v in ref["np"].values())
    assert np.all(np.isfinite(ref["grad"]))
    for channel in range(4):
        bad = _junk_gt(gt, valid, validity, junk, channel)
        assert not np.array_equal(bad, gt, equal_nan=True), channel  # the junk is there
        assert metrics.batch_metrics_np(pred, bad, validity=validity, **kw) == ref["np"]
        assert jitted(bad) == ref["jit"], channel
        np.testing.assert_array_equal(epe_grad(bad), ref["grad"])
        got = metrics.evaluate_np([(p, g, v) for p, g, v in zip(pred, bad, valid, strict=True)],
                                  validity=validity)
        assert got == ref["set"], channel
