"""Data-parallel fine-tuning: 2 host devices follow the 1-device loss trajectory.

The whole network's train step takes minutes to compile on a CI CPU (twice: one
executable per mesh), so the equivalence runs on a small network through the same
helpers the :class:`Trainer` uses (``jit_step``, ``replicate``, ``shard_batch``), and
the Trainer's wiring to them is checked without compiling the network.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deepliflow_jax.train.sharding import initialize_distributed, make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import json
    import flax.linen as nn, jax, jax.numpy as jnp, numpy as np, optax
    from deepliflow_jax.compress.prune import prune
    from deepliflow_jax.compress.transforms import compress
    from deepliflow_jax.compress.quantize import QuantConfig
    from deepliflow_jax.compress.transforms import get_masks
    from deepliflow_jax.train.sharding import jit_step, make_mesh, replicate, shard_batch
    from deepliflow_jax.train.state import create_train_state
    from deepliflow_jax.losses import l2_regularizer
    from deepliflow_jax.train.step import make_train_step

    assert jax.device_count() == 2, jax.devices()

    class TinyNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
            return nn.Conv(2, (3, 3), strides=2, name="out")(x)

    net = TinyNet()
    rs = np.random.RandomState(0)
    params = {"params": {
        "conv1": {"kernel": 0.3 * rs.randn(3, 3, 3, 4), "bias": 0.1 * rs.randn(4)},
        "out": {"kernel": 0.3 * rs.randn(3, 3, 4, 2), "bias": 0.1 * rs.randn(2)},
    }}
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    X, Y = rs.randn(6, 4, 8, 8, 3).astype(np.float32), rs.randn(6, 4, 4, 4, 2).astype(np.float32)

    def apply_fn(p, b, rng):
        return net.apply(p, b["x"])

    def loss_fn(out, b):  # a replicated scalar and an unbatched per-channel mask, as the
        # trainer's reg_scale and channel_masks
        return b["scale"] * jnp.mean((out * b["cm"]["out"] - b["y"]) ** 2)

    params, masks = prune(params, 30)
    tx = compress(optax.adam(1e-2), masks=masks, quant=QuantConfig(bits=8, act_bits=8))
    train_step = make_train_step(apply_fn, loss_fn, tx,
                                 regularizer=lambda p: l2_regularizer(p, 2e-3))
    result = {}
    for n in (1, 2):
        mesh = make_mesh(jax.devices()[:n])
        step = jit_step(train_step, mesh)
        state = replicate(create_train_state(params, tx, seed=0), mesh)
        losses = []
        for i in range(len(X)):
            batch = shard_batch({"x": X[i], "y": Y[i], "scale": np.float32(0.5),
                                 "cm": {"out": np.array([1.0, 0.0], np.float32)}}, mesh,
                                unbatched=("cm",))
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        leaves = jax.tree.leaves(state.params)
        masks = jax.tree.leaves(get_masks(state.opt_state))
        result[n] = {
            "losses": losses,
            "batch_devices": len(batch["x"].sharding.device_set),
            "shard_rows": int(batch["x"].addressable_shards[0].data.shape[0]),
            "param_devices": len(leaves[0].sharding.device_set),
            "cm_rows": int(batch["cm"]["out"].addressable_shards[0].data.shape[0]),
            "params": [np.asarray(x).ravel().tolist() for x in leaves],
            "pruned_nonzero": int(sum(np.count_nonzero(np.asarray(p)[~np.asarray(m)])
                                      for p, m in zip(leaves, masks))),
        }
    try:
        shard_batch({"x": X[0, :3]}, make_mesh())
        result["odd_batch_error"] = None
    except ValueError as e:
        result["odd_batch_error"] = str(e)
    # the trainer's wiring (no network compile): mesh, replicated state, batch checks
    from deepliflow_jax.train.trainer import Trainer

    one, two = Trainer(), Trainer(devices=2)
    p = {"conv": {"kernel": jnp.ones((3, 3, 2, 2))}}
    m = {"conv": {"kernel": jnp.ones((3, 3, 2, 2), bool)}}
    st1, st2 = one.new_state(p, masks=m), two.new_state(p, masks=m)
    frame = {"frames": np.zeros((1, 2, 64, 64, 4), np.float32),
             "gt": np.zeros((1, 64, 64, 4), np.float32)}
    pair = jax.tree.map(lambda x: np.concatenate([x, x]), frame)
    result["trainer"] = {
        "mesh": [one.mesh.size, two.mesh.size],
        "state_devices": len(jax.tree.leaves(st2.params)[0].sharding.device_set),
        # own copies: a donating step must not delete the caller's masks
        "masks_copied": Trainer.masks_of(st1)["conv"]["kernel"].unsafe_buffer_pointer()
        != m["conv"]["kernel"].unsafe_buffer_pointer(),
        "eval_1_replicated": two._eval_batch(frame)["gt"].sharding.is_fully_replicated,
        "eval_2_replicated": two._eval_batch(pair)["gt"].sharding.is_fully_replicated,
    }
    try:
        two.train_step(st2, {**frame, "reg_scale": np.float32(1)})
    except ValueError as e:
        result["trainer"]["odd_batch_error"] = str(e)
    try:
        Trainer(devices=3)
    except ValueError as e:
        result["trainer"]["too_many"] = str(e)
    print(json.dumps(result))
    """
)


def test_two_devices_match_one_device(tmp_path):
    script = tmp_path / "dp.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    one, two = res["1"], res["2"]
    assert one["batch_devices"] == 1 and one["shard_rows"] == 4
    assert two["batch_devices"] == 2 and two["shard_rows"] == 2  # really split
    assert two["param_devices"] == 2  # replicated state
    assert one["losses"][-1] < one["losses"][0]
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-7)
    for a, b in zip(one["params"], two["params"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert one["pruned_nonzero"] == two["pruned_nonzero"] == 0
    assert "does not split over 2" in res["odd_batch_error"]
    assert one["cm_rows"] == two["cm_rows"] == 2  # unbatched: whole on every device
    tr = res["trainer"]
    assert tr["mesh"] == [1, 2] and tr["state_devices"] == 2 and tr["masks_copied"]
    assert tr["eval_1_replicated"] and not tr["eval_2_replicated"]
    assert "shape (1, 2, 64, 64, 4) does not split over 2 local devices" in tr["odd_batch_error"]
    assert tr["too_many"] == "devices=3: this process has 2 cpu device(s); use 1..2"


def test_single_process_helpers(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert not initialize_distributed()  # no cluster configured: a no-op, not an error
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    assert not initialize_distributed()  # one process: nothing to coordinate
    monkeypatch.setenv("JAX_PROCESS_ID", "first")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='first' is not a whole number"):
        initialize_distributed()
    mesh = make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size >= 1
    assert make_mesh(1).size == 1
    with pytest.raises(ValueError, match="devices=0: this process has"):
        make_mesh(0)
