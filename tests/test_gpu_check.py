"""``python -m experiments.gpu_check --smoke``: every part of the one-shot GPU check runs.

The real check is for a lent GPU; this runs the same code at toy size on the CI CPU so
that the GPU run is not its first.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_writes_every_part(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "experiments.gpu_check", "--smoke",
                           f"--output_dir={out}", "--noprogress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    parts = result["parts"]
    assert result["smoke"] is True
    for precision in ("default", "highest"):
        part = parts[f"parity_{precision}"]
        assert part["returncode"] == 0 and part["counts"]["passed"] >= 1, part
        assert not part["counts"].get("failed")
        assert "passed" in Path(part["log"]).read_text()
    (run,) = parts["runtime"]
    rows = run["results"]
    assert set(rows) == {"dense@b1", "conv_subpixel@b1", "torch_eager@b1"}
    assert all(r["median_ms"] > 0 and not r["errors"] for r in rows.values())
    # the exact alternative and the PyTorch reference compute the same function
    assert rows["conv_subpixel@b1"]["max_rel_err"] < 1e-4
    assert rows["torch_eager@b1"]["max_rel_err"] < 1e-4
    epe = parts["precision_vs_epe"]
    assert "error" not in epe and "skipped" not in epe, epe
    md = (out / "gpu_check.md").read_text()
    assert "## Parity" in md and "| dense@b1 |" in md and "## Precision vs EPE" in md
