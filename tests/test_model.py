"""Whole-model tests: shapes, parameter structure, determinism, gradients, bad input."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.model.build import forward, param_shapes
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.model.resize import resize_bilinear_legacy
from deepliflow_jax.predict import predict

H, W = 64, 128


def _frames(seed=0, b=1, h=H, w=W, density=0.05):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.4, 0.6, (b, 2, h, w, 4)).astype(np.float32)
    disp = rng.standard_normal((b, 2, h, w)).astype(np.float32)
    x[..., 3] = disp * (rng.uniform(size=(b, 2, h, w)) < density)
    return x


@pytest.mark.parametrize("b,size,interp,out", [
    (1, (64, 64), None, None),
    (2, (128, 192), None, None),
    (1, (375, 1242), (384, 1216), None),
    (1, (512, 960), None, (256, 480)),
])
def test_shapes(b, size, interp, out):
    model = DeepLiDARFlow()
    x = jax.ShapeDtypeStruct((b, 2, *size, 4), jnp.float32)
    sf, aux = jax.eval_shape(lambda v, f: model.apply(v, f, interp, out), param_shapes(), x)
    assert sf.shape == (b, *(out or size), 4)
    net = interp or size
    for level, flow in zip((6, 5, 4, 3, 2), aux["flows"]):
        assert flow.shape == (b, net[0] // 2**level, net[1] // 2**level, 4)
    assert set(aux["levels"]) == {"flow_level6", "flow_level5", "flow_level4", "flow_level3",
                                  "flow_level2", "flow_level2_unrefined"}


def test_parameter_count_and_frame_sharing():
    flat = flax.traverse_util.flatten_dict(param_shapes()["params"], sep="/")
    total = sum(int(np.prod(v.shape)) for v in flat.values())
    second = {k: v for k, v in flat.items() if k.endswith("/biases_1")}
    # 15 normalized convs (6 encoder, top, 4 upsampling, 4 refine) have per-frame biases
    assert len(second) == 15
    n_second = sum(int(np.prod(v.shape)) for v in second.values())
    assert n_second == 1368
    # Table I of the paper counts 8,295,036: everything but the second frame's biases
    assert total - n_second == 8_295_036
    assert total == 8_296_404


def test_forward_deterministic_finite_and_uses_both_frame_biases(variables):
    x = _frames(0)
    sf1, aux1 = forward(variables, x)
    sf2, _ = forward(variables, x)
    np.testing.assert_array_equal(sf1, sf2)
    assert np.isfinite(np.asarray(sf1)).all() and float(jnp.std(sf1)) > 0
    up = resize_bilinear_legacy(aux1["flows"][-1], (H, W))
    np.testing.assert_allclose(sf1, 20 * up, rtol=1e-5, atol=1e-5)
    # the second frame's normalized-conv biases are used (and only by frame t+1)
    v2 = jax.tree.map(lambda a: a, variables)
    enc = v2["params"]["guidance_network"]["depth_encoder"]["nconv0b"]
    enc["biases_1"] = enc["biases_1"] + 1.0
    sf3, _ = forward(v2, x)
    assert not np.allclose(sf1, sf3)


def test_no_lidar_points_gives_finite_output(variables):
    x = _frames(1)
    x[..., 3] = 0.0
    sf, aux = predict(variables, x)
    assert np.isfinite(np.asarray(sf)).all()
    assert all(np.isfinite(np.asarray(c)).all() for c in aux["confidences"])


def test_gradient_is_finite_and_reaches_every_layer(variables, first_adam_step):
    """One Adam step of the study's compiled train step (shared with the API tests): a
    first Adam step moves an entry by about lr * sign(grad), so an unchanged tensor had
    a zero gradient and a non-finite gradient would show as a non-finite parameter. All
    257 tensors must move (both frames' normalized-conv biases included): a branch cut
    off from the loss (e.g. the depth encoder) leaves its tensors where they were."""
    from deepliflow_jax.losses import path_names

    tuned, history = first_adam_step
    assert np.isfinite(history[0]["loss"])
    before = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    after = jax.tree.leaves(tuned["params"])
    assert len(after) == len(before) == 257
    assert all(np.isfinite(np.asarray(a)).all() for a in after)
    still = ["/".join(path_names(path)) for (path, b), a in zip(before, after, strict=True)
             if not np.any(np.asarray(a) != np.asarray(b))]
    assert still == [], f"{len(still)} of 257 tensors got no gradient: {still}"


def test_bad_input_is_refused_before_tracing(variables):
    x = _frames(0)
    with pytest.raises(ValueError, match="multiples of 64"):
        predict(variables, x[:, :, :60])
    with pytest.raises(ValueError, match=r"\[B, 2, H, W, 4\]"):
        predict(variables, x[:, :1])
    with pytest.raises(ValueError, match=r"\[B, 2, H, W, 4\]"):
        predict(variables, x[..., :3])
    bad = x.copy()
    bad[0, 1, 5, 7, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf.*frame 1, pixel \(5, 7\), channel 3"):
        predict(variables, bad)
    with pytest.raises(ValueError, match="dataset must be"):
        predict(variables, x, dataset="sintel")
    with pytest.raises(ValueError, match="center crop"):
        predict(variables, x, dataset="ft3d")
    with pytest.raises(ValueError, match="network input is 60x128"):
        predict(variables, x, interp_size=(60, 128))


def test_init_params_kernel_gain_scales_conv_kernels_only():
    from deepliflow_jax.model.build import init_params

    a = flax.traverse_util.flatten_dict(init_params(3)["params"], sep="/")
    b = flax.traverse_util.flatten_dict(init_params(3, kernel_gain=2.0)["params"], sep="/")
    for k in a:
        factor = 2.0 if k.endswith("/kernel") else 1.0
        np.testing.assert_allclose(b[k], factor * a[k], rtol=1e-6, err_msg=k)
    std = np.std(a["scene_flow_estimator_2/conv2/kernel"])
    np.testing.assert_allclose(std, np.sqrt(2 / (9 * 256)), rtol=0.05)  # Xavier, fan-avg
