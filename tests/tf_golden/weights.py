"""Deterministic synthetic weights for the TF-golden fixtures (pure numpy).

Imported by ``tests/tf_golden/make_golden.py`` (run under the TensorFlow venv)
and by the project's pytest suite (JAX side), so it must not import tensorflow
or jax. Both sides call ``make_weights`` on the same ``{name: shape}`` dict
(``tests/fixtures/tf_variables.json``) and get bit-identical float32 arrays.

Every array depends only on ``(seed, name, shape)``: its generator is
``np.random.default_rng([seed, zlib.crc32(name.encode())])`` and it draws
``standard_normal(shape)`` (float64) before scaling and casting to float32.
So the weights of one variable do not change when other variables are added or
removed, and a dict can be generated piecewise.

Distributions, chosen from the variable's ORIGINAL TF name:

* ``.../kernels_*``  (normal_convolution raw kernels, softplus is applied in the
  forward pass):            N(0, 0.5**2)  (std 0.5)
* ``.../biases*`` (normal_convolution, shape [1,1,1,C]) and ``.../bias``
  (tf.layers, shape [C]):   N(0, 0.1**2)  -- all non-zero on purpose, so that bias
  handling is exercised. The two frames' normal_convolution biases have
  different names (``..._1/biases*``) and hence different values.
* ``.../conv*/kernel``  ([kh, kw, in, out]):  N(0, 1) * GAIN * sqrt(1 / fan_in),
  fan_in = kh * kw * in.
* ``.../deconv*/kernel`` ([kh, kw, out, in], conv2d_transpose): same with
  fan_in = kh * kw * in / 4 (stride 2: each output pixel sees a quarter of the
  4x4 taps).

GAIN = sqrt(2) (He scaling): with leaky-ReLU(0.1) activations a gain of 1 halves
the activation variance at every layer, and the deepest paths (~30 convs)
would collapse to the biases; sqrt(2) keeps activations O(1).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

GAIN = float(np.sqrt(2.0))
NCONV_KERNEL_STD = 0.5
BIAS_STD = 0.1


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def _leaf(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _parent(name: str) -> str:
    parts = name.split("/")
    return parts[-2] if len(parts) >= 2 else ""


def weight_std(name: str, shape: tuple[int, ...]) -> float:
    """Standard deviation used for variable ``name`` of ``shape``."""
    leaf = _leaf(name)
    if leaf.startswith("kernels_"):
        return NCONV_KERNEL_STD
    if leaf.startswith("biases") or leaf == "bias":
        return BIAS_STD
    if leaf == "kernel":
        if len(shape) != 4:
            raise ValueError(f"{name}: expected a 4-D kernel, got {shape}")
        kh, kw, a, b = shape
        if _parent(name).startswith("deconv"):
            fan_in = kh * kw * b / 4.0  # [kh, kw, out, in]
        else:
            fan_in = kh * kw * a  # [kh, kw, in, out]
        return GAIN * float(np.sqrt(1.0 / fan_in))
    raise ValueError(f"don't know how to initialise variable {name!r}")


def make_weight(name: str, shape, seed: int = 0) -> np.ndarray:
    """One variable: float32 array of ``shape``, deterministic in (seed, name)."""
    shape = tuple(int(s) for s in shape)
    std = weight_std(name, shape)
    w = _rng(seed, name).standard_normal(shape) * std
    return w.astype(np.float32)


def make_weights(var_shapes: Mapping[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
    """``{original TF variable name: float32 array}`` for every entry of ``var_shapes``."""
    return {name: make_weight(name, shape, seed) for name, shape in var_shapes.items()}


def checksum(arr: np.ndarray) -> float:
    """Cheap fingerprint (float64 sum of |w|) to detect generator drift."""
    return float(np.abs(np.asarray(arr, dtype=np.float64)).sum())
