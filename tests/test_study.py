"""The study end to end on the tiny preset, resumability, and fail-fast input checks."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepliflow_jax.study import make_config, report
from deepliflow_jax.study.config import effective_samples
from deepliflow_jax.study.data import load_study_data


def test_bad_input_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("huge")
    with pytest.raises(ValueError, match="prune percent 100"):
        make_config("tiny", prune_percents=(5.0, 100.0))
    with pytest.raises(ValueError, match=r"bits 1 outside \[2, 16\]"):
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


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch):
    from deepliflow_jax.study import dynamic, run_study

    cfg = make_config("tiny")
    # interrupted while saving the second dynamic threshold level's model, then resumed
    monkeypatch.setattr(dynamic, "save_level", _interrupt_on_call(2, dynamic.save_level))
    with pytest.raises(Interrupted):
        run_study(cfg, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "records" / "dynamic_prune_level_00.json").is_file()
    assert not (tmp_path / "records" / "dynamic_prune_level_01.json").exists()
    out = run_study(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())["records"]
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
    data = load_study_data(cfg, tmp_path / "synthetic_kitti")
    gts = np.concatenate([b["gt"] for b in data.val_batches(data.samples_for(cfg))])
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
    tables = (tmp_path / "tables.md").read_text()
    assert "## Table II" in tables and "not from KITTI" in tables
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
    again_dyn = json.loads((tmp_path / "records" / "dynamic_prune.json").read_text())
    assert {k: v for k, v in again_dyn.items() if k != "time"} == {
        k: v for k, v in dyn.items() if k != "time"}
    # one part, one more level: only that configuration is added
    run_study(make_config("tiny", experiments=("post_prune",), prune_percents=(10.0, 20.0)),
              tmp_path)
    added = {p.name for p in (tmp_path / "records").iterdir()} - set(after)
    assert added == {"post_prune_20.json"}
    # the paper preset's flow: every configuration starts from a loaded checkpoint (device
    # arrays that a donating train step must not consume)
    again = make_config("tiny", checkpoint=str(tmp_path / "baseline_checkpoint"))
    run_study(again, tmp_path / "from_checkpoint")
    loaded = json.loads((tmp_path / "from_checkpoint" / "results.json").read_text())["records"]
    assert expected <= set(loaded)
    assert loaded["baseline"]["metrics"] == results["baseline"]["metrics"]
    assert loaded[hybrid_post]["metrics"] == results[hybrid_post]["metrics"]
    # the interrupted and resumed search found what an uninterrupted one finds
    for resumed, whole in zip(results["dynamic_prune"]["trajectory"],
                              loaded["dynamic_prune"]["trajectory"], strict=True):
        assert (resumed["percent"], resumed["accepted"]) == (whole["percent"], whole["accepted"])
        assert resumed["metrics"]["epe"] == pytest.approx(whole["metrics"]["epe"], rel=1e-6)
