"""Slow, literal numpy re-statements of the original release's operations.

Written from the semantics of the original TF code (and of the TF kernels it
calls) with explicit loops, independent of the jnp implementations under test.
"""

from __future__ import annotations

import numpy as np


def tf_same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME': total = max((ceil(n/s) - 1) * s + k_eff - n, 0); extra goes after."""
    k_eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


def conv2d_same(x, w, stride=1, dilation=1):
    """x [B,H,W,Ci], w [k,k,Ci,Co]: TF conv2d with 'SAME' padding, by loops."""
    b, h, wd, _ = x.shape
    k = w.shape[0]
    (pt, pb), (pl, pr) = tf_same_pads(h, k, stride, dilation), tf_same_pads(wd, k, stride, dilation)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = -(-h // stride), -(-wd // stride)
    out = np.zeros((b, oh, ow, w.shape[3]), np.float64)
    for i in range(oh):
        for j in range(ow):
            for ki in range(k):
                for kj in range(k):
                    patch = xp[:, i * stride + ki * dilation, j * stride + kj * dilation, :]
                    out[:, i, j, :] += patch @ w[ki, kj]
    return out


def conv2d_transpose_same(x, w, stride=2):
    """TF conv2d_transpose, kernel [k,k,Co,Ci], 'SAME', output = stride * input.

    It is the gradient of a 'SAME' conv from the output size to the input size:
    scatter x[i] * W[k] to position i*s + k - pad_before.
    """
    b, h, wd, _ = x.shape
    k = w.shape[0]
    oh, ow = h * stride, wd * stride
    pt, _ = tf_same_pads(oh, k, stride)
    pl, _ = tf_same_pads(ow, k, stride)
    out = np.zeros((b, oh, ow, w.shape[2]), np.float64)
    for i in range(h):
        for j in range(wd):
            for ki in range(k):
                for kj in range(k):
                    y, xx = i * stride + ki - pt, j * stride + kj - pl
                    if 0 <= y < oh and 0 <= xx < ow:
                        out[:, y, xx, :] += x[:, i, j, :] @ w[ki, kj].T
    return out


def leaky(x, slope):
    return np.where(x >= 0, x, slope * x)


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def normalized_conv(data, conf, kernels, bias, eps=1e-5):
    """networks.normal_convolution for one frame (bias [C])."""
    w = softplus(kernels)
    den = conv2d_same(conf, w)
    num = conv2d_same(data * conf, w)
    out = leaky(num / (den + eps) + bias, 0.2)
    return out, den / w.sum(axis=(0, 1, 2))


def confidence_max_pool(data, conf, return_argmax=False):
    """max_pool_with_argmax 2x2/2 VALID (first strictly-greater wins) + gather.

    ``return_argmax=True`` also returns the winners' ``(row, col)`` ``[B, h, w, C, 2]``."""
    b, h, w, c = conf.shape
    pd = np.zeros((b, h // 2, w // 2, c), data.dtype)
    pc = np.zeros_like(pd)
    argmax = np.zeros(pd.shape + (2,), np.int64)
    for n in range(b):
        for i in range(h // 2):
            for j in range(w // 2):
                for ch in range(c):
                    best, arg = None, None
                    for di in range(2):
                        for dj in range(2):
                            v = conf[n, 2 * i + di, 2 * j + dj, ch]
                            if best is None or v > best:
                                best, arg = v, (2 * i + di, 2 * j + dj)
                    pc[n, i, j, ch] = best
                    pd[n, i, j, ch] = data[n, arg[0], arg[1], ch]
                    argmax[n, i, j, ch] = arg
    return (pd, pc, argmax) if return_argmax else (pd, pc)


def cost_volume_original(x, warped, r=4):
    """modules.CostVolumeLayer (2d), re-enacted: pad/crop shifts, keys, sort, means."""

    def shift_rows(a, down):  # pad one side, crop the other
        if down:  # pad bottom, crop top -> out[y] = a[y + 1]
            return np.pad(a, ((0, 0), (0, 1), (0, 0), (0, 0)))[:, 1:]
        return np.pad(a, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]

    def shift_cols(a, right):
        if right:  # pad right, crop left -> out[x] = a[x + 1]
            return np.pad(a, ((0, 0), (0, 0), (0, 1), (0, 0)))[:, :, 1:]
        return np.pad(a, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]

    total, keys = [], []
    rows = [warped]
    for i in range(r + 1):
        if i:
            rows = [shift_rows(rows[0], True), shift_rows(rows[1], False)]
        for side, row in enumerate(rows):
            total.append(np.mean(row * x, axis=-1))
            keys.append((i * (-1) ** side, 0))
            prev = [row, row]
            for j in range(1, r + 1):
                cols = [shift_cols(prev[0], True), shift_cols(prev[1], False)]
                for cs, col in enumerate(cols):
                    total.append(np.mean(col * x, axis=-1))
                    keys.append((i * (-1) ** side, j * (-1) ** cs))
                prev = cols
        if i == 0:
            rows = rows * 2
    order = sorted(range(len(keys)), key=lambda n: keys[n])
    return np.stack([total[n] for n in order], axis=3) / (2 * r + 1) ** 2


def bilinear_warp_original(x, flow):
    """warping_utils.bilinear_warp_2d, per pixel."""
    b, h, w, c = x.shape
    out = np.zeros_like(x, dtype=np.float64)
    for n in range(b):
        for y in range(h):
            for xx in range(w):
                fx, fy = flow[n, y, xx]
                x0, y0 = np.floor(fx), np.floor(fy)
                gy0, gy1 = np.clip(y + y0, 0, h - 1), np.clip(y + y0 + 1, 0, h - 1)
                gx0, gx1 = np.clip(xx + x0, 0, w - 1), np.clip(xx + x0 + 1, 0, w - 1)
                gy0, gy1, gx0, gx1 = int(gy0), int(gy1), int(gx0), int(gx1)
                out[n, y, xx] = (
                    (y0 + 1 - fy) * (x0 + 1 - fx) * x[n, gy0, gx0]
                    + (y0 + 1 - fy) * (fx - x0) * x[n, gy0, gx1]
                    + (fy - y0) * (x0 + 1 - fx) * x[n, gy1, gx0]
                    + (fy - y0) * (fx - x0) * x[n, gy1, gx1]
                )
    return out


def resize_nearest_tf1(x, size):
    """resize_nearest_neighbor(align_corners=False, half_pixel_centers=False)."""
    h, w = x.shape[1:3]
    oh, ow = size
    sy, sx = np.float32(h) / np.float32(oh), np.float32(w) / np.float32(ow)
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), x.dtype)
    for i in range(oh):
        yi = min(int(np.floor(np.float32(i) * sy)), h - 1)
        for j in range(ow):
            xj = min(int(np.floor(np.float32(j) * sx)), w - 1)
            out[:, i, j] = x[:, yi, xj]
    return out


def resize_bilinear_tf1(x, size):
    """resize_bilinear(align_corners=False, half_pixel_centers=False)."""
    h, w = x.shape[1:3]
    oh, ow = size
    sy, sx = np.float32(h) / np.float32(oh), np.float32(w) / np.float32(ow)
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), np.float64)
    for i in range(oh):
        fy = np.float32(i) * sy
        y0 = int(np.floor(fy))
        y1 = min(int(np.ceil(fy)), h - 1)
        ly = fy - y0
        for j in range(ow):
            fx = np.float32(j) * sx
            x0 = int(np.floor(fx))
            x1 = min(int(np.ceil(fx)), w - 1)
            lx = fx - x0
            top = x[:, y0, x0] + (x[:, y0, x1] - x[:, y0, x0]) * lx
            bot = x[:, y1, x0] + (x[:, y1, x1] - x[:, y1, x0]) * lx
            out[:, i, j] = top + (bot - top) * ly
    return out
