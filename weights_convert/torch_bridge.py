"""The PyTorch reference as a contender of the run-time harness.

The harness (``deepliflow_jax.profile.timing``) sits below ``weights_convert``
in the layers, so it does not import this module: the caller names the loader
(``torch_reference="weights_convert.torch_bridge:load_reference"``, which
``experiments.runtime`` passes) and the harness's worker processes import it.

The harness needs five things from the reference: a ``torch.nn.Module`` with
the converted weights on a device, a way to turn the Flax-layout frames
``[B, 2, H, W, 4]`` into its input, a way to turn its output into the Flax
scene flow ``[B, H, W, 4]``, a description, and a fine-tuning step on a batch
(``weights_convert.torch_train``). :func:`load_reference` builds
them; without torch it raises :class:`ReferenceUnavailable`, and the torch rows
of the results carry that reason instead of a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from weights_convert.convert import flax_to_torch_state_dict

#: the loader's address, as ``run_benchmark(torch_reference=...)`` takes it
LOADER = "weights_convert.torch_bridge:load_reference"


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
      train_step: ``(batch, lr, compile) -> step``: one Adam step per ``step()`` call
        (returning the loss) on a copy of ``module``, ``batch`` as
        ``deepliflow_jax.profile.inputs.make_train_batch`` gives it
        (``weights_convert.torch_train.make_train_step``).
    """

    module: Any
    make_input: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]
    description: str
    train_step: Callable[..., Callable[[], Any]]


def load_reference(variables: dict, device: str = "cpu") -> TorchReference:
    """The PyTorch reference with ``variables`` converted, on ``device``.

    Args:
      variables: Flax ``{'params': ...}``.
      device: ``"cpu"`` or ``"cuda"``.

    Returns:
      A :class:`TorchReference` (``weights_convert.torch_model.DeepLiDARFlow``,
      NCHW input ``[B, 2, 4, H, W]``, output ``[B, 4, H, W]`` turned to NHWC),
      weights by :func:`weights_convert.convert.flax_to_torch_state_dict`.

    Raises:
      ReferenceUnavailable: torch is not installed.
    """
    try:
        import torch

        from weights_convert import torch_model, torch_train
    except ImportError as e:
        raise ReferenceUnavailable(f"torch is not installed ({e})") from e
    state = flax_to_torch_state_dict(variables)
    model = torch_model.DeepLiDARFlow()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model = model.to(device).eval()

    def make_input(frames: np.ndarray) -> Any:
        return torch_model.frames_to_nchw(frames).to(device)

    def to_numpy(out: Any) -> np.ndarray:
        flow = out[0] if isinstance(out, (tuple, list)) else out
        return flow.detach().float().cpu().numpy().transpose(0, 2, 3, 1)

    def train_step(batch: dict, lr: float, compile: bool = False) -> Callable[[], Any]:
        return torch_train.make_train_step(model, batch, lr, device, compile)

    return TorchReference(model, make_input, to_numpy,
                          "weights_convert.torch_model.DeepLiDARFlow, weights by "
                          "weights_convert.convert.flax_to_torch_state_dict", train_step)
