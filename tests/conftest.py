"""Shared fixtures: parameters are built once per session (numpy init is fast)."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The suite is dominated by XLA:CPU compiles of the whole network, most of it LLVM
# code generation of the element-wise kernels. LLVM's backend optimisation level
# changes how fast the generated code runs, not what it computes (convolutions are
# library calls either way), and level 0 compiles ~40 % faster. XLA:CPU's older
# element-wise emitter (fusion emitters off) halves the rest: the 64x192 forward
# compiles in 4.8 s instead of 9.6 s, gradient and Adam in 12.6 s instead of 25 s,
# and the forward and all 257 gradients come out bit for bit the same.
# One LLVM module per executable (no split for parallel code generation): the two
# xdist workers already use both cores, and splitting and cloning the module took
# ~9 % of a train step's compile (same bits: 2 steps, evaluation, Adam state).
# Subprocess tests inherit the flags. Benchmarks never run under this file.
_TEST_XLA_FLAGS = ("--xla_cpu_multi_thread_eigen=true", "--xla_backend_optimization_level=0",
                   "--xla_cpu_use_fusion_emitters=false",
                   "--xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")]
    + [f for f in _TEST_XLA_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]
).strip()


# The files that take longest (``--durations``: each pays whole-network compiles or runs
# subprocesses) go first, so that the two xdist workers finish together; by default xdist
# hands out files by their number of tests, which put these last. Stable: the other
# files, and the tests inside each file, keep their order. The study's file and the
# checkpoint file (no compiles) start together: the API tests, next, load the study's
# train step and evaluation from the persistent cache instead of compiling them too.
_LONGEST_FIRST = ("test_study.py", "test_checkpoint.py", "test_api.py", "test_structured.py",
                  "test_notebook.py", "test_conv_impl.py", "test_interp_path.py",
                  "test_writers.py", "test_profile_blocks.py", "test_evaluation_modes.py",
                  "test_gpu_check.py", "test_compression_search.py", "test_train_resume.py",
                  "test_timing.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Files that train the original network with the API's one step (the doctests, the
# ``first_adam_step`` fixture) run in one worker, one after the other: the step is traced
# and loaded there once (~25 s a process, even from the persistent cache), not in both.
_ONE_WORKER = {name: "original-network-step"
               for name in ("test_api.py", "test_model.py", "test_torch_train.py")}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class _Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            scope = super()._split_scope(nodeid)
            return _ONE_WORKER.get(Path(scope).name, scope)

    return _Scheduling(config, log)


@pytest.fixture(scope="session")
def variables():
    from deepliflow_jax.model.build import init_params

    return init_params(seed=0, bias_std=0.1)


@pytest.fixture(scope="session")
def small_variables():
    """The tiny study's network (8 channels in every group): the whole tree, quickly saved;
    training and evaluating it load the study's executables and run ~10x faster."""
    from deepliflow_jax.model.build import init_params
    from deepliflow_jax.model.widths import uniform_widths

    return init_params(0, widths=uniform_widths(8), bias_std=0.1)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The synthetic world of the study's tiny preset (64x192, 10 scenes)."""
    from deepliflow_jax.api import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("tiny") / "world", num_scenes=10)


@pytest.fixture(scope="session")
def tiny_data(tiny_world):
    """``tiny_world`` decoded; its train step is the one every 64x192 test shares."""
    from deepliflow_jax.api import load_dataset

    return load_dataset(tiny_world)


@pytest.fixture(scope="session")
def first_adam_step(variables, tiny_data):
    """``finetune(variables, tiny_data, steps=1, l2=False)`` at lr 1e-4: ``(tuned, history)``."""
    from deepliflow_jax.api import finetune

    return finetune(variables, tiny_data, steps=1, l2=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"shared data folder not found: {SHARED_DATA}")
    return SHARED_DATA


def pytest_configure(config):
    # one persistent XLA cache for the session: subprocess tests and repeated
    # compiles of the same model reuse executables instead of recompiling
    import tempfile

    import jax

    if not jax.config.jax_compilation_cache_dir:
        path = os.environ.get("DEEPLIFLOW_TEST_XLA_CACHE",
                              os.path.join(tempfile.gettempdir(), "deepliflow_jax_test_xla"))
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", path)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
