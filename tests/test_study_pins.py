"""The layer that turns study records into the paper's tables, on hand-made records.

The tiny preset has one level per sweep, so its end-to-end run cannot tell a best-level
choice from any other, nor check a table beyond a few substrings: these tests pin the
selection of the hybrid's levels (``report.best_levels``) and the exact rows and numbers
of Tables II and III, and the command line's flags (``experiments/run_study.py``)
without running a study.
"""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from deepliflow_jax.study import make_config, report
from deepliflow_jax.study.config import resume_conflicts


def _m(epe, sf):
    return {"epe": epe, "sf": sf, "d0": 0.0, "d1": 0.0, "fl": 0.0}


def _rec(kind, epe, sf, percent=0.0, bits=0, zero=0.0, phases=None, ms=None):
    rec = {"kind": kind, "percent": percent, "bits": bits, "zero_percent": zero,
           "metrics": _m(epe, sf), "time": {"median_ms": ms} if ms is not None else {}}
    if phases is not None:
        rec["phases"] = {"lr1": _m(*phases[0]), "lr2": _m(*phases[1])}
    return rec


CFG = make_config("tiny", prune_percents=(5.0, 25.0, 10.0), quant_bits=(16, 8, 6))


def _sweep(epes, kind):
    """Records ``{kind}_prune_<p>`` / ``{kind}_quant_<b>`` with the given EPEs."""
    out = {}
    for key, epe in epes.items():
        level = float(key.split("_")[1])
        if key.startswith("prune"):
            out[f"{kind}_{key}"] = _rec(kind, epe, 10.0, percent=level)
        else:
            out[f"{kind}_{key}"] = _rec(kind, epe, 10.0, bits=int(level))
    return out


def test_best_levels_lowest_aware_epe_wins_over_any_post_epe():
    records = {
        # the post-training EPEs point elsewhere (lowest at 25 % and 6 bits)
        **_sweep({"prune_5": 2.0, "prune_10": 3.0, "prune_25": 0.5,
                  "quant_16": 2.0, "quant_8": 3.0, "quant_6": 0.5}, "post"),
        **_sweep({"prune_5": 1.9, "prune_10": 1.4, "prune_25": 1.7,
                  "quant_16": 1.2, "quant_8": 1.1, "quant_6": 1.3}, "aware"),
    }
    assert report.best_levels(records, CFG) == (10.0, 8)


def test_best_levels_falls_back_to_post_training_records():
    records = _sweep({"prune_5": 2.0, "prune_10": 1.8, "prune_25": 2.5,
                      "quant_16": 1.6, "quant_8": 1.5, "quant_6": 1.55}, "post")
    assert report.best_levels(records, CFG) == (10.0, 8)
    only_prune = _sweep({"prune_5": 2.0, "prune_10": 2.1, "prune_25": 1.0}, "post")
    # no quantization record at all: the largest bit width
    assert report.best_levels(only_prune, CFG) == (25.0, 16)


def test_best_levels_ties_and_no_records_go_to_the_mildest_level():
    tied = _sweep({"prune_5": 1.0, "prune_10": 1.0, "prune_25": 1.0,
                   "quant_16": 1.0, "quant_8": 1.0, "quant_6": 1.0}, "aware")
    assert report.best_levels(tied, CFG) == (5.0, 16)
    # a tie between the two harshest levels: the milder of the two
    harsh = _sweep({"prune_5": 3.0, "prune_10": 1.0, "prune_25": 1.0,
                    "quant_16": 3.0, "quant_8": 1.0, "quant_6": 1.0}, "aware")
    assert report.best_levels(harsh, CFG) == (10.0, 8)
    assert report.best_levels({}, CFG) == (5.0, 16)


def _dynamic(epe, percent):
    """A ``dynamic_prune`` record: 5 % accepted, 10 % rejected, 7.5 % accepted."""
    def level(i, p, before, after, ok, steps=2):
        return {"iteration": i, "percent": p, "epe": after, "limit": 1.05, "accepted": ok,
                "steps": steps, "start_step": 2 * i, "before": _m(before, 9.0),
                "metrics": _m(after, 8.0), "history": [{"step": 2, "epe": after}]}

    return {"kind": "dynamic", "percent": percent, "bits": 0, "zero_percent": percent,
            "metrics": _m(epe, 8.5), "time": {"median_ms": 7.25}, "stop": "min_increment",
            "steps": 6, "baseline_epe": 1.0, "limit": 1.05,
            "settings": {"start": 5.0, "increment": 5.0, "tolerance": 0.05, "backoff": 0.5,
                         "min_increment": 2.5, "max_percent": 50.0},
            "before": _m(1.3, 9.5), "phases": {"lr1": _m(1.1, 8.75), "lr2": _m(epe, 8.5)},
            "trajectory": [level(0, 5.0, 1.2, 1.01, True), level(1, 10.0, 1.9, 1.2, False),
                           level(2, 7.5, 1.3, epe, True)]}


def test_best_levels_takes_the_dynamic_level_when_its_epe_is_lower():
    sweep = _sweep({"prune_5": 1.9, "prune_10": 1.4, "prune_25": 1.7, "quant_8": 1.1}, "aware")
    assert report.best_levels({**sweep, "dynamic_prune": _dynamic(1.3, 7.5)}, CFG) == (7.5, 8)
    # worse, or tied (the milder level wins), or the part not selected: the sweep's level
    assert report.best_levels({**sweep, "dynamic_prune": _dynamic(1.5, 7.5)}, CFG)[0] == 10.0
    assert report.best_levels({**sweep, "dynamic_prune": _dynamic(1.4, 12.5)}, CFG)[0] == 10.0
    no_part = make_config("tiny", prune_percents=(5.0, 25.0, 10.0), quant_bits=(16, 8, 6),
                          experiments=("aware_prune", "aware_quant", "hybrid"))
    assert report.best_levels({**sweep, "dynamic_prune": _dynamic(1.3, 7.5)}, no_part)[0] == 10
    # no level accepted (0 %): nothing to take
    assert report.best_levels({**sweep, "dynamic_prune": _dynamic(0.5, 0.0)}, CFG)[0] == 10.0


def test_dynamic_rows_of_tables_ii_iii_and_its_trajectory():
    records = {"dynamic_prune": _dynamic(1.05, 7.5)}
    assert report.table2(records, CFG).splitlines()[-1] == (
        "| post | - | - | - | - | dynamic | 7.5% | 32 bits | 1.050 | 8.500 | 7.2 |")
    assert report.table3(records, CFG).splitlines()[2:] == [
        "| 1 | 7.5 % pruning (dynamic threshold) | dynamic, before fine-tuning | 1.300 | 9.500 |",
        "| 2 | 7.5 % pruning (dynamic threshold) | dynamic lr1=0.0001 | 1.100 | 8.750 |",
        "| 3 | 7.5 % pruning (dynamic threshold) | dynamic lr1 then lr2=1e-05 | 1.050 | 8.500 |",
    ]
    from deepliflow_jax.study.dynamic import trajectory_table

    table = trajectory_table(records["dynamic_prune"]).splitlines()
    assert table[2:5] == ["| 0 | 5 | 1.200 | 1.010 | 1.050 | accepted | 2 |",
                          "| 1 | 10 | 1.900 | 1.200 | 1.050 | rejected | 2 |",
                          "| 2 | 7.5 | 1.300 | 1.050 | 1.050 | accepted | 2 |"]
    assert table[-1].startswith("Final: 7.5 % of all weights and biases pruned (zeros 7.50 %), "
                                "EPE 1.050 vs baseline 1.000; stopped because the increment "
                                "fell below the minimum.")


def test_a_folder_from_before_the_dynamic_part_resumes_with_any_dynamic_settings():
    paper = make_config("paper", data_dir="kitti", checkpoint="ckpt")
    old = {k: v for k, v in json.loads(json.dumps(paper.to_dict())).items()
           if not k.startswith("dynamic_")}
    assert resume_conflicts(old, paper) == []  # paper's per-level length is not the default
    assert resume_conflicts({**old, "dynamic_tolerance": 0.2, "lr1": 1e-3}, paper) == [
        "dynamic_tolerance", "lr1"]


def _table_records():
    return {
        "baseline": _rec("post", 1.0, 5.0, ms=12.34),
        "zero_flow": {"kind": "reference", "metrics": _m(9.87654, 95.5)},
        "post_quant_16": _rec("post", 1.0004, 5.0, bits=16, zero=0.5, ms=12.0),
        "aware_quant_16": _rec("aware", 0.99, 4.9, bits=16, zero=0.5, ms=11.96,
                               phases=[(0.995, 4.95), (0.9871, 4.8765)]),
        "post_quant_6": _rec("post", 3.25, 30.125, bits=6, zero=40.0),
        "aware_prune_5": _rec("aware", 1.1, 6.0, percent=5.0, zero=5.0,
                              phases=[(1.2, 6.5), (1.1, 6.0)]),
        "post_prune_25": _rec("post", 2.5, 20.0, percent=25.0, zero=25.0),
        "aware_prune_25": _rec("aware", 1.5, 8.0, percent=25.0, zero=25.0, ms=9.5,
                               phases=[(1.75, 9.0), (1.5, 8.0)]),
        "hybrid_post_8_10": _rec("post", 2.0, 12.0, percent=10.0, bits=8, zero=10.0),
        "hybrid_aware_8_10": _rec("aware", 1.3, 7.0, percent=10.0, bits=8, zero=10.0, ms=8.0,
                                  phases=[(1.4, 7.5), (1.3, 7.0)]),
    }


def test_table3_rows_and_numbers():
    got = report.table3(_table_records(), CFG).splitlines()
    assert got == [
        "| no | configuration | mode | EPE | KEO (SF %) |",
        "|---|---|---|---|---|",
        "| - | original | - | 1.000 | 5.000 |",
        "| 1 | 16 bits | post | 1.000 | 5.000 |",
        "| 2 | 16 bits | aware lr1=0.0001 | 0.995 | 4.950 |",
        "| 3 | 16 bits | aware lr1 then lr2=1e-05 | 0.987 | 4.877 |",
        "| 4 | 6 bits | post | 3.250 | 30.125 |",
        "| 5 | 5 % pruning | aware lr1=0.0001 | 1.200 | 6.500 |",
        "| 6 | 5 % pruning | aware lr1 then lr2=1e-05 | 1.100 | 6.000 |",
        "| 7 | 25 % pruning | post | 2.500 | 20.000 |",
        "| 8 | 25 % pruning | aware lr1=0.0001 | 1.750 | 9.000 |",
        "| 9 | 25 % pruning | aware lr1 then lr2=1e-05 | 1.500 | 8.000 |",
    ]
    # one level per sweep (the tiny preset): each configuration once
    tiny = make_config("tiny")
    rows = report.table3({"post_quant_8": _rec("post", 2.0, 9.0, bits=8)}, tiny).splitlines()
    assert rows[2:] == ["| 1 | 8 bits | post | 2.000 | 9.000 |"]


def test_table2_rows_and_numbers():
    got = report.table2(_table_records(), CFG).splitlines()
    assert got == [
        "| kind | pruning | quantization | EPE | KEO (SF %) | kind | pruning | quantization | "
        "EPE | KEO (SF %) | time (ms, aware) |",
        "|---" * 11 + "|",
        "| original | | 32 bits | 1.000 | 5.000 | original | | 32 bits | 1.000 | 5.000 | 12.3 |",
        "| post | - | - | - | - | aware | 5% | 32 bits | 1.100 | 6.000 | - |",
        "| post | 25% | 32 bits | 2.500 | 20.000 | aware | 25% | 32 bits | 1.500 | 8.000 | 9.5 |",
        "| post | - | - | - | - | aware | - | - | - | - | - |",
        "| post | 0.50% | 16 bits | 1.000 | 5.000 | aware | 0.50% | 16 bits | 0.990 | 4.900 | "
        "12.0 |",
        "| post | - | - | - | - | aware | - | - | - | - | - |",
        "| post | 40.00% | 6 bits | 3.250 | 30.125 | aware | - | - | - | - | - |",
        "| post | 10% | 8 bits | 2.000 | 12.000 | aware | 10% | 8 bits | 1.300 | 7.000 | 8.0 |",
        "| zero flow (reference) | | | 9.877 | 95.500 | | | | | | |",
    ]


# ----------------------------------------------------------------------------- run_study flags

# In a subprocess: absl flags are process-global, and experiments.profile_model (imported
# by another test) defines --checkpoint too. The study itself is replaced by a recorder.
_FLAG_DRIVER = textwrap.dedent("""
    import json, sys
    from absl import app
    import deepliflow_jax.study.runner as runner
    from experiments import run_study

    seen = {}

    class Recorder:
        def __init__(self, cfg, results_dir, **options):
            seen.update(cfg=cfg, results_dir=str(results_dir))

        def prepare(self):
            pass

        def run(self):
            return {}

    def run_seeds(cfg, results_dir, **options):
        seen.update(cfg=cfg, results_dir=str(results_dir), ran="run_seeds")
        return {}

    runner.Study, runner.run_seeds = Recorder, run_seeds
    out = []
    for argv in json.load(sys.stdin):
        seen.clear()
        run_study.FLAGS.unparse_flags()
        try:
            run_study.FLAGS(["run_study", *argv])
            run_study.main([])
        except app.UsageError as err:
            out.append({"error": str(err)})
            continue
        cfg = seen["cfg"]
        out.append({"results_dir": seen["results_dir"],
                    "fields": {k: repr(getattr(cfg, k)) for k in cfg.to_dict()},
                    **({"ran": seen["ran"]} if "ran" in seen else {})})
    print(json.dumps(out))
""")


def _run_flags(cases):
    proc = subprocess.run([sys.executable, "-c", _FLAG_DRIVER], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_run_study_flags_reach_the_config_with_their_types(tmp_path):
    kitti, ckpt = tmp_path / "kitti", tmp_path / "ckpt"
    (kitti / "training").mkdir(parents=True)
    ckpt.mkdir()
    ok = [
        ["--preset=tiny"],
        ["--preset=tiny", "--prune_percents=5,12.5", "--quant_bits=16,8.0",
         "--lidar_sweep=2048,16384", "--experiments=post_prune,hybrid", "--seed=3",
         "--pretrain_steps=1", "--finetune_steps=4", "--refine_steps=2",
         "--runtime_repeats=0", f"--results_dir={tmp_path / 'out'}",
         f"--data_dir={tmp_path / 'world'}"],
        ["--preset=paper", f"--data_dir={kitti}", f"--checkpoint={ckpt}"],
        ["--preset=tiny", "--dynamic_tolerance=0.1", "--dynamic_start=2.5",
         "--dynamic_increment=5", "--dynamic_min_increment=0.5", "--dynamic_max_percent=30",
         "--dynamic_steps=3", "--dynamic_refine_steps=0"],
        ["--preset=paper", f"--data_dir={kitti}", f"--checkpoint={ckpt}",
         "--norestore_optimizer"],
        ["--preset=tiny", "--group_width=original"],
        ["--preset=demo", "--group_width=16"],
    ]
    bad = [
        (["--preset=tiny", "--prune_percents=5,abc"], "--prune_percents: could not convert"),
        (["--preset=tiny", "--quant_bits=8,x"], "--quant_bits: could not convert"),
        (["--preset=tiny", "--quant_bits=8.5"],
         r"--quant_bits\[0\] must be a whole number, got 8.5"),
        (["--preset=tiny", "--lidar_sweep=2048,1.5"],
         r"--lidar_sweep\[1\] must be a whole number, got 1.5"),
        (["--preset=tiny", "--lidar_sweep=inf"],
         r"--lidar_sweep\[0\] must be a whole number, got inf"),
        (["--preset=tiny", "--lidar_sweep=2048,0"],
         r"lidar_sweep\[1\] must be a positive LiDAR sample count, got 0"),
        (["--preset=tiny", "--prune_percents=100"],
         r"prune_percents\[0\] must be a number in \[0, 100\), got 100.0"),
        (["--preset=tiny", "--quant_bits=1"],
         r"quant_bits\[0\] must be an integer in \[2, 16\], got 1"),
        (["--preset=tiny", "--experiments=post_prune,ablation"],
         "experiments must be a non-empty subset"),
        (["--preset=tiny", "--finetune_steps=-1"],
         "finetune_steps must be an integer >= 0, got -1"),
        (["--preset=tiny", "--runtime_repeats=-2"],
         "runtime_repeats must be an integer >= 0, got -2"),
        (["--preset=huge"], "unknown preset 'huge'"),
        (["--preset=tiny", "--dynamic_start=60"],
         "need 0 < dynamic_start <= dynamic_max_percent < 100, got 60 and 20"),
        (["--preset=tiny", "--dynamic_min_increment=20"],
         "need 0 < dynamic_min_increment <= dynamic_increment, got 20 and 10"),
        (["--preset=tiny", "--dynamic_tolerance=-0.1"],
         "dynamic_tolerance must be a finite number >= 0, got -0.1"),
        (["--preset=paper", f"--checkpoint={ckpt}"], "--data_dir"),
        (["--preset=tiny", "--restore_optimizer"],
         "restore_optimizer continues a converted TF checkpoint's Adam: it needs "
         "optimizer='tf1_adam' and --checkpoint"),
        (["--preset=paper", f"--data_dir={kitti}"], "--checkpoint"),
        (["--preset=paper", f"--data_dir={kitti}", f"--checkpoint={tmp_path / 'none'}"],
         f"--checkpoint {tmp_path / 'none'} does not exist"),
        (["--preset=paper", f"--data_dir={tmp_path}", f"--checkpoint={ckpt}"],
         f"--data_dir {tmp_path} has no training/ folder"),
        (["--preset=tiny", "--group_width=0"], "group_width must be None .* got 0"),
        (["--preset=tiny", "--group_width=wide"],
         "--group_width must be 'original' or a whole number, got 'wide'"),
        (["--preset=tiny", "--devices=0"],
         "--devices must be 'all' or a positive whole number, got '0'"),
        (["--preset=tiny", "--devices=two"],
         "--devices must be 'all' or a positive whole number, got 'two'"),
    ]
    got = _run_flags(ok + [argv for argv, _ in bad])
    default = {k: repr(v) for k, v in make_config("tiny").to_dict().items()}
    assert got[0] == {"results_dir": "results/tiny", "fields": default}
    assert got[1]["results_dir"] == str(tmp_path / "out")
    changed = {k: v for k, v in got[1]["fields"].items() if v != default[k]}
    assert changed == {
        "prune_percents": "(5.0, 12.5)", "quant_bits": "(16, 8)",
        "lidar_sweep": "(2048, 16384)", "experiments": "('post_prune', 'hybrid')",
        "seed": "3", "pretrain_steps": "1", "finetune_steps": "4", "refine_steps": "2",
        "runtime_repeats": "0", "data_dir": repr(str(tmp_path / "world"))}
    dynamic = {k: v for k, v in got[3]["fields"].items() if v != default[k]}
    assert dynamic == {"dynamic_tolerance": "0.1", "dynamic_start": "2.5",
                       "dynamic_increment": "5.0", "dynamic_min_increment": "0.5",
                       "dynamic_max_percent": "30.0", "dynamic_steps": "3",
                       "dynamic_refine_steps": "0"}
    paper = got[2]["fields"]
    assert got[2]["results_dir"] == "results/paper"
    assert (paper["data"], paper["interp_size"], paper["checkpoint"]) == (
        "'kitti'", "(384, 1216)", repr(str(ckpt)))
    assert (paper["restore_optimizer"], got[4]["fields"]["restore_optimizer"]) == (
        "True", "False")
    # the tiny preset's structured network, the original's on request; a width for demo
    assert (default["group_width"], got[5]["fields"]["group_width"]) == ("8", "None")
    demo = {k: repr(v) for k, v in make_config("demo").to_dict().items()}
    assert {k: v for k, v in got[6]["fields"].items() if v != demo[k]} == {"group_width": "16"}
    for (argv, message), result in zip(bad, got[len(ok):], strict=True):
        assert "error" in result, (argv, result)
        assert re.search(message, result["error"]), (argv, result["error"])


# ----------------------------------------------------------------------------- intervals


def _counts(epe_per_frame, sf_per_frame, pixels=100.0):
    """Per-frame counts: ``pixels`` valid pixels a frame with the given EPE and SF %."""
    n = len(epe_per_frame)
    out = {"count": [pixels] * n, "epe": [e * pixels for e in epe_per_frame],
           "sf": [s * pixels / 100 for s in sf_per_frame], "nonfinite": [0.0] * n}
    for name in ("d0", "d1", "fl"):
        out[name], out[f"count_{name}"] = [0.0] * n, [pixels] * n
    return out


def _counted(kind, epe_frames, sf_frames, **kw):
    from deepliflow_jax.metrics import metrics_from_counts

    counts = _counts(epe_frames, sf_frames)
    m = {k: float(v) for k, v in metrics_from_counts(counts, "frame").items()}
    rec = _rec(kind, m["epe"], m["sf"], **kw)
    rec.update(metrics=m, frame_counts=counts)
    return rec


def _interval_records():
    base_epe = [1.0, 2.0, 3.0, 4.0, 5.0, 1.5, 2.5, 3.5]
    sf = [10.0, 20.0, 30.0, 40.0, 10.0, 20.0, 30.0, 40.0]
    return {
        "baseline": _counted("post", base_epe, sf),
        # better on every frame / worse on every frame / better on some, worse on others
        "post_quant_16": _counted("post", [e - 0.1 for e in base_epe], sf, bits=16),
        "post_prune_25": _counted("post", [e + 1.0 for e in base_epe],
                                  [s + 5 for s in sf], percent=25.0),
        "aware_prune_25": _counted("aware", [e + (0.5 if i % 2 else -0.5) for i, e in
                                             enumerate(base_epe)], sf, percent=25.0),
        "post_quant_6": _rec("post", 3.0, 30.0, bits=6),  # written before counts were kept
    }


def test_intervals_of_records_with_per_frame_counts():
    from deepliflow_jax.metrics import bootstrap_interval

    records = _interval_records()
    ci = report.intervals(records, CFG)
    assert set(ci) == {"baseline", "post_quant_16", "post_prune_25", "aware_prune_25"}
    assert "vs_baseline" not in ci["baseline"] and ci["baseline"]["frames"] == 8
    # the metrics' bootstrap, as JSON lists; the pooled value inside
    base = records["baseline"]
    assert ci["baseline"]["metrics"] == {
        k: list(v) for k, v in bootstrap_interval(base["frame_counts"], "frame").items()}
    low, high = ci["baseline"]["metrics"]["epe"]
    assert low < base["metrics"]["epe"] < high
    # paired: a constant shift is exactly that shift; mixed signs include 0
    assert ci["post_quant_16"]["vs_baseline"]["epe"] == pytest.approx([-0.1, -0.1], abs=1e-5)
    assert ci["post_prune_25"]["vs_baseline"]["sf"] == pytest.approx([5.0, 5.0], abs=1e-4)
    low, high = ci["aware_prune_25"]["vs_baseline"]["epe"]
    assert low < 0 < high
    # devkit studies pool pixels: the other aggregation
    dev = make_config("tiny", validity="devkit")
    assert report.intervals(records, dev)["baseline"]["metrics"] == {
        k: list(v) for k, v in bootstrap_interval(base["frame_counts"], "pixel").items()}
    # a frame without valid pixels makes the frame mean NaN: no interval, JSON-safe
    empty = {**base, "frame_counts": {**base["frame_counts"],
                                      "count": [0.0] + base["frame_counts"]["count"][1:]}}
    assert report.intervals({"baseline": empty}, CFG)["baseline"]["metrics"]["epe"] == [
        None, None]


def test_tables_carry_the_intervals_and_the_paired_verdicts():
    records = _interval_records()
    ci = report.intervals(records, CFG)

    def cell(key, name):
        lo, hi = ci[key]["metrics"][name]
        return f"{records[key]['metrics'][name]:.3f} [{lo:.3f}, {hi:.3f}]"

    t2 = report.table2(records, CFG, ci).splitlines()
    assert t2[2].startswith(f"| original | | 32 bits | {cell('baseline', 'epe')} | "
                            f"{cell('baseline', 'sf')} | original |")
    assert t2[4].startswith(f"| post | 25% | 32 bits | {cell('post_prune_25', 'epe')} | "
                            f"{cell('post_prune_25', 'sf')} | aware | 25% | 32 bits | "
                            f"{cell('aware_prune_25', 'epe')} |")
    # a record without counts keeps its bare numbers
    assert "| post | 0.00% | 6 bits | 3.000 | 30.000 | aware |" in "\n".join(t2)
    # without intervals the table is as before
    assert report.table2(records, CFG) == report.table2(
        {k: {kk: vv for kk, vv in r.items() if kk != "frame_counts"}
         for k, r in records.items()}, CFG, report.intervals({}, CFG))
    t3 = report.table3(records, CFG, ci).splitlines()
    assert f"| 3 | 25 % pruning | post | {cell('post_prune_25', 'epe')} |" in "\n".join(t3)
    diff = report.difference_table(records, ci).splitlines()
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in diff[2:]}
    assert set(rows) == {"post_quant_16", "post_prune_25", "aware_prune_25"}
    assert rows["post_quant_16"][1] == "lower" and rows["post_quant_16"][3] == "not shown |"
    assert rows["post_prune_25"][0].startswith("+1.000 [+1.000, +1.000]")
    assert rows["post_prune_25"][1] == "higher" and rows["post_prune_25"][3] == "higher |"
    assert rows["aware_prune_25"][1] == "not shown"


def test_write_all_puts_the_intervals_in_results_json_and_tables_md(tmp_path, monkeypatch):
    from deepliflow_jax.study import plots

    seen = {}
    monkeypatch.setattr(plots, "write_plots",
                        lambda out, records, cfg, intervals=None: seen.update(ci=intervals)
                        or [])
    records = _interval_records()
    report.write_all(tmp_path, records, CFG)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["intervals"] == report.intervals(records, CFG) == seen["ci"]
    assert saved["interval_method"]["confidence"] == 0.95
    md = (tmp_path / "tables.md").read_text()
    assert "95% percentile bootstrap interval over the 8 validation frames" in md
    assert "## Differences from the baseline (paired)" in md
    assert report.difference_table(records, saved["intervals"]) in md


# ----------------------------------------------------------------------------- seeds


def test_aggregate_seeds_mean_std_min_max_and_paired_counts():
    per_seed = {
        0: {"baseline": _rec("post", 1.0, 10.0), "post_prune_25": _rec("post", 2.0, 20.0),
            "aware_prune_25": {"kind": "aware", "failed": "diverged"}},
        1: {"baseline": _rec("post", 1.2, 12.0), "post_prune_25": _rec("post", 2.6, 30.0),
            "aware_prune_25": _rec("aware", 1.5, 11.0)},
        2: {"baseline": _rec("post", 1.6, 14.0), "post_prune_25": _rec("post", 1.4, 40.0),
            "aware_prune_25": _rec("aware", 1.5, 15.0)},
    }
    ci = {0: {"post_prune_25": {"vs_baseline": {"epe": [0.5, 1.5]}}},
          1: {"post_prune_25": {"vs_baseline": {"epe": [-0.1, 2.0]}}},
          2: {"post_prune_25": {"vs_baseline": {"epe": [-0.3, -0.05]}}}}
    agg = report.aggregate_seeds(per_seed, ci)
    assert list(agg) == ["baseline", "post_prune_25", "aware_prune_25"]
    p = agg["post_prune_25"]
    assert p["seeds"] == [0, 1, 2] and p["per_seed"]["epe"] == [2.0, 2.6, 1.4]
    assert p["epe"] == pytest.approx({"mean": 2.0, "std": 0.6, "min": 1.4, "max": 2.6})
    assert p["epe"]["std"] == pytest.approx(np.std([2.0, 2.6, 1.4], ddof=1))
    assert p["sf"]["mean"] == pytest.approx(30.0) and p["sf"]["std"] == pytest.approx(10.0)
    vs = p["vs_baseline"]["epe"]
    assert vs["per_seed"] == pytest.approx([1.0, 1.4, -0.2])
    assert (vs["lower"], vs["higher"]) == (1, 1)
    assert "vs_baseline" not in agg["baseline"]
    # a configuration that failed in one seed counts in the others
    a = agg["aware_prune_25"]
    assert a["seeds"] == [1, 2] and a["epe"] == {"mean": 1.5, "std": 0.0, "min": 1.5,
                                                 "max": 1.5}
    one = report.aggregate_seeds({3: per_seed[1]})
    assert one["baseline"]["epe"]["std"] is None and "lower" not in (
        one["post_prune_25"]["vs_baseline"]["epe"])
    table = report.seeds_table(agg).splitlines()
    assert table[3].startswith("| post_prune_25 | 3 | 2.000 ± 0.600 (1.400–2.600) | "
                               "2.000, 2.600, 1.400 | 30.000 ± 10.000 (20.000–40.000) |")
    assert table[3].endswith("| 1 / 1 of 3 |")


class _FakeStudy:
    """A study that writes its records and results.json at once, and says which ran."""

    runs: list = []

    def __init__(self, cfg, folder, **options):
        from deepliflow_jax.study.runner import open_results_dir

        self.cfg, self.dir = cfg, Path(folder)
        open_results_dir(self.dir, cfg)

    def run(self):
        from deepliflow_jax.study.records import RecordStore

        _FakeStudy.runs.append(self.cfg.seed)
        store = RecordStore(self.dir)
        epe = 1.0 + self.cfg.seed / 10
        store.put("baseline", _rec("post", epe, 10.0))
        store.put("post_prune_10", _rec("post", epe + 1.0, 20.0, percent=10.0))
        report.write_all(self.dir, store.all(), self.cfg)
        return {"json": str(self.dir / "results.json")}


def test_seeds_run_once_each_in_their_folders_and_finished_ones_are_reused(tmp_path,
                                                                         monkeypatch):
    from deepliflow_jax.study import plots, runner
    from deepliflow_jax.study.config import replace_config

    monkeypatch.setattr(runner, "Study", _FakeStudy)
    monkeypatch.setattr(plots, "write_plots", lambda *a, **k: [])
    monkeypatch.setattr(_FakeStudy, "runs", [])
    cfg = make_config("tiny", seed=3, seeds=2)
    out = runner.run_study(cfg, tmp_path)
    assert _FakeStudy.runs == [3, 4]
    for s in (3, 4):
        saved = json.loads((tmp_path / f"seed_{s}" / "config.json").read_text())
        assert (saved["seed"], saved["seeds"]) == (s, 1)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seeds"] == [3, 4] and saved["config"]["seeds"] == 2
    assert saved["aggregate"]["post_prune_10"]["per_seed"]["epe"] == pytest.approx([2.3, 2.4])
    assert saved["aggregate"]["post_prune_10"]["epe"]["mean"] == pytest.approx(2.35)
    assert "| post_prune_10 | 2 | 2.350 ± 0.071 (2.300–2.400) |" in (
        tmp_path / "tables.md").read_text()
    assert out["tables"] == str(tmp_path / "tables.md")
    # a second invocation with one more seed runs only that one
    runner.run_study(replace_config(cfg, seeds=3), tmp_path)
    assert _FakeStudy.runs == [3, 4, 5]
    assert json.loads((tmp_path / "results.json").read_text())["seeds"] == [3, 4, 5]
    # a seed another worker has claimed is left to it first, then joined
    runner.open_results_dir(tmp_path / "b", cfg)
    board = runner.ClaimBoard(tmp_path / "b" / runner.CLAIMS_DIR)
    with board.hold("seed_3"):
        _FakeStudy.runs.clear()
        runner.run_study(replace_config(cfg, seeds=2), tmp_path / "b")
    assert _FakeStudy.runs == [4, 3]
    # one study in a folder and seed folders do not mix
    with pytest.raises(ValueError, match=r"seeds differ"):
        runner.run_study(replace_config(cfg, seeds=1), tmp_path)


def test_seeds_flag_and_resume_rule():
    tiny = make_config("tiny")
    saved = json.loads(json.dumps(tiny.to_dict()))
    assert resume_conflicts({**saved, "seeds": 2}, make_config("tiny", seeds=3)) == []
    assert resume_conflicts({**saved, "seeds": 2}, tiny) == ["seeds"]
    assert resume_conflicts(saved, make_config("tiny", seeds=2)) == ["seeds"]
    assert resume_conflicts({k: v for k, v in saved.items() if k != "seeds"}, tiny) == []
    got = _run_flags([["--preset=tiny", "--seeds=3"], ["--preset=tiny", "--seeds=0"]])
    assert got[0]["fields"]["seeds"] == "3" and got[0]["ran"] == "run_seeds"
    assert re.search("seeds must be an integer >= 1, got 0", got[1]["error"])
