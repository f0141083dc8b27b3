"""Structured channel pruning: graph, surgery = masked full model, errors, checkpoints."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.checkpoint import load_checkpoint, load_metadata, save_checkpoint
from deepliflow_jax.compress import structured as st
from deepliflow_jax.model.build import param_shapes
from deepliflow_jax.model.channels import dependency_graph, widths_of
from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.model.widths import default_widths, freeze_widths, uniform_widths
from deepliflow_jax.profile.inputs import random_frames

FUSED0 = "guidance_network/fusion/convconcat_refine_d0"


def _flat(tree):
    return flax.traverse_util.flatten_dict(dict(tree), sep="/")


def test_graph_covers_every_layer_and_reads_the_original_widths():
    layers, groups = dependency_graph()
    params = param_shapes()["params"]
    kernels = {k.rsplit("/", 1)[0] for k in _flat(params) if k.endswith(("/kernel", "/kernels"))}
    assert kernels == set(layers)  # every weight-bearing layer is in the graph, nothing else
    assert widths_of(params) == default_widths()
    assert set(groups) == set(default_widths())
    assert all(g.producers and g.consumers for g in groups.values())
    # the couplings of the network
    assert set(groups["guidance_network/rgb_encoder/conv3b"].producers) == {
        "guidance_network/rgb_encoder/conv3b", "guidance_network/rgb_decoder/deconv_upsample3to2"}
    assert layers["scene_flow_estimator_6/conv1"].inputs == (81, FUSED0, FUSED0)
    assert layers["scene_flow_estimator_6/conv1"].cost_volume == FUSED0
    assert layers["guidance_network/rgb_decoder/conv_pyr_top"].inputs == (
        "guidance_network/rgb_encoder/conv6b", "guidance_network/depth_decoder/nconv_pyr_top")
    assert layers["context_network/conv7"].group is None  # the flow residual is never pruned
    # a width mapping changes only widths and adds conf_mass to the normalized convs
    structured = _flat(param_shapes(default_widths())["params"])
    extra = {k for k in structured if k not in _flat(params)}
    assert extra == {k for k in structured if k.endswith("/conf_mass")} and len(extra) == 15


def test_ratios_rounding_and_errors(variables):
    assert st.rounded_keep(196, 0.1) == 176 and st.rounded_keep(16, 0.3) == 8
    assert st.rounded_keep(16, 0.0) == 16 and st.rounded_keep(64, 0.5, multiple=1) == 32
    with pytest.raises(ValueError, match="remove all 16 channels of layer L"):
        st.rounded_keep(16, 0.99, name="L")
    with pytest.raises(ValueError, match=r"all 16 channels of layer .*rgb_encoder/conv1a"):
        st.plan_pruning(variables, {r"rgb_encoder/conv1a$": 1.0})
    with pytest.raises(ValueError, match=r"layer pattern 'no_such_layer' matches no"):
        st.plan_pruning(variables, {"no_such_layer": 0.5})
    with pytest.raises(ValueError, match="exclude pattern"):
        st.plan_pruning(variables, 0.5, exclude="nothing_here")
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        st.plan_pruning(variables, 1.5)
    with pytest.raises(ValueError, match="unknown channel scorer"):
        st.plan_pruning(variables, 0.5, scorer="l7")
    with pytest.raises(ValueError, match="would keep no channel"):
        st.shrink(variables, {FUSED0: []})
    with pytest.raises(ValueError, match="unknown layer"):
        freeze_widths({"context_network/conv9": 8})

    keep = st.plan_pruning(variables, 0.5, exclude=st.FUSED_GROUPS)
    widths = {k: len(v) for k, v in keep.items()}
    assert widths[FUSED0] == 64 and widths["context_network/conv1"] == 64
    assert all(w % 8 == 0 or w == default_widths()[k] for k, w in widths.items())
    per_layer = st.plan_pruning(variables, {"scene_flow_estimator_": 0.25})
    assert len(per_layer["scene_flow_estimator_3/conv3"]) == 72
    assert len(per_layer["guidance_network/rgb_encoder/conv6b"]) == 196
    glob = st.plan_pruning(variables, 0.5, scope="global")
    kept = sum(len(v) for v in glob.values())
    assert 0.4 < kept / sum(default_widths().values()) < 0.6
    assert all(len(v) >= 8 for v in glob.values())


def test_l1_keeps_the_strongest_filters(variables):
    params = jax.tree.map(np.array, variables["params"])
    ctx = params["context_network"]["conv2"]["kernel"]
    ctx[..., 5] *= 100.0  # channel 5 is by far the strongest
    ctx[..., 9] *= 0.0  # channel 9 the weakest
    keep = st.plan_pruning({"params": params}, {r"context_network/conv2$": 0.9})
    assert len(keep["context_network/conv2"]) == 16 and 5 in keep["context_network/conv2"]
    assert 9 not in st.plan_pruning({"params": params}, {r"context_network/conv2$": 0.1})[
        "context_network/conv2"]


def test_shrunken_model_equals_masked_full_model(variables):
    """The core guarantee, with every coupling pruned (fused features and nconvs too)."""
    # random weights make the cost volume negligible; amplify its rows so it matters
    flat = _flat(variables["params"])
    for level in (6, 5, 4, 3, 2):
        k = np.array(flat[f"scene_flow_estimator_{level}/conv1/kernel"])
        k[:, :, :81] *= 300.0
        flat[f"scene_flow_estimator_{level}/conv1/kernel"] = k
    variables = {"params": flax.traverse_util.unflatten_dict(flat, sep="/")}
    keep = st.plan_pruning(variables, 0.5)
    odd = st.plan_pruning(variables, {"context_network": 0.3}, multiple=1)  # odd widths
    keep.update({k: v for k, v in odd.items() if k.startswith("context_network")})
    small, widths = st.shrink(variables, keep)
    assert widths["context_network/conv1"] == 90 and widths[FUSED0] == 32
    assert widths_of(small) == widths
    model = DeepLiDARFlow(widths=widths)
    frames = jnp.asarray(random_frames(1, 64, 64, seed=3))
    apply_small = jax.jit(lambda v, f: model.apply(v, f))
    sf, aux = apply_small(small, frames)
    ref_sf, ref_aux = jax.jit(lambda v, f: st.channel_masked_apply(v, f, keep))(variables, frames)
    scale = float(jnp.max(jnp.abs(ref_sf)))
    np.testing.assert_allclose(np.asarray(sf), np.asarray(ref_sf), atol=2e-5 * scale)
    for got, want in zip(aux["flows"], ref_aux["flows"]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5 * scale)
    # kept confidence channels too
    conf_keep = keep["guidance_network/depth_decoder/refine1"]
    np.testing.assert_allclose(np.asarray(aux["confidences"][-1]),
                               np.asarray(ref_aux["confidences"][-1])[..., conf_keep],
                               rtol=1e-5, atol=1e-6)
    # and the two corrections are needed: without them the outputs differ
    flat = _flat(small["params"])
    no_mass = {k: (np.zeros_like(v) if k.endswith("conf_mass") else v) for k, v in flat.items()}
    sf_no_mass, aux_no_mass = apply_small(
        {"params": flax.traverse_util.unflatten_dict(no_mass, sep="/")}, frames)
    assert float(jnp.max(jnp.abs(sf_no_mass - ref_sf))) > 2e-4 * scale  # 10x the tolerance
    conf = np.asarray(ref_aux["confidences"][-1])[..., conf_keep]
    assert np.max(np.abs(np.asarray(aux_no_mass["confidences"][-1]) - conf)) > 0.05 * conf.max()
    unscaled = dict(flat)
    for level in (6, 5, 4, 3, 2):
        k = unscaled[f"scene_flow_estimator_{level}/conv1/kernel"].copy()
        k[:, :, :81] *= 2.0  # undo C'/C = 32/64
        unscaled[f"scene_flow_estimator_{level}/conv1/kernel"] = k
    sf_unscaled = apply_small({"params": flax.traverse_util.unflatten_dict(unscaled, sep="/")},
                              frames)[0]
    assert float(jnp.max(jnp.abs(sf_unscaled - ref_sf))) > 2e-3 * scale


def test_checkpoint_round_trip_and_wrong_architecture(variables, tmp_path):
    res = st.structured_prune(variables, 0.3)
    out = save_checkpoint(tmp_path / "small", res.variables, {"note": "pruned"})
    meta = load_metadata(out)
    assert meta["widths"] == res.widths and meta["parameter_count"] == res.params_after
    for restored in (load_checkpoint(out), load_checkpoint(out, widths=res.widths)):
        assert all(np.array_equal(np.asarray(a), b) for a, b in zip(
            jax.tree.leaves(restored), jax.tree.leaves(res.variables)))
    assert res.params_after < 0.55 * res.params_before
    with pytest.raises(ValueError, match="structured DeepLiDARFlow, requested the original"):
        load_checkpoint(out, widths=None)
    other = st.structured_prune(variables, 0.5).widths
    with pytest.raises(ValueError, match=r"rgb_encoder/conv2a: checkpoint 24 channels, "
                                         r"requested 16"):
        load_checkpoint(out, widths=other)
    dense = save_checkpoint(tmp_path / "dense", variables)
    with pytest.raises(ValueError, match="original DeepLiDARFlow, requested a structured"):
        load_checkpoint(dense, widths=res.widths)
    # a broken coupling is refused before anything is written
    flat = _flat(res.variables["params"])
    k = "guidance_network/rgb_encoder/conv3a/kernel"
    flat[k] = flat[k][:, :, :-1]
    broken = {"params": flax.traverse_util.unflatten_dict(flat, sep="/")}
    with pytest.raises(ValueError, match=r"rgb_encoder/conv3a has 23 input channels"):
        save_checkpoint(tmp_path / "broken", broken)
    assert not (tmp_path / "broken").exists()


@pytest.mark.slow
def test_pruning_a_pruned_model_and_fine_tuning_it():
    """Second-stage pruning accumulates conf_mass; the smaller model trains with make_train_step.

    24 channels a group, pruned to 16, then to 8: the tiny study's architecture, so the
    fine-tuning step is the executable the study compiled (same shapes and batch)."""
    from deepliflow_jax.model.build import init_params
    from deepliflow_jax.profile.inputs import make_ground_truth
    from deepliflow_jax.search.finetune import fine_tune
    from deepliflow_jax.train.trainer import Trainer

    start = init_params(0, widths=uniform_widths(24), bias_std=0.1)
    first = st.structured_prune(start, 0.25)
    keep = st.plan_pruning(first.variables, 0.5, multiple=1)
    small, widths = st.shrink(first.variables, keep)
    assert set(widths_of(first.variables).values()) == {16} and set(dict(widths).values()) == {8}
    frames = jnp.asarray(random_frames(1, 64, 64, seed=4))
    sf = jax.jit(DeepLiDARFlow(widths=widths).apply)(small, frames)[0]
    ref = jax.jit(lambda v, f: st.channel_masked_apply(v, f, keep))(first.variables, frames)[0]
    np.testing.assert_allclose(np.asarray(sf), np.asarray(ref),
                               atol=2e-5 * float(jnp.max(jnp.abs(ref))))
    batch = {"frames": jnp.asarray(random_frames(1, 64, 192, seed=4)),
             "gt": jnp.asarray(make_ground_truth(1, 64, 192)), "reg_scale": np.float32(1)}
    run = fine_tune(Trainer(widths=widths), small["params"], lambda pos: batch, 3, 3e-4,
                    log=lambda msg: None)
    params, losses = run.params, run.losses
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    before, after = _flat(small["params"]), _flat(params)
    assert any(before[k].any() for k in before if k.endswith("conf_mass"))  # accumulated
    assert all(np.array_equal(before[k], np.asarray(after[k])) for k in before
               if k.endswith("conf_mass"))  # a constant of the smaller model
    assert not np.array_equal(before["context_network/conv1/kernel"],
                              np.asarray(after["context_network/conv1/kernel"]))
