"""CLI: ``python -m weights_convert --format=torch|tf --input=PATH --output=DIR``.

Converts an original TF release checkpoint (``--input`` = its prefix, e.g.
``model/DeepLiDARFlow-KITTI``) or a "PyTorch DeepLiDARFlow" state dict
(``.pt``/``.pth``/``.safetensors``) into an Orbax checkpoint directory for
``deepliflow_jax.checkpoint.load_checkpoint``. ``--format=orbax`` goes the other
way: ``--input`` is such a directory and ``--output`` a ``.safetensors``/``.pt``
file. Optimizer slots, moving averages and step counters of a TF training
checkpoint, and the non-weight items of a PyTorch training checkpoint, are skipped
and counted in the printed summary. Nothing is written when the input does not fit
the model (an entry tied to no model variable included), and an existing
output is replaced only with ``--overwrite``. ``--no_verify_crc`` (TF only) skips
the CRC-32C check of the tensor data. ``--with_optimizer_state`` (TF only) keeps the
Adam state of a training checkpoint (m, v and the beta powers: the original's
``train/<var>/Adam_optimizer{,_1}``, ``train/beta{1,2}_power``) in the output, so that
fine-tuning continues the original's Adam (the study's ``paper`` preset needs it).

Flags are absl flags, kept in this module's own ``FlagValues`` (``FLAGS``) so that
``main(argv)`` can run in a process where other scripts defined flags of the same
names (``--input``, ``--output``); ``--help`` lists them. A usage error (an unknown,
missing or malformed flag) exits with status 2, naming the flag; an input problem
with status 1, the error on stderr.
"""

from __future__ import annotations

import sys

from absl import flags

from deepliflow_jax import cli
from weights_convert.convert import FORMATS, convert_checkpoint, export_torch

PROG = "python -m weights_convert"

FLAGS = flags.FlagValues()
flags.DEFINE_enum("format", None, [*FORMATS, "orbax"],
                  "tf: TF tensor-bundle checkpoint prefix; torch: PyTorch weights file; "
                  "orbax: export an Orbax checkpoint directory to a PyTorch file.",
                  flag_values=FLAGS)
flags.DEFINE_string("input", None, "Source checkpoint.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Output checkpoint directory (or .safetensors/.pt file "
                    "for --format=orbax).", flag_values=FLAGS)
for _name in ("format", "input", "output"):
    flags.mark_flag_as_required(_name, flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace an existing output.", flag_values=FLAGS)
# Named as the documented spelling: a `verify_crc` bool would take --noverify_crc only.
flags.DEFINE_bool("no_verify_crc", False, "tf: skip the CRC-32C check of the tensor data.",
                  flag_values=FLAGS)
flags.DEFINE_bool("with_optimizer_state", False, "tf: keep the Adam slots and beta powers of a "
                  "training checkpoint (to continue its Adam when fine-tuning).",
                  flag_values=FLAGS)


def parse_flags(argv: list[str]) -> None:
    """Parses ``argv`` (flags only, no program name) into ``FLAGS``, from the defaults.

    Raises:
      SystemExit: 0 after ``--help``; 2 on a usage error (printed to stderr).
    """
    cli.parse_flags(FLAGS, argv, PROG, __doc__)


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (1 on an input error).

    Args:
      argv: the flags (default ``sys.argv[1:]``).

    Raises:
      SystemExit: 0 after ``--help``; 2 on a usage error.
    """
    parse_flags(sys.argv[1:] if argv is None else list(argv))
    try:
        if FLAGS.format == "orbax" and FLAGS.with_optimizer_state:
            raise ValueError("--with_optimizer_state reads a TF training checkpoint "
                             "(--format=tf); an export to PyTorch writes weights only")
        if FLAGS.format == "orbax":
            path = export_torch(FLAGS.input, FLAGS.output, overwrite=FLAGS.overwrite)
            print(f"wrote PyTorch state dict {path}")
        else:
            report = convert_checkpoint(FLAGS.format, FLAGS.input, FLAGS.output,
                                        overwrite=FLAGS.overwrite,
                                        verify_crc=not FLAGS.no_verify_crc,
                                        with_optimizer_state=FLAGS.with_optimizer_state)
            print(report.summary())
            print(f"wrote Orbax checkpoint {FLAGS.output}")
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
