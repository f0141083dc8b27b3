"""The experiments' scripts write outside the package by default, into git-ignored folders.

Every path-valued flag default of every ``experiments/*.py`` script (read from the flags
the script defines, in a fresh interpreter) points outside the repository's packages,
and a relative one lands in a folder ``.gitignore`` ignores: a plain run on a fresh
clone leaves ``git status`` clean and never overwrites the committed
``experiments/results/``. The study's default folder (``results/<preset>``) is computed
from the preset, so it is checked for every preset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("experiments", "deepliflow_jax", "weights_convert", "tests")
# every absl main; quickstart.py is the notebook's jupytext pair (it runs on import)
NOTEBOOKS = {"quickstart"}
SCRIPTS = sorted(p.stem for p in (REPO / "experiments").glob("*.py")
                 if not p.stem.startswith("_") and p.stem not in NOTEBOOKS)
# the flags through which each writing script names its outputs
OUTPUT_FLAGS = {"runtime": ("output_json", "output_md"),
                "compression_search": ("output_prefix",),
                "structured_tradeoff": ("output_prefix",),
                "gpu_check": ("output_dir",),
                "run_study": ("results_dir",)}

_DEFAULTS = r"""
import importlib, json, sys
from absl import flags
out = {}
for name in json.loads(sys.stdin.read()):
    module = importlib.import_module(name)
    own = getattr(module, "FLAGS", None)
    if isinstance(own, flags.FlagValues) and own is not flags.FLAGS:
        defined = [own[n] for n in own]
    else:
        defined = flags.FLAGS.get_key_flags_for_module(module)
        for flag in defined:  # the next script may define the same names
            delattr(flags.FLAGS, flag.name)
    out[name] = {f.name: f.default for f in defined}
# the study's default folder depends on --preset: one entry per preset
from deepliflow_jax.study.config import PRESETS
from experiments.run_study import default_results_dir
out["experiments.run_study"].update(
    {f"results_dir(preset={p})": default_results_dir(p) for p in PRESETS})
print(json.dumps(out))
"""


def _flag_defaults() -> dict[str, dict]:
    names = [f"experiments.{s}" for s in SCRIPTS]
    proc = subprocess.run([sys.executable, "-c", _DEFAULTS], input=json.dumps(names),
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True)
    return {k.split(".", 1)[1]: v for k, v in json.loads(proc.stdout).items()}


def _git_ignored(path: str) -> bool:
    proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
    assert proc.returncode in (0, 1), f"git check-ignore failed on {path}"
    return proc.returncode == 0


def _check_outside_the_package(where: str, value: str) -> list[str]:
    path = Path(value)
    resolved = path if path.is_absolute() else REPO / path
    problems = []
    for package in PACKAGES:
        if resolved.resolve().is_relative_to((REPO / package).resolve()):
            problems.append(f"{where}={value} writes into the package folder {package}/")
    if not path.is_absolute() and not _git_ignored(value):
        problems.append(f"{where}={value} is not git-ignored: a run dirties `git status`")
    return problems


def test_default_outputs_are_outside_the_package_and_git_ignored():
    defaults = _flag_defaults()
    assert set(defaults) == set(SCRIPTS)
    problems = []
    for script, flags in defaults.items():
        for name, value in flags.items():
            if isinstance(value, str) and "/" in value:  # a path
                problems += _check_outside_the_package(f"{script} --{name}", value)
    assert not problems, "\n".join(problems)
    assert {"results_dir(preset=demo)", "results_dir(preset=paper)"} <= set(
        defaults["run_study"])
    # each writing script has its output flags, and a default for the ones that write
    for script, names in OUTPUT_FLAGS.items():
        for name in names:
            assert name in defaults[script], f"{script} has no --{name}"
            if script != "run_study":  # its default depends on --preset (checked above)
                assert defaults[script][name], f"{script} --{name} has no default"


def test_the_committed_results_are_not_ignored():
    # the check above would pass vacuously if experiments/results/ were ignored too
    assert not _git_ignored("experiments/results/runtime.json")
    assert _git_ignored("results/runtime/runtime.json")


def test_announce_results_names_absolute_paths(tmp_path, monkeypatch, capsys):
    from deepliflow_jax.cli import announce_results

    monkeypatch.chdir(tmp_path)
    announce_results("python -m experiments.runtime", "results/runtime/runtime.json", None)
    out = capsys.readouterr().out
    assert out == (f"python -m experiments.runtime: results go to "
                   f"{tmp_path / 'results' / 'runtime' / 'runtime.json'}\n")


def test_the_scripts_keep_xla_s_slow_compile_alarm_off_unless_asked():
    # XLA logs "Very slow compile? ..." at ERROR from C++ after 2 minutes of compiling;
    # TF_CPP_MIN_LOG_LEVEL=3 (read when JAX is imported) hides it: checked on jaxlib
    # 0.10.2 with a 3-minute compile (the line at the default level 1, none at 3)
    code = ("import experiments.run_study, os, jax; "
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def level(environ):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=REPO, env={**environ, "JAX_PLATFORMS": "cpu"}, timeout=300,
                              check=True).stdout.strip()

    assert level(env) == "3"
    assert level({**env, "TF_CPP_MIN_LOG_LEVEL": "0"}) == "0"  # the user's choice stands
