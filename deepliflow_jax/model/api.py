"""Deprecated alias of :mod:`deepliflow_jax.model.build` (construction helpers).

Kept only until ``deepliflow_jax.study.search`` and ``deepliflow_jax.study.tradeoff`` import
``deepliflow_jax.model.build``; then delete this file.
"""

import warnings

from deepliflow_jax.model.build import create_model, forward, init_params, param_shapes

warnings.warn("deepliflow_jax.model.api is deprecated: import deepliflow_jax.model.build",
              DeprecationWarning, stacklevel=2)

__all__ = ["create_model", "forward", "init_params", "param_shapes"]
