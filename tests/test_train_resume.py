"""Orbax checkpoints: full state round trip, best checkpoint, kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepliflow_jax.compress.prune import prune
from deepliflow_jax.compress.quantize import QuantConfig
from deepliflow_jax.compress.transforms import MaskState, QuantState, compress, get_bits
from deepliflow_jax.train.resume import Checkpointer
from deepliflow_jax.train.state import TrainState, create_train_state
from tests.interrupts import sigkill_after_ready

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS = {
    "params": {
        "conv": {
            "kernel": jnp.asarray(np.random.RandomState(0).randn(3, 3, 2, 4), jnp.float32),
            "bias": jnp.asarray(np.random.RandomState(1).randn(4), jnp.float32),
        }
    }
}


def _state(step=0):
    pruned, masks = prune(PARAMS, 40)
    tx = compress(optax.adam(1e-3), masks=masks, quant=QuantConfig(bits=7))
    state = create_train_state(pruned, tx, seed=5, data_pos=11)
    return state._replace(step=jnp.asarray(step, jnp.int32))


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_roundtrip_holds_masks_bits_rng_and_data_position(tmp_path):
    state = _state(step=3)
    with Checkpointer(tmp_path, metadata={"quant": QuantConfig(bits=7).to_dict()}) as ck:
        assert ck.restore(state) == (None, None)
        assert ck.save(state)
        assert not ck.save(state)  # same step twice: no-op
    with Checkpointer(tmp_path) as ck:
        restored, meta = ck.restore(jax.tree.map(jnp.zeros_like, state))
    _assert_same(restored, state)
    assert isinstance(restored, TrainState) and isinstance(restored.opt_state, QuantState)
    assert isinstance(restored.opt_state.inner_state, MaskState)
    assert restored.opt_state.inner_state.masks["params"]["conv"]["kernel"].dtype == jnp.bool_
    assert int(get_bits(restored.opt_state)["params"]["conv"]["kernel"]) == 7
    assert int(restored.data_pos) == 11 and meta["step"] == 3
    assert QuantConfig.from_dict(meta["metadata"]["quant"]) == QuantConfig(bits=7)


def test_best_checkpoint_by_validation_metric(tmp_path):
    with Checkpointer(tmp_path, save_every=2, best_metric="sf_outlier", max_to_keep=1) as ck:
        for step, value in [(1, 30.0), (2, 20.0), (3, 25.0), (4, float("nan"))]:
            ck.save(_state(step), metrics={"sf_outlier": value})
        assert ck.latest_step() == 4 and ck.best_step() == 2
        assert not ck.save(_state(5))  # off the save_every grid
        assert ck.save(_state(5), force=True)
    with Checkpointer(tmp_path, best_metric="sf_outlier") as ck:
        assert ck.best_value == 20.0
        ck.save(_state(6), metrics={"sf_outlier": 21.0})
        best, meta = ck.restore_best(_state())
        assert int(best.step) == 2 and meta["metrics"] == {"sf_outlier": 20.0}
    with pytest.raises(ValueError, match="best_mode"):
        Checkpointer(tmp_path / "x", best_mode="lowest")


SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
    from deepliflow_jax.compress.prune import prune
    from deepliflow_jax.compress.transforms import compress
    from deepliflow_jax.compress.quantize import QuantConfig
    import optax
    from deepliflow_jax.losses import l2_regularizer
    from deepliflow_jax.train.resume import Checkpointer
    from deepliflow_jax.train.state import create_train_state
    from deepliflow_jax.train.step import make_train_step
    from deepliflow_jax.train.trainer import Phase, fit

    ckpt_dir, out, num_steps, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

    class TinyNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
            return nn.Conv(2, (3, 3), strides=2, name="out")(x)

    net = TinyNet()
    rs = np.random.RandomState(0)
    X, Y = rs.randn(5, 8, 8, 3).astype(np.float32), rs.randn(5, 4, 4, 2).astype(np.float32)
    order = np.random.default_rng(0).permutation(5)

    def data_fn(pos):
        time.sleep(delay)
        i = order[pos % 5]
        return {"x": X[i : i + 1], "y": Y[i : i + 1]}

    def apply_fn(p, b, rng):  # input noise makes the RNG matter
        return net.apply(p, b["x"] + 0.1 * jax.random.normal(rng, b["x"].shape))

    def loss_fn(out, b):
        return jnp.mean((out - b["y"]) ** 2)

    params = {"params": {  # numpy init: cheaper than compiling net.init
        "conv1": {"kernel": 0.3 * rs.randn(3, 3, 3, 4), "bias": 0.1 * rs.randn(4)},
        "out": {"kernel": 0.3 * rs.randn(3, 3, 4, 2), "bias": 0.1 * rs.randn(2)},
    }}
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    params, masks = prune(params, 30)
    tx = compress(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), masks=masks,
                  quant=QuantConfig(bits=8))
    step = jax.jit(make_train_step(apply_fn, loss_fn, tx,
                                   regularizer=lambda p: l2_regularizer(p, 2e-4)))
    state = create_train_state(params, tx, seed=0)
    ckpt = Checkpointer(ckpt_dir, best_metric="sf")
    if ckpt.latest_step() is not None:
        print(json.dumps({"event": "resumed", "step": ckpt.latest_step()}), flush=True)

    def eval_fn(s):
        return {"sf": float(jnp.sum(s.params["params"]["out"]["kernel"] ** 2))}

    def log(pos, metrics):
        print(json.dumps({"step": pos + 1, "loss": float(metrics["loss"])}), flush=True)

    # the refine phase at a 10x lower rate, as the paper; the best by validation is returned
    phases = [Phase("lr1", 1e-2, num_steps - 3), Phase("lr2", 1e-3, 3)]
    state = fit(step, state, data_fn, phases, evaluate=eval_fn, eval_every=3, on_step=log,
                checkpointer=ckpt).state
    ckpt.close()
    np.savez(out, *[np.asarray(x) for x in jax.tree.leaves(state)])
    print(json.dumps({"event": "done"}), flush=True)
    """
)


def _launch(script, ckpt, out, steps, delay):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        [sys.executable, str(script), str(ckpt), str(out), str(steps), str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _load(path):
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def test_sigkill_and_resume_is_bit_exact(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    steps = 8
    reference = _launch(script, tmp_path / "ref_ckpt", tmp_path / "ref.npz", steps, 0.0)
    victim = _launch(script, tmp_path / "ckpt", tmp_path / "unused.npz", steps, 0.1)
    try:
        deadline = time.monotonic() + 120
        for line in victim.stdout:
            record = json.loads(line)
            if record.get("step", 0) >= 4:  # checkpoints 1..3 are committed by now
                os.kill(victim.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "training script too slow"
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        victim.kill()
    assert not (tmp_path / "unused.npz").exists()
    with Checkpointer(tmp_path / "ckpt") as ck:
        killed_at = ck.latest_step()
    assert killed_at is not None and 3 <= killed_at < steps

    resumed = _launch(script, tmp_path / "ckpt", tmp_path / "resumed.npz", steps, 0.0)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == {"event": "resumed", "step": killed_at}
    assert reference.wait(timeout=120) == 0

    ref, res = _load(tmp_path / "ref.npz"), _load(tmp_path / "resumed.npz")
    assert len(ref) == len(res) > 10
    for a, b in zip(ref, res, strict=True):  # params, Adam moments, masks, bits, rng, step
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    with Checkpointer(tmp_path / "ckpt", best_metric="sf") as ck:
        assert ck.best_step() in (3, 5, 8)  # phase 1: steps 3 and 5 (its end); phase 2: 8


def _step_dirs(folder):
    """Every entry under latest/ and best/ (tmp and trash leftovers show up here)."""
    return sorted(str(p.relative_to(folder)) for sub in ("latest", "best")
                  for p in (folder / sub).iterdir() if p.name != "metrics")


def test_interrupted_save_leaves_whole_steps_and_is_cleaned_up(tmp_path):
    import shutil

    from tests.interrupts import each_interruption

    pristine = tmp_path / "pristine"
    with Checkpointer(pristine, best_metric="m") as ck:
        ck.save(_state(1), metrics={"m": 1.0})
        ck.save(_state(2), metrics={"m": 0.5})
    work = tmp_path / "work"
    seen = set()

    def reset():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)

    def save():  # step 3 rotates step 1 out of latest/ and step 2 out of best/
        ck = Checkpointer(work, best_metric="m")
        ck.save(_state(3), metrics={"m": 0.25})
        ck.close()

    def check(point):
        with Checkpointer(work, best_metric="m") as ck:  # cleans what the interruption left
            steps = ck._latest.all_steps()
            assert ck.latest_step() in (2, 3) and ck.best_step() in (2, 3), point
            seen.add(ck.latest_step())
            for step in steps:  # every listed step restores whole, bit for bit
                restored, _ = ck.restore(_state(), step)
                _assert_same(restored, _state(step))
            restored, _ = ck.restore_best(_state())
            _assert_same(restored, _state(ck.best_step()))
        names = _step_dirs(work)
        assert not [n for n in names if "tmp" in n or ".deleted" in n], (point, names)

    each_interruption(save, reset, check)
    assert seen == {3}  # Orbax commits step 3 on its own threads before deleting old steps


SAVE_LOOP = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, os.getcwd())
    from tests.test_train_resume import _state
    from deepliflow_jax.train.resume import Checkpointer

    rename, rmtree = os.rename, __import__("shutil").rmtree
    def slow(f):
        def call(*args, **kwargs):  # widens the windows between the filesystem steps
            time.sleep(0.03)
            return f(*args, **kwargs)
        return call
    os.rename, os.replace = slow(os.rename), slow(os.replace)
    ck = Checkpointer(sys.argv[1], best_metric="m", max_to_keep=2)
    print("ready", flush=True)
    for step in range((ck.latest_step() or 0) + 1, 10000):
        ck.save(_state(step), metrics={"m": 1.0 / step})
    """
)


@pytest.mark.slow  # three subprocesses
def test_sigkill_in_the_middle_of_saves_leaves_whole_steps(tmp_path):
    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP)
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    rng = np.random.default_rng(1)
    left = []
    for _ in range(3):
        sigkill_after_ready(script, [tmp_path / "ck"], env, ROOT, rng.uniform(0.5, 3.0))
        left.append([n for n in _step_dirs(tmp_path / "ck") if "tmp" in n or ".deleted" in n])
        with Checkpointer(tmp_path / "ck", best_metric="m") as ck:
            assert ck.latest_step() is not None
            for step in ck._latest.all_steps():
                _assert_same(ck.restore(_state(), step)[0], _state(step))
            _assert_same(ck.restore_best(_state())[0], _state(ck.best_step()))
        names = _step_dirs(tmp_path / "ck")
        assert not [n for n in names if "tmp" in n or ".deleted" in n], names
    assert any(left), left  # at least one kill landed in the middle of a save
