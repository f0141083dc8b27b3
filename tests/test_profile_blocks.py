"""Per-block profile: every block on its real shapes, one table per conv implementation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.model.build import init_params
from deepliflow_jax.model.layers import resolve_conv_impl
from deepliflow_jax.profile.blocks import block_calls, block_names, profile_blocks


def test_blocks_get_the_shapes_of_the_forward():
    variables = init_params(0)
    blocks = {b.name: b for b in block_calls(variables, 1, 70, 140, interp_size=(64, 128),
                                             conv_impl="subpixel")}
    levels = [f"{kind} L{lv}" for lv in (6, 5, 4, 3, 2)
              for kind in ("warp", "cost volume", "estimator") if (kind, lv) != ("warp", 6)]
    assert list(blocks) == block_names((64, 128)) == [
        "input resize", "rgb encoder", "depth encoder", "depth decoder", "rgb decoder", "fusion",
        *levels, "context network", "output resize"]
    assert blocks["input resize"].args[0].shape == (2, 70, 140, 4)
    assert blocks["rgb encoder"].args[0].shape == (2, 64, 128, 3)
    # cost volume 81 + features of both frames 2 x 64 + up flow 4 + up feature 4
    assert blocks["estimator L6"].args[0].shape == (1, 1, 2, 81 + 128)
    assert blocks["estimator L2"].args[0].shape == (1, 16, 32, 81 + 128 + 8)
    assert blocks["warp L3"].args[1].shape == (1, 8, 16, 2)
    assert blocks["context network"].args[0].shape == (1, 16, 32, 36)
    out = jax.eval_shape(blocks["output resize"].fn, None, *blocks["output resize"].args)
    assert out.shape == (1, 70, 140, 4)
    # the module blocks run with the requested implementation: no input-dilated convs
    ref = {b.name: b for b in block_calls(variables, 1, 70, 140, interp_size=(64, 128),
                                          conv_impl="xla")}

    def transposed(block):
        return str(jax.make_jaxpr(block.fn)(block.params, *block.args)).count(
            "lhs_dilation=(2, 2)")

    assert (transposed(ref["rgb decoder"]), transposed(blocks["rgb decoder"])) == (4, 0)
    assert (transposed(ref["estimator L3"]), transposed(blocks["estimator L3"])) == (2, 0)

def test_profile_command_prints_every_block_per_impl(tmp_path, capsys):
    from experiments import profile_blocks as cmd

    out = tmp_path / "blocks.json"
    assert cmd.main(["--height=64", "--width=128", "--repeats=1", "--warmup=1",
                     "--conv_impls=xla,auto", f"--output_json={out}"]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    # "auto" is timed and named as the form it resolves to here
    auto = resolve_conv_impl("auto")
    assert data["conv_impls"] == ["xla", auto] and auto != "auto"
    # the machine's load is recorded and printed beside the times
    assert set(data["load"]) == {"before", "after"} and data["load"]["after"]["cpu_count"] >= 1
    assert "machine load average" in printed
    for impl in ("xla", auto):
        section = printed.split(f"conv_impl = {impl}")[1].split("conv_impl = ")[0]
        table = data["tables"][impl]
        assert [r["block"] for r in table["blocks"]] == block_names()
        for name in block_names():
            assert f"| {name} |" in section, (impl, name)
        assert all(r["median_ms"] > 0 and r["n"] == 1 for r in table["blocks"])
        assert sum(r["share"] for r in table["blocks"]) == pytest.approx(1.0)
        assert table["whole"]["median_ms"] > 0 and "whole forward (one jit)" in section
    # blocks without convs are timed once and shared by the tables
    rows = {impl: {r["block"]: r for r in data["tables"][impl]["blocks"]}
            for impl in ("xla", auto)}
    assert rows["xla"]["warp L2"]["median_ms"] == rows[auto]["warp L2"]["median_ms"]


def test_train_blocks_run_the_steps_forward_and_backward():
    from deepliflow_jax.losses import kitti_loss

    variables = init_params(0)
    blocks = {b.name: b for b in block_calls(variables, 1, 70, 140, interp_size=(64, 128),
                                             train=True)}
    assert list(blocks) == block_names((64, 128), train=True)
    assert "output resize" not in blocks and list(blocks)[-1] == "loss"
    # the frames get no gradient: the resize stays a forward, the encoders differentiate
    # their parameters only; every later block also its inputs
    assert blocks["input resize"].fn(None, *blocks["input resize"].args).shape == (2, 64, 128, 4)
    params = variables["params"]
    for name, scope, n_inputs in (("rgb encoder", ("guidance_network", "rgb_encoder"), 0),
                                  ("depth encoder", ("guidance_network", "depth_encoder"), 0),
                                  ("fusion", ("guidance_network", "fusion"), 2),
                                  ("estimator L3", ("scene_flow_estimator_3",), 1),
                                  ("context network", ("context_network",), 1)):
        block = blocks[name]
        _, grads = jax.eval_shape(block.fn, block.params, *block.args)
        want = params
        for key in scope:
            want = want[key]
        assert len(grads) == 1 + n_inputs, name
        assert jax.tree.structure(grads[0]) == jax.tree.structure(want), name
        assert (jax.tree.map(lambda a: a.shape, grads[1:])
                == jax.tree.map(lambda a: a.shape, tuple(block.args[:n_inputs]))), name
    _, grads = jax.eval_shape(blocks["warp L3"].fn, None, *blocks["warp L3"].args)
    assert [g.shape for g in grads[1:]] == [(1, 8, 16, 64), (1, 8, 16, 2)]  # feature, flow
    # the loss pulls its cotangent back to the five flows, not to the ground truth
    loss = blocks["loss"]
    flows, gt, cot = loss.args
    assert [f.shape[1:3] for f in flows] == [(1, 2), (2, 4), (4, 8), (8, 16), (16, 32)]
    assert gt.shape == (1, 70, 140, 4) and cot.shape == ()
    value, (_, d_flows) = jax.jit(loss.fn)(None, *loss.args)
    want_value, want = jax.value_and_grad(kitti_loss)(list(flows), gt)
    assert float(value) == pytest.approx(float(want_value), rel=1e-6)
    for got, ref in zip(d_flows, want, strict=True):
        np.testing.assert_allclose(got, float(cot) * ref, rtol=1e-5, atol=1e-9)


def test_profile_command_train_mode(tmp_path, capsys, monkeypatch):
    from deepliflow_jax.profile import blocks
    from experiments import profile_blocks as cmd

    asked = []

    def fake_step(*args):  # the whole step is the harness's job, compiled elsewhere
        asked.append(args[1:])
        return (lambda: jnp.zeros(())), {"compile_s": 1.5}

    monkeypatch.setattr(blocks, "jax_train_step_call", fake_step)
    out = tmp_path / "train.json"
    assert cmd.main(["--height=64", "--width=64", "--repeats=1", "--warmup=0", "--train",
                     "--conv_impls=xla", f"--output_json={out}"]) == 0
    assert asked == [(1, 64, 64, 0, "float32", "xla", None)]
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["train"] is True and "Per-block forward + backward" in printed
    table = data["tables"]["xla"]
    assert [r["block"] for r in table["blocks"]] == block_names(train=True)
    for name in block_names(train=True):
        assert f"| {name} |" in printed, name
    assert all(r["median_ms"] > 0 for r in table["blocks"])
    assert sum(r["share"] for r in table["blocks"]) == pytest.approx(1.0)
    assert table["whole"]["block"] == "whole train step (one jit)"
    assert table["whole"]["compile_s"] == 1.5 and "| whole train step (one jit) |" in printed


@pytest.mark.parametrize("kwargs,match", [
    ({"height": 60, "width": 128}, "multiples of 64"),
    ({"height": 70, "width": 140, "interp_size": (64, 100)}, "--interp_size = 64x100"),
    ({"repeats": 0}, "--repeats must be an integer >= 1, got 0"),
    ({"conv_impls": []}, "--conv_impls is empty"),
    ({"conv_impls": ["xla", "fft"]}, "conv_impl='fft'"),
])
def test_profile_refuses_bad_arguments(kwargs, match):
    args = {"height": 64, "width": 128, "repeats": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        profile_blocks(init_params(0), **args)
