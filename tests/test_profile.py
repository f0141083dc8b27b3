"""Table I profile: counts derived from the code, the paper's figures beside them."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.model.layers import Conv
from deepliflow_jax.profile import PAPER_TABLE1, format_profile_table, profile_model
from deepliflow_jax.profile.table1 import conv_eq3_flops


def test_eq3_on_a_hand_computed_conv():
    conv = Conv(5, stride=2, conv_impl="xla")  # Table I counts the reference form
    x = jnp.zeros((2, 8, 10, 3))
    v = {"params": {"kernel": jnp.zeros((3, 3, 3, 5)), "bias": jnp.zeros(5)}}
    flops, n = conv_eq3_flops(conv.apply, v, x)
    assert n == 1
    assert flops == 2 * 2 * 4 * 5 * (3 * 9 + 1) * 5  # 2 B H W (c_in K^2 + 1) c_out


def test_profile_counts(variables):
    r = profile_model(variables, 64, 128, with_xla=True, with_time=False)
    m = r["modules"]
    # exact agreement with the paper where the paper counts the same thing
    for name in ("fusion", "scene_flow", "context"):
        assert m[name]["params"] == PAPER_TABLE1[name]["params"], name
    # the paper's count omits the 1,368 normalized-conv biases of the second frame
    assert m["feature_pyramid"]["params"] == PAPER_TABLE1["feature_pyramid"]["params"] + 1368
    assert r["total_params_without_second_frame_biases"] == PAPER_TABLE1["total"]["params"]
    assert [m[k]["conv_layers"] for k in ("feature_pyramid", "fusion", "scene_flow",
                                          "context")] == [36, 40, 38, 7]
    # analytic cost volume: 81 channels x 64 features x 2 FLOPs per pixel, levels 6..2
    pix = sum((64 // 2**lv) * (128 // 2**lv) for lv in (6, 5, 4, 3, 2))
    np.testing.assert_allclose(m["cost_volume"]["gflops_eq3"], 2 * 81 * 64 * pix / 1e9)
    # XLA's count of the conv-heavy modules is within 30 % of eq. (3)
    for name in ("fusion", "scene_flow", "context"):
        ratio = m[name]["gflops_xla"] / m[name]["gflops_eq3"]
        assert 0.7 < ratio < 1.1, (name, ratio)
    assert "feature_pyramid" in format_profile_table(r)


def test_profile_command_writes_json(tmp_path):
    from experiments import profile_model as cmd

    out = tmp_path / "p.json"
    assert cmd.main(["--height=64", "--width=64", "--repeats=1", "--noxla_flops",
                     f"--output_json={out}"]) == 0
    data = json.loads(out.read_text())
    assert set(data["modules"]) == {"feature_pyramid", "fusion", "scene_flow", "context",
                                    "cost_volume", "warping"}
    assert data["total_params"] == 8_296_404
    assert data["modules"]["context"]["params"] == 522_436
    assert data["time"]["median_ms"] > 0 and data["time"]["backend"] == jax.default_backend()
