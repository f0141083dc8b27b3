"""The study end to end on the tiny preset, resumability, and fail-fast input checks."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deepliflow_jax.data.dataset import effective_samples
from deepliflow_jax.model.layers import resolve_conv_impl
from deepliflow_jax.profile.environment import cpu_info
from deepliflow_jax.study import make_config, report
from deepliflow_jax.study.config import replace_config
from deepliflow_jax.study.data import study_dataset


def test_bad_input_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("huge")
    with pytest.raises(ValueError, match=r"prune_percents\[1\] must be a number in \[0, 100\)"):
        make_config("tiny", prune_percents=(5.0, 100.0))
    with pytest.raises(ValueError, match=r"quant_bits\[1\] must be an integer in \[2, 16\]"):
        make_config("tiny", quant_bits=(8, 1))
    with pytest.raises(ValueError, match="--data_dir"):
        make_config("paper")
    with pytest.raises(ValueError, match="--checkpoint"):
        make_config("paper", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="multiple of 64"):
        make_config("tiny", width=200)
    with pytest.raises(ValueError, match="subset of"):
        make_config("tiny", experiments=("post_prune", "ablation"))
    with pytest.raises(ValueError, match="hybrid needs"):
        make_config("tiny", quant_bits=())
    for bad in (0, -8, 2.5, True, "8"):
        with pytest.raises(ValueError, match="group_width must be None"):
            make_config("tiny", group_width=bad)
    # the command line refuses before any work and says why
    proc = subprocess.run([sys.executable, "-m", "experiments.run_study", "--preset=paper",
                           f"--data_dir={tmp_path}", f"--checkpoint={tmp_path / 'none'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_results_folder_of_other_settings_is_refused(tmp_path):
    """Records of another configuration are never mixed into a resumed study."""
    saved = json.dumps(make_config("tiny").to_dict())
    (tmp_path / "config.json").write_text(saved)
    proc = subprocess.run([sys.executable, "-m", "experiments.run_study", "--preset=tiny",
                           "--finetune_steps=5", f"--results_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "finetune_steps differ" in proc.stderr
    assert (tmp_path / "config.json").read_text() == saved  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_lidar_density_is_kept_at_reduced_resolution():
    assert effective_samples(4096, 375, 1242) == 4096
    assert effective_samples(4096, 64, 192) == round(4096 * 64 * 192 / (375 * 1242))


class Interrupted(Exception):
    """Stands for a kill in the middle of a study."""


def _interrupt_on_call(n, fn):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise Interrupted
        return fn(*args, **kwargs)

    return wrapper


def _finished_copy(folder: Path) -> Path:
    """Where ``tiny_study`` copies its folder as it finished (before other tests add to it)."""
    return folder.with_name(folder.name + "_finished")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The tiny study, interrupted while saving the second dynamic-threshold level, resumed.

    Returns ``(results folder, run_study's output, the records right after the resume,
    the console output (stdout) of the first run and of the resumed one)``; the end-to-end
    test goes on in that folder, the workers test starts from its baseline.
    """
    from deepliflow_jax.study import dynamic, run_study

    folder = tmp_path_factory.mktemp("tiny_study")
    cfg = make_config("tiny")
    first, resumed = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(first):
        mp.setattr(dynamic, "save_level", _interrupt_on_call(2, dynamic.save_level))
        with pytest.raises(Interrupted):
            run_study(cfg, folder)
    assert (folder / "records" / "dynamic_prune_level_00.json").is_file()
    assert not (folder / "records" / "dynamic_prune_level_01.json").exists()
    with contextlib.redirect_stdout(resumed):
        out = run_study(cfg, folder)
    shutil.copytree(folder, _finished_copy(folder))  # seed 0 of the --seeds test
    return (folder, out, json.loads((folder / "results.json").read_text())["records"],
            (first.getvalue(), resumed.getvalue()))


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tiny_study):
    from deepliflow_jax.study import run_study

    tmp_path, out, _, _ = tiny_study
    cfg = make_config("tiny")
    saved = json.loads((tmp_path / "results.json").read_text())
    results = saved["records"]
    # the machine's instruction set is recorded: numbers differ between AVX2 and AVX-512
    machine = cpu_info()  # (its clock may vary between reads)
    assert {k: saved["machine"][k] for k in ("cpu", "instruction_set", "cpu_count")} == {
        k: machine[k] for k in ("cpu", "instruction_set", "cpu_count")}
    assert f"({cpu_info()['instruction_set']})" in (tmp_path / "tables.md").read_text()
    # the form the study's model ran ("auto" as resolved on this backend)
    assert saved["conv_impl"] == resolve_conv_impl("auto") != "auto"
    assert f"conv_impl {saved['conv_impl']!r}" in (tmp_path / "tables.md").read_text()
    # the hybrid's pruning level: the sweep's 10 %, or the dynamic threshold's final level
    # when its EPE is lower
    dyn = results["dynamic_prune"]
    best_p = (dyn["percent"] if dyn["metrics"]["epe"] < results["aware_prune_10"]["metrics"]["epe"]
              else 10.0)
    assert report.best_levels(results, cfg) == (best_p, 8)
    hybrid_post, hybrid_aware = f"hybrid_post_8_{best_p:g}", f"hybrid_aware_8_{best_p:g}"
    expected = {"baseline", "zero_flow", "post_prune_10", "post_quant_8", "aware_prune_10",
                "aware_quant_8", "dynamic_prune", hybrid_post, hybrid_aware}
    assert expected <= set(results)
    # post-training pruning removes exactly the requested share of all parameters
    assert results["post_prune_10"]["zero_percent"] == pytest.approx(10.0, abs=0.01)
    assert results["post_quant_8"]["zero_percent"] > results["baseline"]["zero_percent"]
    for key in expected - {"zero_flow"}:
        rec = results[key]
        assert set(rec["lidar"]) == {"2048", "8192"}
        assert rec["metrics"]["epe"] > 0 and rec["time"]["median_ms"] > 0
    aware = results["aware_prune_10"]
    assert set(aware["phases"]) == {"lr1", "lr2"} and aware["steps"] == 3
    # values, not only keys: the sweep's LiDAR counts give different inputs and results
    for key in expected - {"zero_flow"}:
        lidar = results[key]["lidar"]
        assert lidar["2048"]["epe"] != lidar["8192"]["epe"], key
    # the zero-flow reference is the frame mean of |gt| over the valid pixels (d0 > 0),
    # computed here from the validation ground truth the study evaluates on
    data = study_dataset(cfg, tmp_path / "synthetic_kitti")
    gts = np.concatenate([b["gt"] for b in data.val_batches(data.num_samples)])
    per_frame = [np.linalg.norm(gt[gt[..., 2] > 0].astype(np.float64), axis=-1).mean()
                 for gt in gts]
    assert len(per_frame) == 1  # 10 scenes, every tenth is validation
    assert results["zero_flow"]["metrics"]["epe"] == pytest.approx(np.mean(per_frame),
                                                                  rel=1e-5)
    # the dynamic threshold (tiny: 10 %, then 20 %, a 100 % tolerance, 1 + 1 steps each)
    # pruned the accepted 10 % model further, and its final model is the last accepted one
    levels = [results[f"dynamic_prune_level_{i:02d}"] for i in range(2)]
    assert [(e["percent"], e["accepted"]) for e in dyn["trajectory"]] == [(10.0, True),
                                                                        (20.0, True)]
    assert [{k: v for k, v in e.items() if k not in ("key", "kind", "bits")}
            for e in levels] == dyn["trajectory"]
    assert dyn["percent"] == 20.0 and dyn["stop"] == "max_percent" and dyn["steps"] == 4
    assert [e["start_step"] for e in levels] == [0, 2]
    for e in levels:
        assert [h["step"] for h in e["history"]] == [1, 2] and e["steps"] == 2
        assert e["metrics"]["epe"] == min(h["epe"] for h in e["history"])  # selection by EPE
    assert dyn["metrics"] == levels[-1]["metrics"]  # the saved model, evaluated again
    assert dyn["zero_percent"] == pytest.approx(20.0, abs=0.01)
    assert sorted(p.name for p in (tmp_path / "dynamic_prune").iterdir()) == ["level_01.npz"]
    # aware records keep the best validation SF outlier rate of their own history
    for key in ("aware_prune_10", "aware_quant_8", hybrid_aware):
        rec = results[key]
        assert [h["step"] for h in rec["history"]] == [2, 3], key  # eval_every=2, 2 + 1 steps
        assert rec["metrics"]["sf"] == min(h["sf"] for h in rec["history"]), key
        assert rec["phases"]["lr2"] == rec["metrics"], key
    # every record of a model keeps the per-frame counts its metrics pool, to the bit; the
    # intervals resample them (one validation frame here: each interval is a point)
    from deepliflow_jax.metrics import as_floats, metrics_from_counts

    for key in expected:
        rec = results[key]
        counts = {k: np.asarray(v, np.float32) for k, v in rec["frame_counts"].items()}
        assert len(counts["count"]) == 1, key
        assert {k: v for k, v in as_floats(metrics_from_counts(counts, "frame")).items()
                if k != "nonfinite"} == {k: v for k, v in rec["metrics"].items()
                                         if k != "nonfinite"}, key
        ci = saved["intervals"][key]
        assert ci["frames"] == 1
        assert ci["metrics"]["epe"] == pytest.approx([rec["metrics"]["epe"]] * 2, rel=1e-6)
        if key != "baseline":
            diff = rec["metrics"]["sf"] - results["baseline"]["metrics"]["sf"]
            assert ci["vs_baseline"]["sf"] == pytest.approx([diff] * 2, abs=1e-4), key
    tables = (tmp_path / "tables.md").read_text()
    assert "## Table II" in tables and "not from KITTI" in tables
    assert "With a single frame an interval is a point" in tables
    assert "## Differences from the baseline (paired)" in tables
    assert "| post | 10% | 32 bits |" in tables
    assert "| dynamic | 20% | 32 bits |" in tables and "## Dynamic threshold" in tables
    assert "fig_dynamic_threshold.png" in {Path(p).name for p in out["plots"]}
    for plot in out["plots"]:
        assert (tmp_path / plot).stat().st_size > 1000
    assert (tmp_path / "fig5_qualitative.png").stat().st_size > 1000
    assert (tmp_path / "logs" / "aware_quant_8.csv").read_text().startswith("step,")
    # a re-run trusts the finished records and redoes nothing (a finished dynamic
    # threshold search is replayed from its level records, its final model loaded)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "records").iterdir()}
    redo = {"aware_quant_8.json", "dynamic_prune.json"}
    for name in redo:
        (tmp_path / "records" / name).unlink()
    run_study(cfg, tmp_path)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "records").iterdir()}
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == redo
    # the re-run keeps the first run's wall time (the interrupted one wrote no report)
    # and adds its own
    again = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == 1 and saved["wall_s"] == saved["runs"][0]["wall_s"] > 0
    assert again["runs"][:1] == saved["runs"] and len(again["runs"]) == 2
    assert again["wall_s"] == pytest.approx(sum(r["wall_s"] for r in again["runs"]))
    again_dyn = json.loads((tmp_path / "records" / "dynamic_prune.json").read_text())
    assert {k: v for k, v in again_dyn.items() if k != "time"} == {
        k: v for k, v in dyn.items() if k != "time"}
    # the tiny preset studies the structured network of 8 channels per group
    from deepliflow_jax.checkpoint import load_checkpoint
    from deepliflow_jax.model.channels import architecture_widths

    baseline = load_checkpoint(tmp_path / "baseline_checkpoint")["params"]
    assert set(architecture_widths(baseline).values()) == {cfg.group_width} == {8}
    # one part, one more level: only that configuration is added
    run_study(make_config("tiny", experiments=("post_prune",), prune_percents=(10.0, 20.0)),
              tmp_path)
    added = {p.name for p in (tmp_path / "records").iterdir()} - set(after)
    assert added == {"post_prune_20.json"}
    # the paper preset's flow (every configuration from a loaded checkpoint) runs in the
    # workers test below, from this study's baseline checkpoint


@pytest.mark.slow
def test_tiny_study_over_two_seeds_reuses_the_finished_seed(tiny_study, tmp_path):
    """--seeds=2 in a folder whose seed 0 is the tiny study (as a first invocation that was
    stopped after seed 0 leaves it): seed 0 is reused untouched, seed 1 runs a whole study
    of its own, and the folder gets their aggregate."""
    from deepliflow_jax.study import run_study
    from deepliflow_jax.study.runner import open_results_dir

    folder, _, ref, _ = tiny_study
    cfg = make_config("tiny", seeds=2)
    seeds = tmp_path / "seeds"
    open_results_dir(seeds, cfg)
    shutil.copytree(_finished_copy(folder), seeds / "seed_0")
    before = {str(p): p.stat().st_mtime_ns for p in (seeds / "seed_0").rglob("*")}
    t_start = time.perf_counter()
    out = run_study(cfg, seeds)
    print(f"tiny study, --seeds=2 with seed 0 reused: {time.perf_counter() - t_start:.0f} s")
    assert out["seeds"][0] is None and out["seeds"][1]["tables"] == str(
        seeds / "seed_1" / "tables.md")
    assert {str(p): p.stat().st_mtime_ns for p in (seeds / "seed_0").rglob("*")} == before
    seed1 = json.loads((seeds / "seed_1" / "results.json").read_text())
    assert (seed1["config"]["seed"], seed1["config"]["seeds"]) == (1, 1)
    assert seed1["records"]["baseline"]["metrics"] != ref["baseline"]["metrics"]  # its own
    saved = json.loads((seeds / "results.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["config"]["seeds"] == 2
    for key in ("baseline", "zero_flow", "post_prune_10", "aware_quant_8", "dynamic_prune"):
        values = [ref[key]["metrics"]["epe"], seed1["records"][key]["metrics"]["epe"]]
        agg = saved["aggregate"][key]
        assert agg["per_seed"]["epe"] == values, key
        assert agg["epe"]["mean"] == pytest.approx(np.mean(values)), key
        assert agg["epe"]["std"] == pytest.approx(np.std(values, ddof=1)), key
    tables = (seeds / "tables.md").read_text()
    assert "2 seeds" in tables and "| baseline | 2 | " in tables
    assert (seeds / "fig_seeds.png").stat().st_size > 1000
    assert out["plots"] == [str(seeds / "fig_seeds.png")]


@pytest.mark.slow
def test_tiny_study_console_says_what_happened(tiny_study):
    folder, out, records, (first, resumed) = tiny_study
    ckpt = folder / "baseline_checkpoint"
    # a fresh run pre-trains the baseline and says so, the compile reported on its own
    # line before the progress bar; the resumed run loads it and says that
    assert "baseline: pre-training 3 steps" in first
    assert re.search(r"baseline: first pre-training step [\d.]+ s \(compiling", first)
    assert "baseline: pre-trained 3 steps in" in first and f"saved to {ckpt}" in first
    assert "baseline: loading" not in first
    assert f"baseline: loading {ckpt}" in resumed and "baseline: pre-train" not in resumed
    # every file written is listed, Fig. 5 included
    assert str(folder / "fig5_qualitative.png") in out["plots"]
    assert all(Path(p).is_file() for p in out["plots"])
    # the time column: each timing holds the load around it; a loaded machine is said so
    timed = [r["time"] for r in records.values() if r.get("time")]
    assert timed and all(set(t["load"]) == {"before", "after"} for t in timed)
    note = report.time_load_note(records)
    if note:
        # (tables.md may hold more configurations by now: the end-to-end test adds one)
        assert note in resumed
        assert "WARNING: the time column was measured on a loaded machine" in (
            folder / "tables.md").read_text()
    else:
        assert "loaded machine" not in resumed


def test_time_load_note_warns_on_a_loaded_machine():
    idle = {"load1": 0.5, "load5": 0.5, "load15": 0.5, "cpu_count": 4, "loaded": False}
    busy = {**idle, "load1": 6.0, "loaded": True}

    def rec(before, after):
        return {"time": {"median_ms": 1.0, "load": {"before": before, "after": after}}}

    assert report.time_load_note({"a": rec(idle, idle), "zero": {"metrics": {}}}) is None
    note = report.time_load_note({"a": rec(idle, idle), "b": rec(idle, busy)})
    assert note.startswith("WARNING") and "1 of 2 configurations" in note
    assert "0.50 before, 6.00 after on 4 cores" in note
    assert report.time_load_note({"old": {"time": {"median_ms": 1.0}}}) is None


def test_results_json_keeps_every_run(tmp_path, monkeypatch):
    from deepliflow_jax.study import plots

    monkeypatch.setattr(plots, "write_plots", lambda out, records, cfg, intervals=None: [])
    cfg = make_config("tiny")
    recs = {"baseline": {"kind": "post", "metrics": {"epe": 1.0, "sf": 10.0}}}
    # a results.json from before the runs list: its wall time is kept as the first run
    (tmp_path / "results.json").write_text(json.dumps({"wall_s": 477.0}))
    report.write_all(tmp_path, recs, cfg, run={"started": "a", "wall_s": 2.17})
    fig5 = tmp_path / "fig5_qualitative.png"
    out = report.write_all(tmp_path, recs, cfg, run={"started": "b", "wall_s": 3.0},
                           extra_plots=[fig5])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"] == [{"wall_s": 477.0}, {"started": "a", "wall_s": 2.17},
                             {"started": "b", "wall_s": 3.0}]
    assert saved["wall_s"] == pytest.approx(482.17)
    assert out["plots"] == [str(fig5)]


# ----------------------------------------------------------------------------- workers
# Study workers sharing one results folder, started from the tiny study's baseline
# checkpoint (the paper preset's flow: every configuration from loaded device arrays that
# a donating train step must not consume): 2 processes, one killed while it trains, give
# the records the one in-process study gave. After that study, so that the workers load
# its executables from the session's persistent XLA cache instead of compiling again.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["-m", "experiments.run_study", "--preset=tiny",
        "--experiments=post_prune,aware_prune,dynamic_prune", "--prune_percents=10",
        "--runtime_repeats=0", "--devices=1"]
AWARE = ("aware_prune_10", "dynamic_prune")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}


def _start(folder, checkpoint, log: Path) -> subprocess.Popen:
    # output to a file: an unread pipe would stall a talkative worker once it is full
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *ARGS, f"--checkpoint={checkpoint}",
                                 f"--results_dir={folder}"], cwd=ROOT, env=_env(),
                                stdout=out, stderr=subprocess.STDOUT)


def _holder(claims_dir, pids) -> tuple[int, str] | None:
    """(pid, key) of a worker holding a training claim, if any."""
    for key in AWARE:
        try:
            info = json.loads((claims_dir / f"{key}.claim").read_text())
        except (FileNotFoundError, ValueError):
            continue
        if info.get("pid") in pids:
            return info["pid"], key
    return None


def _without_time(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "time"}


@pytest.mark.slow
def test_two_workers_from_a_checkpoint_match_one_process_and_take_over_a_killed_one(
        tiny_study, tmp_path):
    folder, _, ref, _ = tiny_study
    two = tmp_path / "two"
    paths = [tmp_path / f"worker{i}.log" for i in range(2)]
    started = [_start(two, folder / "baseline_checkpoint", log) for log in paths]
    workers = {p.pid: p for p in started}
    logs = {p.pid: log for p, log in zip(started, paths, strict=True)}
    try:
        held = None
        deadline = time.time() + 900
        while held is None and time.time() < deadline:
            if any(p.poll() is not None for p in workers.values()):
                break
            held = _holder(two / "claims", set(workers))
            time.sleep(0.02)
        assert held is not None, "no worker was seen running a training configuration"
        pid, key = held
        os.kill(pid, signal.SIGKILL)
        killed = workers.pop(pid)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        (survivor,) = workers.values()
        survivor.wait(timeout=900)
        out = logs[survivor.pid].read_text()
    finally:
        for p in workers.values():
            p.kill()
    assert survivor.returncode == 0, out[-3000:]
    assert f"{key}: taking over from" in out, out[-3000:]
    assert not list((two / "claims").glob("*.claim"))  # every claim released

    # the records of the one in-process study that pre-trained the baseline: every metric,
    # the validation histories, the dynamic threshold's levels (an uninterrupted search
    # finds what the interrupted and resumed one found)
    got = json.loads((two / "results.json").read_text())["records"]
    assert set(got) == {"baseline", "zero_flow", "post_prune_10", "aware_prune_10",
                        "dynamic_prune", "dynamic_prune_level_00", "dynamic_prune_level_01"}
    for name in ("baseline", "zero_flow"):
        assert got[name]["metrics"] == ref[name]["metrics"], name
        assert got[name].get("lidar") == ref[name].get("lidar"), name
    for name in set(got) - {"baseline", "zero_flow"}:
        assert _without_time(got[name]) == _without_time(ref[name]), name
    assert "| aware | 10% | 32 bits |" in (two / "tables.md").read_text()


def test_prepare_leaves_the_compilation_cache_to_the_caller(tmp_path):
    """The library changes no process-wide JAX setting: the persistent compilation cache is
    the caller's (experiments/run_study.py, or dl.enable_compilation_cache())."""
    import jax

    from deepliflow_jax.study.runner import Study

    configured = jax.config.jax_compilation_cache_dir  # the test session's (conftest.py)
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        Study(make_config("tiny"), tmp_path / "r").prepare()
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", configured)


def test_a_checkpoint_of_another_network_is_refused(tiny_study, tmp_path):
    """The original network's study refuses the tiny study's structured checkpoint."""
    from deepliflow_jax.study.runner import Study

    folder, _, _, _ = tiny_study
    cfg = replace_config(make_config("tiny", checkpoint=str(folder / "baseline_checkpoint")),
                         group_width=None)
    study = Study(cfg, tmp_path / "r")
    study.prepare()
    with pytest.raises(ValueError, match=r"(?s)baseline_checkpoint is a structured "
                       r"DeepLiDARFlow of another architecture.*requested the original"):
        study._baseline_params()


def test_a_batch_that_does_not_split_over_the_devices_is_refused(tmp_path):
    env = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    base = [sys.executable, "-m", "experiments.run_study", "--preset=tiny"]
    proc = subprocess.run([*base, "--devices=2", f"--results_dir={tmp_path / 'a'}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert ("devices (--devices) is 2, but the training batch of 1 frame(s) does not split "
            "over 2 devices: use a device count that divides 1 (e.g. --devices=1)"
            in proc.stderr), proc.stderr[-2000:]
    assert not (tmp_path / "a" / "records").exists() or not any(
        (tmp_path / "a" / "records").iterdir())  # refused before any work
    for bad, says in (("3", "devices (--devices) is 3, but this process has 2 device(s)"),
                      ("two", "--devices must be 'all' or a positive whole number")):
        proc = subprocess.run([*base, f"--devices={bad}", f"--results_dir={tmp_path / bad}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-2000:]


def test_all_devices_means_as_many_as_the_batch_splits_over(tmp_path):
    """The default: a batch of 1 on a 2-device process trains on 1 device and says why."""
    env = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    script = ("import sys\n"
              "from deepliflow_jax.study.config import make_config\n"
              "from deepliflow_jax.study.runner import Study\n"
              "study = Study(make_config('tiny'), sys.argv[1])\n"
              "study.prepare()\n"
              "print('devices', study.devices, study.trainer.mesh.devices.size)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "devices 1 1" in proc.stdout
    assert "data parallel over 1 of 2 devices (the training batch of 1 splits no further" in (
        proc.stdout)
