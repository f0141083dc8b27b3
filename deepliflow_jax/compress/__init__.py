"""Pruning and quantization of parameter pytrees (Alhimdiat et al. 2023).

Pure functions over ``{'params': {...}}`` pytrees, leaves chosen by regex over
'/'-joined paths; optax-style transforms keep masks and quantizer settings in
the optimizer state. See :mod:`.modes` for the post-/aware-training recipes and
the order of pruning and quantization.
"""

from deepliflow_jax.compress.export import export_compressed, load_compressed
from deepliflow_jax.compress.modes import aware_training, dynamic_threshold_prune, post_training
from deepliflow_jax.compress.prune import (
    apply_masks,
    compute_masks,
    dense_masks,
    prune,
    pruning_thresholds,
    sparsity_report,
)
from deepliflow_jax.compress.quantize import (
    DEEPLIDARFLOW_CHANNEL_AXES,
    QuantConfig,
    activation_quantization,
    expected_zero_fraction,
    fake_quant,
    fake_quant_activation,
    quantize,
    quantize_tree,
    zero_report,
)
from deepliflow_jax.compress.schedules import (
    DynamicThresholdState,
    PruningSchedule,
    dynamic_threshold_init,
    dynamic_threshold_update,
    one_shot_schedule,
    polynomial_schedule,
)
from deepliflow_jax.compress.select import flatten, map_with_path, select, unflatten
from deepliflow_jax.compress.transforms import (
    CompressionTransformation,
    MaskState,
    QuantState,
    compress,
    forward_params,
    get_bits,
    get_masks,
    masked,
    quantized,
)

__all__ = [
    "DEEPLIDARFLOW_CHANNEL_AXES",
    "CompressionTransformation",
    "DynamicThresholdState",
    "MaskState",
    "PruningSchedule",
    "QuantConfig",
    "QuantState",
    "activation_quantization",
    "apply_masks",
    "aware_training",
    "compress",
    "compute_masks",
    "dense_masks",
    "dynamic_threshold_init",
    "dynamic_threshold_prune",
    "dynamic_threshold_update",
    "expected_zero_fraction",
    "export_compressed",
    "fake_quant",
    "fake_quant_activation",
    "flatten",
    "forward_params",
    "get_bits",
    "get_masks",
    "load_compressed",
    "map_with_path",
    "masked",
    "one_shot_schedule",
    "polynomial_schedule",
    "post_training",
    "prune",
    "pruning_thresholds",
    "quantize",
    "quantize_tree",
    "quantized",
    "select",
    "sparsity_report",
    "unflatten",
    "zero_report",
]
