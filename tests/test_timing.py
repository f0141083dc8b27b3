"""Run-time harness: validation, statistics, registry, cost-volume variants, one real run.

No assertion here is about speed: timings on a shared CPU are noise. The one
end-to-end run uses tiny shapes, few repeats and exactly one subprocess.
"""

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.model.cost_volume import cost_volume
from deepliflow_jax.profile import cost_volume_bench as cvb
from deepliflow_jax.profile import environment, inputs, report, runners, timer, timing
from deepliflow_jax.profile import runtime_configs as rc
from weights_convert import torch_bridge

HAS_TORCH_REF = (importlib.util.find_spec("torch") is not None
                 and importlib.util.find_spec("weights_convert.torch_model") is not None)
STATUSES = {"PASS", "FAIL", "PENDING", "N/A-HERE"}


@pytest.mark.parametrize("name, message", [
    ("nope", "unknown configuration 'nope'"),
    ("fq1", "bit width must be in"),
    ("fq17", "bit width must be in"),
    ("pruned100", "pruning percentage"),
    ("structured0", "channel percentage"),
    ("structured100", "channel percentage"),
])
def test_bad_config_names_the_flag(name, message):
    with pytest.raises(ValueError, match="--configs") as e:
        rc.resolve(name)
    assert message in str(e.value)


def test_registry_families_and_order():
    configs = rc.parse_configs("dense, fq8,pruned12.5,dense,bf16")
    assert [c.name for c in configs] == ["dense", "fq8", "pruned12.5", "bf16"]
    assert configs[0].executable_key == configs[1].executable_key == configs[2].executable_key
    assert configs[3].executable_key != configs[0].executable_key
    assert rc.resolve("torch_compile").torch_mode == "compile"
    with pytest.raises(ValueError, match="--configs"):
        rc.parse_configs(" , ")
    for bits in rc.FQ_BITS:
        assert rc.resolve(f"fq{bits}").transform is not None
    # other models compile on their own
    for name in ("structured25", "structured", "int8"):
        config = rc.resolve(name)
        assert config.builder is not None and config.executable_key != configs[0].executable_key
    planned = rc.register(rc.RuntimeConfig("planned_x", "jax", "test", unavailable="later"))
    try:
        with pytest.raises(ValueError, match="not available yet: later"):
            rc.resolve(planned.name)
    finally:
        rc._REGISTRY.pop(planned.name)


@pytest.mark.parametrize("kwargs, flag", [
    ({"height": 100}, "--height"), ({"width": 130}, "--width"), ({"height": 0}, "--height"),
    ({"batch_sizes": [1, 0]}, "--batch_sizes"), ({"train_batch": 0}, "--train_batch"),
    ({"precision": "tf32"}, "--precision"), ({"repeats": 0}, "--repeats"),
    ({"processes": -1}, "--processes"), ({"configs": "dense,bogus"}, "--configs"),
])
def test_run_benchmark_rejects_bad_flags_before_running(kwargs, flag):
    args = {"configs": "dense", "height": 64, "width": 128, "batch_sizes": [1], **kwargs}
    with pytest.raises(ValueError, match=flag):
        timing.run_benchmark(**args)


def test_summarize_orders_statistics():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        times = rng.lognormal(-3, 0.5, n)
        s = timer.summarize(times)
        assert s["n"] == n
        assert s["min_ms"] <= s["p10_ms"] <= s["median_ms"] <= s["p90_ms"] <= s["max_ms"]
        assert s["median_ms"] == pytest.approx(np.median(times) * 1e3)
    assert timer.summarize([])["median_ms"] is None


def test_frames_are_deterministic_and_sparse():
    a, b = inputs.random_frames(2, 64, 128, seed=3), inputs.random_frames(2, 64, 128, seed=3)
    assert a.shape == (2, 2, 64, 128, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert 0.03 < np.mean(a[..., 3] != 0) < 0.07


def test_peaks_and_precision_keys():
    peaks, note = environment.peak_tflops("NVIDIA H100 80GB HBM3", "gpu")
    assert peaks["bfloat16"] > peaks["tf32"] > peaks["float32"] and "SXM" in note
    assert environment.peak_tflops("NVIDIA H100 PCIe", "gpu")[0]["tf32"] == 378.0
    cpu, note = environment.peak_tflops("cpu", "cpu")
    assert cpu["float32"] > 0 and "CPU assumption" in note
    assert environment.precision_key("float32", "default", "gpu") == "tf32"
    assert environment.precision_key("float32", "highest", "gpu") == "float32"
    assert environment.precision_key("bfloat16", "highest", "gpu") == "bfloat16"
    assert environment.precision_key("float32", "default", "cpu") == "float32"


def test_compare_errors():
    ref = np.random.default_rng(0).standard_normal((1, 4, 8, 4)).astype(np.float32)
    assert timing._compare(ref, ref)["max_rel_err"] == 0.0
    out = ref.copy()
    out[0, 0, 0, 0] += 0.5
    err = timing._compare(out, ref)
    assert err["max_abs_err"] == pytest.approx(0.5)
    assert err["max_rel_err"] == pytest.approx(0.5 / np.abs(ref).max())
    assert err["flow_epe_vs_ref_px"] == pytest.approx(0.5 / 32)


def test_transforms_on_a_small_tree():
    tree = {"params": {"a": {"kernel": jnp.asarray(np.arange(1, 101, dtype=np.float32)
                                                   .reshape(10, 10) - 50.5)},
                       "b": {"bias": jnp.linspace(-1.0, 1.0, 20)}}}
    pruned, info = rc.resolve("pruned30").transform(tree)
    assert info["masked_fraction"] == pytest.approx(0.3)
    assert info["zero_fraction"] == pytest.approx(0.3)
    q, qinfo = rc.resolve("fq6").transform(tree)
    k = np.asarray(q["params"]["a"]["kernel"])
    steps = k / (np.abs(k).max() / 31)  # symmetric 6 bits: integer levels -31..31
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    assert 32 < len(np.unique(k)) <= 63 and qinfo["bits"] == 6


@pytest.mark.parametrize("name", [n for n in cvb.VARIANTS if n != "shifted (model)"])
def test_cost_volume_variants_equal_the_model(name):
    shape = (2, 5, 20, 8)  # W not a multiple of banded_matmul's tile, H < 2r + 1
    rng = np.random.default_rng(1)
    x, w = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    want = cost_volume(x, w)
    got = jax.jit(cvb.VARIANTS[name])(x, w)
    assert got.shape == want.shape == shape[:3] + (81,)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_targets_on_a_synthetic_result():
    row = {"framework": "jax", "kind": "forward", "batch": 1, "p10_ms": 9.0, "p90_ms": 11.0,
           "info": {}, "x_floor": 4.0, "floor_ms": 2.5, "peak_key": "tf32"}
    result = {
        "environment": {"device_kind": "NVIDIA H100 80GB HBM3"},
        "settings": {"height": 384, "width": 1216},
        "results": {
            "dense@b1": {**row, "config": "dense", "median_ms": 10.0},
            "bf16@b1": {**row, "config": "bf16", "median_ms": 8.0, "x_floor": 6.0,
                        "error_vs_ref": {"flow_epe_vs_ref_rel": 0.002}},
            "torch_eager@b1": {**row, "config": "torch_eager", "median_ms": 20.0},
        },
    }
    got = {t["target"]: t["status"] for t in report.target_checks(result)}
    assert got["flax fp32 <= 0.7 x torch eager"] == "PASS"
    assert got["flax fp32 <= torch.compile"] == "PENDING"
    assert got["flax train step <= 1x torch eager train step"] == "PENDING"
    assert got["bf16 >= 1.5x faster than fp32"] == "FAIL"
    assert got["fp32 within 5x of the floor"] == "PASS"
    assert got["bf16 within 5x of the floor"] == "FAIL"
    result["settings"]["height"] = 64
    assert {t["status"] for t in report.target_checks(result)} <= {"N/A-HERE", "PENDING"}


def test_train_step_target_compares_flax_with_both_torch_steps():
    row = {"batch": 2, "p10_ms": 9.0, "p90_ms": 11.0, "info": {}}
    result = {"environment": {"device_kind": "cpu"},
              "settings": {"height": 128, "width": 256, "train_batch": 2},
              "results": {"train_step@b2": {**row, "config": "train_step", "median_ms": 30.0},
                          "torch_train_step@b2": {**row, "config": "torch_train_step",
                                                  "median_ms": 40.0}}}
    name = "flax train step <= 1x torch eager train step"

    def target():
        return next(t for t in report.target_checks(result) if t["target"] == name)

    # a same-run ratio: checked off the H100 and at any size, unlike the forward targets
    assert target()["status"] == "PASS" and "(ratio 0.75)" in target()["detail"]
    assert "torch.compile" not in target()["detail"]
    result["results"]["torch_compile_train_step@b2"] = {
        **row, "config": "torch_compile_train_step", "median_ms": 20.0}
    assert "torch.compile train step 20.00 ms (flax / compile 1.50)" in target()["detail"]
    result["results"]["train_step@b2"]["median_ms"] = 41.0
    assert target()["status"] == "FAIL"
    result["settings"]["train_batch"] = 1  # no rows at that batch
    assert target()["status"] == "PENDING" and "batch 1" in target()["detail"]


def test_torch_train_steps_resolve_and_compare_their_loss_with_the_jax_step():
    eager, comp = rc.resolve("torch_train_step"), rc.resolve("torch_compile_train_step")
    assert (eager.framework, eager.kind, eager.torch_mode) == ("torch", "train_step", "eager")
    assert (comp.framework, comp.kind, comp.torch_mode) == ("torch", "train_step", "compile")
    assert len({c.executable_key for c in (eager, comp, rc.resolve("torch_eager"),
                                           rc.resolve("torch_compile"))}) == 4
    keys = {"train_step@b1", "dense@b1"}
    assert timing._reference_key(eager, 1, keys) == "train_step@b1"
    assert timing._reference_key(comp, 2, keys) is None  # no JAX step at that batch
    assert timing._reference_key(rc.resolve("train_step"), 1, keys) is None


def test_torch_train_steps_run_through_the_worker(monkeypatch):
    # in-process (processes=0) so that torch.compile can be replaced by a recorder: the
    # real inductor compile of the step takes minutes on a small CPU
    import torch

    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(timing, "load_average", lambda: {  # no load warning from other tests
        "load1": 0.0, "load5": 0.0, "load15": 0.0, "cpu_count": 2, "loaded": False})
    result = timing.run_benchmark("torch_train_step,torch_compile_train_step", height=64,
                                  width=64, batch_sizes=[1], train_batch=1, repeats=1,
                                  warmup=0, processes=0, progress=False,
                                  torch_reference=torch_bridge.LOADER)
    assert compiled == ["objective", "update"]  # the compile config only, both parts
    rows = result["results"]
    assert set(rows) == {"torch_train_step@b1", "torch_compile_train_step@b1"}
    for key, row in rows.items():
        assert not row["errors"], (key, row["errors"])
        assert row["kind"] == "train_step" and row["n"] == 1 and row["median_ms"] > 0
        assert "torch.optim.Adam(0.0001)" in row["info"]["optimizer"]
    assert rows["torch_compile_train_step@b1"]["compile_s_median"] > 0
    assert "compile'd" in rows["torch_compile_train_step@b1"]["info"]["step"]
    console = report.format_console(result)
    assert "torch_train_step b1: median" in console
    assert "needs train_step and torch_train_step at batch 1" in console

    def broken_compile(fn, **kwargs):
        def fail():
            raise AssertionError("inductor")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    result = timing.run_benchmark("torch_compile_train_step", height=64, width=64,
                                  batch_sizes=[1], repeats=1, warmup=0, processes=0,
                                  progress=False, torch_reference=torch_bridge.LOADER)
    (error,) = result["results"]["torch_compile_train_step@b1"]["errors"]
    assert error == ("RuntimeError: torch_compile_train_step at 64x64: torch.compile failed "
                     "(AssertionError: inductor); on CPU it needs --height and --width >= 128")


def test_torch_configs_need_the_reference_loader_named():
    # the harness imports nothing above itself: the caller names the torch reference
    with pytest.raises(ValueError, match="torch_reference=None.*module:function"):
        timing.run_benchmark("dense,torch_eager", height=64, width=128, batch_sizes=[1])
    with pytest.raises(ModuleNotFoundError):
        runners.torch_reference_loader("no_such_module:load")
    assert runners.torch_reference_loader(torch_bridge.LOADER) is torch_bridge.load_reference


def test_interleaved_rounds_rotate_from_the_offset_and_keep_the_raw_times():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in "abc"}
    out = timer.time_interleaved(calls, repeats=3, warmup=1, offset=1, keep_times=True)
    assert order[:3] == list("abc")  # warm-up, in order
    assert order[3:] == list("bca" "cab" "abc")  # round r starts at (r + offset) % 3
    assert all(out[n]["n"] == 3 and len(out[n]["times_s"]) == 3 for n in "abc")
    assert "times_s" not in timer.time_interleaved(calls, repeats=1)["a"]


def test_cpu_info_names_the_widest_instruction_set_in_proc_cpuinfo():
    info = environment.cpu_info()
    flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
                .split(":", 1)[1].split())
    want = ("AVX-512" if "avx512f" in flags else
            "AVX2+FMA" if {"avx2", "fma"} <= flags else "SSE/other")
    assert info["instruction_set"] == want and info["cpu_count"] >= 1 and info["mhz"] > 0
    assert environment.peak_tflops("cpu", "cpu")[1].find(
        "AVX-512" if want == "AVX-512" else "AVX2") >= 0 or want == "SSE/other"


def test_load_average_is_the_os_figure_and_flags_more_load_than_cores():
    import os

    load = environment.load_average()
    assert load["cpu_count"] == os.cpu_count()
    assert load["load1"] == pytest.approx(os.getloadavg()[0], abs=0.5)
    assert load["loaded"] == (load["load1"] > load["cpu_count"])


def test_harness_end_to_end_one_subprocess(tmp_path, monkeypatch):
    configs = "dense,pruned50" + (",torch_eager" if HAS_TORCH_REF else "")
    # the load seen after the process: above the core count, as if another job ran
    calls = []

    def fake_load():
        calls.append(1)
        busy = len(calls) == 2
        cores = 2
        return {"load1": 3.5 if busy else 0.5, "load5": 1.0, "load15": 1.0, "cpu_count": cores,
                "loaded": busy}

    monkeypatch.setattr(timing, "load_average", fake_load)
    with pytest.warns(UserWarning, match=r"machine loaded while timing dense@b1.*0\.5 before, "
                      r"3\.5 after, on 2 cores"):
        result = timing.run_benchmark(configs, height=64, width=128, batch_sizes=[1],
                                      repeats=3, warmup=1, processes=1, progress=False,
                                      precision="highest", note="test",  # no TF32 on a GPU
                                      torch_reference=torch_bridge.LOADER)
    assert result["settings"]["mix_frameworks"] is True  # one process, shared rounds
    assert result["loaded"] is True and len(result["load"]) == 1
    assert result["load"][0]["jobs"] == [f"{c}@b1" for c in configs.split(",")]
    assert "WARNING loaded machine (process 0: 0.5 -> 3.5 on 2 cores)" in (
        report.format_console(result))
    # schema
    for key in ("schema_version", "created", "environment", "settings", "results", "targets",
                "compression_honesty", "wall_s"):
        assert key in result
    env = result["environment"]
    on_cpu = jax.default_backend() == "cpu"  # the GPU session runs this file too
    assert env["platform"] == jax.default_backend() and env["device_kind"]
    assert env["versions"]["jax"] == jax.__version__ and env["versions"]["jaxlib"]
    assert env["precision_flag"] == "highest" and "conv_precision" in env
    assert env["jax_default_matmul_precision"] == "highest"
    assert set(result["results"]) == {f"{c}@b1" for c in configs.split(",")}
    for key, row in result["results"].items():
        assert not row["errors"], (key, row["errors"])
        assert row["n"] == 3 and len(row["per_process_median_ms"]) == 1
        assert row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["compile_s_median"] > 0
        assert (row["peak_device_memory"] == "n/a") == on_cpu  # memory_stats: n/a on CPU
    dense, pruned = (result["results"][f"{c}@b1"] for c in ("dense", "pruned50"))
    assert dense["xla_flops"] > 1e8 and dense["floor_ms"] > 0 and dense["memory_analysis"]
    # the masked config really is 50 % sparse and runs the dense executable
    assert pruned["info"]["masked_fraction"] == pytest.approx(0.5, abs=1e-6)
    assert pruned["info"]["zero_fraction"] >= 0.5
    assert pruned["compile_shared_with"] == "dense@b1"
    assert pruned["error_vs_ref"]["max_rel_err"] > 0  # the zeros do reach the output
    if HAS_TORCH_REF:
        torch_row = result["results"]["torch_eager@b1"]
        assert torch_row["vs"] == "dense@b1"
        assert torch_row["error_vs_ref"]["max_rel_err"] < 1e-4
    assert len(result["targets"]) >= 5
    assert {t["status"] for t in result["targets"]} <= STATUSES
    assert not any(t["status"] in ("PASS", "FAIL") for t in result["targets"])  # not an H100
    assert len(result["compression_honesty"]) == 1
    assert "same compiled executable" in result["compression_honesty"][0]
    json_path, md_path = tmp_path / "r.json", tmp_path / "r.md"
    report.write_results(result, str(json_path), str(md_path))
    assert json.loads(json_path.read_text())["schema_version"] == timing.SCHEMA_VERSION
    md = md_path.read_text()
    assert "| dense | 1 | float32 |" in md and "## Targets" in md
    assert "**Loaded machine:** process 0: 0.5 -> 3.5 on 2 cores" in md
    assert env["device_kind"] in md
    assert "TARGET" in report.format_console(result)
