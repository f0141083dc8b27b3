"""The quantizer's one arithmetic (compress/codec.py): NumPy and jax.numpy agree bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.compress import codec
from deepliflow_jax.compress.quantize import fake_quant

RNG = np.random.RandomState(7)


def _tensors(bits: int) -> list[np.ndarray]:
    """Random tensors with exact .5 ties, the range ends, zeros of both signs, an all-zero
    channel, tiny and huge magnitudes (within the codec's domain: normal float32 scales)."""
    qmax = 2 ** (bits - 1) - 1
    # max|x| = qmax * 2**-3: the scale is 2**-3 exactly, so (k + 0.5) * 2**-3 is a tie
    ties = (RNG.randint(-qmax, qmax, size=(4, 5, 6)) + 0.5) * 0.125
    ties[0, 0, :2] = (qmax * 0.125, -qmax * 0.125)
    ties[1, 1, :4] = (0.0, -0.0, 0.0625, -0.0625)  # +-0.5 round to even: code 0
    mixed = RNG.randn(3, 4, 5) * 10.0 ** RNG.randint(-3, 4, size=(1, 1, 5))
    mixed[..., 2] = 0.0  # a channel of zeros: scale 1 per channel
    mixed[0, 0, 0] = -0.0
    mixed[1, 1, 1] = 1e-30
    mixed[2, 2, 3] = 3e30
    return [ties.astype(np.float32), mixed.astype(np.float32),
            np.zeros((3, 2), np.float32), RNG.randn(7).astype(np.float32)]


def _bits_of(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(np.uint32) if a.dtype == np.float32 else a


@jax.jit
def _jitted(x, bits):
    """codec.encode_tensor and decode under jit with a traced width, both layouts."""
    out = {}
    for symmetric in (True, False):
        for axis in (None, -1):
            codes, scale, zp = codec.encode_tensor(x, bits, axis=axis, symmetric=symmetric)
            out[f"{symmetric} {axis}"] = codes, scale, zp, codec.decode(codes, scale, zp)
    return out


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_numpy_and_jax_give_identical_codes_and_values(bits):
    saw_tie = False
    for x in _tensors(bits):
        jitted = _jitted(jnp.asarray(x), jnp.int32(bits))
        for symmetric in (True, False):
            for axis in (None, -1):
                n_codes, n_scale, n_zp = codec.encode_tensor(x, bits, axis=axis,
                                                             symmetric=symmetric)
                n_val = codec.decode(n_codes, n_scale, n_zp)
                assert not any(isinstance(a, jax.Array) for a in (n_codes, n_scale, n_zp, n_val))
                assert (n_codes.dtype, n_scale.dtype, n_val.dtype) == (
                    np.int32, np.float32, np.float32)
                j_codes, j_scale, j_zp = codec.encode_tensor(jnp.asarray(x), bits, axis=axis,
                                                             symmetric=symmetric)
                eager = (j_codes, j_scale, j_zp, codec.decode(j_codes, j_scale, j_zp))
                assert all(isinstance(a, jax.Array) for a in eager)
                for other in (eager, jitted[f"{symmetric} {axis}"]):
                    for n, j in zip((n_codes, n_scale, n_zp, n_val), other, strict=True):
                        np.testing.assert_array_equal(_bits_of(n), _bits_of(j))
                # the fake quantizer's forward value is the decoded codes, bit for bit
                fq = fake_quant(jnp.asarray(x), bits, axis=axis, symmetric=symmetric)
                np.testing.assert_array_equal(_bits_of(n_val), _bits_of(fq))
                qmin, qmax = codec.qrange(bits, symmetric)
                assert n_codes.min() >= qmin and n_codes.max() <= qmax
                assert not np.signbit(n_val[n_val == 0]).any()  # zero is +0.0
                if symmetric and axis is None:
                    t = x * (np.float32(1) / n_scale)
                    tie = np.abs(t - np.trunc(t)) == 0.5
                    if tie.any():
                        saw_tie = True
                        # half to even, not half away from zero
                        np.testing.assert_array_equal(n_codes[tie], 2 * np.round(t[tie] / 2))
    assert saw_tie


def test_traced_and_concrete_widths_share_the_range_and_scale():
    for bits in (2, 3, 8, 16):
        for symmetric in (True, False):
            lo, hi = codec.qrange(bits, symmetric)
            jlo, jhi = jax.jit(lambda b, s=symmetric: codec.qrange(b, s))(jnp.int32(bits))
            assert (int(jlo), int(jhi)) == (lo, hi)
        amax = np.float32(RNG.rand() * 5)
        _, qmax = codec.qrange(bits)
        traced = jax.jit(lambda a, b: codec.symmetric_scale(a, codec.qrange(b)[1]))
        np.testing.assert_array_equal(_bits_of(codec.symmetric_scale(amax, qmax)),
                                      _bits_of(traced(amax, jnp.int32(bits))))
    assert codec.symmetric_scale(0.0, 127) == 1.0  # an all-zero range: no division by zero
