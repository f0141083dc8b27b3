"""Accuracy per compute dtype: the float32 row is the study's evaluation, bf16 differs."""

import subprocess
import sys

import numpy as np
import pytest

from deepliflow_jax.profile.precision import markdown, output_difference, precision_metrics


@pytest.mark.slow
def test_float32_row_is_the_evaluation_and_bf16_is_measured(small_variables, tiny_data, tmp_path):
    from deepliflow_jax.api import evaluate

    variables = small_variables  # the 8-wide network: bf16 changes it as it does the original
    batches = tiny_data.val_batches(tiny_data.num_samples)
    out = precision_metrics(variables, batches)
    ref = evaluate(variables, tiny_data)
    for k in ("epe", "d0", "d1", "fl", "sf"):
        assert out["metrics"]["float32"][k] == pytest.approx(ref[k], rel=1e-4, abs=1e-4)
    change = out["change"]["bfloat16"]
    assert out["metrics"]["bfloat16"]["epe"] != out["metrics"]["float32"]["epe"]
    assert change["max_abs_diff_px"] > 0
    assert change["epe_percent"] == pytest.approx(
        100 * (out["metrics"]["bfloat16"]["epe"] / ref["epe"] - 1), rel=1e-3)
    assert out["frames"] == len(tiny_data.val)
    table = markdown(out, "t")
    assert "| float32 |" in table and "| bfloat16 |" in table and "reference" in table

    diff = output_difference(variables, batches[0]["frames"][0])
    assert diff["max_abs_diff_px"] > 0 and np.isfinite(diff["relative_percent"])
    with pytest.raises(ValueError, match="compute dtype"):
        precision_metrics(variables, batches, ("float32", "int8"))
    with pytest.raises(ValueError, match="no batches"):
        precision_metrics(variables, [])


def test_command_refuses_bad_input_before_work(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "experiments.precision_accuracy", *args],
                              capture_output=True, text=True, timeout=120)

    proc = run("--random_init", f"--data_dir={tmp_path}")
    assert proc.returncode != 0 and "has no training/ folder" in proc.stderr
    (tmp_path / "training").mkdir()
    proc = run(f"--data_dir={tmp_path}")
    assert proc.returncode != 0 and "exactly one of --checkpoint" in proc.stderr
    proc = run(f"--checkpoint={tmp_path / 'nope'}", f"--data_dir={tmp_path}")
    assert proc.returncode != 0 and "does not exist" in proc.stderr
