"""DeepLiDARFlow: the whole network, as ``DeepLiDARFlowNet`` of the original.

Input handling (original ``deeplidarflow.py`` / ``inference.py``):
* frames ``[B, 2, H, W, 4]``: RGB in [0, 1] minus the dataset mean, and the
  sparse disparity normalised by the dataset mean/std (0 = no LiDAR point);
* optionally resized to ``interp_size`` with TF1 legacy *nearest* (KITTI:
  375x1242 -> 384x1216), all four channels;
* LiDAR confidence = ``disparity != 0`` (``cast(cast(disp, bool), float)``), so
  a point whose normalised disparity is exactly 0 counts as missing, as there.

Coarse-to-fine over levels 6..2: warp frame t+1 features by the upsampled flow
(``up_flow[..., :2] * 20 / 2**level``; no warp at level 6), cost volume
(r = 4, leaky ReLU 0.1), estimator on [cost, feat t, warped feat t+1, up_flow,
up_feature]. The context network refines level 2. Output: ``20 *`` TF1 legacy
*bilinear* resize of the refined flow to ``out_size`` (flow values are not
rescaled for the resolution change, as in the original).

Channel widths (structured pruning): ``widths`` maps layer paths to output
channel counts (see :mod:`deepliflow_jax.model.widths`); None (default) is the
original network with the original parameter tree. The cost volume is the mean
over the channels the fused features *have*: a model whose fused features were
pruned from C to C' channels computes ``C / C'`` times the cost volume of the
full model with those channels zeroed (the leaky ReLU after it is positively
homogeneous, so :mod:`deepliflow_jax.compress.structured` folds ``C' / C`` into
the cost-volume rows of the estimator's ``conv1``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deepliflow_jax.model.config import FLOW_SCALE, LEVELS, SEARCH_RANGE, SIZE_MULTIPLE
from deepliflow_jax.model.context import ContextNetwork
from deepliflow_jax.model.cost_volume import correlation_for
from deepliflow_jax.model.estimator import SceneFlowEstimator
from deepliflow_jax.model.guidance import GuidanceNetwork
from deepliflow_jax.model.layers import (
    CONV_IMPL_DEFAULT,
    check_conv_impl,
    leaky_relu,
)
from deepliflow_jax.model.resize import resize_bilinear_legacy, resize_nearest_legacy
from deepliflow_jax.model.warping import bilinear_warp
from deepliflow_jax.model.widths import Widths, freeze_widths, scoped

__all__ = ["DeepLiDARFlow", "FLOW_SCALE", "LEVELS", "SEARCH_RANGE", "SIZE_MULTIPLE"]


class DeepLiDARFlow(nn.Module):
    """The network. ``__call__(frames, interp_size=None, out_size=None) -> (sf, aux)``.

    Returns:
      ``sceneflow`` ``[B, h, w, 4]`` (u, v, d0, d1) in pixels at ``out_size``
      (default: the input size), and ``aux`` with ``flows`` (tuple of the five
      per-level predictions, levels 6, 5, 4, 3 and refined 2, network units),
      ``levels`` (the same by name, plus ``flow_level2_unrefined``) and
      ``confidences`` (depth-decoder confidences of frame t, levels 6..2).

    ``conv_impl`` (default ``"auto"``: the fastest exact form on the backend the
    model is traced for, :func:`~deepliflow_jax.model.layers.resolve_conv_impl`;
    ``"xla"`` is the plain reference): how the conv layers are computed (see
    :mod:`deepliflow_jax.model.layers`); the same function and parameter tree. An
    invalid value raises ValueError at construction.
    """

    search_range: int = SEARCH_RANGE
    dtype: Any = jnp.float32
    widths: Widths = None
    conv_impl: str = CONV_IMPL_DEFAULT

    def __post_init__(self):
        # a dict is accepted and frozen (module attributes must be hashable)
        object.__setattr__(self, "widths", freeze_widths(self.widths))
        object.__setattr__(self, "conv_impl", check_conv_impl(self.conv_impl))
        correlation_for(self.conv_impl)  # refuses two cost-volume forms at construction
        super().__post_init__()

    @nn.compact
    def __call__(self, frames: jnp.ndarray, interp_size=None, out_size=None):
        b, _, h, w, _ = frames.shape
        out_size = tuple(out_size) if out_size is not None else (h, w)
        # both frames through the shared guidance network as one batch, frame t first
        x = jnp.concatenate([frames[:, 0], frames[:, 1]], axis=0)
        if interp_size is not None:
            x = resize_nearest_legacy(x, tuple(interp_size))
        rgb, disp = x[..., :3], x[..., 3:4]
        conf = (disp != 0).astype(disp.dtype)

        widths = self.widths
        feats, confidences = GuidanceNetwork(
            widths=scoped(widths, "guidance_network"), dtype=self.dtype,
            conv_impl=self.conv_impl, name="guidance_network"
        )(rgb, disp, conf)
        flows, levels = [], {}
        up_flow = up_feature = None
        for i, level in enumerate(LEVELS):
            f1, f2 = feats[i][:b], feats[i][b:]
            if up_flow is None:
                warped = f2
            else:
                scale = FLOW_SCALE / 2**level
                warped = bilinear_warp(f2, up_flow[..., :2].astype(jnp.float32) * scale)
            correlate = correlation_for(self.conv_impl)
            cv = leaky_relu(correlate(f1, warped.astype(f1.dtype), self.search_range))
            parts = [cv, f1, warped.astype(f1.dtype)]
            if up_flow is not None:
                parts += [up_flow, up_feature]
            is_output = level == LEVELS[-1]
            flow, est_feat, up_flow, up_feature = SceneFlowEstimator(
                is_output=is_output, widths=scoped(widths, f"scene_flow_estimator_{level}"),
                dtype=self.dtype, conv_impl=self.conv_impl, name=f"scene_flow_estimator_{level}"
            )(jnp.concatenate(parts, axis=-1))
            if not is_output:
                flows.append(flow)
                levels[f"flow_level{level}"] = flow
        levels["flow_level2_unrefined"] = flow
        context_in = jnp.concatenate([est_feat, flow], axis=-1)
        refined = flow + ContextNetwork(widths=scoped(widths, "context_network"), dtype=self.dtype,
                                        conv_impl=self.conv_impl,
                                        name="context_network")(context_in)
        refined = refined.astype(jnp.float32)
        flows.append(refined)
        levels["flow_level2"] = refined
        sceneflow = FLOW_SCALE * resize_bilinear_legacy(refined, out_size)
        aux = {
            "flows": tuple(f.astype(jnp.float32) for f in flows),
            "levels": levels,
            "confidences": tuple(c[:b] for c in confidences),
        }
        return sceneflow, aux
