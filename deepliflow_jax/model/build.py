"""Model construction: the Flax module, jitted parameter init and one jitted forward pass."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.model.deeplidarflow import DeepLiDARFlow
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, check_conv_impl
from deepliflow_jax.model.widths import freeze_widths


def create_model(dtype: Any = jnp.float32, widths: Any = None,
                 conv_impl: str = CONV_IMPL_DEFAULT) -> DeepLiDARFlow:
    """The DeepLiDARFlow Flax module (no parameters: pair it with :func:`init_params`).

    ``model.apply(variables, frames)`` runs it eagerly; :func:`forward` is the same
    call under one cached ``jit``.

    Args:
      dtype: compute dtype (params stay float32).
      widths: channel widths of a structured (pruned) model, None = original
        (see :mod:`deepliflow_jax.model.widths`).
      conv_impl: how convs are computed (``"auto"``, the default: the fastest exact
        form on the backend; ``"xla"``: the plain reference; ``"phase+widen"``, ...;
        see :mod:`deepliflow_jax.model.layers`); the same function and parameters.

    Returns:
      A ``DeepLiDARFlow`` module; ``model.apply(variables, frames)`` with
      ``frames`` ``[B, 2, H, W, 4]`` (H, W multiples of 64, or pass
      ``interp_size``) returns ``(sceneflow [B, H, W, 4], aux)``.

    Raises:
      ValueError: ``widths`` names an unknown layer or a width that is not a
        positive integer; an unknown ``conv_impl``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> model = create_model()
      >>> frames = jax.ShapeDtypeStruct((1, 2, 64, 128, 4), jnp.float32)
      >>> sceneflow, aux = jax.eval_shape(model.apply, init_params(0), frames)
      >>> sceneflow.shape
      (1, 64, 128, 4)
      >>> create_model(jnp.bfloat16).dtype.__name__
      'bfloat16'
    """
    return DeepLiDARFlow(dtype=dtype, widths=freeze_widths(widths), conv_impl=conv_impl)


def _fan_avg_std(shape) -> float:
    receptive = int(np.prod(shape[:-2]))
    return float(np.sqrt(2.0 / (receptive * (shape[-2] + shape[-1]))))


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """N(0, 1) truncated at +-2 (redrawn, not clipped), as TF's truncated_normal."""
    x = rng.standard_normal(shape)
    out = np.abs(x) > 2.0
    while out.any():
        x[out] = rng.standard_normal(int(out.sum()))
        out = np.abs(x) > 2.0
    return x


def init_params(seed: int = 0, bias_std: float = 0.0, widths: Any = None,
                kernel_gain: float = 1.0) -> dict:
    """Initial DeepLiDARFlow parameters (``{'params': ...}``), drawn on the host with numpy.

    The same initialisers as the modules (and TF1's): conv kernels truncated
    normal (2 std) with fan-average variance, normalized-conv kernels Glorot
    uniform, biases zero. Tracing ``model.init`` compiles every initialiser of
    the 257 leaves and takes tens of seconds on a CPU; this takes well under one.

    Args:
      seed: numpy seed.
      bias_std: if > 0, biases are drawn from N(0, bias_std) instead of zero
        (tests use it so that bias handling is exercised).
      kernel_gain: multiplies the conv kernels (not the normalized-conv ones).
        1 is TF1's Xavier, as the original; with it the signal shrinks through the
        deep leaky-ReLU(0.1) chain (fused level-6 features ~1e-4, level-6 flow
        ~1e-6 at init), fine for the original's long training but a poor start for
        a short one; sqrt(2) (He) keeps activations O(1).
      widths: channel widths (None = the original network). The normalized
        convs' ``conf_mass`` of a structured model starts at zero.

    Returns:
      ``{'params': nested dict of float32 arrays}`` (257 arrays, 8,296,404 values
      for the original network); the same seed gives the same values.

    Raises:
      ValueError: ``widths`` names an unknown layer or a width that is not a
        positive integer.

    Example:
      >>> import jax
      >>> variables = init_params(0)
      >>> kernel = variables["params"]["context_network"]["conv1"]["kernel"]
      >>> kernel.shape, kernel.dtype.name
      ((3, 3, 36, 128), 'float32')
      >>> len(jax.tree.leaves(variables))
      257
      >>> float(abs(variables["params"]["context_network"]["conv1"]["bias"]).max())
      0.0
    """
    rng = np.random.default_rng(seed)
    flat = flax.traverse_util.flatten_dict(param_shapes(widths)["params"])
    out = {}
    for path, leaf in sorted(flat.items()):
        shape, name = leaf.shape, path[-1]
        if name == "kernel":
            std = _fan_avg_std(shape) / 0.87962566  # std of N(0,1) truncated at 2
            value = _truncated_normal(rng, shape) * std * kernel_gain
        elif name == "kernels":
            lim = np.sqrt(3.0) * _fan_avg_std(shape)
            value = rng.uniform(-lim, lim, shape)
        elif name == "conf_mass":
            value = np.zeros(shape)
        elif bias_std > 0:
            value = rng.normal(0.0, bias_std, shape)
        else:
            value = np.zeros(shape)
        # cast on the host: an eager jnp cast would compile one XLA op per leaf shape
        out[path] = jnp.asarray(np.asarray(value, np.float32))
    return {"params": flax.traverse_util.unflatten_dict(out)}


def param_shapes(widths: Any = None) -> dict:
    """Parameter shapes and dtypes of the model (``jax.eval_shape``, no compute).

    Cached per ``widths``; checkpoints and converters check trees against it.

    Args:
      widths: channel widths of a structured model (None = the original).

    Returns:
      ``{'params': nested dict of jax.ShapeDtypeStruct}`` with the structure of
      :func:`init_params`' output.

    Raises:
      ValueError: ``widths`` names an unknown layer or a width that is not a
        positive integer.

    Example:
      >>> import jax
      >>> shapes = param_shapes()
      >>> shapes["params"]["context_network"]["conv1"]["kernel"].shape
      (3, 3, 36, 128)
      >>> sum(s.size for s in jax.tree.leaves(shapes))
      8296404
    """
    return _param_shapes(freeze_widths(widths))


@functools.lru_cache(maxsize=16)
def _param_shapes(widths) -> dict:
    dummy = jax.ShapeDtypeStruct((1, 2, 64, 64, 4), jnp.float32)
    return jax.eval_shape(DeepLiDARFlow(widths=widths).init, jax.random.PRNGKey(0), dummy)


@functools.cache
def _jitted_apply(dtype_name: str, interp_size, out_size, widths=None,
                  conv_impl: str = CONV_IMPL_DEFAULT):
    model = DeepLiDARFlow(dtype=jnp.dtype(dtype_name), widths=widths, conv_impl=conv_impl)
    return jax.jit(functools.partial(model.apply, interp_size=interp_size, out_size=out_size))


def forward(variables: dict, frames: jax.Array, interp_size=None, out_size=None,
            dtype: Any = jnp.float32, widths: Any = None, conv_impl: str = CONV_IMPL_DEFAULT):
    """The whole forward pass under one ``jit`` (cached per sizes and dtype).

    Args:
      variables: ``{'params': ...}``.
      frames: ``[B, 2, H, W, 4]`` preprocessed frames.
      interp_size: optional ``(h, w)`` the frames are resized to (legacy nearest).
      out_size: optional ``(h, w)`` of the output (legacy bilinear); default the input size.
      dtype: compute dtype.
      widths: channel widths of a structured (pruned) model; None = original.
      conv_impl: how convs are computed (see :mod:`deepliflow_jax.model.layers`).

    Returns:
      ``(sceneflow, aux)`` as ``DeepLiDARFlow.__call__``.

    Raises:
      ValueError: an unknown ``conv_impl``.
    """
    interp = tuple(interp_size) if interp_size is not None else None
    # default out_size spelled out, so both spellings share one compiled function
    out = tuple(out_size) if out_size is not None else tuple(frames.shape[2:4])
    fn = _jitted_apply(jnp.dtype(dtype).name, interp, out, freeze_widths(widths),
                       check_conv_impl(conv_impl))
    return fn(variables, frames)
