"""Training losses as the original (``deeplidarflow.get_loss_KITTI`` / ``get_loss_FT3D``).

The model's ``aux["flows"]`` holds the raw predictions of levels 6, 5, 4, 3 and the
context-refined level 2, in network units (pixels / 20). Both losses compare them with
the ground truth ``(u, v, d0, d1)`` divided by 20:

* KITTI: each prediction is resized to the ground-truth size with TF1's legacy bilinear
  resize; on the pixels with ``gt[..., 2] > 0`` (pooled over the batch) the robust error
  ``(sum_c |pred - gt/20|_c + 0.01) ** 0.4`` is averaged; the level losses are summed
  with weights (1, 1, 1, 2, 4).
* FlyingThings3D: the ground truth / 20 is resized to each level (same legacy bilinear);
  the per-pixel L2 norm is summed over the image, averaged over the batch and weighted
  (0.32, 0.08, 0.02, 0.01, 0.005).

The original adds ``tf.contrib.layers.l2_regularizer(1e-4)`` of every convolution kernel
(``tf.layers`` conv / transposed conv kernels and the raw normalized-convolution
``kernels``; biases are not regularised): ``l2_regularizer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from deepliflow_jax.model.resize import resize_bilinear_legacy

FLOW_SCALE = 20.0
KITTI_WEIGHTS = (1.0, 1.0, 1.0, 2.0, 4.0)
FT3D_WEIGHTS = (0.32, 0.08, 0.02, 0.01, 0.005)
ROBUST_EPS = 0.01
ROBUST_POWER = 0.4
REG_SCALE = 1e-4
KERNEL_NAMES = ("kernel", "kernels")


def _check_inputs(flows: Sequence[jnp.ndarray], gt: jnp.ndarray, weights) -> None:
    if len(flows) != len(weights):
        raise ValueError(f"flows must hold {len(weights)} levels (6, 5, 4, 3, 2), got "
                         f"{len(flows)}")
    if gt.ndim != 4 or gt.shape[-1] != 4:
        raise ValueError(f"gt must be [B, H, W, 4], got {tuple(gt.shape)}")
    for level, flow in zip((6, 5, 4, 3, 2), flows, strict=True):
        if flow.ndim != 4 or flow.shape[-1] != 4 or flow.shape[0] != gt.shape[0]:
            raise ValueError(f"flows (level {level}) must be [B, h, w, 4] with B = "
                             f"{gt.shape[0]}, got {tuple(flow.shape)}")


def kitti_loss(flows: Sequence[jnp.ndarray], gt: jnp.ndarray,
               weights: Sequence[float] = KITTI_WEIGHTS) -> jnp.ndarray:
    """The original's multi-scale robust KITTI loss (``get_loss_KITTI``).

    Args:
      flows: 5 predictions ``[B, h_l, w_l, 4]`` (levels 6..2), network units.
      gt: ``[B, H, W, 4]`` ground truth in pixels; a pixel counts where ``gt[..., 2] > 0``,
        and what the others hold (zeros, NaN, inf) reaches neither the loss nor its
        gradient.
      weights: per-level weights.

    Returns:
      Scalar loss. With no valid pixel in the batch the original's mean is NaN; this
      returns 0 for that level instead so a training step stays finite.
    """
    _check_inputs(flows, gt, weights)
    mask = gt[..., 2] > 0
    count = jnp.sum(mask.astype(gt.dtype))
    # select, not multiply: NaN / inf at a masked pixel would reach the loss and its gradient
    target = jnp.where(mask[..., None], gt, 0.0) / FLOW_SCALE
    loss = jnp.zeros((), gt.dtype)
    for weight, flow in zip(weights, flows, strict=True):
        pred = resize_bilinear_legacy(flow, gt.shape[1:3])
        error = jnp.sum(jnp.abs(pred - target), axis=-1)
        robust = (error + ROBUST_EPS) ** ROBUST_POWER
        loss = loss + weight * jnp.sum(jnp.where(mask, robust, 0.0)) / jnp.maximum(count, 1.0)
    return loss


def _safe_norm(x: jnp.ndarray) -> jnp.ndarray:
    # Exact norm, with a zero (not NaN) gradient where x == 0.
    sq = jnp.sum(x**2, axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def ft3d_loss(flows: Sequence[jnp.ndarray], gt: jnp.ndarray,
              weights: Sequence[float] = FT3D_WEIGHTS) -> jnp.ndarray:
    """The original's multi-scale L2 FlyingThings3D loss (``get_loss_FT3D``).

    Args:
      flows: 5 predictions ``[B, h_l, w_l, 4]`` (levels 6..2), network units.
      gt: ``[B, H, W, 4]`` ground truth in pixels.
      weights: per-level weights.

    Returns:
      Scalar loss: sum over levels of weight * mean over the batch of the per-image sum
      of ``||pred - resize(gt / 20)||_2``.
    """
    _check_inputs(flows, gt, weights)
    target = gt / FLOW_SCALE
    loss = jnp.zeros((), gt.dtype)
    for weight, flow in zip(weights, flows, strict=True):
        resized = resize_bilinear_legacy(target, flow.shape[1:3])
        per_image = jnp.sum(_safe_norm(flow - resized), axis=(1, 2))
        loss = loss + weight * jnp.mean(per_image)
    return loss


def path_names(path) -> tuple[str, ...]:
    """A ``jax.tree_util`` key path as a tuple of strings (dict keys, attribute names)."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    return tuple(names)


def is_conv_kernel(path: tuple[str, ...]) -> bool:
    """Default selection: leaves named ``kernel`` (convs) or ``kernels`` (normalized convs)."""
    return bool(path) and path[-1] in KERNEL_NAMES


def l2_regularizer(params, scale: float = REG_SCALE,
                   include: Callable[[tuple[str, ...]], bool] = is_conv_kernel) -> jnp.ndarray:
    """``scale * sum(w ** 2) / 2`` over the selected leaves (tf.contrib l2_regularizer).

    Args:
      params: nested-dict pytree of parameters.
      scale: regularisation constant (the original's 1e-4).
      include: predicate on a leaf's path (tuple of key strings, e.g.
        ``("params", "guidance", "conv1a", "kernel")``).

    Returns:
      Scalar (0 when nothing is selected).
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    total = jnp.zeros((), jnp.float32)
    for path, leaf in leaves:
        if include(path_names(path)):
            total = total + jnp.sum(jnp.square(jnp.asarray(leaf, jnp.float32)))
    return scale * total / 2.0
