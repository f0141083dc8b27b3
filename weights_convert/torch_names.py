"""Name table: "PyTorch DeepLiDARFlow" state_dict keys -> Flax parameter paths.

The PyTorch layout (``weights_convert.torch_model``, documented in ``NAMING.md``)
uses the Flax module names joined with dots and PyTorch's leaf names:

* conv ``<scope>.weight`` ``[out, in, kh, kw]`` -> ``<scope>/kernel`` ``[kh, kw, in, out]``
* transposed conv ``<scope>.weight`` ``[in, out, kh, kw]`` (``nn.ConvTranspose2d``)
  -> ``<scope>/kernel`` ``[kh, kw, out, in]`` (TF's transposed layout)
* ``<scope>.bias`` ``[out]`` -> ``<scope>/bias``
* normalized conv ``<scope>.weight`` (raw, before softplus) ``[out, in, kh, kw]``
  -> ``<scope>/kernels``; ``<scope>.bias0`` / ``<scope>.bias1`` (frame t / t+1)
  -> ``<scope>/biases`` / ``<scope>/biases_1``

Both 4-D layouts convert with the same axis permutation (``PT_TO_FLAX``), since
PyTorch and TF put the conv's "forward input" channels at the same place
relative to the spatial axes; the table still records the kind of every entry.
This module does not import torch.
"""

from __future__ import annotations

from typing import NamedTuple

from deepliflow_jax.model.context import CONTEXT_LAYERS
from deepliflow_jax.model.estimator import ESTIMATOR_FILTERS

PT_TO_FLAX = (2, 3, 1, 0)  # OIHW -> HWIO and [in, out, kh, kw] -> [kh, kw, out, in]
FLAX_TO_PT = (3, 2, 0, 1)  # its inverse

KINDS = ("conv_kernel", "deconv_kernel", "nconv_kernel", "bias")


class Entry(NamedTuple):
    """One table line: the Flax path (``/``-separated) and the tensor kind."""

    path: str
    kind: str  # one of KINDS

    @property
    def is_kernel(self) -> bool:
        return self.kind != "bias"


def _layer(table: dict, scope: str, transposed: bool = False) -> None:
    flax = scope.replace(".", "/")
    table[scope + ".weight"] = Entry(flax + "/kernel",
                                     "deconv_kernel" if transposed else "conv_kernel")
    table[scope + ".bias"] = Entry(flax + "/bias", "bias")


def _nconv(table: dict, scope: str) -> None:
    flax = scope.replace(".", "/")
    table[scope + ".weight"] = Entry(flax + "/kernels", "nconv_kernel")
    table[scope + ".bias0"] = Entry(flax + "/biases", "bias")
    table[scope + ".bias1"] = Entry(flax + "/biases_1", "bias")


def torch_name_table() -> dict[str, Entry]:
    """``{PyTorch state_dict key: Entry(flax path, kind)}`` for all 257 tensors."""
    t: dict[str, Entry] = {}
    g = "guidance_network."
    for i in range(1, 7):  # RGB encoder
        for s in "ab":
            _layer(t, f"{g}rgb_encoder.conv{i}{s}")
    for i in range(6):  # sparse-depth encoder
        _nconv(t, f"{g}depth_encoder.nconv{i}b")
    _nconv(t, f"{g}depth_decoder.nconv_pyr_top")
    for i in range(4, 0, -1):
        _nconv(t, f"{g}depth_decoder.upsampling{i + 1}to{i}")
        _nconv(t, f"{g}depth_decoder.refine{i}")
    _layer(t, f"{g}rgb_decoder.conv_pyr_top")
    for i in range(4, 0, -1):
        _layer(t, f"{g}rgb_decoder.deconv_upsample{i + 1}to{i}", transposed=True)
        _layer(t, f"{g}rgb_decoder.conv_refine{i}")
    for i in range(5):  # fusion, levels 6..2
        for kind in ("depth", "concat"):
            for s in "abcd":
                _layer(t, f"{g}fusion.conv{kind}_refine_{s}{i}")
    for level in (6, 5, 4, 3, 2):
        scope = f"scene_flow_estimator_{level}."
        for name, _ in ESTIMATOR_FILTERS:
            _layer(t, scope + name)
        _layer(t, scope + "conv_w")
        if level != 2:
            _layer(t, scope + "deconv_up_flow", transposed=True)
            _layer(t, scope + "deconv_up_feature", transposed=True)
    for i in range(1, len(CONTEXT_LAYERS) + 1):
        _layer(t, f"context_network.conv{i}")
    return t
