"""Table I of the paper for this implementation: params, conv layers, FLOPs, time.

  python -m experiments.profile_model [--height=384 --width=1216 --repeats=10]
      [--checkpoint=DIR] [--output_json=FILE] [--output_md=FILE]
"""

from __future__ import annotations

import json
import sys

from absl import flags

from deepliflow_jax import cli
from deepliflow_jax.fileio import write_text_atomic

# this script's own flag set: it can be imported beside other scripts (same flag names)
FLAGS = flags.FlagValues()
flags.DEFINE_integer("height", 384, "Network input height (multiple of 64).", flag_values=FLAGS)
flags.DEFINE_integer("width", 1216, "Network input width (multiple of 64).", flag_values=FLAGS)
flags.DEFINE_integer("batch", 1, "Batch size.", flag_values=FLAGS)
flags.DEFINE_integer("repeats", 10, "Timed forward passes (median reported).", flag_values=FLAGS)
flags.DEFINE_string("checkpoint", None, "Converted checkpoint dir; default: random init.",
                    flag_values=FLAGS)
flags.DEFINE_bool("xla_flops", True, "Compile each module for XLA's FLOP count.", flag_values=FLAGS)
flags.DEFINE_bool("time", True, "Time the whole forward pass.", flag_values=FLAGS)
flags.DEFINE_string("output_json", None, "Write the results as JSON here.", flag_values=FLAGS)
flags.DEFINE_string("output_md", None, "Write the Markdown table here.", flag_values=FLAGS)


def run(height: int, width: int, batch: int = 1, repeats: int = 10, checkpoint: str | None = None,
        xla_flops: bool = True, time: bool = True) -> dict:
    """Library entry point (also used by the Colab API)."""
    from deepliflow_jax.model.build import init_params
    from deepliflow_jax.predict import check_network_size
    from deepliflow_jax.profile import profile_model

    check_network_size(height, width, "--height x --width")
    if checkpoint:
        from deepliflow_jax.checkpoint import load_checkpoint

        variables = load_checkpoint(checkpoint)
    else:
        variables = init_params(0)
    return profile_model(variables, height, width, batch, repeats, with_xla=xla_flops,
                         with_time=time)


def _json_ready(result: dict) -> dict:
    """The result with the parts the JSON schema names first."""
    modules = {k: {"params": v["params"], "conv_layers": v["conv_layers"],
                   "gflops": v["gflops_eq3"], "gflops_xla": v["gflops_xla"],
                   "conv_ops": v["conv_ops"]} for k, v in result["modules"].items()}
    return {"modules": modules, **{k: v for k, v in result.items() if k != "modules"}}


def main(argv: list[str] | None = None) -> int:
    """Runs the command on ``argv`` (the flags; default ``sys.argv[1:]``); returns 0.

    Raises:
      SystemExit: 0 after ``--help``, 2 on a usage error.
    """
    cli.parse_flags(FLAGS, sys.argv[1:] if argv is None else list(argv),
                    "python -m experiments.profile_model", __doc__)
    cli.announce_results("python -m experiments.profile_model", FLAGS.output_json, FLAGS.output_md)
    from deepliflow_jax.profile import format_profile_table

    result = run(FLAGS.height, FLAGS.width, FLAGS.batch, FLAGS.repeats, FLAGS.checkpoint,
                 FLAGS.xla_flops, FLAGS.time)
    table = format_profile_table(result)
    print(table)
    if FLAGS.output_json:
        write_text_atomic(FLAGS.output_json, json.dumps(_json_ready(result), indent=2))
    if FLAGS.output_md:
        write_text_atomic(FLAGS.output_md, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
