"""Losses against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax import losses


def _kitti_gt():
    gt = np.zeros((1, 2, 2, 4), np.float32)
    gt[0, 0, 0] = np.array([1, 0, 2, 1]) * 20.0  # A
    gt[0, 0, 1] = np.array([0, 0, 1, 1]) * 20.0  # B
    gt[0, 1, 1] = np.array([0, 0, 0.5, 0.5]) * 20.0  # D; (1, 0) stays invalid (d0 = 0)
    return gt


def test_kitti_loss_hand_computed():
    gt = _kitti_gt()
    flows = [jnp.zeros((1, 1, 1, 4))] * 4 + [jnp.zeros((1, 2, 2, 4))]
    # |0 - gt/20|_1 summed over channels: A 4, B 2, D 1; weights sum to 9.
    expected = 9.0 * (4.01**0.4 + 2.01**0.4 + 1.01**0.4) / 3.0
    assert float(losses.kitti_loss(flows, jnp.asarray(gt))) == pytest.approx(expected, rel=1e-6)


def test_kitti_loss_resizes_predictions_with_legacy_bilinear():
    gt = np.zeros((1, 2, 4, 4), np.float32)
    gt[..., 2] = 20.0  # all valid, target (0, 0, 1, 0)
    level = np.zeros((1, 1, 2, 4), np.float32)
    level[0, 0, 0, 2], level[0, 0, 1, 2] = 1.0, 3.0
    # Legacy resize of the row (1, 3) to 4 columns: src = 0, 0.5, 1, 1.5 -> 1, 2, 3, 3.
    errors = np.array([0.0, 1.0, 2.0, 2.0])
    per_level = np.mean((errors + 0.01) ** 0.4)
    flows = [jnp.asarray(level)] * 5
    assert float(losses.kitti_loss(flows, jnp.asarray(gt))) == pytest.approx(9 * per_level,
                                                                              rel=1e-6)
    weights_only_last = (0, 0, 0, 0, 1.0)
    assert float(losses.kitti_loss(flows, jnp.asarray(gt), weights_only_last)) == \
        pytest.approx(per_level, rel=1e-6)


def test_ft3d_loss_hand_computed_and_finite_gradient():
    gt = np.zeros((2, 2, 2, 4), np.float32)
    gt[0, ..., :2] = (6.0, 8.0)  # / 20 -> (0.3, 0.4): norm 0.5 per pixel
    gt[1, ..., :2] = (0.0, 20.0)  # norm 1
    sizes = [(1, 1), (1, 1), (2, 2), (2, 2), (2, 2)]
    flows = [jnp.zeros((2, h, w, 4)) for h, w in sizes]
    per_pixel = np.array([0.5, 1.0])
    expected = sum(wt * np.mean(per_pixel * h * w)
                   for wt, (h, w) in zip((0.32, 0.08, 0.02, 0.01, 0.005), sizes, strict=True))
    assert float(losses.ft3d_loss(flows, jnp.asarray(gt))) == pytest.approx(expected, rel=1e-6)
    exact = [jnp.broadcast_to(jnp.asarray(gt[:, :1, :1] / 20.0), (2, h, w, 4))
             for h, w in sizes]
    grads = jax.grad(lambda f: losses.ft3d_loss(f, jnp.asarray(gt)))(exact)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    assert float(losses.ft3d_loss(exact, jnp.asarray(gt))) == 0.0


def test_kitti_loss_without_valid_pixels_is_finite_and_inputs_are_checked():
    gt = jnp.zeros((1, 2, 2, 4))
    flows = [jnp.ones((1, 1, 1, 4))] * 5
    assert float(losses.kitti_loss(flows, gt)) == 0.0
    with pytest.raises(ValueError, match="5 levels"):
        losses.kitti_loss(flows[:4], gt)
    with pytest.raises(ValueError, match="level 6"):
        losses.kitti_loss([jnp.ones((2, 1, 1, 4))] * 5, gt)


def test_l2_regularizer_selects_kernels():
    params = {"params": {
        "conv1": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(3)},
        "nconv": {"kernels": 2.0 * jnp.ones(3), "biases": jnp.ones(5)},
        "deconv": {"kernel": -jnp.ones((1, 1, 1, 2))}}}
    # 1e-4 * (4 * 1 + 3 * 4 + 2 * 1) / 2
    assert float(losses.l2_regularizer(params)) == pytest.approx(1e-4 * 18 / 2)
    only_conv1 = losses.l2_regularizer(params, 1.0, lambda p: p[-2:] == ("conv1", "kernel"))
    assert float(only_conv1) == pytest.approx(2.0)
    assert float(losses.l2_regularizer({"a": {"bias": jnp.ones(2)}})) == 0.0
    grad = jax.grad(losses.l2_regularizer)(params)
    np.testing.assert_allclose(grad["params"]["nconv"]["kernels"], 1e-4 * 2.0)
    np.testing.assert_array_equal(grad["params"]["conv1"]["bias"], 0.0)


def test_kitti_loss_weights_each_level_as_the_original_and_pools_the_batch():
    """Each level gets its own error, so the weights (1, 1, 1, 2, 4) of the original's
    ``get_loss_KITTI`` (levels 6, 5, 4, 3, refined 2) are pinned one by one, not only
    their sum; two frames with 3 and 1 valid pixels are pooled (``tf.boolean_mask``
    over the batch), not averaged per frame."""
    gt = np.zeros((2, 2, 4, 4), np.float32)
    # valid pixels (d0 > 0): target u / 20 = 0, 1, 2 in frame 0 and 3 in frame 1
    for b, y, x, u in ((0, 0, 0, 0.0), (0, 0, 3, 1.0), (0, 1, 2, 2.0), (1, 1, 1, 3.0)):
        gt[b, y, x] = np.array([u, 0.0, 1.0, 0.0]) * 20.0
    gt[1, 0, 0, :2] = 99.0  # invalid (d0 = 0): must not count
    targets = np.array([0.0, 1.0, 2.0, 3.0])
    # a constant per level (constants survive the resize), d0 exact: error |c - u|
    sizes = [(1, 1), (1, 1), (1, 2), (1, 2), (2, 4)]  # the network's levels 6..2 of 64x128
    consts = [0.5, 4.0, 1.5, -1.0, 2.25]
    flows = []
    for (h, w), c in zip(sizes, consts, strict=True):
        f = np.zeros((2, h, w, 4), np.float32)
        f[..., 0], f[..., 2] = c, 1.0
        flows.append(jnp.asarray(f))

    def level(c):  # pooled mean over the 4 valid pixels of both frames
        return np.mean((np.abs(c - targets) + 0.01) ** 0.4)

    by_hand = (1 * level(0.5) + 1 * level(4.0) + 1 * level(1.5) + 2 * level(-1.0)
               + 4 * level(2.25))
    got = float(losses.kitti_loss(flows, jnp.asarray(gt)))
    assert got == pytest.approx(by_hand, rel=1e-6)
    # the numbers tell the alternatives apart: reversed weights, per-frame means
    reversed_w = sum(w * level(c) for w, c in zip((4, 2, 1, 1, 1), consts, strict=True))
    per_frame = sum(w * 0.5 * (np.mean((np.abs(c - targets[:3]) + 0.01) ** 0.4)
                               + (abs(c - 3.0) + 0.01) ** 0.4)
                    for w, c in zip((1, 1, 1, 2, 4), consts, strict=True))
    assert abs(got - reversed_w) > 0.1 and abs(got - per_frame) > 0.01
