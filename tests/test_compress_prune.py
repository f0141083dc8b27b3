"""Percentile pruning on hand-made tensors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.compress.prune import (
    apply_masks,
    compute_masks,
    prune,
    pruning_thresholds,
    sparsity_report,
)
from deepliflow_jax.compress.select import flatten, select

# |w| = 1..10 in scrambled order with mixed signs.
W = jnp.array([-7.0, 3.0, 10.0, -1.0, 5.0, -9.0, 2.0, 8.0, -4.0, 6.0])


def test_threshold_and_mask_on_hand_made_tensor():
    params = {"w": W}
    pruned, masks = prune(params, 30)
    np.testing.assert_array_equal(np.asarray(masks["w"]), np.abs(np.asarray(W)) > 3)  # 1, 2, 3 go
    np.testing.assert_array_equal(np.asarray(pruned["w"]), np.where(np.abs(W) > 3, W, 0.0))
    assert pruning_thresholds(params, 30) == {"global": 4.0}
    # floor(p * n / 100) entries: 35 % of 10 -> 3, 99 % -> 9, 0 % -> none.
    assert int((~prune(params, 35)[1]["w"]).sum()) == 3
    assert int((~prune(params, 99)[1]["w"]).sum()) == 9
    assert bool(prune(params, 0)[1]["w"].all())
    # Decimal percentages are exact: 7 % of 100 entries is 7, 0.07 % of 10000 is 7.
    assert int((~prune({"w": jnp.arange(1.0, 101.0)}, 7)[1]["w"]).sum()) == 7
    assert int((~prune({"w": jnp.arange(1.0, 10001.0)}, 0.07)[1]["w"]).sum()) == 7


def test_global_vs_layer_scope_and_biases():
    params = {
        "a": {"kernel": jnp.array([[1.0, -2.0], [3.0, -4.0]]), "bias": jnp.array([0.5])},
        "b": {"kernel": jnp.array([10.0, -20.0, 30.0, -40.0]), "bias": jnp.array([50.0])},
    }
    _, g = prune(params, 50, scope="global")  # 10 entries -> the 5 smallest overall
    assert sparsity_report(params, g)["total"]["pruned"] == 5
    assert not bool(g["a"]["kernel"].any()) and not bool(g["a"]["bias"].any())
    assert bool(g["b"]["kernel"].all())
    assert pruning_thresholds(params, 50) == {"global": 10.0}

    _, lay = prune(params, 50, scope="layer")
    np.testing.assert_array_equal(lay["a"]["kernel"], [[False, False], [True, True]])
    np.testing.assert_array_equal(lay["b"]["kernel"], [False, False, True, True])
    assert bool(lay["a"]["bias"].all())  # floor(0.5 * 1) = 0 of a single bias
    assert pruning_thresholds(params, 50, scope="layer")["b/kernel"] == 30.0

    _, no_bias = prune(params, 50, exclude=r"bias$")
    assert bool(no_bias["a"]["bias"].all()) and bool(no_bias["b"]["bias"].all())
    assert sparsity_report(params, no_bias)["total"]["pruned"] == 4  # 50 % of 8 kernels


def test_raising_the_percentile_extends_existing_masks():
    params = {"w": W}
    p20, m20 = prune(params, 20)
    p50, m50 = prune(p20, 50, masks=m20)
    assert not bool(jnp.any(m50["w"] & ~m20["w"]))  # never un-prunes
    assert int((~m50["w"]).sum()) == 5
    # Masked entries rank first even when other entries are exactly zero.
    z = {"w": jnp.array([0.0, 0.0, 1.0, 2.0])}
    _, m = prune(z, 25, masks={"w": jnp.array([True, True, False, True])})
    np.testing.assert_array_equal(m["w"], [True, True, False, True])


def test_ties_prune_exactly_k_by_position():
    _, m = prune({"w": jnp.array([1.0, 1.0, 1.0, 1.0])}, 50)
    np.testing.assert_array_equal(m["w"], [False, False, True, True])


def test_traced_percent_matches_host_prune():
    """The in-graph version (gradual schedules) equals the host one, ties included."""
    rs = np.random.RandomState(0)
    params = {
        "a": jnp.asarray(np.round(rs.randn(6, 7), 1), jnp.float32),  # many ties
        "b": jnp.asarray(np.round(rs.randn(13), 1), jnp.float32),
    }
    old = {"a": jnp.asarray(rs.rand(6, 7) > 0.2), "b": jnp.ones(13, bool)}
    sel = select(params)
    for scope in ("global", "layer"):
        for pct in (25.0, 40.0, 73.0):
            traced = jax.jit(lambda p, m, q, s=scope: compute_masks(p, q, sel, scope=s, masks=m))(
                params, old, pct
            )
            _, host = prune(params, pct, scope=scope, masks=old)
            for a, b in zip(jax.tree.leaves(traced), jax.tree.leaves(host), strict=True):
                np.testing.assert_array_equal(a, b)


def test_report_per_layer_and_total():
    params = {"a": jnp.array([0.0, 1.0, 2.0, 3.0]), "b": jnp.array([5.0, 6.0])}
    pruned, masks = prune(params, 50)
    rep = sparsity_report(pruned, masks)
    assert rep["layers"]["a"] == {"size": 4, "zeros": 3, "pruned": 3, "sparsity": 0.75}
    assert rep["layers"]["b"]["zeros"] == 0
    assert rep["total"] == {"size": 6, "zeros": 3, "pruned": 3, "sparsity": 0.5}


@pytest.mark.parametrize("bad", [-1, 100, 100.5, float("nan"), "ten", None])
def test_bad_percent(bad):
    with pytest.raises(ValueError, match="percent"):
        prune({"w": W}, bad)


def test_bad_selection_scope_and_masks():
    params = {"layer": {"kernel": W, "bias": jnp.ones(2)}}
    with pytest.raises(ValueError, match="selects no parameters to prune"):
        prune(params, 10, include=r"nonexistent")
    with pytest.raises(ValueError, match="scope"):
        prune(params, 10, scope="channel")
    with pytest.raises(ValueError, match="missing.*layer/bias"):
        prune(params, 10, masks={"layer": {"kernel": jnp.ones(10, bool)}})
    with pytest.raises(ValueError, match="shape"):
        apply_masks(params, {"layer": {"kernel": jnp.ones(9, bool), "bias": jnp.ones(2, bool)}})
    with pytest.raises(ValueError, match="boolean"):
        apply_masks(params, jax.tree.map(jnp.ones_like, params))


def test_apply_masks_does_not_leak_nan():
    out = apply_masks({"w": jnp.array([jnp.nan, 1.0])}, {"w": jnp.array([False, True])})
    np.testing.assert_array_equal(out["w"], [0.0, 1.0])
    assert flatten(out).keys() == {"w"}
