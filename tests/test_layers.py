"""The import layers of pyproject.toml's import-linter contracts hold.

Each layer imports only from those below it (model, data; losses, metrics, vis,
predict; compress; checkpoint; train; profile; study; search; api), and the library never
imports ``weights_convert`` or ``experiments``. Function-level imports count too.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("deepliflow_jax", "weights_convert", "experiments")


def _lint(root: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, "
            "no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          timeout=120)


def test_the_tree_keeps_every_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def _copy_tree(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "results", "*.ipynb"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module, upward, contract", [
    # a block of the model reaching up into the study, even inside a function
    ("deepliflow_jax/model/layers.py", "    from deepliflow_jax.study import runner\n",
     "deepliflow_jax layers point down"),
    # the study reaching up into the compression tools, even inside a function
    ("deepliflow_jax/study/runner.py", "    from deepliflow_jax.search import run\n",
     "deepliflow_jax layers point down"),
    # the compression tools reaching up into the API
    ("deepliflow_jax/search/plans.py", "import deepliflow_jax.api\n",
     "deepliflow_jax layers point down"),
    # compress importing the trainer
    ("deepliflow_jax/compress/prune.py", "import deepliflow_jax.train.step\n",
     "deepliflow_jax layers point down"),
    # the library importing the converter package beside it
    ("deepliflow_jax/profile/timing.py", "import weights_convert.torch_bridge\n",
     "the library never imports weights_convert or experiments"),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward, contract):
    root = _copy_tree(tmp_path)
    path = root / module
    if upward.startswith("    "):
        upward = f"\n\ndef _upward():\n{upward}"
    path.write_text(path.read_text() + upward)
    result = _lint(root)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout
