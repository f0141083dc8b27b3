"""Model construction helpers: jitted init and one jitted forward pass."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow


def create_model(dtype: Any = jnp.float32) -> DeepLiDARFlow:
    """Returns the DeepLiDARFlow module (``dtype``: compute dtype; params stay f32)."""
    return DeepLiDARFlow(dtype=dtype)


def _fan_avg_std(shape) -> float:
    receptive = int(np.prod(shape[:-2]))
    return float(np.sqrt(2.0 / (receptive * (shape[-2] + shape[-1]))))


def init_params(seed: int = 0, bias_std: float = 0.0) -> dict:
    """Initialises the parameters (``{'params': ...}``) on the host with numpy.

    The same initialisers as the modules (and TF1's): conv kernels truncated
    normal (2 std) with fan-average variance, normalized-conv kernels Glorot
    uniform, biases zero. Tracing ``model.init`` compiles every initialiser of
    the 257 leaves and takes tens of seconds on a CPU; this takes well under one.

    Args:
      seed: numpy seed.
      bias_std: if > 0, biases are drawn from N(0, bias_std) instead of zero
        (tests use it so that bias handling is exercised).

    Returns:
      ``{'params': nested dict of float32 arrays}``.
    """
    rng = np.random.default_rng(seed)
    flat = flax.traverse_util.flatten_dict(param_shapes()["params"])
    out = {}
    for path, leaf in sorted(flat.items()):
        shape, name = leaf.shape, path[-1]
        if name == "kernel":
            std = _fan_avg_std(shape) / 0.87962566  # std of N(0,1) truncated at 2
            value = np.clip(rng.standard_normal(shape), -2.0, 2.0) * std
        elif name == "kernels":
            lim = np.sqrt(3.0) * _fan_avg_std(shape)
            value = rng.uniform(-lim, lim, shape)
        elif bias_std > 0:
            value = rng.normal(0.0, bias_std, shape)
        else:
            value = np.zeros(shape)
        out[path] = jnp.asarray(value, jnp.float32)
    return {"params": flax.traverse_util.unflatten_dict(out)}


@functools.lru_cache(maxsize=1)
def param_shapes() -> dict:
    """Parameter shapes and dtypes (``jax.eval_shape``, no compute)."""
    dummy = jax.ShapeDtypeStruct((1, 2, 64, 64, 4), jnp.float32)
    return jax.eval_shape(DeepLiDARFlow().init, jax.random.PRNGKey(0), dummy)


@functools.cache
def _jitted_apply(dtype_name: str, interp_size, out_size):
    model = DeepLiDARFlow(dtype=jnp.dtype(dtype_name))
    return jax.jit(functools.partial(model.apply, interp_size=interp_size, out_size=out_size))


def forward(variables: dict, frames: jax.Array, interp_size=None, out_size=None,
            dtype: Any = jnp.float32):
    """The whole forward pass under one ``jit`` (cached per sizes and dtype).

    Args:
      variables: ``{'params': ...}``.
      frames: ``[B, 2, H, W, 4]`` preprocessed frames.
      interp_size: optional ``(h, w)`` the frames are resized to (legacy nearest).
      out_size: optional ``(h, w)`` of the output (legacy bilinear); default the input size.
      dtype: compute dtype.

    Returns:
      ``(sceneflow, aux)`` as ``DeepLiDARFlow.__call__``.
    """
    interp = tuple(interp_size) if interp_size is not None else None
    # default out_size spelled out, so both spellings share one compiled function
    out = tuple(out_size) if out_size is not None else tuple(frames.shape[2:4])
    return _jitted_apply(jnp.dtype(dtype).name, interp, out)(variables, frames)
