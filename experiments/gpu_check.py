"""One-shot GPU check: parity, run time and precision vs EPE in one results folder.

  python -m experiments.gpu_check [--output_dir=results/gpu_check]
      [--checkpoint=DIR] [--smoke]

Made for a GPU lent for a few minutes (at most ~8 minutes on one H100/H200, compiles
included); ``--smoke`` runs every part at toy size on any backend (CI, on CPU). See
``deepliflow_jax.profile.gpu_check`` for the parts. The parity part runs this checkout's
``tests/test_tf_golden.py`` and ``tests/test_conv_impl.py`` with pytest (here, not in the
library), under the backend's default float32 precision and under ``highest``; their logs
carry the measured errors (``-rA`` shows what each test printed).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from absl import app, flags

from deepliflow_jax import cli
from deepliflow_jax.fileio import write_text_atomic
from weights_convert import torch_bridge

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "results/gpu_check", "Results folder (under the current "
                    "directory unless absolute).")
flags.DEFINE_string("checkpoint", None, "Weights for the precision check (default: random "
                    "init, where only the differences between the dtypes mean something).")
flags.DEFINE_bool("smoke", False, "Toy sizes and one parity test: checks the plumbing.")
flags.DEFINE_bool("progress", True, "Show progress.")

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose tests/ the parity part runs
PARITY_TESTS = ("tests/test_tf_golden.py", "tests/test_conv_impl.py")


def _summary_counts(log: str) -> dict[str, int]:
    counts = {}
    for n, what in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", log):
        counts[what.rstrip("s") if what.startswith("error") else what] = int(n)
    return counts


def parity(root: Path, out: Path, precision: str, select: str | None,
           timeout_s: float) -> dict[str, Any]:
    """Runs the parity tests of the checkout at ``root`` with pytest, in a subprocess under
    ``precision``; the log goes to ``out``.

    Returns:
      ``{"precision", "returncode", "counts": {"passed", "failed", ...}, "log"}``; a
      missing ``tests/`` folder gives ``{"skipped": why}``.
    """
    missing = [t for t in PARITY_TESTS if not (root / t).is_file()]
    if missing:
        return {"precision": precision, "skipped": f"no {missing[0]} under {root} (run the "
                "check from a checkout of the repository)"}
    env = dict(os.environ)
    env.pop("JAX_DEFAULT_MATMUL_PRECISION", None)
    if precision == "highest":
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # one process: the tests compile on the one device (the suite's default is 2 workers)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-n", "0", "-p", "no:cacheprovider",
           *PARITY_TESTS] + (["-k", select] if select else [])
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        out_text, log, code = proc.stdout, proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out_text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        log, code = out_text + f"\nTIMEOUT after {timeout_s:.0f} s", None
    path = out / f"parity_{precision}.log"
    write_text_atomic(path, log)
    # pytest's summary is the last line of its stdout (warnings go to stderr)
    tail = out_text.strip().splitlines()[-1] if out_text.strip() else ""
    return {"precision": precision, "returncode": code, "counts": _summary_counts(tail),
            "log": str(path)}


def _parity_part(out: Path, precision: str, settings: dict) -> dict[str, Any]:
    """``run_gpu_check``'s parity runner: :func:`parity` on this checkout."""
    return parity(ROOT, out, precision, settings["parity_select"],
                  settings["parity_timeout_s"])


def main(argv):
    del argv
    # the workers own the GPU: this process must not preallocate most of its memory
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    cli.announce_results("python -m experiments.gpu_check", FLAGS.output_dir)
    import deepliflow_jax as dl
    from deepliflow_jax.profile import gpu_check

    settings = gpu_check.SMOKE if FLAGS.smoke else gpu_check.FULL
    world = dl.make_synthetic_dataset(os.path.join(FLAGS.output_dir, "world"),
                                      **settings["world"])
    data = dl.load_dataset(world)
    variables = (dl.load_checkpoint(FLAGS.checkpoint) if FLAGS.checkpoint
                 else dl.init_params(0, kernel_gain=2**0.5))
    result = gpu_check.run_gpu_check(
        FLAGS.output_dir, smoke=FLAGS.smoke, variables=variables,
        batches=data.val_batches(data.num_samples), torch_reference=torch_bridge.LOADER,
        parity=_parity_part, progress=FLAGS.progress)
    failed = [name for name, part in result["parts"].items() if "error" in part]
    print(f"wrote {FLAGS.output_dir}/gpu_check.json and gpu_check.md"
          + (f"; parts with errors: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)
