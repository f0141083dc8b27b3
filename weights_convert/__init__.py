"""Checkpoint converters and the PyTorch reference of DeepLiDARFlow.

* ``python -m weights_convert --format=tf|torch --input=PATH --output=DIR``:
  original TF release checkpoint or "PyTorch DeepLiDARFlow" state dict ->
  Orbax checkpoint directory (``deepliflow_jax.checkpoint.load_checkpoint``);
  ``--format=orbax`` exports such a directory to ``.safetensors``/``.pt``.
* ``convert``: the pure conversion functions; ``tf_bundle``: TF tensor-bundle
  reader/writer without TensorFlow; ``tf_names`` / ``torch_names``: the name
  tables; ``torch_model``: the PyTorch reference (needs the ``torch`` extra);
  ``NAMING.md``: the PyTorch state_dict layout.

Importing this package does not import torch.
"""

from weights_convert.convert import (
    ConversionError,
    ConversionReport,
    convert_checkpoint,
    export_torch,
    flax_to_tf_tensors,
    flax_to_torch_state_dict,
    load_torch_file,
    save_torch_file,
    tf_tensors_to_flax,
    tf_to_flax,
    torch_state_dict_to_flax,
    torch_to_flax,
)

__all__ = [
    "ConversionError",
    "ConversionReport",
    "convert_checkpoint",
    "export_torch",
    "flax_to_tf_tensors",
    "flax_to_torch_state_dict",
    "load_torch_file",
    "save_torch_file",
    "tf_tensors_to_flax",
    "tf_to_flax",
    "torch_state_dict_to_flax",
    "torch_to_flax",
]
