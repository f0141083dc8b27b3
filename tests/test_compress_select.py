"""Paths, flatten/unflatten and regex selection."""

import jax.numpy as jnp
import pytest

from deepliflow_jax.compress.select import (
    check_same_structure,
    flatten,
    leaf_paths,
    select,
    selected_paths,
    unflatten,
)

PARAMS = {
    "params": {
        "guidance_network": {
            "rgb_features_encoder_decoder": {
                "conv1a": {"kernel": jnp.ones((3, 3, 3, 4)), "bias": jnp.zeros(4)},
            }
        },
        "head": {"kernel": jnp.ones((1, 1, 4, 2)), "bias": jnp.zeros(2)},
    }
}


def test_flatten_paths_and_roundtrip():
    flat = flatten(PARAMS)
    assert "params/guidance_network/rgb_features_encoder_decoder/conv1a/kernel" in flat
    assert flat["params/head/bias"].shape == (2,)
    assert list(flat) == leaf_paths(PARAMS)
    back = unflatten(flat)
    assert flatten(back).keys() == flat.keys()
    assert back["params"]["head"]["kernel"] is PARAMS["params"]["head"]["kernel"]


def test_unflatten_rejects_duplicates_and_leaf_parents():
    with pytest.raises(ValueError, match="runs through a leaf"):
        unflatten({"a": 1, "a/b": 2})


def test_select_include_exclude():
    assert selected_paths(PARAMS, r"kernel$") == [
        "params/guidance_network/rgb_features_encoder_decoder/conv1a/kernel",
        "params/head/kernel",
    ]
    sel = flatten(select(PARAMS, r".*", exclude=[r"bias$", r"^params/head"]))
    assert [p for p, s in sel.items() if s] == [
        "params/guidance_network/rgb_features_encoder_decoder/conv1a/kernel"
    ]


def test_select_nothing_is_an_error():
    with pytest.raises(ValueError, match="selects no"):
        select(PARAMS, r"does_not_exist")


def test_structure_mismatch_names_the_paths():
    other = unflatten({k: v for k, v in flatten(PARAMS).items() if not k.endswith("head/bias")})
    with pytest.raises(ValueError, match="missing.*params/head/bias"):
        check_same_structure(other, PARAMS)
    wrong_shape = unflatten({**flatten(PARAMS), "params/head/bias": jnp.zeros(3)})
    with pytest.raises(ValueError, match="shape at 'params/head/bias'"):
        check_same_structure(wrong_shape, PARAMS)
