"""Name table: original TF 1.14 release variables -> Flax parameter paths.

Built from the architecture, block by block, so that each line of the table
reads like the original code that created the variable. The only layout change
is the normalized-conv bias, stored by the original as ``[1, 1, 1, C]``
(``tf.Variable(tf.zeros([1, 1, 1, C]))``); every kernel is already HWIO (and
``[kh, kw, out, in]`` for transposed convs, which the Flax ``ConvTranspose``
keeps).

Second frame: the original's normalized-conv biases are plain ``tf.Variable``s,
created anew when the guidance network runs for frame t+1 in the uniquified
name scopes ``rgb_guidance_connections_1`` and ``final_scene_flow_tensors_1``;
they map to ``biases_1``.
"""

from __future__ import annotations

from typing import NamedTuple

from deepliflow_jax.model.context import CONTEXT_LAYERS
from deepliflow_jax.model.estimator import ESTIMATOR_FILTERS

TF_PREFIX = "model/"
_G = "model/guidance_network/"
_RGB = _G + "rgb_features_encoder_decoder/"
_DEPTH = (_G + "rgb_guidance_connections/", _G + "rgb_guidance_connections_1/")
_FINAL = (_G + "final_scene_flow_tensors/", _G + "final_scene_flow_tensors_1/")


class Entry(NamedTuple):
    """One table line: the Flax path and whether the source is a ``[1,1,1,C]`` bias."""

    path: str
    squeeze_bias: bool = False


def _layer(table: dict, tf_scope: str, flax_scope: str) -> None:
    table[tf_scope + "/kernel"] = Entry(flax_scope + "/kernel")
    table[tf_scope + "/bias"] = Entry(flax_scope + "/bias")


def _nconv(table: dict, kernel: str, bias: tuple[str, str], flax_scope: str) -> None:
    table[kernel] = Entry(flax_scope + "/kernels")
    table[bias[0]] = Entry(flax_scope + "/biases", squeeze_bias=True)
    table[bias[1]] = Entry(flax_scope + "/biases_1", squeeze_bias=True)


def tf_name_table() -> dict[str, Entry]:
    """``{original TF variable name: Entry(flax path, squeeze_bias)}`` for all 257."""
    t: dict[str, Entry] = {}
    # networks.get_features_encoder_rgb
    for i in range(1, 7):
        for s in "ab":
            _layer(t, f"{_RGB}conv{i}{s}", f"guidance_network/rgb_encoder/conv{i}{s}")
    # networks.get_features_encoder_depth: kernels_{i}b / biases{i}b
    for i in range(6):
        _nconv(t, f"{_DEPTH[0]}kernels_{i}b", (f"{_DEPTH[0]}biases{i}b", f"{_DEPTH[1]}biases{i}b"),
               f"guidance_network/depth_encoder/nconv{i}b")
    # networks.get_decoded_features_depth
    dec = "guidance_network/depth_decoder/"
    _nconv(t, f"{_FINAL[0]}kernels__pyr_top",
           (f"{_FINAL[0]}biases_pyr_top", f"{_FINAL[1]}biases_pyr_top"), dec + "nconv_pyr_top")
    for i in range(4, 0, -1):
        up, num = f"upsampling{i + 1}to{i}", f"{i + 2}to{i + 1}"
        _nconv(t, f"{_FINAL[0]}{up}/kernels_{num}",
               (f"{_FINAL[0]}{up}/biases{num}", f"{_FINAL[1]}{up}/biases{num}"), dec + up)
        ref = f"refine{i}"
        _nconv(t, f"{_FINAL[0]}{ref}/kernels_refinement",
               (f"{_FINAL[0]}{ref}/biasesrefinement", f"{_FINAL[1]}{ref}/biasesrefinement"),
               dec + ref)
    # networks.get_decoded_features_rgb (built in the final_scene_flow_tensors scope)
    rgbd = "guidance_network/rgb_decoder/"
    _layer(t, f"{_FINAL[0]}conv_pyr_top", rgbd + "conv_pyr_top")
    for i in range(4, 0, -1):
        _layer(t, f"{_FINAL[0]}deconv_upsample{i + 1}to{i}", f"{rgbd}deconv_upsample{i + 1}to{i}")
        _layer(t, f"{_FINAL[0]}conv_refine{i}", f"{rgbd}conv_refine{i}")
    # networks.final_network: the fusion module
    for i in range(5):
        for kind in ("depth", "concat"):
            for s in "abcd":
                name = f"conv{kind}_refine_{s}{i}"
                _layer(t, _FINAL[0] + name, "guidance_network/fusion/" + name)
    # modules.SceneFlowEstimator, one scope per level
    for level in (6, 5, 4, 3, 2):
        scope = f"scene_flow_estimator_{level}"
        names = [n for n, _ in ESTIMATOR_FILTERS] + ["conv_w"]
        if level != 2:
            names += ["deconv_up_flow", "deconv_up_feature"]
        for n in names:
            _layer(t, f"{TF_PREFIX}{scope}/{n}", f"{scope}/{n}")
    # modules.ContextNetwork
    for i in range(1, len(CONTEXT_LAYERS) + 1):
        _layer(t, f"{TF_PREFIX}context_network/conv{i}", f"context_network/conv{i}")
    return t
