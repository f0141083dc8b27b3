"""deepliflow_jax: DeepLiDARFlow in JAX/Flax, and tools to prune, quantize and time it.

The public API below is importable from the package itself (``import deepliflow_jax as
dl; dl.init_params()``). Names load on first use (PEP 562), so ``import deepliflow_jax``
imports neither JAX nor Orbax, PyTorch or matplotlib.

Model and weights: ``create_model``, ``init_params``, ``param_shapes``,
``load_checkpoint``, ``save_checkpoint``. Converting the original's weights is
``weights_convert.convert_checkpoint`` (beside the library, which never imports it).
Frames and prediction: ``prepare_frames``, ``read_example``, ``input_images``,
``predict_sceneflow`` (``deepliflow_jax.predict.predict`` also returns the per-level
outputs).
Compression: ``prune``, ``quantize``, ``zero_fraction``, ``finetune``, ``evaluate``,
``compression_table``, ``format_table``, ``time_model``, ``compression_search``.
KITTI submissions: ``write_submission``.
Data: ``make_synthetic_dataset``, ``load_dataset``, ``validation_pair``, ``Dataset``.
Pictures: ``flow_image``, ``disparity_image``, ``plot_sceneflow``, ``save_png``.
The study: ``run_study``, ``make_config``, ``enable_compilation_cache``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_EXPORTS = {
    "create_model": "deepliflow_jax.model.build",
    "init_params": "deepliflow_jax.model.build",
    "param_shapes": "deepliflow_jax.model.build",
    "load_checkpoint": "deepliflow_jax.checkpoint",
    "save_checkpoint": "deepliflow_jax.checkpoint",
    "prepare_frames": "deepliflow_jax.api",
    "read_example": "deepliflow_jax.api",
    "input_images": "deepliflow_jax.api",
    "predict_sceneflow": "deepliflow_jax.api",
    "prune": "deepliflow_jax.compress.prune",
    "quantize": "deepliflow_jax.compress.quantize",
    "zero_fraction": "deepliflow_jax.compress.prune",
    "finetune": "deepliflow_jax.api",
    "evaluate": "deepliflow_jax.api",
    "write_submission": "deepliflow_jax.api",
    "compression_table": "deepliflow_jax.api",
    "format_table": "deepliflow_jax.api",
    "compression_search": "deepliflow_jax.api",
    "time_model": "deepliflow_jax.api",
    "make_synthetic_dataset": "deepliflow_jax.api",
    "load_dataset": "deepliflow_jax.api",
    "validation_pair": "deepliflow_jax.api",
    "Dataset": "deepliflow_jax.api",
    "flow_image": "deepliflow_jax.api",
    "disparity_image": "deepliflow_jax.api",
    "plot_sceneflow": "deepliflow_jax.api",
    "save_png": "deepliflow_jax.vis",
    "run_study": "deepliflow_jax.study.runner",
    "make_config": "deepliflow_jax.study.config",
    "enable_compilation_cache": "deepliflow_jax.train.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deepliflow_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
