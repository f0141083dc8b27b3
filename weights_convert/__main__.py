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
output is replaced only with ``--overwrite``. Exit status 1 with the error on
stderr for any input problem.
"""

from __future__ import annotations

import argparse
import sys

from weights_convert.convert import FORMATS, convert_checkpoint, export_torch


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="python -m weights_convert", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=FORMATS + ("orbax",),
                   help="tf: TF tensor-bundle checkpoint prefix; torch: PyTorch weights file; "
                        "orbax: export an Orbax checkpoint directory to a PyTorch file")
    p.add_argument("--input", required=True, help="source checkpoint")
    p.add_argument("--output", required=True,
                   help="output checkpoint directory (or .safetensors/.pt file for orbax)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no_verify_crc", action="store_true",
                   help="tf: skip the CRC-32C check of the tensor data")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.format == "orbax":
            path = export_torch(args.input, args.output, overwrite=args.overwrite)
            print(f"wrote PyTorch state dict {path}")
        else:
            report = convert_checkpoint(args.format, args.input, args.output,
                                        overwrite=args.overwrite,
                                        verify_crc=not args.no_verify_crc)
            print(report.summary())
            print(f"wrote Orbax checkpoint {args.output}")
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
