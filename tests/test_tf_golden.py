"""The Flax model against the golden outputs of real TensorFlow kernels.

``tests/tf_golden/make_golden.py`` (run with TensorFlow, not in CI) computes
the original network with TF ops from weights named exactly as the original
release's checkpoint variables; here the same weights go through the name
table into the Flax model, and every pyramid level must agree.
"""

import json
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.model import resize
from deepliflow_jax.model.build import forward, param_shapes
from deepliflow_jax.model.cost_volume import cost_volume
from deepliflow_jax.model.guidance import GuidanceNetwork
from deepliflow_jax.model.layers import Conv, ConvTranspose, leaky_relu
from deepliflow_jax.model.normalized_conv import NormalizedConv, confidence_max_pool
from deepliflow_jax.model.sparse_depth import DepthEncoder
from deepliflow_jax.model.warping import bilinear_warp
from tests.test_conv_impl import assert_as_accurate_as_reference, network_outputs
from tests.tf_golden.weights import make_weights
from weights_convert.tf_names import tf_name_table

FIX = Path(__file__).parent / "fixtures"

# the reference path, the other alternatives at once, and the default ("auto": on CPU the
# library-path forms); tests/test_conv_impl.py checks each alone
GOLDEN_IMPLS = ("xla", "subpixel+s2b+pad8+banded", "auto")


@pytest.fixture(scope="module")
def ops():
    return np.load(FIX / "tf_ops_golden.npz")


@pytest.fixture(scope="module")
def golden():
    return np.load(FIX / "tf_net_golden.npz")


@pytest.fixture(scope="module")
def tf_vars():
    return {k: tuple(v) for k, v in json.loads((FIX / "tf_variables.json").read_text()).items()}


def _flax_from_tf(tf_weights):
    flat = {}
    for name, entry in tf_name_table().items():
        value = tf_weights[name]
        flat[tuple(entry.path.split("/"))] = jnp.asarray(
            value.reshape(-1) if entry.squeeze_bias else value)
    return {"params": flax.traverse_util.unflatten_dict(flat)}


def test_name_table_is_a_bijection_onto_the_model(tf_vars):
    table = tf_name_table()
    assert set(table) == set(tf_vars)
    shapes = flax.traverse_util.flatten_dict(param_shapes()["params"], sep="/")
    assert sorted(e.path for e in table.values()) == sorted(shapes)
    for name, entry in table.items():
        want = shapes[entry.path].shape
        got = (tf_vars[name][-1],) if entry.squeeze_bias else tf_vars[name]
        assert tuple(got) == tuple(want), name


def test_resizes_match_tf(ops):
    rows, cols = ops["resize_nn_big_src_rows"], ops["resize_nn_big_src_cols"]
    np.testing.assert_array_equal(resize.legacy_nearest_indices(384, 375), rows)
    np.testing.assert_array_equal(resize.legacy_nearest_indices(1216, 1242), cols)
    got = resize.resize_bilinear_legacy(jnp.asarray(ops["resize_bl_big_in"]), (375, 1242))
    np.testing.assert_allclose(got, ops["resize_bl_big_out"], rtol=1e-6, atol=1e-6)
    for key in ops.files:
        small = "big" not in key and key.endswith("_in")
        if small and key.startswith(("resize_nn_", "resize_bl_")):
            out = ops[key[:-3] + "_out"]
            fn = resize.resize_nearest_legacy if "_nn_" in key else resize.resize_bilinear_legacy
            got = fn(jnp.asarray(ops[key]), out.shape[1:3])
            np.testing.assert_allclose(got, out, rtol=1e-6, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(resize.upsample_nearest2x(jnp.asarray(ops["upsample2x_in"])),
                                  ops["upsample2x_out"])


@pytest.mark.parametrize("key,stride,dil", [("conv_s2_8x10", 2, 1), ("conv_s2_7x9", 2, 1),
                                            ("conv_d2", 1, 2), ("conv_d4", 1, 4),
                                            ("conv_d16", 1, 16), ("conv_1x1", 1, 1)])
@pytest.mark.parametrize("conv_impl", GOLDEN_IMPLS)
def test_convs_match_tf(ops, key, stride, dil, conv_impl):
    k = ops[key + "_k"]
    conv = Conv(k.shape[-1], ksize=k.shape[0], stride=stride, dilation=dil, activation=False,
                conv_impl=conv_impl)
    got = conv.apply({"params": {"kernel": k, "bias": np.zeros(k.shape[-1], np.float32)}},
                     ops[key + "_x"])
    np.testing.assert_allclose(got, ops[key + "_y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", ["deconv_3x5", "deconv_4x4", "deconv_1x2"])
@pytest.mark.parametrize("conv_impl", GOLDEN_IMPLS)
def test_transposed_convs_match_tf(ops, key, conv_impl):
    k = ops[key + "_k"]
    up = ConvTranspose(k.shape[2], activation=False, conv_impl=conv_impl)
    got = up.apply({"params": {"kernel": k, "bias": np.zeros(k.shape[2], np.float32)}},
                   ops[key + "_x"])
    np.testing.assert_allclose(got, ops[key + "_y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefix", ["mp", "mp_odd"])
def test_confidence_pool_matches_tf_argmax(ops, prefix):
    d, c = confidence_max_pool(jnp.asarray(ops[prefix + "_data"]),
                               jnp.asarray(ops[prefix + "_conf"]))
    np.testing.assert_array_equal(c, ops[prefix + "_pooled_conf"])
    np.testing.assert_array_equal(d, ops[prefix + "_pooled_data"])


def test_activations_cost_volume_warp_nconv_match_tf(ops):
    x = jnp.asarray(ops["act_x"])
    np.testing.assert_allclose(leaky_relu(x, 0.2), ops["leaky_default_y"], rtol=1e-6)
    np.testing.assert_allclose(leaky_relu(x), ops["leaky_01_y"], rtol=1e-6)
    got = cost_volume(jnp.asarray(ops["cv_x"]), jnp.asarray(ops["cv_warped"]))
    np.testing.assert_allclose(got, ops["cv_y"], rtol=1e-5, atol=1e-7)
    got = bilinear_warp(jnp.asarray(ops["warp_x"]), jnp.asarray(ops["warp_flow"]))
    np.testing.assert_allclose(got, ops["warp_y"], rtol=1e-5, atol=1e-6)
    b = ops["nconv_biases"].reshape(-1)
    data = np.concatenate([ops["nconv_data"]] * 2)
    conf = np.concatenate([ops["nconv_conf"]] * 2)
    out, cout = NormalizedConv(b.size).apply(
        {"params": {"kernels": ops["nconv_kernels"], "biases": b, "biases_1": b}}, data, conf)
    np.testing.assert_allclose(out[:1], ops["nconv_out"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cout[:1], ops["nconv_cout"], rtol=1e-5, atol=1e-6)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


@pytest.mark.parametrize("case", ["i", "ii"])
@pytest.mark.parametrize("conv_impl", GOLDEN_IMPLS)
def test_whole_network_matches_tf(golden, tf_vars, case, conv_impl):
    assert list(golden["weight_names"]) == sorted(tf_vars)
    tf_weights = make_weights(tf_vars)
    np.testing.assert_allclose([np.abs(tf_weights[n]).sum() for n in golden["weight_names"]],
                               golden["weight_abs_sums"], rtol=1e-6)
    variables = _flax_from_tf(tf_weights)
    interp = tuple(golden["ii_interp_shape"]) if case == "ii" else None
    out_size = tuple(golden[f"{case}_gt_shape"])
    sf, aux = forward(variables, golden[f"{case}_input"], interp_size=interp,
                      out_size=out_size, conv_impl=conv_impl)
    errors = {}
    for level, flow in zip((6, 5, 4, 3, 2), aux["flows"]):
        errors[level] = _rel(flow, golden[f"{case}_flow{level}"])
    errors["out"] = _rel(sf, golden[f"{case}_out_sf"])
    errors["2u"] = _rel(aux["levels"]["flow_level2_unrefined"], golden[f"{case}_flow2_unrefined"])
    print(case, conv_impl, {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-4, errors
    if conv_impl != "xla":
        # the alternative computes the reference path's function: no farther from the
        # float64 truth than the reference path's float32 rounding
        args = (variables, golden[f"{case}_input"], interp, out_size)
        got = {"out": np.asarray(sf, np.float64),
               **{k: np.asarray(v, np.float64) for k, v in aux["levels"].items()}}
        assert_as_accurate_as_reference(got, network_outputs(*args),
                                        network_outputs(*args, float64=True))


def test_guidance_features_and_depth_confidences_of_both_frames_match_tf(golden, tf_vars):
    """The fused guidance features (levels 6..2) and the sparse-depth confidences (decoder
    6..2, encoder 1..6) of frame t and frame t+1, which has normalized-conv biases of its
    own (the original's ``..._1/biases*``), against TF's intermediate outputs."""
    params = _flax_from_tf(make_weights(tf_vars))["params"]["guidance_network"]
    frames = golden["i_input"]
    x = jnp.concatenate([frames[:, 0], frames[:, 1]], axis=0)  # as DeepLiDARFlow stacks them

    @jax.jit
    def guidance(p, x):
        disp = x[..., 3:4]
        return GuidanceNetwork().apply(
            {"params": p}, x[..., :3], disp, (disp != 0).astype(jnp.float32),
            capture_intermediates=lambda module, _: isinstance(module, DepthEncoder),
            mutable=["intermediates"])

    (fused, dec_conf), inter = guidance(params, x)
    encoder = inter["intermediates"]["depth_encoder"]["__call__"][0]
    errors = {}
    for frame in (0, 1):
        for i, level in enumerate((6, 5, 4, 3, 2)):
            errors[f"feat f{frame} l{level}"] = _rel(fused[i][frame:frame + 1],
                                                     golden[f"i_guid_feat_f{frame}_l{level}"])
            errors[f"dec conf f{frame} l{level}"] = _rel(
                dec_conf[i][frame:frame + 1], golden[f"i_depth_dec_conf_f{frame}_l{level}"])
        for i, level in enumerate(range(1, 7)):
            errors[f"enc conf f{frame} l{level}"] = _rel(
                encoder[i][1][frame:frame + 1], golden[f"i_depth_enc_conf_f{frame}_l{level}"])
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert len(errors) == 32 and max(errors.values()) < 1e-5, errors


def test_softplus_interp_input_and_pooling_argmax_match_tf(ops, golden):
    # the normalized convs' kernel transform (softplus), out to the float32 extremes TF
    # special-cases: a 1x1 normalized conv with the 64 test values as kernels, data 1 and
    # confidence 1/2, gives (sp / 2) / (sp / 2 + eps) and a confidence of 1/2 per channel
    sp = ops["softplus_y"].astype(np.float32)
    half = np.float32(0.5)
    out, cout = NormalizedConv(sp.size, ksize=1).apply(
        {"params": {"kernels": ops["softplus_x"].reshape(1, 1, 1, -1),
                    "biases": np.zeros(sp.size, np.float32),
                    "biases_1": np.zeros(sp.size, np.float32)}},
        np.ones((2, 1, 1, 1), np.float32), np.full((2, 1, 1, 1), half))
    ratio = (half * sp) / (half * sp + np.float32(1e-5))  # >= 0: the leaky ReLU is identity
    np.testing.assert_allclose(out[0, 0, 0], ratio, rtol=1e-5, atol=1e-7)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(cout[0, 0, 0], (half * sp) / sp, rtol=1e-6)
    # KITTI-like case (ii): 70x140 frames to the 64x128 network input, legacy nearest
    x = golden["ii_input"]
    both = resize.resize_nearest_legacy(jnp.concatenate([x[:, 0], x[:, 1]]),
                                        tuple(golden["ii_interp_shape"]))
    np.testing.assert_array_equal(jnp.stack([both[:1], both[1:]], axis=1),
                                  golden["ii_interp_input"])
    # which entry each window picks (ties: the first in raster order), as TF's flat
    # max_pool_with_argmax index ((b * H + y) * W + x) * C + c
    for prefix in ("mp", "mp_odd"):
        conf = ops[prefix + "_conf"]
        index = np.arange(conf.size, dtype=np.float32).reshape(conf.shape)
        picked, _ = confidence_max_pool(jnp.asarray(index), jnp.asarray(conf))
        np.testing.assert_array_equal(np.asarray(picked).astype(np.int64),
                                      ops[prefix + "_argmax"], err_msg=prefix)
