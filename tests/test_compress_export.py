"""Packed checkpoints (pruned/quantized codes in Orbax): bit-exact round trips, sizes, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepliflow_jax.checkpoint import (
    METADATA_FILE,
    checkpoint_kind,
    load_checkpoint,
    load_metadata,
    save_checkpoint,
)
from deepliflow_jax.compress.export import pack_params, unpack_params
from deepliflow_jax.compress.prune import prune
from deepliflow_jax.compress.quantize import QuantConfig
from deepliflow_jax.compress.transforms import compress, get_bits, get_masks
from deepliflow_jax.search.size import dir_size

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
CONFIGS = [
    QuantConfig(bits=6),
    QuantConfig(bits=8, per_channel=True, channel_axes=((r"upconv|deconv", -2),)),
    QuantConfig(bits=12, symmetric=False, exclude=r"bias$"),
]
IDS = ["6bit", "8bit-per-channel", "12bit-affine"]


def _bits_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_pack_unpack_is_the_forward_pass_bit_for_bit(cfg):
    pruned, masks = prune(PARAMS, 50)
    tx = compress(optax.adam(1e-3), masks=masks, quant=cfg)
    state = tx.init(pruned)
    expected = jax.jit(tx.forward)(pruned, state)  # what training's forward pass used
    arrays, layout = pack_params(pruned, quant=cfg, masks=get_masks(state), bits=get_bits(state))
    json.dumps(layout)  # the layout goes into the checkpoint's JSON metadata
    _bits_equal(unpack_params(arrays, layout), expected)
    kernel = layout["leaves"]["params/conv1/kernel"]
    # 50 % sparse kernels: a 1-bit mask + half the codes beat dense codes
    assert kernel["sparse"] and kernel["bits"] == cfg.bits
    assert arrays["params/conv1/kernel/codes"].ndim == 1
    assert arrays["params/conv1/kernel/nonzero"].dtype == np.uint8
    small_int = {(True, 6): np.int8, (True, 8): np.int8, (False, 12): np.uint16}
    assert arrays["params/conv1/kernel/codes"].dtype == small_int[cfg.symmetric, cfg.bits]
    assert ("params/conv1/kernel/zero_point" in arrays) == (not cfg.symmetric)


def test_zero_bits_in_state_mean_float_in_forward_and_packing():
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
    arrays, layout = pack_params(PARAMS, quant=cfg, bits=get_bits(state))
    assert layout["leaves"]["params/upconv/kernel"]["encoding"] == "float"
    assert arrays["params/upconv/kernel/values"].dtype == np.float32
    _bits_equal(unpack_params(arrays, layout), fwd)


def test_float_packing_keeps_every_bit_including_negative_zero():
    pruned, masks = prune(PARAMS, 80)
    flat = np.asarray(pruned["params"]["conv1"]["kernel"]).copy()
    flat[flat == 0] = -0.0  # a pruned entry that is -0.0: kept, not turned into +0.0
    tree = jax.tree.map(lambda x: x, pruned)
    tree["params"]["conv1"]["kernel"] = jnp.asarray(flat)
    arrays, layout = pack_params(tree)
    assert layout["leaves"]["params/upconv/kernel"]["sparse"]
    _bits_equal(unpack_params(arrays, layout), tree)


def test_unpack_names_a_missing_or_mis_shaped_array():
    arrays, layout = pack_params(PARAMS, quant=QuantConfig(bits=4))
    with pytest.raises(ValueError, match="lacks the array params/conv1/bias/scale"):
        unpack_params({k: v for k, v in arrays.items() if k != "params/conv1/bias/scale"},
                      layout)
    bad = {**arrays, "params/conv1/bias/codes": arrays["params/conv1/bias/codes"][:3]}
    with pytest.raises(ValueError, match=r"params/conv1/bias/codes has shape \[3\], its layout "
                       r"says \[16\]"):
        unpack_params(bad, layout)
    with pytest.raises(ValueError, match="unsupported packed layout version 7"):
        unpack_params(arrays, {**layout, "version": 7})


def test_packed_checkpoint_gives_the_forward_pass_params(small_variables, tmp_path):
    """Through the checkpoint: the masked, fake-quantized params of the jitted forward."""
    cfg = CONFIGS[0]
    pruned, masks = prune(small_variables, 50)
    tx = compress(optax.adam(1e-3), masks=masks, quant=cfg)
    state = tx.init(pruned)
    expected = jax.jit(tx.forward)(pruned, state)
    path = save_checkpoint(tmp_path / "ck", pruned, {"source": "test"}, quant=cfg,
                           masks=get_masks(state), bits=get_bits(state))
    meta = load_metadata(path)
    assert meta["kind"] == "packed" and meta["kind_version"] == 1 and meta["source"] == "test"
    assert checkpoint_kind(path) == "packed"
    assert meta["packing"]["quant"]["bits"] == cfg.bits and meta["widths"]
    assert meta["parameter_count"] == sum(x.size for x in jax.tree.leaves(small_variables))
    for kind in (None, "packed"):
        loaded = load_checkpoint(path, kind=kind)
        _bits_equal(loaded, expected)
        assert isinstance(loaded["params"]["context_network"]["conv7"]["kernel"], jax.Array)


@pytest.mark.parametrize("cfg", CONFIGS[1:] + [None], ids=IDS[1:] + ["float-sparse"])
def test_packed_checkpoint_round_trips_bit_exactly(small_variables, tmp_path, cfg):
    pruned, masks = prune(small_variables, 50)
    path = save_checkpoint(tmp_path / "ck", pruned, quant=cfg, masks=masks)
    assert load_metadata(path)["packing"]["quant"] == (cfg and cfg.to_dict())
    expected = jax.tree.map(jnp.asarray, unpack_params(*pack_params(pruned, quant=cfg,
                                                                    masks=masks)))
    _bits_equal(load_checkpoint(path), expected)
    if cfg is None:  # pruned floats only: the stored values are the params themselves
        _bits_equal(load_checkpoint(path), pruned)


def test_packed_checkpoint_errors(small_variables, tmp_path):
    cfg = QuantConfig(bits=8)
    with pytest.raises(ValueError, match="bits overrides quant.bits per leaf: pass quant too"):
        save_checkpoint(tmp_path / "ck", small_variables,
                        bits=jax.tree.map(lambda x: 4, small_variables))
    with pytest.raises(ValueError, match="do not match the DeepLiDARFlow parameters"):
        save_checkpoint(tmp_path / "ck", PARAMS, quant=cfg)
    assert not (tmp_path / "ck").exists()
    path = save_checkpoint(tmp_path / "ck", small_variables, quant=cfg)
    # its metadata is what says how to decode: a layout that disagrees with the arrays
    meta = load_metadata(path)
    meta["packing"]["leaves"]["params/context_network/conv1/kernel"]["sparse"] = True
    (path / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"packed arrays do not match its layout \(2 problems\)"
                       r":\n  missing: packed/params/context_network/conv1/kernel/nonzero\n  "
                       r"mis-shaped: packed/params/context_network/conv1/kernel/codes"):
        load_checkpoint(path)


def test_packed_8bit_half_pruned_full_model_is_smaller_by_its_bit_count(variables, tmp_path):
    """Codes at 8 bits, half of them pruned, a 1-bit mask: about 5 of float32's 32 bits."""
    pruned, masks = prune(variables, 50)
    cfg = QuantConfig(bits=8)
    n = sum(x.size for x in jax.tree.leaves(variables))
    dense = dir_size(save_checkpoint(tmp_path / "float", variables))
    packed = dir_size(save_checkpoint(tmp_path / "packed", pruned, quant=cfg, masks=masks))
    # the payload's bits: per leaf a mask bit per entry + 8 bits per stored code, or 8
    # bits per entry when dense, + a 32-bit scale
    leaves = load_metadata(tmp_path / "packed")["packing"]["leaves"]
    payload_bits = sum((e["nonzero"] * 8 + int(np.prod(e["shape"])) if e["sparse"]
                        else int(np.prod(e["shape"])) * 8) + 32 for e in leaves.values())
    bits_per_param = payload_bits / n
    assert 4.5 < bits_per_param < 5.5  # 1 + 50 % x 8: the pruning reached the file
    # the container (Orbax's tree metadata, our JSON layout), net of zstd's gain: < 5 %
    assert packed * 8 / n <= 1.05 * bits_per_param
    # float32 weights compress by less than 10 %, and with the container's < 5 % above
    # the factor is at least ~32 / 5
    assert dense * 8 / n >= 0.9 * 32
    assert dense / packed >= 0.9 * 32 / (1.05 * bits_per_param)
    _bits_equal(load_checkpoint(tmp_path / "packed"),
                jax.tree.map(jnp.asarray, unpack_params(*pack_params(pruned, quant=cfg,
                                                                     masks=masks))))
