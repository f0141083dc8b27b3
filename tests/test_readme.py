"""The README's code blocks work: Python blocks run, shell commands name real things.

* Every fenced ``python`` block runs, in README order, in one namespace (as a reader
  pastes them into one session), in a scratch folder. The README keeps them at tiny
  sizes (64x192 frames) so this takes about a minute with the compiled functions of
  the API tests (same process) or the persistent XLA cache.
* Every ``bash`` / ``sh`` / ``shell`` / ``console`` block is split into commands;
  ``python -m M ARGS`` must name an importable module whose own parser accepts ARGS
  (argparse ``build_parser()`` or absl flags, the module's own ``FLAGS`` ``FlagValues``
  if it has one, parsed in a fresh interpreter without
  running ``main``); ``pip install -e ".[x,y]"`` must name extras of ``pyproject.toml``;
  ``jupyter SUB`` must be installed (``jupyter-SUB`` beside this interpreter or on PATH:
  the ``dev`` extra's packages provide it); paths into the repository must exist.
* Every repository path the text names (in backticks or as a link target, starting with
  one of the repository's folders) exists; ``{a,b}`` and ``*`` in it must match files.
* A block preceded by ``<!-- readme-test: skip, covered by tests/test_x.py -->`` is not
  run; the named test file must exist.
* Blocks in other languages (``text``, ``json``, unlabeled output samples) are not code.

``DEEPLIFLOW_README=path`` checks another Markdown file (e.g. a draft section).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = Path(os.environ.get("DEEPLIFLOW_README", REPO / "README.md"))
PYTHON = ("python", "py")
SHELL = ("bash", "sh", "shell", "console")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(?P<why>.*?)-->", re.S)
PROJECT_MODULES = ("experiments", "deepliflow_jax", "weights_convert")
REPO_DIRS = ("experiments", "deepliflow_jax", "weights_convert", "tests", ".ci")


@dataclasses.dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: str | None  # the skip note, if any

    def __str__(self) -> str:
        return f"{README.name}:{self.line} ({self.lang or 'unlabeled'})"


def fenced_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, with the skip note above each."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not match:
            i += 1
            continue
        fence, lang, start = match.group(2), match.group(3).lower(), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(match.group(1)):] if lines[i].startswith(match.group(1))
                        else lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{README.name}:{start + 1}: unclosed code fence")
        before = "\n".join(lines[max(0, start - 3):start])
        note = None
        for m in SKIP.finditer(before):
            note = m.group("why").strip(" ,:") or "no reason given"
        blocks.append(Block(lang, "\n".join(body) + "\n", start + 1, note))
        i += 1
    return blocks


def shell_commands(script: str) -> list[list[str]]:
    """Commands of a shell block: continuations joined, comments and prompts dropped,
    split at ``&&``, ``||``, ``;`` and ``|``."""
    joined = re.sub(r"\\\n", " ", script)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)  # console prompt
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for tok in tokens + [";"]:
            if tok in ("&&", "||", ";", "|"):
                if current:
                    commands.append(current)
                current = []
            elif tok.endswith(";") and len(tok) > 1:
                current.append(tok[:-1])
                commands.append(current)
                current = []
            else:
                current.append(tok)
    return commands


def _pyproject_extras() -> set[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(data["project"].get("optional-dependencies", {}))


_CHECK_ARGS = r"""
import contextlib, importlib, io, json, sys
module, argv = json.loads(sys.stdin.read())
problems = []
mains = [module, module + ".__main__"]
parser = None
for name in mains:
    try:
        m = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        continue
    if hasattr(m, "build_parser"):
        parser = m.build_parser()
        break
if parser is not None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(argv)
    except SystemExit:
        problems.append(err.getvalue().strip().splitlines()[-1])
else:
    from absl import flags
    # a script's own FlagValues (FLAGS, e.g. experiments.infer), else the global one
    own = [m.FLAGS for name in mains if name in sys.modules
           for m in [sys.modules[name]] if isinstance(getattr(m, "FLAGS", None), flags.FlagValues)
           and m.FLAGS is not flags.FLAGS]
    values = own[0] if own else flags.FLAGS
    defined = list(values) if own else [
        f for name in mains if name in sys.modules
        for f in flags.FLAGS.get_key_flags_for_module(sys.modules[name])]
    if not defined:
        problems.append(f"{module} has neither build_parser() nor absl flags")
    else:
        try:
            values([module] + argv)
        except flags.Error as e:
            problems.append(str(e))
print(json.dumps(problems))
"""


def check_command(argv: list[str]) -> list[str]:
    """Problems with one shell command (empty if it names real modules, flags, paths)."""
    problems = []
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):  # VAR=value prefix
        argv = argv[1:]
    if not argv:
        return problems
    for tok in argv:  # repository paths must exist
        path = tok.split("=", 1)[-1] if tok.startswith("--") else tok
        if path.split("/")[0] in REPO_DIRS and "/" in path and not (REPO / path).exists():
            problems.append(f"no such path in the repository: {path}")
    prog, args = Path(argv[0]).name, argv[1:]
    if prog in ("python", "python3") and len(args) >= 2 and args[0] == "-m":
        prog, args = args[1], args[2:]
    elif prog in ("python", "python3") and args and args[0].endswith(".py"):
        if not (REPO / args[0]).is_file():
            problems.append(f"no such script: {args[0]}")
        return problems
    if prog == "jupyter":  # each subcommand is its own program, from an installed package
        program = f"jupyter-{args[0]}" if args else "jupyter"
        where = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        if not shutil.which(program, path=where):
            problems.append(f"`{' '.join(argv[:2])}` is not installed ({program} is not on "
                            "PATH): add its package to the dev extra or use another command")
        return problems
    if prog in ("pip", "pip3"):
        for tok in args:
            extras = re.search(r"\[([^\]]*)\]", tok)
            if extras and (tok.startswith(".") or "deepliflow" in tok):
                missing = {e.strip() for e in extras.group(1).split(",")} - _pyproject_extras()
                if missing:
                    problems.append(f"pip extras {sorted(missing)} are not in pyproject.toml")
        return problems
    if prog.split(".")[0] not in PROJECT_MODULES:
        return problems  # pytest, git, cd, ...: not ours to check beyond paths
    proc = subprocess.run([sys.executable, "-c", _CHECK_ARGS], input=json.dumps([prog, args]),
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if proc.returncode:
        return problems + [f"`python -m {prog}` fails to import: "
                           f"{proc.stderr.strip().splitlines()[-1:]}"]
    return problems + [f"python -m {prog}: {p}" for p in json.loads(proc.stdout)]


def named_paths(text: str) -> list[str]:
    """Repository paths a Markdown text names in backticks or as link targets: tokens
    without spaces whose first part is one of the repository's folders (``<...>``
    placeholders left out)."""
    found = []
    for code, link in re.findall(r"`([^`\s]+)`|\]\(([^)\s]+)\)", text):
        path = code or link
        if path.split("/")[0] in REPO_DIRS and "/" in path and "<" not in path:
            found.append(path)
    return list(dict.fromkeys(found))


def _expand(path: str) -> list[str]:
    """``a.{md,json}`` -> ``a.md``, ``a.json`` (one brace group per path is enough)."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [path[:m.start()] + part + path[m.end():] for part in m.group(1).split(",")]


def missing_paths(text: str) -> list[str]:
    """The paths of :func:`named_paths` that name nothing in the repository."""
    missing = []
    for path in named_paths(text):
        for one in _expand(path):
            ok = (glob.glob(str(REPO / one)) if "*" in one else (REPO / one).exists())
            if not ok:
                missing.append(one)
    return missing


# ----------------------------------------------------------------------------- the checker


def test_the_checker_finds_bad_commands(tmp_path):
    assert shell_commands("# note\npip install -e \".[dev]\" && python -m a.b --x=1 \\\n"
                          "  --y 2 | tee log; echo hi # done\n") == [
        ["pip", "install", "-e", ".[dev]"], ["python", "-m", "a.b", "--x=1", "--y", "2"],
        ["tee", "log"], ["echo", "hi"]]
    assert check_command(["python", "-m", "weights_convert", "--format=tf", "--input=a",
                          "--output=b"]) == []
    assert check_command(["python", "-m", "experiments.run_study", "--preset=paper",
                          "--data_dir=/k"]) == []
    assert "no_such_flag" in " ".join(check_command(
        ["python", "-m", "experiments.run_study", "--no_such_flag=1"]))
    assert check_command(["python", "-m", "weights_convert", "--format=onnx", "--input=a",
                          "--output=b"])  # enum flag
    assert check_command(["python", "-m", "experiments.make_synthetic"])  # required flag
    assert "fails to import" in " ".join(check_command(["python", "-m", "experiments.nope"]))
    assert "not in pyproject" in " ".join(check_command(["pip", "install", "-e", ".[gpu]"]))
    assert "no such path" in " ".join(check_command(["ls", "experiments/nope.ipynb"]))
    assert "not installed" in " ".join(check_command(["jupyter", "no-such-subcommand", "x"]))
    assert missing_paths("see `tests/test_layers.py`, [f](experiments/nope.png) and "
                         "`experiments/quickstart.{ipynb,txt}`, `results/<preset>/x`, "
                         "`deepliflow_jax/*.py`, `tests/none_*.py`") == [
        "experiments/nope.png", "experiments/quickstart.txt", "tests/none_*.py"]
    text = ("x\n<!-- readme-test: skip, covered by tests/test_api.py -->\n```python\n"
            "boom()\n```\n\n```bash\nls\n```\n")
    first, second = fenced_blocks(text)
    assert (first.lang, first.skip, first.code) == ("python", "covered by tests/test_api.py",
                                                     "boom()\n")
    assert (second.lang, second.skip, second.line) == ("bash", None, 7)


# ----------------------------------------------------------------------------- the README


BLOCKS = fenced_blocks(README.read_text())
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELL]
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang in PYTHON]


def test_skipped_blocks_name_an_existing_test():
    for block in BLOCKS:
        if block.skip is not None:
            named = re.findall(r"tests/[\w/]+\.py|experiments/[\w/]+\.ipynb", block.skip)
            assert named, f"{block}: a skipped block must name the test that covers it"
            for path in named:
                assert (REPO / path).is_file(), f"{block}: {path} does not exist"


def test_every_path_the_readme_names_exists():
    assert named_paths(README.read_text())  # the scan finds the README's paths at all
    missing = missing_paths(README.read_text())
    assert not missing, f"{README.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=str)
def test_shell_block_commands_exist(block):
    if block.skip is not None:
        pytest.skip(block.skip)
    commands = shell_commands(block.code)
    assert commands, f"{block} has no command"
    problems = [p for argv in commands for p in check_command(argv)]
    assert not problems, f"{block}:\n" + "\n".join(problems)


@pytest.mark.slow
@pytest.mark.skipif(not PYTHON_BLOCKS, reason="the README has no python block")
def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")  # a block may plot; never open a window
    monkeypatch.chdir(tmp_path)
    # ``dl.init_params`` builds the tiny study's 8-wide network here: the API runs it as
    # itself, with the study's executables; the API's doctests run the original network
    import deepliflow_jax as dl
    from deepliflow_jax.model.widths import uniform_widths

    monkeypatch.setattr(dl, "init_params", functools.partial(dl.init_params,
                                                             widths=uniform_widths(8)))
    namespace: dict = {"__name__": "__readme__"}
    for block in PYTHON_BLOCKS:
        if block.skip is not None:
            continue
        out = io.StringIO()
        try:
            with redirect_stdout(out):
                exec(compile(block.code, str(block), "exec"), namespace)  # noqa: S102
        except Exception as err:
            raise AssertionError(f"{block} failed: {type(err).__name__}: {err}\n"
                                 f"output so far:\n{out.getvalue()}") from err
        print(f"{block}:\n{out.getvalue()}")


def _table_after(text: str, heading: str) -> str:
    """The first Markdown table below the line ``heading`` (its ``|`` lines)."""
    lines = text.splitlines()
    start = lines.index(heading)
    rows = list(itertools.dropwhile(lambda s: not s.startswith("|"), lines[start + 1:]))
    return "\n".join(itertools.takewhile(lambda s: s.startswith("|"), rows))


@pytest.mark.parametrize("name", ["Table II", "Table III (ablation)"])
def test_readme_study_tables_are_the_committed_demo_s(name):
    """README's Tables II and III are the committed demo run's ``tables.md``, cell for cell
    (regenerate both with ``python -m experiments.run_study
    --results_dir=experiments/results/demo`` and paste its tables)."""
    committed = (REPO / "experiments" / "results" / "demo" / "tables.md").read_text()
    readme = README.read_text()
    table = _table_after(committed, f"## {name}")
    assert table, f"no {name} in the committed tables.md"
    assert _table_after(readme, f"#### {name}") == table
