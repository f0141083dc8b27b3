"""The study end to end on the tiny preset, resumability, and fail-fast input checks."""

import json
import subprocess
import sys

import numpy as np
import pytest

from deepliflow_jax.study import make_config
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


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tmp_path):
    from deepliflow_jax.study import run_study

    cfg = make_config("tiny")
    out = run_study(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())["records"]
    expected = {"baseline", "zero_flow", "post_prune_10", "post_quant_8", "aware_prune_10",
                "aware_quant_8", "hybrid_post_8_10", "hybrid_aware_8_10"}
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
    # aware records keep the best validation SF outlier rate of their own history
    for key in ("aware_prune_10", "aware_quant_8", "hybrid_aware_8_10"):
        rec = results[key]
        assert [h["step"] for h in rec["history"]] == [2, 3], key  # eval_every=2, 2 + 1 steps
        assert rec["metrics"]["sf"] == min(h["sf"] for h in rec["history"]), key
        assert rec["phases"]["lr2"] == rec["metrics"], key
    tables = (tmp_path / "tables.md").read_text()
    assert "## Table II" in tables and "not from KITTI" in tables
    assert "| post | 10% | 32 bits |" in tables
    for plot in out["plots"]:
        assert (tmp_path / plot).stat().st_size > 1000
    assert (tmp_path / "fig5_qualitative.png").stat().st_size > 1000
    assert (tmp_path / "logs" / "aware_quant_8.csv").read_text().startswith("step,")
    # a re-run trusts the finished records and redoes nothing
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "records").iterdir()}
    (tmp_path / "records" / "aware_quant_8.json").unlink()
    run_study(cfg, tmp_path)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "records").iterdir()}
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == {"aware_quant_8.json"}
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
    assert loaded["hybrid_post_8_10"]["metrics"] == results["hybrid_post_8_10"]["metrics"]
