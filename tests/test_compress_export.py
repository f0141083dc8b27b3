"""Compact export: smaller on disk, loads back bit-exactly."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepliflow_jax.compress.export import (
    export_compressed,
    load_compressed,
    pack_bits,
    unpack_bits,
)
from deepliflow_jax.compress.prune import prune
from deepliflow_jax.compress.quantize import QuantConfig
from deepliflow_jax.compress.transforms import compress, get_bits, get_masks

RNG = np.random.RandomState(0)
PARAMS = {
    "params": {
        "conv1": {
            "kernel": jnp.asarray(RNG.randn(3, 3, 8, 16) * 0.1, jnp.float32),
            "bias": jnp.asarray(RNG.randn(16) * 0.01, jnp.float32),
        },
        "upconv": {"kernel": jnp.asarray(RNG.randn(4, 4, 8, 16) * 0.05, jnp.float32)},
    }
}


def _bits_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))


def test_pack_bits_roundtrip():
    for bits in (2, 5, 11, 16):
        v = RNG.randint(0, 2**bits, size=1001)
        packed = pack_bits(v, bits)
        assert packed.nbytes == -(-1001 * bits // 8)
        np.testing.assert_array_equal(unpack_bits(packed, bits, 1001), v)


@pytest.mark.parametrize(
    "cfg",
    [
        QuantConfig(bits=6),
        QuantConfig(bits=8, per_channel=True, channel_axes=((r"upconv", -2),)),
        QuantConfig(bits=12, symmetric=False, exclude=r"bias$"),
    ],
    ids=["6bit", "8bit-per-channel", "12bit-affine"],
)
def test_export_from_train_state_is_bit_exact_and_smaller(tmp_path, cfg):
    pruned, masks = prune(PARAMS, 50)
    tx = compress(optax.adam(1e-3), masks=masks, quant=cfg)
    state = tx.init(pruned)
    expected = jax.jit(tx.forward)(pruned, state)  # what training's forward pass used
    report = export_compressed(
        tmp_path / "model", pruned, quant=cfg, masks=get_masks(state), bits=get_bits(state)
    )
    assert os.path.getsize(report["path"]) == report["bytes_on_disk"]
    _bits_equal(load_compressed(report["path"]), expected)
    n = sum(x.size for x in jax.tree.leaves(PARAMS))
    assert report["float32_bytes"] == 4 * n
    # 50 % sparse kernels: a 1-bit mask + half the codes beat dense codes.
    assert report["layers"]["params/conv1/kernel"]["sparse"]
    payload = (n + n // 2 * cfg.bits) / 8
    assert report["bytes_on_disk"] < payload + 1500  # + JSON manifest
    assert report["ratio"] > 3.0


def test_lower_bits_give_smaller_files_and_float_export(tmp_path):
    sizes = [
        export_compressed(tmp_path / f"q{b}", PARAMS, quant=QuantConfig(bits=b))["bytes_on_disk"]
        for b in (4, 8, 16)
    ]
    assert sizes[0] < sizes[1] < sizes[2] < 4 * sum(x.size for x in jax.tree.leaves(PARAMS))
    pruned, masks = prune(PARAMS, 80)
    rep = export_compressed(tmp_path / "f", pruned, masks=masks)
    _bits_equal(load_compressed(rep["path"]), pruned)
    assert rep["ratio"] > 2.5  # 20 % of float32 values + a 1-bit mask


def test_zero_bits_in_state_mean_float_in_forward_and_export(tmp_path):
    """A width of 0 in QuantState keeps a leaf float: one compiled step for all runs."""
    cfg = QuantConfig(bits=8)
    tx = compress(optax.adam(1e-3), quant=cfg)
    state = tx.init(PARAMS)
    bits = jax.tree.map(lambda b: b, state.bits)
    bits["params"]["upconv"]["kernel"] = jnp.int32(0)
    state = state._replace(bits=bits)
    fwd = jax.jit(tx.forward)(PARAMS, state)
    np.testing.assert_array_equal(
        fwd["params"]["upconv"]["kernel"], PARAMS["params"]["upconv"]["kernel"]
    )
    assert len(np.unique(np.asarray(fwd["params"]["conv1"]["kernel"]))) <= 255
    report = export_compressed(tmp_path / "m", PARAMS, quant=cfg, bits=get_bits(state))
    assert report["layers"]["params/upconv/kernel"]["bits"] == 32
    _bits_equal(load_compressed(report["path"]), fwd)
