"""PyTorch reference implementation of DeepLiDARFlow ("PyTorch DeepLiDARFlow").

Same semantics as the Flax port (``deepliflow_jax.model``) and the original TF
release, in NCHW. Its ``state_dict`` is the layout that ``weights_convert``
reads and writes (see ``NAMING.md``): module names mirror the Flax parameter
tree, e.g. ``guidance_network.rgb_encoder.conv1a.weight``.

Conventions of the original, and how they are met here:

* TF 'SAME' padding. For stride 1 (odd kernels, any dilation) it is symmetric,
  ``dilation * (k - 1) / 2``, and passed to ``F.conv2d``. For stride 2 TF pads
  ``total = max((ceil(n / s) - 1) * s + k - n, 0)`` with the *smaller* half
  first (``total // 2`` top/left, the rest bottom/right): for the 3x3 stride-2
  convs on even sizes that is (0, 1), which PyTorch's symmetric ``padding=``
  cannot express, so ``TFConv2d`` applies ``F.pad`` with TF's amounts and then a
  ``padding=0`` conv.
* Transposed conv (4x4, stride 2, 'SAME', output exactly 2x): TF computes the
  input-gradient of a forward conv whose TF padding for 2n -> n is (1, 1); that
  is exactly ``nn.ConvTranspose2d(k=4, s=2, padding=1)`` (output
  ``(n - 1) * 2 - 2 + 4 = 2n``), so no extra crop is needed. The TF kernel
  ``[kh, kw, out, in]`` is PyTorch's ``[in, out, kh, kw]`` permuted.
* Normalized conv: raw kernels (``weight``) go through softplus; numerator
  ``conv(d * c)`` and denominator ``conv(c)`` share one conv over a 2x batch;
  per-frame biases ``bias0`` (frame t) and ``bias1`` (frame t+1); leaky ReLU
  0.2; output confidence ``conv(c) / sum(W)``.
* Confidence pooling: per channel and 2x2 window, the first maximum in raster
  order (``argmax``, documented to return the first) picks data and confidence.
* Cost volume ``k = (dy + r) * (2r + 1) + (dx + r)``, mean over channels divided
  by ``(2r + 1)^2``, zero outside; warp with clamped taps and unclamped weights;
  TF1 legacy nearest/bilinear resizes (same index arithmetic as
  ``deepliflow_jax.model.resize``, whose numpy helpers are reused).

Both frames run through the shared guidance network as one batch ``[2B, ...]``
(frame t first), as in the Flax port.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepliflow_jax.model.resize import legacy_bilinear_weights, legacy_nearest_indices

LEAKY_SLOPE = 0.1
NCONV_SLOPE = 0.2
NCONV_EPS = 1e-5
FLOW_SCALE = 20.0
LEVELS = (6, 5, 4, 3, 2)
SEARCH_RANGE = 4
PYRAMID_FILTERS = (16, 32, 64, 96, 128, 196)
DEPTH_REFINE_FILTERS = 16
FUSED_FILTERS = 64
ESTIMATOR_FILTERS = (("conv1", 128), ("conv2", 128), ("conv3", 96), ("conv4", 64),
                     ("conv_f", 32))
CONTEXT_LAYERS = ((128, 1), (128, 2), (128, 4), (96, 8), (64, 16), (32, 1), (4, 1))
SF_CHANNELS = 4


def tf_same_padding(size: int, ksize: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding ``(before, after)`` of one spatial dimension."""
    eff = (ksize - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


class TFConv2d(nn.Conv2d):
    """``tf.layers.conv2d`` with 'SAME' padding, bias and optional leaky ReLU 0.1."""

    def __init__(self, cin: int, cout: int, ksize: int = 3, stride: int = 1,
                 dilation: int = 1, activation: bool = True):
        # stride 1 with an odd kernel: TF's padding is symmetric, let conv2d do it
        pad = dilation * (ksize - 1) // 2 if stride == 1 else 0
        super().__init__(cin, cout, ksize, stride=stride, padding=pad, dilation=dilation)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] != 1:
            top, bottom = tf_same_padding(x.shape[2], self.kernel_size[0], self.stride[0],
                                          self.dilation[0])
            left, right = tf_same_padding(x.shape[3], self.kernel_size[1], self.stride[1],
                                          self.dilation[1])
            x = F.pad(x, (left, right, top, bottom))
        y = super().forward(x)
        return F.leaky_relu(y, LEAKY_SLOPE) if self.activation else y


class TFConvTranspose2d(nn.ConvTranspose2d):
    """``tf.layers.conv2d_transpose`` 4x4 stride 2 'SAME' (output exactly 2x)."""

    def __init__(self, cin: int, cout: int, activation: bool = True):
        super().__init__(cin, cout, 4, stride=2, padding=1)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return F.leaky_relu(y, LEAKY_SLOPE) if self.activation else y


class NormalizedConv2d(nn.Module):
    """3x3 'SAME' normalized conv on ``(data, conf)`` of both frames ``[2B, C, H, W]``."""

    def __init__(self, cin: int, cout: int, ksize: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, ksize, ksize))
        self.bias0 = nn.Parameter(torch.zeros(cout))  # frame t
        self.bias1 = nn.Parameter(torch.zeros(cout))  # frame t+1
        nn.init.xavier_uniform_(self.weight)
        self.padding = ksize // 2

    def forward(self, data: torch.Tensor, conf: torch.Tensor):
        w = F.softplus(self.weight)
        n = data.shape[0]
        if n % 2:
            raise ValueError(f"normalized conv expects both frames stacked on the batch axis, "
                             f"got batch {n}")
        both = F.conv2d(torch.cat([data * conf, conf], 0), w, padding=self.padding)
        numerator, denominator = both[:n], both[n:]
        nconv = numerator / (denominator + NCONV_EPS)
        c, h, wd = nconv.shape[1:]
        biases = torch.stack([self.bias0, self.bias1]).view(2, 1, c, 1, 1)
        nconv = (nconv.view(2, n // 2, c, h, wd) + biases).view(n, c, h, wd)
        nconv = F.leaky_relu(nconv, NCONV_SLOPE)
        cout = denominator / w.sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
        return nconv, cout


def confidence_max_pool(data: torch.Tensor, conf: torch.Tensor):
    """2x2/2 max pool of ``conf`` per channel; ``data`` at the (first) maximum."""
    n, c, h, w = conf.shape
    h2, w2 = h // 2, w // 2

    def windows(x):
        x = x[:, :, : 2 * h2, : 2 * w2].reshape(n, c, h2, 2, w2, 2)
        return x.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h2, w2, 4)

    cw, dw = windows(conf), windows(data)
    best = cw.argmax(dim=-1, keepdim=True)
    return dw.gather(-1, best).squeeze(-1), cw.gather(-1, best).squeeze(-1)


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """Legacy nearest resize to exactly twice the size (a repeat)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def resize_nearest_legacy(x: torch.Tensor, size) -> torch.Tensor:
    """TF1 ``resize_nearest_neighbor(align_corners=False)`` on NCHW."""
    h, w = size
    if (h, w) == tuple(x.shape[2:]):
        return x
    iy = torch.as_tensor(legacy_nearest_indices(h, x.shape[2]), device=x.device)
    ix = torch.as_tensor(legacy_nearest_indices(w, x.shape[3]), device=x.device)
    return x.index_select(2, iy).index_select(3, ix)


def resize_bilinear_legacy(x: torch.Tensor, size) -> torch.Tensor:
    """TF1 ``resize_bilinear(align_corners=False)`` on NCHW (same arithmetic as the Flax port)."""
    h, w = size
    if (h, w) == tuple(x.shape[2:]):
        return x
    dev = x.device
    y0, y1, fy = (torch.as_tensor(a, device=dev) for a in legacy_bilinear_weights(h, x.shape[2]))
    x0, x1, fx = (torch.as_tensor(a, device=dev) for a in legacy_bilinear_weights(w, x.shape[3]))
    fx = fx.to(x.dtype).view(1, 1, 1, -1)
    fy = fy.to(x.dtype).view(1, 1, -1, 1)
    top, bottom = x.index_select(2, y0), x.index_select(2, y1)
    tl, tr = top.index_select(3, x0), top.index_select(3, x1)
    bl, br = bottom.index_select(3, x0), bottom.index_select(3, x1)
    top = tl + (tr - tl) * fx
    bottom = bl + (br - bl) * fx
    return top + (bottom - top) * fy


def bilinear_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Samples ``x [B, C, H, W]`` at ``(y + v, x + u)``, ``flow [B, 2, H, W]`` = (u, v).

    Taps clamped to the image, weights from the unclamped fractions (edge replication).
    """
    b, c, h, w = x.shape
    fx, fy = flow[:, 0], flow[:, 1]
    fx0, fy0 = torch.floor(fx), torch.floor(fy)
    gy = torch.arange(h, dtype=fx.dtype, device=x.device).view(1, h, 1)
    gx = torch.arange(w, dtype=fx.dtype, device=x.device).view(1, 1, w)
    y0 = (gy + fy0).clamp(0, h - 1).long()
    y1 = (gy + fy0 + 1).clamp(0, h - 1).long()
    x0 = (gx + fx0).clamp(0, w - 1).long()
    x1 = (gx + fx0 + 1).clamp(0, w - 1).long()
    flat = x.reshape(b, c, h * w)

    def tap(yy, xx):
        lin = (yy * w + xx).view(b, 1, h * w).expand(b, c, h * w)
        return flat.gather(2, lin).view(b, c, h, w)

    wx1, wy1 = fx - fx0, fy - fy0
    wx0, wy0 = (fx0 + 1) - fx, (fy0 + 1) - fy
    return ((wy0 * wx0).unsqueeze(1) * tap(y0, x0) + (wy0 * wx1).unsqueeze(1) * tap(y0, x1)
            + (wy1 * wx0).unsqueeze(1) * tap(y1, x0) + (wy1 * wx1).unsqueeze(1) * tap(y1, x1))


def cost_volume(x: torch.Tensor, warped: torch.Tensor, search_range: int = SEARCH_RANGE):
    """``[B, (2r+1)^2, H, W]`` correlation; channel ``dy * (2r+1) + dx`` (dy slowest).

    One product per row shift: ``unfold`` gives the 2r+1 column shifts as a view.
    """
    r = search_range
    b, c, h, w = x.shape
    d = 2 * r + 1
    padded = F.pad(warped, (r, r, r, r))
    rows = []
    for dy in range(d):
        shifted = padded[:, :, dy:dy + h].unfold(3, w, 1)  # [B, C, H, d(dx), W]
        rows.append((x.unsqueeze(3) * shifted).sum(1))  # [B, H, d, W]
    out = torch.stack(rows, 1).permute(0, 1, 3, 2, 4).reshape(b, d * d, h, w)
    return out * (1.0 / (c * d * d))


class RGBEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        cin = 3
        for i, f in enumerate(PYRAMID_FILTERS, start=1):
            self.add_module(f"conv{i}a", TFConv2d(cin, f, stride=2))
            self.add_module(f"conv{i}b", TFConv2d(f, f))
            cin = f

    def forward(self, x):
        feats = []
        for i in range(1, len(PYRAMID_FILTERS) + 1):
            x = getattr(self, f"conv{i}b")(getattr(self, f"conv{i}a")(x))
            feats.append(x)
        return feats


class DepthEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        cin = 1
        for i, f in enumerate(PYRAMID_FILTERS):
            self.add_module(f"nconv{i}b", NormalizedConv2d(cin, f))
            cin = f

    def forward(self, data, conf):
        levels = []
        for i in range(len(PYRAMID_FILTERS)):
            data, conf = confidence_max_pool(data, conf)
            data, conf = getattr(self, f"nconv{i}b")(data, conf)
            levels.append((data, conf))
        return levels


class DepthDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        top = PYRAMID_FILTERS[-1]
        self.nconv_pyr_top = NormalizedConv2d(top, top)
        prev = top
        for i in range(4, 0, -1):
            ch = PYRAMID_FILTERS[i]
            self.add_module(f"upsampling{i + 1}to{i}", NormalizedConv2d(prev, ch))
            self.add_module(f"refine{i}", NormalizedConv2d(ch, ch))
            prev = ch

    def forward(self, encoder):
        decoder = [self.nconv_pyr_top(*encoder[-1])]
        for i in range(4, 0, -1):
            data, conf = encoder[i]
            up_d, up_c = getattr(self, f"upsampling{i + 1}to{i}")(*decoder[-1])
            up_d, up_c = upsample_nearest2x(up_d), upsample_nearest2x(up_c)
            decoder.append(getattr(self, f"refine{i}")(up_d + data, up_c + conf))
        return decoder


class RGBDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        top = PYRAMID_FILTERS[-1]
        self.conv_pyr_top = TFConv2d(2 * top, top, ksize=1)
        prev = top
        for i in range(4, 0, -1):
            ch = PYRAMID_FILTERS[i]
            self.add_module(f"deconv_upsample{i + 1}to{i}", TFConvTranspose2d(prev, ch))
            self.add_module(f"conv_refine{i}", TFConv2d(2 * ch, ch))
            prev = ch

    def forward(self, encoder, confidences):
        pyramid = [self.conv_pyr_top(torch.cat([encoder[-1], confidences[0]], 1))]
        for i in range(4, 0, -1):
            up = getattr(self, f"deconv_upsample{i + 1}to{i}")(pyramid[-1])
            x = torch.cat([up + encoder[i], confidences[5 - i]], 1)
            pyramid.append(getattr(self, f"conv_refine{i}")(x))
        return pyramid


class Fusion(nn.Module):
    def __init__(self):
        super().__init__()
        # levels 6..2: RGB and depth data both have the pyramid's channels
        for i, ch in enumerate((PYRAMID_FILTERS[5],) + PYRAMID_FILTERS[4:0:-1]):
            cin = ch
            for s in "abcd":
                self.add_module(f"convdepth_refine_{s}{i}", TFConv2d(cin, DEPTH_REFINE_FILTERS))
                cin = DEPTH_REFINE_FILTERS
            cin = ch + DEPTH_REFINE_FILTERS
            for s in "abcd":
                self.add_module(f"convconcat_refine_{s}{i}", TFConv2d(cin, FUSED_FILTERS))
                cin = FUSED_FILTERS

    def forward(self, rgb_pyramid, depth_pyramid):
        fused = []
        for i, (rgb, (depth, _)) in enumerate(zip(rgb_pyramid, depth_pyramid)):
            x = depth
            for s in "abcd":
                x = getattr(self, f"convdepth_refine_{s}{i}")(x)
            x = torch.cat([rgb, x], 1)
            for s in "abcd":
                x = getattr(self, f"convconcat_refine_{s}{i}")(x)
            fused.append(x)
        return fused


class GuidanceNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.rgb_encoder = RGBEncoder()
        self.depth_encoder = DepthEncoder()
        self.depth_decoder = DepthDecoder()
        self.rgb_decoder = RGBDecoder()
        self.fusion = Fusion()

    def forward(self, rgb, depth, conf):
        rgb_enc = self.rgb_encoder(rgb)
        depth_dec = self.depth_decoder(self.depth_encoder(depth, conf))
        confidences = [c for _, c in depth_dec]
        rgb_dec = self.rgb_decoder(rgb_enc, confidences)
        return self.fusion(rgb_dec, depth_dec), confidences


class SceneFlowEstimator(nn.Module):
    def __init__(self, cin: int, is_output: bool):
        super().__init__()
        self.is_output = is_output
        for name, f in ESTIMATOR_FILTERS:
            self.add_module(name, TFConv2d(cin, f))
            cin = f
        self.conv_w = TFConv2d(cin, SF_CHANNELS, activation=False)
        if not is_output:
            self.deconv_up_flow = TFConvTranspose2d(SF_CHANNELS, SF_CHANNELS, activation=False)
            self.deconv_up_feature = TFConvTranspose2d(cin, SF_CHANNELS, activation=False)

    def forward(self, x):
        for name, _ in ESTIMATOR_FILTERS:
            x = getattr(self, name)(x)
        flow = self.conv_w(x)
        if self.is_output:
            return flow, x, None, None
        return flow, x, self.deconv_up_flow(flow), self.deconv_up_feature(x)


class ContextNetwork(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        last = len(CONTEXT_LAYERS)
        for i, (f, d) in enumerate(CONTEXT_LAYERS, start=1):
            self.add_module(f"conv{i}", TFConv2d(cin, f, dilation=d, activation=i < last))
            cin = f

    def forward(self, x):
        for i in range(1, len(CONTEXT_LAYERS) + 1):
            x = getattr(self, f"conv{i}")(x)
        return x


class DeepLiDARFlow(nn.Module):
    """The network; ``forward(frames, interp_size=None, out_size=None) -> (sf, aux)``.

    ``frames``: ``[B, 2, 4, H, W]`` (frame t, frame t+1; channels RGB minus the
    dataset mean and the normalised sparse disparity, 0 = no point).
    ``sceneflow``: ``[B, 4, h, w]`` (u, v, d0, d1) in pixels at ``out_size``
    (default the input size). ``aux``: ``flows`` (levels 6, 5, 4, 3 and refined
    2, network units, NCHW), ``levels`` (by name, plus ``flow_level2_unrefined``)
    and ``confidences`` (depth-decoder confidences of frame t, levels 6..2).
    """

    def __init__(self, search_range: int = SEARCH_RANGE):
        super().__init__()
        self.search_range = search_range
        self.guidance_network = GuidanceNetwork()
        cv = (2 * search_range + 1) ** 2
        for level in LEVELS:
            cin = cv + 2 * FUSED_FILTERS + (0 if level == LEVELS[0] else 2 * SF_CHANNELS)
            self.add_module(f"scene_flow_estimator_{level}",
                            SceneFlowEstimator(cin, is_output=level == LEVELS[-1]))
        self.context_network = ContextNetwork(ESTIMATOR_FILTERS[-1][1] + SF_CHANNELS)

    def forward(self, frames: torch.Tensor, interp_size=None, out_size=None):
        if frames.dim() != 5 or frames.shape[1] != 2 or frames.shape[2] != 4:
            raise ValueError(f"frames must be [B, 2, 4, H, W], got {tuple(frames.shape)}")
        b, _, _, h, w = frames.shape
        out_size = tuple(out_size) if out_size is not None else (h, w)
        x = torch.cat([frames[:, 0], frames[:, 1]], 0)
        if interp_size is not None:
            x = resize_nearest_legacy(x, tuple(interp_size))
        rgb, disp = x[:, :3], x[:, 3:4]
        conf = (disp != 0).to(disp.dtype)
        feats, confidences = self.guidance_network(rgb, disp, conf)
        flows, levels = [], {}
        up_flow = up_feature = None
        for i, level in enumerate(LEVELS):
            f1, f2 = feats[i][:b], feats[i][b:]
            if up_flow is None:
                warped = f2
            else:
                warped = bilinear_warp(f2, up_flow[:, :2] * (FLOW_SCALE / 2**level))
            cv = F.leaky_relu(cost_volume(f1, warped, self.search_range), LEAKY_SLOPE)
            parts = [cv, f1, warped]
            if up_flow is not None:
                parts += [up_flow, up_feature]
            estimator = getattr(self, f"scene_flow_estimator_{level}")
            flow, est_feat, up_flow, up_feature = estimator(torch.cat(parts, 1))
            if level != LEVELS[-1]:
                flows.append(flow)
                levels[f"flow_level{level}"] = flow
        levels["flow_level2_unrefined"] = flow
        refined = flow + self.context_network(torch.cat([est_feat, flow], 1))
        flows.append(refined)
        levels["flow_level2"] = refined
        sceneflow = FLOW_SCALE * resize_bilinear_legacy(refined, out_size)
        aux = {"flows": tuple(flows), "levels": levels,
               "confidences": tuple(c[:b] for c in confidences)}
        return sceneflow, aux


def frames_to_nchw(frames) -> torch.Tensor:
    """``[B, 2, H, W, 4]`` (the Flax/numpy layout) -> float32 ``[B, 2, 4, H, W]`` tensor."""
    arr = np.asarray(frames, np.float32)
    if arr.ndim != 5 or arr.shape[1] != 2 or arr.shape[-1] != 4:
        raise ValueError(f"frames must be [B, 2, H, W, 4], got {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 1, 4, 2, 3)))


def num_parameters(model: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(math.prod(p.shape) for p in model.parameters())
