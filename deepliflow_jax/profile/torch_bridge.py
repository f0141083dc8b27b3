"""Adapter between the run-time harness and the PyTorch reference in ``weights_convert``.

The harness needs four things from the reference: a ``torch.nn.Module`` with
the converted weights on a device, a way to turn the Flax-layout frames
``[B, 2, H, W, 4]`` into its input, a way to turn its output into the Flax
scene flow ``[B, H, W, 4]``, and a description. :func:`load_reference` builds
them from ``weights_convert``; this is the one place to touch when that API
changes. While ``weights_convert`` has no Flax -> torch converter function,
the state dict is built here from its name table (:func:`table_state_dict`).
Without torch or the reference it raises :class:`ReferenceUnavailable`, and the
torch rows of the results carry that reason instead of a time.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

# an official Flax -> torch converter, when weights_convert has one (tried in order)
_CONVERTER_MODULES = ("weights_convert.convert", "weights_convert.torch_convert",
                      "weights_convert")
_CONVERTERS = ("flax_to_torch_state_dict", "flax_to_torch", "to_torch_state_dict",
               "convert_flax_to_torch")


class ReferenceUnavailable(RuntimeError):
    """The PyTorch reference (or torch itself) cannot be loaded."""


@dataclasses.dataclass
class TorchReference:
    """A ready-to-call reference model.

    Attributes:
      module: the model (eval mode, on its device, converted weights).
      make_input: ``frames [B, 2, H, W, 4] numpy -> model input on the device``.
      to_numpy: ``model output -> scene flow [B, H, W, 4] float32 numpy``.
      description: where the model and converter come from.
    """

    module: Any
    make_input: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]
    description: str


def _official_converter() -> Callable[[dict], dict] | None:
    for mod_name in _CONVERTER_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for name in _CONVERTERS:
            if hasattr(mod, name):
                return getattr(mod, name)
    return None


def table_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """Flax params -> torch ``state_dict`` arrays by ``weights_convert.torch_names``.

    The local adapter used while ``weights_convert`` has no converter function:
    every table entry's Flax leaf, 4-D kernels permuted with ``FLAX_TO_PT``.

    Args:
      variables: ``{'params': ...}``.

    Returns:
      ``{torch key: float32 numpy array}``.

    Raises:
      ReferenceUnavailable: the name table is missing.
      KeyError: a table path that the params do not have.
    """
    try:
        from weights_convert.torch_names import FLAX_TO_PT, torch_name_table
    except ImportError as e:
        raise ReferenceUnavailable(f"weights_convert.torch_names is missing ({e})") from e
    from deepliflow_jax.compress.select import flatten

    flat = {k.removeprefix("params/"): v for k, v in flatten(variables).items()}
    out = {}
    for key, entry in torch_name_table().items():
        arr = np.asarray(flat[entry.path], np.float32)
        out[key] = np.ascontiguousarray(arr.transpose(FLAX_TO_PT)) if arr.ndim == 4 else arr
    return out


def load_reference(variables: dict, device: str = "cpu") -> TorchReference:
    """The PyTorch reference with ``variables`` converted, on ``device``.

    Args:
      variables: Flax ``{'params': ...}``.
      device: ``"cpu"`` or ``"cuda"``.

    Returns:
      A :class:`TorchReference` (``weights_convert.torch_model.DeepLiDARFlow``,
      NCHW input ``[B, 2, 4, H, W]``, output ``[B, 4, H, W]`` turned to NHWC).

    Raises:
      ReferenceUnavailable: torch or the reference model is missing.
    """
    try:
        import torch
    except ImportError as e:
        raise ReferenceUnavailable(f"torch is not installed ({e})") from e
    try:
        from weights_convert import torch_model
    except ImportError as e:
        raise ReferenceUnavailable(f"weights_convert.torch_model is missing ({e})") from e
    convert = _official_converter()
    state = convert(variables) if convert is not None else table_state_dict(variables)
    how = (f"{convert.__module__}.{convert.__name__}" if convert is not None
           else "torch_bridge.table_state_dict (local adapter over torch_names)")
    model = torch_model.DeepLiDARFlow()
    model.load_state_dict({k: torch.tensor(np.array(v, np.float32)) for k, v in state.items()})
    model = model.to(device).eval()

    def make_input(frames: np.ndarray) -> Any:
        return torch_model.frames_to_nchw(frames).to(device)

    def to_numpy(out: Any) -> np.ndarray:
        flow = out[0] if isinstance(out, (tuple, list)) else out
        return flow.detach().float().cpu().numpy().transpose(0, 2, 3, 1)

    return TorchReference(model, make_input, to_numpy,
                          f"weights_convert.torch_model.DeepLiDARFlow, weights by {how}")
