"""``conv_impl``: every alternative conv computation equals the reference ``lax`` path.

Per layer (odd and even sizes, forward and gradients), on the whole network
(the FT3D-style path and the KITTI resize path) and structurally: each option
reaches every layer it applies to, and the parameter tree does not change.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.compress.int8 import hlo_conv_report
from deepliflow_jax.model.build import create_model, forward, init_params, param_shapes
from deepliflow_jax.model.cost_volume import (
    _skew_diagonals,
    correlation_for,
    cost_volume,
    cost_volume_banded,
    cost_volume_tiled,
)
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.model.layers import (
    CONV_IMPL_BY_BACKEND,
    CONV_IMPL_TOKENS,
    WGRAD_MIN_CHANNELS,
    Conv,
    ConvTranspose,
    check_conv_impl,
    conv_weight_grad,
    dilated_conv_space_to_batch,
    resolve_conv_impl,
)
from deepliflow_jax.model.widths import uniform_widths

# the options that change each layer kind (the structural test checks the others do not)
CONV_ALTERNATIVES = ("s2b", "pad8", "widen", "s2grad", "wgrad", "subpixel+s2b+pad8",
                     "widen+s2grad", "s2grad+wgrad", "auto")
TRANSPOSED_ALTERNATIVES = ("subpixel", "phase", "pad8", "widen", "phase+widen",
                           "phase+wgrad", "subpixel+s2b+pad8", "auto")
TOL = 1e-6


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _layer_case(module_cls, kwargs, x_shape, kernel_shape, seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    n_out = kwargs["features"]
    params = {"kernel": jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32),
              "bias": jnp.asarray(rng.standard_normal(n_out), jnp.float32)}
    ref = module_cls(**kwargs)
    cot = jnp.asarray(rng.standard_normal(ref.apply({"params": params}, x).shape), jnp.float32)
    return x, params, cot


def _assert_layer_equal(module_cls, kwargs, x_shape, kernel_shape, impl, seed=0):
    x, params, cot = _layer_case(module_cls, kwargs, x_shape, kernel_shape, seed)

    def run(conv_impl):
        layer = module_cls(**kwargs, conv_impl=conv_impl)
        y = layer.apply({"params": params}, x)
        # the gradient of a weighted sum: exercises every output's cotangent
        grads = jax.grad(lambda p, v: jnp.sum(layer.apply({"params": p}, v) * cot),
                         argnums=(0, 1))(params, x)
        return y, grads

    y_ref, (gp_ref, gx_ref) = run("xla")
    y, (gp, gx) = run(impl)
    assert y.shape == y_ref.shape
    errors = {"y": _rel(y, y_ref), "dx": _rel(gx, gx_ref),
              "dkernel": _rel(gp["kernel"], gp_ref["kernel"]),
              "dbias": _rel(gp["bias"], gp_ref["bias"])}
    assert max(errors.values()) <= TOL, (impl, x_shape, kernel_shape, errors)
    return errors


def test_check_conv_impl_canonical_and_errors():
    assert check_conv_impl("xla") == "xla"
    assert check_conv_impl("auto") == "auto"
    assert check_conv_impl("pad8+subpixel") == "subpixel+pad8"
    assert check_conv_impl("s2b+pad8+subpixel") == "subpixel+s2b+pad8"
    for bad in ("", "XLA", "subpixel+", "xla+subpixel", "auto+phase", "subpixel+subpixel",
                "winograd", None):
        with pytest.raises(ValueError, match="conv_impl="):
            check_conv_impl(bad)
    with pytest.raises(ValueError, match="conv_impl='fast'"):
        DeepLiDARFlow(conv_impl="fast")
    with pytest.raises(ValueError, match="conv_impl='fast'"):
        create_model(conv_impl="fast")


@pytest.mark.parametrize("impl", CONV_ALTERNATIVES)
@pytest.mark.parametrize("size", [(16, 32), (9, 13)])
@pytest.mark.parametrize("dilation,c_in,c_out", [(1, 36, 20), (2, 13, 16), (4, 16, 5),
                                                  (8, 12, 96), (16, 20, 12), (1, 64, 72),
                                                  (2, 96, 64)])
def test_conv_equals_reference(impl, size, dilation, c_in, c_out):
    kwargs = {"features": c_out, "dilation": dilation}
    _assert_layer_equal(Conv, kwargs, (2, *size, c_in), (3, 3, c_in, c_out), impl)


@pytest.mark.parametrize("impl", CONV_ALTERNATIVES)
@pytest.mark.parametrize("ksize,stride,size", [(3, 2, (8, 10)), (3, 2, (7, 9)), (1, 1, (5, 6)),
                                               (3, 2, (1, 1)), (3, 3, (10, 11)),
                                               (1, 2, (5, 6)), (4, 2, (9, 8))])
def test_strided_and_pointwise_conv_equals_reference(impl, ksize, stride, size):
    """Strides 2 and 3, odd, even and 1-pixel sizes, kernels smaller than the stride."""
    kwargs = {"features": 11, "ksize": ksize, "stride": stride, "activation": False}
    _assert_layer_equal(Conv, kwargs, (2, *size, 3), (ksize, ksize, 3, 11), impl)


def test_resolve_conv_impl_per_backend():
    assert resolve_conv_impl("auto", "cpu") == CONV_IMPL_BY_BACKEND["cpu"]
    assert check_conv_impl(CONV_IMPL_BY_BACKEND["cpu"]) == CONV_IMPL_BY_BACKEND["cpu"]
    # not measured there yet: the reference
    assert resolve_conv_impl("auto", "gpu") == "xla"
    assert resolve_conv_impl("auto", "tpu") == "xla"
    # an explicit choice always wins, canonical
    assert resolve_conv_impl("widen+phase", "cpu") == "phase+widen"
    assert resolve_conv_impl("xla", "cpu") == "xla"
    assert resolve_conv_impl("auto") == resolve_conv_impl("auto", jax.default_backend())
    with pytest.raises(ValueError, match="conv_impl='fast'"):
        resolve_conv_impl("fast")


@pytest.mark.parametrize("module_cls,kwargs,kernel_shape", [
    (Conv, {"features": 24, "stride": 2}, (3, 3, 16, 24)),
    (Conv, {"features": 16, "stride": 2}, (3, 3, 3, 16)),
    (Conv, {"features": 4}, (3, 3, 32, 4)),
    (Conv, {"features": 16}, (3, 3, 16, 16)),
    (ConvTranspose, {"features": 4}, (4, 4, 4, 32)),
    (ConvTranspose, {"features": 32}, (4, 4, 32, 64)),
])
def test_cpu_forms_keep_every_conv_in_the_library(module_cls, kwargs, kernel_shape):
    """Forward, input and weight gradient of ``auto``'s CPU form all run in XLA:CPU's
    conv library (YNNPACK), as the compiled HLO says; the reference runs at least one
    of them on Eigen (a strided conv's input gradient, a transposed conv, a conv or
    weight gradient with at most 16 channels)."""
    if jax.default_backend() != "cpu":
        assert resolve_conv_impl("auto") == "xla"  # what auto means off the CPU
        return
    c_in = kernel_shape[2] if module_cls is Conv else kernel_shape[3]
    x, params, cot = _layer_case(module_cls, kwargs, (2, 12, 16, c_in), kernel_shape, seed=0)

    def placement(impl):
        layer = module_cls(**kwargs, conv_impl=impl)
        step = jax.jit(lambda p, v: (layer.apply({"params": p}, v), jax.grad(
            lambda p, v: jnp.sum(layer.apply({"params": p}, v) * cot), argnums=(0, 1))(p, v)))
        report = hlo_conv_report(step.lower(params, x).compile().as_text())
        return report["library_convolutions"], report["other_examples"]

    assert placement("xla")[1]
    library, others = placement("auto")
    assert library >= 3 and not others, others


@pytest.mark.parametrize("impl", TRANSPOSED_ALTERNATIVES)
@pytest.mark.parametrize("size", [(1, 1), (1, 2), (4, 4), (7, 9)])
@pytest.mark.parametrize("c_in,c_out,activation", [(32, 4, False), (13, 6, True),
                                                    (64, 32, True), (64, 64, False)])
def test_transposed_conv_equals_reference(impl, size, c_in, c_out, activation):
    kwargs = {"features": c_out, "activation": activation}
    _assert_layer_equal(ConvTranspose, kwargs, (2, *size, c_in), (4, 4, c_out, c_in), impl)


@pytest.mark.parametrize("ksize,stride,dilation,padding,size", [
    (3, 1, 1, "SAME", (9, 13)), (3, 2, 1, "SAME", (7, 10)), (3, 3, 1, "SAME", (10, 11)),
    (3, 1, 4, "SAME", (9, 13)), (1, 2, 1, "SAME", (5, 6)), (4, 2, 1, "SAME", (9, 8)),
    (2, 1, 1, ((1, 0), (0, 1)), (6, 7)), (2, 1, 1, ((0, 1), (1, 0)), (1, 1)),
    (3, 2, 1, "SAME", (1, 1))])
def test_weight_gradient_as_tap_matmuls_equals_lax(ksize, stride, dilation, padding, size):
    """``wgrad``'s weight gradient, whatever the channel count: strides 1-3, dilation,
    the phase convs' explicit paddings, 1-pixel inputs (a wrong tap offset or stride
    changes the result far beyond float rounding)."""
    rng = np.random.default_rng(ksize + 10 * stride + dilation)
    x = jnp.asarray(rng.standard_normal((2, *size, 5)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((ksize, ksize, 5, 7)), jnp.float32)

    def conv(k):
        return jax.lax.conv_general_dilated(x, k, (stride, stride), padding,
                                            rhs_dilation=(dilation, dilation),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y, vjp = jax.vjp(conv, kernel)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    got = conv_weight_grad(x, dy, kernel.shape, stride, padding, dilation)
    assert got.shape == kernel.shape
    assert _rel(got, vjp(dy)[0]) <= TOL


def test_space_to_batch_refuses_even_kernels():
    with pytest.raises(ValueError, match="odd kernel size"):
        dilated_conv_space_to_batch(jnp.zeros((1, 8, 8, 2)), jnp.zeros((2, 2, 2, 3)), 2)


def _values_and_grads(fn, x, w, cot, **kwargs):
    """``fn(x, w)`` and the gradients of ``sum(fn(x, w) * cot)``, under one jit."""
    f = functools.partial(fn, **kwargs)
    return jax.jit(lambda a, b: (f(a, b), jax.grad(lambda p, q: jnp.sum(f(p, q) * cot),
                                                   argnums=(0, 1))(a, b)))(x, w)


@pytest.mark.parametrize("shape", [(2, 5, 20, 8), (1, 6, 19, 32)])
def test_banded_cost_volume_equals_the_original_form(shape):
    """W below and off the tile width (and a tile of 3 at W 5 x 3 + 4), H below 2r + 1."""
    rng = np.random.default_rng(sum(shape))
    x, w = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    for r, tile in ((4, 16), (2, 3)):
        cot = jnp.asarray(rng.standard_normal(shape[:3] + ((2 * r + 1) ** 2,)), jnp.float32)
        want, g_want = _values_and_grads(cost_volume, x, w, cot, search_range=r)
        got, g_got = _values_and_grads(cost_volume_banded, x, w, cot, search_range=r,
                                       tile=tile)
        assert got.shape == want.shape
        assert _rel(got, want) < 1e-6
        for a, b in zip(g_got, g_want, strict=True):
            assert _rel(a, b) < 1e-6
    with pytest.raises(ValueError, match="tile must be >= 1"):
        cost_volume_banded(x, w, tile=0)


def _eqns(jaxpr):
    """Every equation of a jaxpr, those of nested jaxprs (jit, custom_vjp, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in (value if isinstance(value, tuple | list) else [value]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def _convs(jaxpr):
    """Every ``conv_general_dilated`` equation of a jaxpr, nested ones included."""
    return (e for e in _eqns(jaxpr) if e.primitive.name == "conv_general_dilated")


@pytest.mark.parametrize("shape", [(2, 13, 19, 8), (1, 5, 3, 3), (2, 9, 24, 16)])
def test_tiled_cost_volume_equals_the_original_form(shape):
    """H, W off the tile and below one tile, batch 1 and 2, 3 to 16 channels; r = 4 with
    the model's 8x8 tiles (window 16 = two tiles), r = 2 with 3x3 tiles (window 7 = three
    tiles, cut), r = 1 with 1x1 tiles (window 3)."""
    rng = np.random.default_rng(sum(shape))
    x, w = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    for r, tile in ((4, 8), (2, 3), (1, 1)):
        cot = jnp.asarray(rng.standard_normal(shape[:3] + ((2 * r + 1) ** 2,)), jnp.float32)
        want = _values_and_grads(cost_volume, x, w, cot, search_range=r)
        got = _values_and_grads(cost_volume_tiled, x, w, cot, search_range=r, tile=tile)
        for name, a, b in zip(("cv", "dx", "dwarped"), (got[0], *got[1]), (want[0], *want[1]),
                              strict=True):
            assert a.shape == b.shape, (name, r, tile)
            assert _rel(a, b) <= TOL, (name, r, tile, _rel(a, b))
            # per entry too: one misplaced displacement or border pixel is not averaged away
            np.testing.assert_allclose(a, b, rtol=0, atol=TOL * float(np.abs(b).max()),
                                       err_msg=f"{name}, r={r}, tile={tile}")


def test_tiled_cost_volume_refusals_and_selection():
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="tile must be >= 1"):
        cost_volume_tiled(x, x, tile=0)
    with pytest.raises(ValueError, match="search_range must be >= 0"):
        cost_volume_tiled(x, x, search_range=-1)
    with pytest.raises(ValueError, match="wrap around"):
        _skew_diagonals(jnp.zeros((4, 6)), 0, 1, 4)
    assert correlation_for("xla") is cost_volume
    assert correlation_for("subpixel+banded") is cost_volume_banded
    assert correlation_for("s2b+tiled") is cost_volume_tiled
    for bad in ("banded+tiled", "subpixel+tiled+banded"):
        with pytest.raises(ValueError, match="'tiled' and 'banded'"):
            DeepLiDARFlow(conv_impl=bad)


def _gathers_and_scatters(fn, *args):
    """Names of gather/scatter primitives in ``fn``'s jaxpr, and whether its compiled HLO
    has any."""
    names = {e.primitive.name for e in _eqns(jax.make_jaxpr(fn)(*args).jaxpr)}
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    # the op itself, not a name in the metadata
    return ({n for n in names if "gather" in n or "scatter" in n},
            re.search(r"\s(gather|scatter)\(", hlo) is not None)


def test_tiled_cost_volume_gathers_and_scatters_nothing():
    """Forward and backward; the probe itself sees the banded form's gather and scatter."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 13, 19, 8)), jnp.float32)

    def value_and_grads(correlate):
        return lambda a, b: jax.value_and_grad(
            lambda p, q: jnp.sum(correlate(p, q) ** 2), argnums=(0, 1))(a, b)

    names, in_hlo = _gathers_and_scatters(value_and_grads(cost_volume_tiled), x, x)
    assert not names and not in_hlo, names
    names, in_hlo = _gathers_and_scatters(value_and_grads(cost_volume_banded), x, x)
    assert {"gather", "scatter-add"} <= names and in_hlo, names
    dots = [e for e in _eqns(jax.make_jaxpr(cost_volume_tiled)(x, x).jaxpr)
            if e.primitive.name == "dot_general"]
    assert len(dots) == 1  # one batched matmul for all tiles


@pytest.mark.parametrize("impl", ["xla", "auto", *CONV_IMPL_TOKENS])
def test_option_reaches_every_layer(impl):
    model = DeepLiDARFlow(conv_impl=impl)
    tokens = set(resolve_conv_impl(impl).split("+"))
    frames = jax.ShapeDtypeStruct((1, 2, 64, 128, 4), jnp.float32)
    # same parameter tree: checkpoints load unchanged
    got = jax.eval_shape(model.init, jax.random.PRNGKey(0), frames)
    assert jax.tree.map(lambda s: (s.shape, s.dtype), got) == jax.tree.map(
        lambda s: (s.shape, s.dtype), param_shapes())
    jaxpr = jax.make_jaxpr(model.apply)(param_shapes(), frames).jaxpr
    convs = list(_convs(jaxpr))
    # 94 convs + 12 transposed convs + 15 normalized convs (one conv each); phase: 4
    # convs per transposed conv
    assert len(convs) == (157 if "phase" in tokens else 121)
    lhs_dilated = [e for e in convs if max(e.params["lhs_dilation"]) > 1]
    rhs_dilated = [e for e in convs if max(e.params["rhs_dilation"]) > 1]
    assert len(lhs_dilated) == (0 if tokens & {"subpixel", "phase"} else 12)
    assert len(rhs_dilated) == (0 if "s2b" in tokens else 4)
    # s2grad: the 6 strided convs (conv{1..6}a) behind a custom_vjp
    strided = [e for e in convs if max(e.params["window_strides"]) > 1]
    custom = [e for e in jaxpr.eqns if e.primitive.name.startswith("custom_vjp")]
    assert len(strided) == 6
    # wgrad: every conv with >= WGRAD_MIN_CHANNELS on both sides (the phase convs too;
    # lax's transposed convs keep lax's gradients)
    wide = [e for e in convs if min(e.invars[1].aval.shape[2:]) >= WGRAD_MIN_CHANNELS
            and max(e.params["lhs_dilation"]) == 1]
    behind = [c for e in custom for c in _convs(e.params["call_jaxpr"].jaxpr)]
    expected = {id(e) for e in strided} if "s2grad" in tokens else set()
    if "wgrad" in tokens:
        expected |= {id(e) for e in wide}
    assert len(wide) > 40 and {id(c) for c in behind} == expected
    assert len(custom) == len(expected)
    narrow = [e for e in convs if e.outvars[0].aval.shape[-1] <= 16]
    assert (not narrow) if "widen" in tokens else len(narrow) > 20
    odd = [e for e in convs if e.invars[1].aval.shape[2] % 8 or e.invars[1].aval.shape[3] % 8]
    # the banded cost volume: 9 row matmuls at each of the 5 levels, the tiled one 1,
    # else none
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == (45 if "banded" in tokens else 5 if "tiled" in tokens else 0)
    if impl in ("xla", "pad8"):
        # pad8 reaches the normalized convs too (1 -> 16, 196 -> 196, ...)
        assert len(odd) == (0 if impl == "pad8" else 31), len(odd)


def network_outputs(variables, frames, interp_size=None, out_size=None, conv_impl="xla",
                    float64=False):
    """``{'out': sceneflow, level name: flow}`` of the jitted forward as float64 numpy.

    ``float64=True`` computes the reference path in float64 (the same float32
    parameters; the warp's flow and the refined flow stay float32, as the model
    casts them): the truth both float32 paths are measured against.
    """
    if not float64:
        sf, aux = forward(variables, frames, interp_size, out_size, conv_impl=conv_impl)
    else:
        with jax.enable_x64(True):
            sf, aux = forward(variables, np.asarray(frames, np.float64), interp_size, out_size,
                              dtype=jnp.float64)
    out = {"out": sf, **aux["levels"]}
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def assert_as_accurate_as_reference(got, ref, truth, factor=1.5, floor=TOL):
    """Every output of an alternative is as close to the float64 truth as the reference's.

    Two float32 computations of a deep network that differ only in summation
    order drift apart by the network's own float32 error (about 2e-6 on the
    golden weights): the bound is ``max(factor * error of the reference, floor)``.

    Returns:
      ``{name: (error of got, error of ref, relative difference got vs ref)}``.
    """
    report = {k: (_rel(got[k], truth[k]), _rel(ref[k], truth[k]), _rel(got[k], ref[k]))
              for k in ref}
    print({k: " / ".join(f"{e:.1e}" for e in v) for k, v in report.items()})
    bad = {k: v for k, v in report.items() if v[0] > max(factor * v[1], floor)}
    assert not bad, f"less accurate than the reference path (got, ref, diff): {bad}"
    return report


@pytest.fixture(scope="module")
def net_variables():
    return init_params(seed=3, bias_std=0.1)


@pytest.fixture(scope="module")
def net_frames():
    rng = np.random.default_rng(7)

    def frames(h, w):
        x = rng.uniform(-0.4, 0.6, (1, 2, h, w, 4)).astype(np.float32)
        x[..., 3] *= rng.uniform(size=(1, 2, h, w)) < 0.1
        return x

    # FT3D-style input at the network size; KITTI-style raw size, resized in and out
    return {"ft3d": (frames(64, 128), None), "kitti": (frames(70, 140), (64, 128))}


@pytest.fixture(scope="module")
def net_outputs(net_variables, net_frames):
    cache = {}

    def get(path, conv_impl="xla", float64=False):
        key = (path, conv_impl, float64)
        if key not in cache:
            frames, interp = net_frames[path]
            cache[key] = network_outputs(net_variables, frames, interp, conv_impl=conv_impl,
                                         float64=float64)
        return cache[key]

    return get


@pytest.mark.parametrize("path", ["ft3d", "kitti"])
@pytest.mark.parametrize("impl", ["subpixel+s2b+pad8+banded", "auto"])
def test_whole_network_equals_reference(net_outputs, path, impl):
    ref = net_outputs(path)
    got = net_outputs(path, impl)
    assert float(np.std(ref["out"])) > 0
    report = assert_as_accurate_as_reference(got, ref, net_outputs(path, float64=True))
    # and the two float32 paths agree within the reference's own float32 error
    # (1.4e-6 at flow_level2 with these weights): a broken form is off by O(1)
    assert max(diff for _, _, diff in report.values()) <= 2 * TOL


@pytest.mark.parametrize("module_cls,kwargs,x_shape,kernel_shape", [
    (Conv, {"features": 12, "dilation": 4}, (2, 9, 13, 20), (3, 3, 20, 12)),
    (ConvTranspose, {"features": 6}, (2, 7, 9, 13), (4, 4, 6, 13)),
])
def test_bfloat16_compute_matches_reference(module_cls, kwargs, x_shape, kernel_shape):
    x, params, _ = _layer_case(module_cls, kwargs, x_shape, kernel_shape, seed=5)
    ref = module_cls(**kwargs, dtype=jnp.bfloat16).apply({"params": params}, x)
    got = module_cls(**kwargs, dtype=jnp.bfloat16, conv_impl="subpixel+s2b+pad8").apply(
        {"params": params}, x)
    assert got.dtype == jnp.bfloat16 and got.shape == ref.shape
    assert _rel(got, ref) < 1e-2  # bfloat16 rounding of different summation orders


@pytest.mark.parametrize("impl", ["auto", "tiled"])
def test_whole_network_forward_and_gradients_equal_xla(small_variables, impl):
    """The 8-channel network at 64x64, batch 2 (cost volumes of 1x1 to 16x16 pixels),
    ``auto`` (on CPU every library-path form and the tiled cost volume) and ``tiled``.

    Forward outputs (the scene flow and every level's flow) to 1e-6; the parameter
    gradients of a weighted sum of the scene flow to 1e-6 as a whole and 1e-5 per
    leaf: float32 drift through the backward of the whole network (measured 1.3e-6
    on the worst leaf for ``"tiled"``, 1.5e-6 for ``"banded"``, 6e-8 as a whole)."""
    rng = np.random.default_rng(11)
    frames = rng.uniform(-0.4, 0.6, (2, 2, 64, 64, 4)).astype(np.float32)
    frames[..., 3] *= rng.uniform(size=(2, 2, 64, 64)) < 0.1
    cot = jnp.asarray(rng.standard_normal((2, 64, 64, 4)), jnp.float32)

    def run(conv_impl):
        model = create_model(widths=uniform_widths(8), conv_impl=conv_impl)

        def outputs(params):
            sf, aux = model.apply({"params": params}, frames)
            return sf, aux["flows"]

        return jax.jit(lambda p: (outputs(p), jax.grad(
            lambda q: jnp.sum(outputs(q)[0] * cot))(p)))(small_variables["params"])

    if resolve_conv_impl(impl) == "xla":  # auto off the CPU: nothing to compare
        return
    (out_ref, grads_ref), (out, grads) = run("xla"), run(impl)
    assert float(np.std(out_ref[0])) > 0
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(out_ref), strict=True):
        assert _rel(a, b) <= TOL, _rel(a, b)
    flat = jax.tree_util.tree_leaves_with_path(grads_ref)
    leaf_errors = {jax.tree_util.keystr(path): _rel(a, b)
                   for a, (path, b) in zip(jax.tree.leaves(grads), flat, strict=True)}
    assert max(leaf_errors.values()) <= 10 * TOL, max(leaf_errors.items(), key=lambda kv: kv[1])
    whole = [np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)]) for g in (grads, grads_ref)]
    assert _rel(*whole) <= TOL


def test_public_entry_points_take_conv_impl(small_variables, tiny_data):
    """``auto`` is the default of the API and the trainer; an explicit form wins, gives
    the same numbers to float rounding, and a bad one is refused before compiling."""
    import inspect

    import deepliflow_jax as dl
    from deepliflow_jax.train.trainer import Trainer, get_trainer

    for fn in (dl.predict_sceneflow, dl.finetune, dl.evaluate, dl.time_model,
               dl.compression_table, dl.write_submission, Trainer, get_trainer, create_model,
               forward):
        assert inspect.signature(fn).parameters["conv_impl"].default == "auto", fn
    # one shared trainer per form, however it is spelled
    assert get_trainer(None, widths=None, conv_impl="widen+phase") is get_trainer(
        None, conv_impl="phase+widen")
    assert get_trainer(None, conv_impl="xla") is not get_trainer(None)
    frames = np.random.default_rng(0).uniform(-0.4, 0.6, (2, 64, 128, 4)).astype(np.float32)
    frames[..., 3] *= np.random.default_rng(1).uniform(size=(2, 64, 128)) < 0.1
    ref = dl.predict_sceneflow(small_variables, frames, conv_impl="xla")
    got = dl.predict_sceneflow(small_variables, frames)
    assert got.shape == ref.shape == (64, 128, 4) and _rel(got, ref) < 2 * TOL
    for call in (lambda: dl.predict_sceneflow(small_variables, frames, conv_impl="fast"),
                 lambda: dl.finetune(small_variables, tiny_data, 0, conv_impl="fast"),
                 lambda: dl.evaluate(small_variables, tiny_data, conv_impl="fast"),
                 lambda: dl.time_model(small_variables, conv_impl="fast")):
        with pytest.raises(ValueError, match="conv_impl='fast'"):
            call()
