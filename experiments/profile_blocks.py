"""Per-block forward (--train: forward + backward) time for each conv implementation.

See deepliflow_jax.profile.blocks; --train times what the train step does per block
and the whole train step (forward + backward + Adam) as the reference row.

  python -m experiments.profile_blocks [--height=384 --width=1216 --batch=1]
      [--interp_size=384,1216 (with the raw --height/--width, e.g. 375x1242)]
      [--conv_impls=xla,auto] [--repeats=10 --warmup=2] [--dtype=float32|bfloat16]
      [--train]
      [--checkpoint=DIR] [--output_json=FILE] [--output_md=FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

from deepliflow_jax import cli

PROG = "python -m experiments.profile_blocks"
# own flag set: tests run this script in the process where profile_model defines --height
FLAGS = flags.FlagValues()
_DEFINE = (
    (flags.DEFINE_integer, "height", 384, "Input height (a multiple of 64 unless --interp_size)."),
    (flags.DEFINE_integer, "width", 1216, "Input width (a multiple of 64 unless --interp_size)."),
    (flags.DEFINE_integer, "batch", 1, "Batch size."),
    (flags.DEFINE_list, "interp_size", None, "h,w the network resizes the input to (KITTI path)."),
    (flags.DEFINE_list, "conv_impls", ["xla", "auto"],
     "Conv implementations to compare ('auto': the default, resolved per backend)."),
    (flags.DEFINE_integer, "repeats", 10, "Timed rounds (every block once per round)."),
    (flags.DEFINE_integer, "warmup", 2, "Untimed calls of every block after compiling."),
    (flags.DEFINE_string, "checkpoint", None, "Converted checkpoint dir; default: random init."),
    (flags.DEFINE_bool, "whole", True, "Also time the whole forward (train step) under one "
     "jit."),
    (flags.DEFINE_bool, "train", False, "Time each block's forward + backward (jax.vjp) and "
     "the whole train step, instead of the forward."),
    (flags.DEFINE_string, "output_json", None, "Write the results as JSON here."),
    (flags.DEFINE_string, "output_md", None, "Write the Markdown tables here."),
)
for _define, _name, _default, _help in _DEFINE:
    _define(_name, _default, _help, flag_values=FLAGS)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.",
                  flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
    """Parses the flags (``argv`` after the program name) and profiles; returns 0.

    Raises:
      SystemExit: 0 after ``--help``, 2 on a usage error.
    """
    cli.parse_flags(FLAGS, sys.argv[1:] if argv is None else list(argv), PROG, __doc__)
    try:
        cli.announce_results(PROG, FLAGS.output_json, FLAGS.output_md)
        _profile()
    except app.UsageError as err:
        print(f"{PROG}: usage error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    return 0


def _profile() -> None:
    import jax.numpy as jnp

    from deepliflow_jax.profile.blocks import format_blocks, profile_blocks
    from deepliflow_jax.profile.inputs import load_variables
    from deepliflow_jax.study.records import write_json_atomic, write_text_atomic

    interp = None
    if FLAGS.interp_size:
        if len(FLAGS.interp_size) != 2 or not all(v.strip().isdigit() for v in FLAGS.interp_size):
            raise app.UsageError(f"--interp_size={','.join(FLAGS.interp_size)}: expected h,w "
                                 "(e.g. 384,1216)")
        interp = tuple(int(v) for v in FLAGS.interp_size)
    if FLAGS.checkpoint:
        from deepliflow_jax.checkpoint import load_checkpoint

        variables = load_checkpoint(FLAGS.checkpoint)
    else:
        variables = load_variables()
    result = profile_blocks(variables, FLAGS.batch, FLAGS.height, FLAGS.width,
                            FLAGS.conv_impls, FLAGS.repeats, FLAGS.warmup, interp,
                            jnp.dtype(FLAGS.dtype), FLAGS.whole, FLAGS.train)
    table = format_blocks(result)
    print(table)
    if FLAGS.output_json:
        write_json_atomic(Path(FLAGS.output_json), result)
    if FLAGS.output_md:
        write_text_atomic(Path(FLAGS.output_md), table + "\n")


if __name__ == "__main__":
    sys.exit(main())
