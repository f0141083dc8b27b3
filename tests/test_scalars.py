"""One numeric validator (``deepliflow_jax.scalars.check_number``) behind every public
numeric argument: any real Python / NumPy / JAX scalar or 0-d array is accepted and
arrives as a Python number; a bool, a string, NaN/inf, an array with elements and a
value out of range are refused with a message naming the argument.

The table runs each entry point on values that are refused before anything is compiled,
and on accepted values where accepting is cheap; the train step's trace count shows that
a scalar's type keys no new trace.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax import api
from deepliflow_jax.compress.prune import check_percent
from deepliflow_jax.compress.quantize import check_bits
from deepliflow_jax.profile.inputs import check_sizes
from deepliflow_jax.profile.timer import time_calls
from deepliflow_jax.scalars import check_number
from deepliflow_jax.search.config import SearchConfig
from deepliflow_jax.search.tradeoff import TradeoffConfig
from deepliflow_jax.study.config import make_config

FLOAT_1E4 = (1e-4, np.float32(1e-4), jnp.float32(1e-4), np.asarray(1e-4, np.float32),
             jnp.asarray(1e-4, jnp.bfloat16))
INT_8 = (8, np.int64(8), jnp.int32(8), np.asarray(8, np.uint8), 8.0, np.float32(8))
BAD_COMMON = [  # (value, what the message says about it)
    (True, "got the bool True"), (np.bool_(False), "got the bool"),
    (jnp.asarray(True), "got the bool True"), ("1e-4", "got the string '1e-4'"),
    (b"8", "got the string"), (float("nan"), "got nan"), (np.float32(np.inf), "got inf"),
    (jnp.float32(-jnp.inf), "got -inf"), (np.ones(2), r"a scalar\), got an array of shape"),
    (jnp.ones((1,)), "an array of shape"), ([1], "got list"), (1 + 2j, "got complex"),
]


def _config(**kw):
    return make_config("tiny", **kw)


def _finetune(data, variables, **kw):
    return api.finetune(variables, data, **{"steps": 0, **kw})


def _evaluate(data, variables, **kw):
    return api.evaluate(variables, data, **kw)


def _time_model(data, variables, **kw):
    return api.time_model(variables, **kw)


# (entry point, argument, accepted values, [(refused value, message), ...]); the entry
# point gets the data set, the variables and the argument; accepted=() where accepting
# would compile the network (the argument's refusals then run before any compile)
TABLE = [
    (_finetune, "lr", FLOAT_1E4, [(0.0, "lr must be a positive number, got 0.0"),
                                  (np.float32(-1e-4), "lr must be a positive number, got -"),
                                  (None, "lr must be a positive number, got NoneType None")]),
    (_finetune, "steps", (0, np.int64(0), jnp.int32(0), np.asarray(0)),
     [(-1, "steps must be an integer >= 0, got -1"), (0.5, "steps must be an integer")]),
    (_finetune, "start", (0, np.int32(0), jnp.int32(0)),
     [(-3, "start must be an integer >= 0, got -3")]),
    (_evaluate, "percent", (), [(100, r"percent must be a number in \[0, 100\), got 100"),
                                (jnp.float32(-1), "percent must be .* got -1.0")]),
    (_evaluate, "bits", (), [(1, r"bits must be an integer in \[2, 16\], got 1"),
                             (jnp.int32(17), "bits must be .* got 17"),
                             (np.float32(8.5), "bits must be .* got 8.5")]),
    (_time_model, "repeats", (), [(0, "repeats must be an integer >= 1, got 0"),
                                  (jnp.int32(0), "repeats must be an integer >= 1")]),
    (_time_model, "warmup", (), [(-1, "warmup must be an integer >= 0, got -1")]),
]
CONFIGS = [  # (factory, field, accepted, refused): the study's, the search's, the trade-off's
    (_config, "lr1", FLOAT_1E4, [(0, "lr1 must be a positive number, got 0")]),
    (_config, "dynamic_tolerance", FLOAT_1E4, []),
    (_config, "group_width", INT_8, [(0, "group_width must be None .* got 0"),
                                     (np.int64(-8), "group_width must be None .* got -8")]),
    (_config, "finetune_steps", (2, np.int64(2), jnp.int32(2), np.float32(2.0)),
     [(-1, "finetune_steps must be an integer >= 0, got -1"),
      (2.5, "finetune_steps must be an integer >= 0, got 2.5")]),
    (_config, "seed", (3, np.uint8(3), jnp.int32(3)), [(-1, "seed must be an integer >= 0")]),
    (SearchConfig, "lr", FLOAT_1E4, [(-1.0, "lr must be a positive number, got -1.0")]),
    (SearchConfig, "repeats", INT_8, [(0, "repeats must be an integer >= 1, got 0")]),
    (SearchConfig, "refine_fraction", (0.25, np.float32(0.25), jnp.float32(0.25)),
     [(1.0, r"refine_fraction must be a number in \[0, 1\), got 1.0")]),
    (TradeoffConfig, "lr", FLOAT_1E4, [(0.0, "lr must be a positive number, got 0.0")]),
    (TradeoffConfig, "calib_batches", INT_8, [(-2, "calib_batches must be an integer >= 0")]),
]


@pytest.mark.parametrize("call, name, accepted, refused", TABLE,
                         ids=[f"{c.__name__[1:]}-{n}" for c, n, _, _ in TABLE])
def test_api_numeric_arguments(small_variables, tiny_data, call, name, accepted, refused):
    for value in accepted:
        call(tiny_data, small_variables, **{name: value})
    for value, message in [*refused, *BAD_COMMON]:
        with pytest.raises(ValueError, match=rf"{name} must be .*{message}" if not message
                           .startswith(name) else message):
            call(tiny_data, small_variables, **{name: value})


@pytest.mark.parametrize("factory, name, accepted, refused", CONFIGS,
                         ids=[f"{getattr(f, '__name__', 'f').strip('_')}-{n}"
                              for f, n, _, _ in CONFIGS])
def test_config_numeric_fields(factory, name, accepted, refused):
    """A typed scalar is accepted and kept as the Python number it holds: the config is
    saved as JSON (``config.json``, the search's and the trade-off's records)."""
    for value in accepted:
        cfg = factory(**{name: value})
        got = getattr(cfg, name)
        assert type(got) is type(getattr(factory(), name))  # int or float, as the default
        assert got == float(np.asarray(value, np.float64))
        json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg))
    for value, message in [*refused, *BAD_COMMON]:
        with pytest.raises(ValueError, match=rf"{name} must be .*{message}" if not message
                           .startswith(name) else message):
            factory(**{name: value})


def test_sequences_of_numbers_name_the_element():
    cfg = _config(prune_percents=(np.float32(12.5), jnp.float32(20), 5),
                  quant_bits=(jnp.int32(8), np.int64(4)))
    assert cfg.prune_percents == (12.5, 20.0, 5.0) and cfg.quant_bits == (8, 4)
    assert all(type(b) is int for b in cfg.quant_bits)
    with pytest.raises(ValueError, match=r"quant_bits\[1\] must be an integer in \[2, 16\], "
                                         "got the bool True"):
        _config(quant_bits=(8, True))
    with pytest.raises(ValueError, match=r"prune_percents\[0\] must be a number .* got nan"):
        _config(prune_percents=(float("nan"),))
    with pytest.raises(ValueError, match="prune_percents must be a sequence of numbers"):
        _config(prune_percents="10")
    with pytest.raises(ValueError, match=r"--batch_sizes\[1\] must be an integer >= 1, got 0"):
        check_sizes(64, 128, [np.int64(1), 0])
    with pytest.raises(ValueError, match="--height must be a positive multiple of 64, got "
                                         "the string '64'"):
        check_sizes("64", 128)
    check_sizes(jnp.int32(64), np.int64(128), (jnp.int32(2),), np.int8(1))


def test_compression_and_harness_arguments_accept_typed_scalars():
    assert check_percent(jnp.float32(12.5)) == 12.5 and check_bits(jnp.int32(8)) == 8
    assert type(check_bits(np.float32(8))) is int
    stats = time_calls(lambda: jnp.zeros(()), repeats=jnp.int32(2), warmup=np.int64(0))
    assert stats["repeats"] == 2 and type(stats["repeats"]) is int
    with pytest.raises(ValueError, match="repeats must be an integer >= 1, got the bool"):
        time_calls(lambda: 0, repeats=True)
    with pytest.raises(ValueError, match="warmup must be an integer >= 0, got -1"):
        time_calls(lambda: 0, repeats=1, warmup=np.int32(-1))


def test_a_traced_value_is_refused_by_name():
    with pytest.raises(ValueError, match="lr must be a number, got a traced"):
        jax.jit(lambda x: check_number(x, "lr"))(jnp.float32(1.0))


def test_a_large_integer_is_compared_exactly():
    # 2**53 + 1 rounds to 2**53 as a float: the bound must see the integer itself
    with pytest.raises(ValueError, match=f"got {2 ** 53 + 1}"):
        check_number(2 ** 53 + 1, "n", integer=True, maximum=2 ** 53)
    assert check_number(np.int64(2 ** 53 + 1), "n", integer=True) == 2 ** 53 + 1


def test_a_typed_rate_retraces_no_step(small_variables, tiny_data):
    """``lr`` (and ``percent`` / ``bits``) of any scalar type run the ONE compiled step: the
    validator hands the trainer Python numbers, and the rate is a traced value of the
    optimizer state, so neither its type nor its value keys a new trace."""
    first, _ = api.finetune(small_variables, tiny_data, steps=1, lr=1e-4)
    trainer = api._trainer(tiny_data, small_variables["params"])
    traces = trainer._step._cache_size()
    assert traces >= 1
    runs = [api.finetune(small_variables, tiny_data, steps=1, lr=lr, percent=percent, bits=bits)
            for lr, percent, bits in ((np.float32(1e-4), np.float32(0), jnp.int32(0)),
                                      (jnp.float32(1e-4), jnp.int32(0), np.int64(0)))]
    assert trainer._step._cache_size() == traces
    # the same rate in float32, so the same step: the same weights
    for tuned, _ in runs:
        for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(first), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
