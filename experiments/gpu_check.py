"""One-shot GPU check: parity, run time and precision vs EPE in one results folder.

  python -m experiments.gpu_check [--output_dir=results/gpu_check]
      [--checkpoint=DIR] [--smoke]

Made for a GPU lent for a few minutes (at most ~8 minutes on one H100/H200, compiles
included); ``--smoke`` runs every part at toy size on any backend (CI, on CPU). See
``deepliflow_jax.profile.gpu_check`` for the parts.
"""

from __future__ import annotations

import os

from absl import app, flags

from deepliflow_jax import cli
from weights_convert import torch_bridge

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "results/gpu_check", "Results folder (under the current "
                    "directory unless absolute).")
flags.DEFINE_string("checkpoint", None, "Weights for the precision check (default: random "
                    "init, where only the differences between the dtypes mean something).")
flags.DEFINE_bool("smoke", False, "Toy sizes and one parity test: checks the plumbing.")
flags.DEFINE_bool("progress", True, "Show progress.")


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
        progress=FLAGS.progress)
    failed = [name for name, part in result["parts"].items() if "error" in part]
    print(f"wrote {FLAGS.output_dir}/gpu_check.json and gpu_check.md"
          + (f"; parts with errors: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)
