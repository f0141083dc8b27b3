"""Command-line helpers shared by the project's scripts (absl flags).

Scripts that are called in-process as well (tests, notebooks) keep their flags
in their own ``flags.FlagValues``, so that two scripts defining the same flag
name do not clash in one process; :func:`parse_flags` parses into such a set.
:func:`announce_results` names where a script writes, before it starts.
:func:`study_results_dir` and :func:`study_baseline` are where the main job
(``run_study``) writes, so that the scripts that start from its baseline find it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str], prog: str,
                doc: str | None = None) -> None:
    """Parses ``argv`` (flags only, no program name) into ``flag_values``, from the defaults.

    Args:
      flag_values: the script's own flag set.
      argv: the arguments after the program name.
      prog: the command as a user types it (e.g. ``"python -m weights_convert"``),
        named in messages.
      doc: text printed above the flag list by ``--help`` (the script's docstring).

    Raises:
      SystemExit: 0 after ``--help``; 2 on a usage error (printed to stderr, naming
        the flag).
    """
    argv = list(argv)
    if {"-h", "--help", "--helpshort", "--helpfull"} & set(argv):
        print(f"{doc or prog}\nflags:\n{flag_values.get_help()}")
        raise SystemExit(0)
    flag_values.unparse_flags()  # every call starts from the defaults
    try:
        rest = flag_values([prog, *argv])
    except flags.Error as err:
        print(f"{prog}: usage error: {err}\n(--help lists the flags)", file=sys.stderr)
        raise SystemExit(2) from err
    if len(rest) > 1:
        print(f"{prog}: usage error: unexpected arguments {rest[1:]}", file=sys.stderr)
        raise SystemExit(2)


#: the name of the dense baseline checkpoint in a study's results folder
#: (``deepliflow_jax/study/runner.py`` saves it there)
STUDY_BASELINE_NAME = "baseline_checkpoint"


def study_results_dir(preset: str) -> str:
    """The main job's (``run_study``'s) default results folder: ``results/<preset>`` under
    the current directory."""
    return f"results/{preset}"


def study_baseline(preset: str = "demo") -> str:
    """The dense baseline checkpoint the main job saves with its default results folder,
    e.g. ``results/demo/baseline_checkpoint`` (relative to the current directory)."""
    return f"{study_results_dir(preset)}/{STUDY_BASELINE_NAME}"


def announce_results(prog: str, *paths: str | os.PathLike) -> None:
    """Prints, before any work, where ``prog`` writes its results (absolute paths).

    The scripts' defaults are folders under ``results/`` in the current directory
    (git-ignored); the committed ``experiments/results/`` is written only when a
    flag names it.

    Args:
      prog: the command as a user types it, e.g. ``"python -m experiments.runtime"``.
      *paths: the files or folders it will write (None entries are left out).
    """
    named = [str(Path(p).absolute()) for p in paths if p]
    if named:
        print(f"{prog}: results go to {', '.join(named)}", flush=True)
