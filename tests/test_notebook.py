"""``experiments/quickstart.ipynb``: in sync with its jupytext script, valid, and it runs.

The notebook is a jupytext pair: ``experiments/quickstart.py`` (percent format, linted by
ruff like any module) and the ``.ipynb`` (stored without outputs). Edit either, then
``jupytext --sync experiments/quickstart.py``.

The notebook is executed headless with nbclient in a fresh IPython kernel (this
interpreter), at the small sizes it uses on a CPU (64x192 synthetic frames, the study's
``tiny`` shapes) and on the tiny study's network (8 channels in every group). The kernel
gets the persistent XLA cache of the test session (``conftest.py``), so the forward, train
step and evaluation compiled by the study's tests are loaded rather than compiled again.
A failing cell fails the test.
"""

import ast
import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "quickstart.ipynb"
SCRIPT = REPO / "experiments" / "quickstart.py"
CELL_TIMEOUT_S = 900


def _notebook():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_and_its_script_are_in_sync():
    import jupytext

    nb, script = jupytext.read(NOTEBOOK), jupytext.read(SCRIPT)
    assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", (
        "experiments/quickstart.ipynb is not paired with its script")
    cells = [[(c.cell_type, c.source) for c in n.cells] for n in (nb, script)]
    assert len(cells[0]) == len(cells[1]), (
        f"the notebook has {len(cells[0])} cells, experiments/quickstart.py {len(cells[1])}: "
        "run `jupytext --sync experiments/quickstart.py`")
    for i, (a, b) in enumerate(zip(*cells, strict=True)):
        assert a == b, (f"cell {i} of experiments/quickstart.ipynb differs from its script: "
                        f"run `jupytext --sync experiments/quickstart.py`\n{a}\n{b}")


def test_notebook_is_valid_and_plain_python():
    import nbformat

    nb = _notebook()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 10
    for cell in code:
        ast.parse(cell.source)  # no IPython-only syntax (`!pip`, `%magic`)
        assert not cell.outputs and cell.execution_count is None  # stored clean
    text = "\n".join(c.source for c in code)
    for step in ("predict_sceneflow", "prune", "quantize", "finetune", "evaluate",
                 "time_model", "plot_sceneflow", "compression_table", "read_example"):
        assert f"dl.{step}(" in text, step
    assert "../shared" not in text  # the example folder is an input, never a fixed path


def _kernel_spec(folder: Path) -> str:
    """A kernel spec running this interpreter (the installed 'python3' may be another one)."""
    name = "deepliflow-test"
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "deepliflow test", "language": "python"}))
    return name


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch, small_variables):
    try:
        import nbclient
    except ImportError as err:  # in the `dev` extra: never skip silently in CI
        pytest.fail(f"executing the notebook needs nbclient and ipykernel "
                    f"(pip install -e '.[dev]'): {err}")
    import jax

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    kernel = _kernel_spec(tmp_path / "jupyter")
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, so figures become outputs
    env.update({
        "CI": env.get("CI", "1"),  # the install cell must never pip install here
        "DEEPLIFLOW_SMALL": "1",
        # the tiny study's 8-wide network: its executables, ~10x faster to run; the API's
        # doctests run the same functions on the original network
        "DEEPLIFLOW_GROUP_WIDTH": "8",
        "DEEPLIFLOW_WORKDIR": str(tmp_path / "work"),
        "DEEPLIFLOW_EXAMPLES": str(SHARED_DATA / "deeplidarflow_examples")
        if SHARED_DATA.is_dir() else "",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    })
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
    nb = _notebook()
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(REPO / "experiments")}})
    start = time.perf_counter()
    try:
        client.execute(env=env)
    finally:
        import nbformat

        nbformat.write(nb, tmp_path / "executed.ipynb")  # for a failure's post-mortem
    seconds = time.perf_counter() - start
    print(f"notebook ran in {seconds:.0f} s")

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # prediction vs gt, loss curve (+ the example frames and the released flow)
    assert len(images) >= (4 if SHARED_DATA.is_dir() else 2)

    def text(o):
        return o.get("text", "") + o.get("data", {}).get("text/markdown", "")

    everything = "".join(text(o) for o in outputs)
    assert "| pruning | weights | zeros % |" in everything
    assert everything.count("| 10% |") == 2  # the table's pruned rows
    assert "random, untrained weights" in everything
    # GROUP_WIDTH reached the model: the 8-wide network's parameter count
    assert f"{sum(x.size for x in jax.tree.leaves(small_variables)):,} parameters" in everything
    assert "saved " in everything and "notebook ran in" in everything
    assert (tmp_path / "work" / "flow.png").stat().st_size > 0
    assert (tmp_path / "work" / "tuned_p10_q8" / "deepliflow_checkpoint.json").is_file()
