"""Adapter between the run-time harness and the PyTorch reference in ``weights_convert``.

The harness needs four things from the reference: a ``torch.nn.Module`` with
the converted weights on a device, a way to turn the Flax-layout frames
``[B, 2, H, W, 4]`` into its input, a way to turn its output into the Flax
scene flow ``[B, H, W, 4]``, and a description. :func:`load_reference` builds
them from whatever ``weights_convert`` provides; this is the one place to touch
when that API changes. Until the reference lands it raises
:class:`ReferenceUnavailable` with the reason, and the torch rows of the results
carry that reason instead of a time.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

# (module, model factory names, converter names) tried in order
_MODULES = ("weights_convert.torch_model", "weights_convert.torch_reference",
            "weights_convert.reference", "weights_convert")
_MODEL_NAMES = ("DeepLiDARFlowTorch", "TorchDeepLiDARFlow", "DeepLiDARFlow")
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


def _find(names: tuple[str, ...], module) -> Any:
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    return None


def load_reference(variables: dict, device: str = "cpu") -> TorchReference:
    """The PyTorch reference with ``variables`` converted, on ``device``.

    Args:
      variables: Flax ``{'params': ...}``.
      device: ``"cpu"`` or ``"cuda"``.

    Returns:
      A :class:`TorchReference`.

    Raises:
      ReferenceUnavailable: torch or the reference model / converter is missing.
    """
    try:
        import torch
    except ImportError as e:
        raise ReferenceUnavailable(f"torch is not installed ({e})") from e
    tried = []
    for mod_name in _MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            tried.append(f"{mod_name}: {e}")
            continue
        factory, convert = _find(_MODEL_NAMES, mod), _find(_CONVERTERS, mod)
        if factory is None or convert is None:
            tried.append(f"{mod_name}: no model class {_MODEL_NAMES} / converter {_CONVERTERS}")
            continue
        model = factory()
        state = convert(variables)
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
        model.load_state_dict(state)
        model = model.to(device).eval()

        def make_input(frames: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(frames)).to(device)

        def to_numpy(out: Any) -> np.ndarray:
            flow = out[0] if isinstance(out, (tuple, list)) else out
            return flow.detach().float().cpu().numpy()

        return TorchReference(model, make_input, to_numpy,
                              f"{mod_name}.{type(model).__name__} via {convert.__name__}")
    raise ReferenceUnavailable("PyTorch reference model not found (weights_convert has no "
                               "torch model yet): " + "; ".join(tried))
