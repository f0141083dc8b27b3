"""The structured trade-off's table rows and target check, and the run-time harness's
structured and int8 builders (built and traced; the one compile is the int8 calibration)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.profile.timer import summarize
from deepliflow_jax.search.measure import Candidate
from deepliflow_jax.search.report import tradeoff_markdown
from deepliflow_jax.search.tradeoff import TradeoffConfig, _row, target_check


def _cand(name, ratio, int8, params, disk_mb, ms, epe, flops=None):
    metrics = {"epe": epe, "d0": 1.0, "d1": 2.0, "fl": 3.0, "sf": 4.0}
    times = [t / 1e3 for t in (ms * 0.9, ms, ms, ms * 1.1)]
    info = {"flops": flops, "conv_gflops_eq3": 1.5, "compile_s": 2.0}
    return Candidate(name, ratio, int8, params, int(disk_mb * 1e6), None, (), info,
                        {"metrics": metrics}, summarize(times))


def _rows():
    cands = [
        _cand("dense", 0.0, False, 8_000_000, 32.0, 100.0, 2.0, flops=40e9),
        _cand("dense_ft", 0.0, False, 8_000_000, 32.0, 100.0, 1.6),
        _cand("pruned50", 0.5, False, 3_000_000, 12.0, 50.0, 1.66),     # -17 % / +3.75 %
        _cand("pruned50+int8", 0.5, True, 3_000_000, 4.0, 80.0, 1.62),  # only 1.25x faster
        _cand("pruned70", 0.7, False, 1_600_000, 6.4, 40.0, 1.7),      # -15 % / +6.25 %
        _cand("pruned10", 0.1, False, 7_000_000, 28.0, 90.0, 1.5),     # 88 % of the disk
    ]
    refs = {"dense": cands[0], "dense_ft": cands[1]}
    return [_row(c, cands[0], refs) for c in cands]


def test_tradeoff_rows_hold_the_measured_ratios():
    rows = _rows()
    p50 = rows[2]
    assert (p50["param_fraction"], p50["disk_fraction"]) == pytest.approx((0.375, 0.375))
    assert p50["latency_ms"] == pytest.approx(50.0)
    assert (p50["latency_p10_ms"], p50["latency_p90_ms"]) == pytest.approx((46.5, 53.5))
    assert p50["speedup"] == pytest.approx(2.0) and rows[3]["speedup"] == pytest.approx(1.25)
    assert p50["epe_change_vs_dense"] == pytest.approx(1.66 / 2.0 - 1.0)
    assert p50["epe_change_vs_dense_ft"] == pytest.approx(1.66 / 1.6 - 1.0)
    assert rows[0]["gflops_xla"] == pytest.approx(40.0) and np.isnan(p50["gflops_xla"])
    assert (p50["epe"], p50["d0"], p50["d1"], p50["fl"], p50["sf"]) == (1.66, 1.0, 2.0, 3.0, 4.0)
    assert p50["plan"] == "uniform" and p50["latency_n"] == 4


def test_tradeoff_target_needs_all_three_and_depends_on_the_reference():
    rows = _rows()
    vs_dense = target_check(rows, "dense")
    assert vs_dense == {"met": True, "reference": "dense", "best": "pruned70",
                        "candidates": ["pruned50", "pruned70"]}
    vs_ft = target_check(rows, "dense_ft")
    assert vs_ft == {"met": True, "reference": "dense_ft", "best": "pruned50",
                     "candidates": ["pruned50"]}
    assert target_check(rows[:2] + rows[3:4], "dense") == {
        "met": False, "reference": "dense", "best": None, "candidates": []}


def test_tradeoff_markdown_rows_and_verdicts():
    rows = _rows()
    result = {"environment": {"platform": "cpu", "cpu": "test", "cpu_count": 2,
                              "versions": {"jax": jax.__version__}},
              "timed_input": [1, 2, 64, 192, 4], "data": "hand-made rows",
              "config": {**dataclasses.asdict(TradeoffConfig()), "repeats": 4},
              "rows": rows,
              "target": {"vs_dense": target_check(rows, "dense"),
                         "vs_dense_ft": target_check(rows, "dense_ft")}}
    lines = tradeoff_markdown(result).splitlines()
    assert ("| pruned50 | 50% | no | 3,000,000 (38%) | 12.00 (38%) | nan | 1.50 | 50 (46-54) "
            "| 2.00x | 1.660 | -17.0% | +3.7% | 2.0 | 3.0 | 4.0 |") in lines
    assert ("| dense | 0% | no | 8,000,000 (100%) | 32.00 (100%) | 40.00 | 1.50 | 100 (93-107) "
            "| 1.00x | 2.000 | +0.0% | +25.0% | 2.0 | 3.0 | 4.0 |") in lines
    assert "* EPE vs dense: met by pruned50, pruned70 (fastest: pruned70)." in lines
    assert "* EPE vs dense ft: met by pruned50 (fastest: pruned50)." in lines


# ----------------------------------------------------------------------------- runtime harness

def test_structured_builder_is_the_smaller_model(variables):
    from deepliflow_jax.compress.structured import structured_prune
    from deepliflow_jax.profile import runtime_configs as rc
    from deepliflow_jax.profile.inputs import random_frames

    frames = jnp.asarray(random_frames(1, 64, 64, seed=0))
    apply, params, info = rc.resolve("structured25").builder(variables, frames, (60, 62),
                                                             "float32")
    ref = structured_prune(variables, 0.25)
    assert info["channel_ratio_removed"] == 0.25 and "widths" not in info
    assert info["params_after"] == ref.params_after < 0.7 * info["params_before"]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    sf, aux = jax.eval_shape(apply, params, frames)  # traced with the smaller widths
    assert sf.shape == (1, 60, 62, 4) and sf.dtype == jnp.float32
    assert aux["flows"][-1].shape == (1, 16, 16, 4)
    _, _, bf16_info = rc.resolve("structured25").builder(variables, frames, (64, 64), "bfloat16")
    assert bf16_info == info


def test_int8_builder_calibrates_on_the_benchmark_input(variables):
    from deepliflow_jax.compress.int8 import act_scale
    from deepliflow_jax.profile import runtime_configs as rc
    from deepliflow_jax.profile.inputs import random_frames

    frames = random_frames(1, 64, 64, seed=1)
    apply, qmodel, info = rc.resolve("int8").builder(variables, frames, (60, 62), "float32")
    assert info["int8_layers"] == len(qmodel["convs"]) == 106
    assert all(q["w"].dtype == np.int8 for q in qmodel["convs"].values())
    # the first conv sees the RGB channels of both frames: its range is theirs
    first = qmodel["convs"]["guidance_network/rgb_encoder/conv1a"]
    np.testing.assert_allclose(first["x_scale"], act_scale(float(np.abs(frames[..., :3]).max())),
                               rtol=1e-6)
    sf, _ = jax.eval_shape(apply, qmodel, jnp.asarray(frames))
    assert sf.shape == (1, 60, 62, 4) and sf.dtype == jnp.float32
