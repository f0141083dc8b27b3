"""Each block of the Flax port against a literal numpy re-statement of the original."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.model import resize
from deepliflow_jax.model.cost_volume import cost_volume
from deepliflow_jax.model.layers import Conv, ConvTranspose
from deepliflow_jax.model.normalized_conv import NormalizedConv, confidence_max_pool
from deepliflow_jax.model.warping import bilinear_warp
from tests import reference_numpy as ref

RNG = np.random.default_rng(1234)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("size,stride,dilation", [((8, 10), 2, 1), ((7, 9), 2, 1), ((6, 7), 1, 2),
                                                  ((9, 9), 1, 4)])
def test_conv_tf_same_padding(size, stride, dilation):
    x = _rand(2, *size, 3)
    w, b = _rand(3, 3, 3, 5), _rand(5)
    conv = Conv(5, stride=stride, dilation=dilation, activation=False)
    got = conv.apply({"params": {"kernel": w, "bias": b}}, x)
    want = ref.conv2d_same(x, w, stride, dilation) + b
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # symmetric padding (PyTorch style) would shift the stride-2 output grid
    if stride == 2 and size[0] % 2 == 0:
        sym = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        wrong = ref.conv2d_same(sym, w, stride)[:, 1 : 1 + want.shape[1], 1 : 1 + want.shape[2]]
        assert not np.allclose(wrong + b, want, atol=1e-3)


def test_conv_leaky_slope_is_0_1():
    x = -np.ones((1, 3, 3, 1), np.float32)
    conv = Conv(1, ksize=1)
    y = conv.apply({"params": {"kernel": np.ones((1, 1, 1, 1), np.float32),
                               "bias": np.zeros(1, np.float32)}}, x)
    np.testing.assert_allclose(y, -0.1 * np.ones_like(x), rtol=1e-6)


@pytest.mark.parametrize("size", [(3, 5), (4, 4)])
def test_conv_transpose_tf_same(size):
    x = _rand(1, *size, 3)
    w, b = _rand(4, 4, 2, 3), _rand(2)  # TF layout [kh, kw, out, in]
    up = ConvTranspose(2, activation=False)
    got = up.apply({"params": {"kernel": w, "bias": b}}, x)
    assert got.shape == (1, 2 * size[0], 2 * size[1], 2)
    np.testing.assert_allclose(got, ref.conv2d_transpose_same(x, w) + b, rtol=1e-5, atol=1e-5)


def test_confidence_max_pool_ties_and_empty_windows():
    conf = (RNG.uniform(size=(2, 6, 8, 4)) < 0.4).astype(np.float32)  # binary: many ties
    conf[0, :2, :2, :] = 0.0  # windows without any point
    conf[1, 2:4, 2:4, 1] = 0.7  # equal non-binary maxima
    data = _rand(2, 6, 8, 4)
    got_d, got_c = confidence_max_pool(jnp.asarray(data), jnp.asarray(conf))
    want_d, want_c = ref.confidence_max_pool(data, conf)
    np.testing.assert_array_equal(got_c, want_c)
    np.testing.assert_array_equal(got_d, want_d)
    # an all-zero window returns its top-left data value
    np.testing.assert_array_equal(got_d[0, 0, 0], data[0, 0, 0])


@pytest.mark.parametrize("shape", [(2, 6, 8, 4), (2, 7, 9, 3)])
def test_confidence_max_pool_gradient_goes_to_the_first_maximum(shape):
    """Both outputs' cotangents reach exactly the window position TF's argmax picks (the
    first maximum, ties included), none other; odd sizes drop the last row/column."""
    conf = (RNG.uniform(size=shape) < 0.4).astype(np.float32)
    conf[0, :2, :2, :] = 0.0  # no point: all four positions tie
    conf[1, 2:4, 2:4, 1] = 0.7  # equal non-binary maxima
    conf[1, 0, 1, 2], conf[1, 1, 0, 2] = 0.9, 0.9  # tie of positions 1 and 2
    data = _rand(*shape)
    want_d, want_c, argmax = ref.confidence_max_pool(data, conf, return_argmax=True)
    cot_d, cot_c = _rand(*want_d.shape), _rand(*want_c.shape)

    def loss(d, c):
        pooled_d, pooled_c = confidence_max_pool(d, c)
        return jnp.sum(pooled_d * cot_d) + jnp.sum(pooled_c * cot_c)

    got_dd, got_dc = jax.grad(loss, argnums=(0, 1))(jnp.asarray(data), jnp.asarray(conf))
    want_dd, want_dc = np.zeros_like(data), np.zeros_like(conf)
    b, i, j, ch = np.indices(want_d.shape)
    want_dd[b, argmax[..., 0], argmax[..., 1], ch] = cot_d
    want_dc[b, argmax[..., 0], argmax[..., 1], ch] = cot_c
    np.testing.assert_array_equal(got_dd, want_dd)
    np.testing.assert_array_equal(got_dc, want_dc)
    pooled = confidence_max_pool(jnp.asarray(data), jnp.asarray(conf))
    np.testing.assert_array_equal(pooled[0], want_d)
    np.testing.assert_array_equal(pooled[1], want_c)


def test_confidence_max_pool_nan_wins_and_no_gather():
    """A NaN confidence is the maximum (``jnp.argmax``'s rule, which the gather form
    used); neither direction gathers or scatters."""
    conf = jnp.asarray([1.0, np.nan, 1.0, 0.0, 0.0, 2.0, 2.0, 1.0]).reshape(1, 2, 4, 1)
    data = jnp.arange(8.0).reshape(1, 2, 4, 1)
    pooled_d, pooled_c = confidence_max_pool(data, conf)
    np.testing.assert_array_equal(pooled_d.ravel(), [1.0, 6.0])
    np.testing.assert_array_equal(pooled_c.ravel(), [np.nan, 2.0])
    fn = jax.value_and_grad(lambda d, c: sum(jnp.sum(o) for o in confidence_max_pool(d, c)),
                            argnums=(0, 1))
    names = {e.primitive.name for e in jax.make_jaxpr(fn)(data, conf).jaxpr.eqns}
    assert not {n for n in names if "gather" in n or "scatter" in n}, names
    hlo = jax.jit(fn).lower(data, conf).compile().as_text()
    assert not re.search(r"\s(gather|scatter)\(", hlo)  # the ops, not metadata names


def test_normalized_conv_per_frame_biases_and_confidence():
    data, conf = _rand(2, 6, 7, 3), (RNG.uniform(size=(2, 6, 7, 3)) < 0.3).astype(np.float32)
    k, b0, b1 = _rand(3, 3, 3, 4), _rand(4), _rand(4)
    nconv = NormalizedConv(4)
    got_d, got_c = nconv.apply({"params": {"kernels": k, "biases": b0, "biases_1": b1}},
                               data, conf)
    for frame, bias in ((0, b0), (1, b1)):
        want_d, want_c = ref.normalized_conv(data[frame : frame + 1], conf[frame : frame + 1],
                                             k, bias)
        np.testing.assert_allclose(got_d[frame : frame + 1], want_d, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got_c[frame : frame + 1], want_c, rtol=1e-5, atol=1e-6)
    # leaky slope 0.2 (TF default), not 0.1: a negative output divided by its pre-activation
    neg = np.asarray(got_d) < -1e-3
    assert neg.any()


@pytest.mark.parametrize("r", [4, 2])
def test_cost_volume_matches_original_order_and_normalisation(r):
    x, w = _rand(2, 7, 9, 5), _rand(2, 7, 9, 5)
    got = cost_volume(jnp.asarray(x), jnp.asarray(w), r)
    want = ref.cost_volume_original(x, w, r)
    assert got.shape == (2, 7, 9, (2 * r + 1) ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # channel (dy+r)*(2r+1)+(dx+r) correlates x[y, x] with w[y+dy, x+dx]
    d = 2 * r + 1
    k = (1 + r) * d + (-2 + r)  # dy=+1, dx=-2
    manual = np.mean(x[:, 3, 4] * w[:, 4, 2], axis=-1) / d**2
    np.testing.assert_allclose(got[:, 3, 4, k], manual, rtol=1e-5)


def test_bilinear_warp_clamps_at_borders():
    x = _rand(2, 5, 6, 3)
    flow = RNG.uniform(-4, 4, size=(2, 5, 6, 2)).astype(np.float32)
    flow[0, 0, 0] = (-7.3, -9.6)  # far outside: clamped taps
    flow[1, 4, 5] = (2.5, 1.25)
    flow[1, 2, 2] = (1.0, -2.0)  # integer flow: exact copy
    got = bilinear_warp(jnp.asarray(x), jnp.asarray(flow))
    want = ref.bilinear_warp_original(x, flow)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1, 2, 2], x[1, 0, 3], rtol=1e-6)
    np.testing.assert_allclose(got[0, 0, 0], x[0, 0, 0], rtol=1e-6)  # edge replicated


@pytest.mark.parametrize("src,dst", [((375, 1242), (384, 1216)), ((5, 7), (8, 3)),
                                     ((6, 10), (13, 17))])
def test_legacy_nearest_resize(src, dst):
    h, w = src
    x = np.arange(h * w, dtype=np.float32).reshape(1, h, w, 1)
    got = np.asarray(resize.resize_nearest_legacy(jnp.asarray(x), dst))
    if src[0] * src[1] < 100:
        np.testing.assert_array_equal(got, ref.resize_nearest_tf1(x, dst))
    iy = np.minimum(np.floor(np.arange(dst[0], dtype=np.float32)
                             * (np.float32(h) / np.float32(dst[0]))), h - 1)
    ix = np.minimum(np.floor(np.arange(dst[1], dtype=np.float32)
                             * (np.float32(w) / np.float32(dst[1]))), w - 1)
    np.testing.assert_array_equal(got[0, :, :, 0], iy[:, None] * w + ix[None, :])


@pytest.mark.parametrize("src,dst", [((12, 38), (47, 155)), ((5, 7), (8, 3)), ((6, 10), (13, 17))])
def test_legacy_bilinear_resize(src, dst):
    x = _rand(1, *src, 2)
    got = resize.resize_bilinear_legacy(jnp.asarray(x), dst)
    want = ref.resize_bilinear_tf1(x, dst)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # not the half-pixel-centre convention of tf2 / jax.image.resize
    hp = jax.image.resize(jnp.asarray(x), (1, *dst, 2), "bilinear")
    assert not np.allclose(hp, want, atol=1e-3)
