"""One fine-tuning step of the PyTorch reference: the JAX train step's loss, backward, Adam.

The run-time harness times it beside ``deepliflow_jax.train.trainer.Trainer.step_fn``
(configs ``torch_train_step`` and ``torch_compile_train_step``), on the same weights
and batch. What the step computes is the JAX step's objective in NCHW:

* the original's multi-scale robust KITTI loss (``deepliflow_jax.losses.kitti_loss``,
  from ``deeplidarflow.get_loss_KITTI``): each of the 5 flows (levels 6..2, network
  units) resized to the ground truth's size with TF1's legacy bilinear resize, the
  robust error ``(sum_c |pred - gt / 20|_c + 0.01) ** 0.4`` averaged over the pixels
  with ``gt d0 > 0`` pooled over the batch, levels weighted 1, 1, 1, 2, 4;
* plus ``deepliflow_jax.losses.l2_regularizer``: ``1e-4 * sum(w ** 2) / 2`` over the
  convolution kernels (the tensors whose Flax name is ``kernel`` or ``kernels``; no bias);
* backward, then ``torch.optim.Adam`` with optax.adam's defaults (betas 0.9, 0.999,
  eps 1e-8) at the given learning rate.

The model has no dropout or batch norm: train mode computes what eval mode does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch

from deepliflow_jax.losses import (
    FLOW_SCALE,
    KITTI_WEIGHTS,
    REG_SCALE,
    ROBUST_EPS,
    ROBUST_POWER,
    is_conv_kernel,
)
from weights_convert.torch_model import frames_to_nchw, resize_bilinear_legacy
from weights_convert.torch_names import torch_name_table

#: optax.adam's defaults (``b1``, ``b2``, ``eps``), which the JAX train step uses
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def kitti_loss(flows: Sequence[torch.Tensor], gt: torch.Tensor,
               weights: Sequence[float] = KITTI_WEIGHTS) -> torch.Tensor:
    """``deepliflow_jax.losses.kitti_loss`` on NCHW tensors.

    Args:
      flows: 5 predictions ``[B, 4, h_l, w_l]`` (levels 6..2), network units.
      gt: ``[B, 4, H, W]`` ground truth in pixels (zero where invalid).
      weights: per-level weights.

    Returns:
      Scalar loss (a level adds 0 when no pixel of the batch is valid, as in the JAX loss).

    Raises:
      ValueError: not 5 levels, or a tensor that is not ``[B, 4, ., .]`` with ``gt``'s B.
    """
    if len(flows) != len(weights):
        raise ValueError(f"flows must hold {len(weights)} levels (6, 5, 4, 3, 2), got "
                         f"{len(flows)}")
    if gt.dim() != 4 or gt.shape[1] != 4:
        raise ValueError(f"gt must be [B, 4, H, W], got {tuple(gt.shape)}")
    for level, flow in zip((6, 5, 4, 3, 2), flows, strict=True):
        if flow.dim() != 4 or flow.shape[1] != 4 or flow.shape[0] != gt.shape[0]:
            raise ValueError(f"flows (level {level}) must be [B, 4, h, w] with B = "
                             f"{gt.shape[0]}, got {tuple(flow.shape)}")
    mask = (gt[:, 2] > 0).to(gt.dtype)
    count = mask.sum().clamp(min=1.0)
    target = gt / FLOW_SCALE
    loss = gt.new_zeros(())
    for weight, flow in zip(weights, flows, strict=True):
        pred = resize_bilinear_legacy(flow, tuple(gt.shape[2:]))
        error = (pred - target).abs().sum(1)
        robust = (error + ROBUST_EPS) ** ROBUST_POWER
        loss = loss + weight * (robust * mask).sum() / count
    return loss


def regularized(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters ``deepliflow_jax.losses.l2_regularizer`` selects, by the name table.

    A PyTorch tensor is regularized when its Flax path (``torch_names``) is a conv kernel
    by ``losses.is_conv_kernel``: every ``weight`` of a conv, transposed conv or
    normalized conv (raw, before softplus); no bias.

    Raises:
      KeyError: naming a parameter the name table does not know.
    """
    table = torch_name_table()
    out = []
    for name, param in model.named_parameters():
        if name not in table:
            raise KeyError(f"parameter {name!r} is not in weights_convert.torch_names")
        if is_conv_kernel(tuple(table[name].path.split("/"))):
            out.append(param)
    return out


def l2_regularizer(params: Sequence[torch.Tensor], scale: float = REG_SCALE) -> torch.Tensor:
    """``scale * sum(w ** 2) / 2`` over ``params`` (``losses.l2_regularizer``)."""
    return scale * sum(p.square().sum() for p in params) / 2.0


def train_objective(model: torch.nn.Module, x: torch.Tensor, gt: torch.Tensor,
                    reg_params: Sequence[torch.Tensor], reg_scale: float = 1.0) -> torch.Tensor:
    """KITTI loss of ``model(x)``'s 5 flows against ``gt`` plus the L2 term.

    Args:
      model: ``weights_convert.torch_model.DeepLiDARFlow``.
      x: frames ``[B, 2, 4, H, W]``.
      gt: ``[B, 4, H, W]`` in pixels.
      reg_params: :func:`regularized` of ``model``.
      reg_scale: multiplies the L2 term (the JAX step's ``batch["reg_scale"]``).

    Returns:
      The scalar objective the JAX train step differentiates.
    """
    # the loss reads only aux["flows"]: ask for the output at level 2's own size, so the
    # full-size resize (dead code that XLA drops from the JAX step) is skipped
    level2 = (x.shape[-2] // 4, x.shape[-1] // 4)
    _, aux = model(x, out_size=level2)
    return kitti_loss(aux["flows"], gt) + reg_scale * l2_regularizer(reg_params)


def make_train_step(module: torch.nn.Module, batch: dict, lr: float, device: str = "cpu",
                    compile: bool = False) -> Callable[[], torch.Tensor]:
    """One Adam step per call on a copy of ``module`` and a fixed batch.

    Args:
      module: the reference model (copied: the caller's weights do not move).
      batch: ``{"frames": [B, 2, H, W, 4], "gt": [B, H, W, 4]}`` numpy (the Flax layout,
        ``deepliflow_jax.profile.inputs.make_train_batch``); an optional ``reg_scale``
        scales the L2 term, as in the JAX step (default 1).
      lr: Adam's learning rate.
      device: where the copy and the batch live.
      compile: ``torch.compile`` the objective (forward and, through AOTAutograd, its
        backward) and the optimizer step.

    Returns:
      ``step() -> loss`` (the objective before the update, detached): zero the
      gradients, forward in train mode, backward, ``Adam.step``.
    """
    model = copy.deepcopy(module).to(device).train()
    x = frames_to_nchw(batch["frames"]).to(device)
    gt = torch.from_numpy(np.ascontiguousarray(
        np.asarray(batch["gt"], np.float32).transpose(0, 3, 1, 2))).to(device)
    reg_params = regularized(model)
    reg_scale = float(batch.get("reg_scale", 1.0))
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)

    def objective():
        return train_objective(model, x, gt, reg_params, reg_scale)

    def update():
        opt.step()

    if compile:
        objective, update = torch.compile(objective), torch.compile(update)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        update()
        return loss.detach()

    step.model, step.optimizer = model, opt  # for tests and inspection
    return step
