"""Paths, flatten/unflatten and regex selection."""

import importlib
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from deepliflow_jax.compress.select import (
    check_same_structure,
    flatten,
    leaf_paths,
    module_path,
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


def test_the_package_attributes_name_the_submodules():
    compress = importlib.import_module("deepliflow_jax.compress")
    for name in ("select", "prune", "quantize", "codec"):
        attr = getattr(compress, name)
        assert isinstance(attr, types.ModuleType), f"compress.{name} is {attr!r}"
        assert attr is importlib.import_module(f"deepliflow_jax.compress.{name}")


def test_module_path_is_the_parameter_path_without_params():
    class Inner(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, name="dense")(x)

    class Outer(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Inner(name="block")(x)

    seen = []

    def record(next_fun, args, kwargs, context):
        seen.append(module_path(context.module))
        return next_fun(*args, **kwargs)

    variables = Outer().init(jax.random.key(0), jnp.ones((1, 3)))
    with nn.intercept_methods(record):
        Outer().apply(variables, jnp.ones((1, 3)))
    assert "block/dense" in seen and "" in seen  # the root is ""
    assert "params/" + "block/dense/kernel" in flatten(variables)
    assert module_path(Outer()) == ""  # unbound
