"""Pruning and quantization of parameter pytrees (Alhimdiat et al. 2023).

Pure functions over ``{'params': {...}}`` pytrees, leaves chosen by regex over
'/'-joined paths; optax-style transforms keep masks and quantizer settings in
the optimizer state (:mod:`.transforms`); the one trainer (``deepliflow_jax.train``)
fine-tunes through them. The functions ``prune``, ``quantize`` and ``select`` live in
the submodules of the same names (:mod:`.prune`, :mod:`.quantize`, :mod:`.select`; the first
two also at the package top level, ``deepliflow_jax.prune``) and are not bound here, so the
package attribute names the module. The quantizer's arithmetic is :mod:`.codec`.

Real acceleration: :mod:`.structured` removes whole channels and builds a
physically smaller network; :mod:`.int8` runs it with integer convolutions;
``deepliflow_jax.search`` measures both.
"""

from deepliflow_jax.compress.export import pack_params, unpack_params
from deepliflow_jax.compress.int8 import (
    Int8Config,
    calibrate,
    fake_quant_apply,
    int8_apply,
    quantize_int8,
)
from deepliflow_jax.compress.prune import (
    apply_masks,
    compute_masks,
    dense_masks,
    pruning_thresholds,
    sparsity_report,
)
from deepliflow_jax.compress.quantize import (
    DEEPLIDARFLOW_CHANNEL_AXES,
    QuantConfig,
    activation_quantization,
    channel_axis,
    expected_zero_fraction,
    fake_quant,
    fake_quant_activation,
    quantize_tree,
    zero_report,
)
from deepliflow_jax.compress.schedules import (
    DynamicThresholdState,
    PruningSchedule,
    dynamic_threshold_init,
    dynamic_threshold_replay,
    dynamic_threshold_update,
    one_shot_schedule,
    polynomial_schedule,
)
from deepliflow_jax.compress.select import flatten, map_with_path, module_path, unflatten
from deepliflow_jax.compress.structured import (
    StructuredResult,
    channel_masked_apply,
    plan_pruning,
    shrink,
    structured_prune,
)
from deepliflow_jax.compress.transforms import (
    CompressionTransformation,
    MaskState,
    QuantState,
    compress,
    forward_params,
    get_bits,
    get_masks,
    pruned,
    quantized,
)

__all__ = [
    "DEEPLIDARFLOW_CHANNEL_AXES",
    "CompressionTransformation",
    "DynamicThresholdState",
    "Int8Config",
    "MaskState",
    "PruningSchedule",
    "QuantConfig",
    "QuantState",
    "StructuredResult",
    "activation_quantization",
    "apply_masks",
    "calibrate",
    "channel_axis",
    "compress",
    "compute_masks",
    "dense_masks",
    "dynamic_threshold_init",
    "dynamic_threshold_replay",
    "dynamic_threshold_update",
    "expected_zero_fraction",
    "fake_quant",
    "fake_quant_activation",
    "fake_quant_apply",
    "flatten",
    "forward_params",
    "get_bits",
    "get_masks",
    "int8_apply",
    "map_with_path",
    "module_path",
    "channel_masked_apply",
    "one_shot_schedule",
    "pack_params",
    "plan_pruning",
    "polynomial_schedule",
    "pruned",
    "pruning_thresholds",
    "quantize_int8",
    "quantize_tree",
    "quantized",
    "shrink",
    "sparsity_report",
    "structured_prune",
    "unflatten",
    "unpack_params",
    "zero_report",
]
