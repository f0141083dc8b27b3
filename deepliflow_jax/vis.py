"""Visualisation: Middlebury flow colours, jet disparity colours, KITTI error maps and a
figure like the paper's Fig. 5, in NumPy, written as PNG with pypng.

``flow_to_color`` and ``disparity_to_color`` reproduce the original ``vis_utils``
(``colored_flow`` / ``colored_disparity``; the jet colour map is matplotlib's, rebuilt
here from its segment data so no plotting library is needed). ``outlier_map`` is the
original's green/magenta ``get_error_maps`` and ``error_map`` the KITTI devkit's
log-scaled scene-flow error colours of ``get_error_KITTI``. matplotlib is only used by
``save_fig5_matplotlib`` (optional "viz" extra), imported there.

Non-finite values: a NaN/inf pixel of a flow or disparity is drawn black (the
original's "unknown flow" colour) and left out of the automatic colour scale; a picture
with no finite pixel at all is refused (``ValueError``): it would be a black image that
looks like a result. Images are channels-last (``[H, W, C]``); a channels-first array
is refused rather than drawn as a few-pixel-high strip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepliflow_jax.data.io import PathLike, write_png
from deepliflow_jax.fileio import savefig_atomic

UNKNOWN_FLOW_THRESH = 1e7
ABS_THRESH = 3.0
REL_THRESH = 0.05

# matplotlib's "jet" (LinearSegmentedColormap segment data, all segments continuous).
_JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
# KITTI devkit scene-flow error colours: [lower, upper) of the normalised error, RGB.
KITTI_ERROR_COLORS = np.array([
    [0, 0.0625, 49, 54, 149], [0.0625, 0.125, 69, 117, 180], [0.125, 0.25, 116, 173, 209],
    [0.25, 0.5, 171, 217, 233], [0.5, 1, 224, 243, 248], [1, 2, 254, 224, 144],
    [2, 4, 253, 174, 97], [4, 8, 244, 109, 67], [8, 16, 215, 48, 39],
    [16, 1e9, 165, 0, 38]], dtype=np.float64)


def make_color_wheel() -> np.ndarray:
    """Middlebury colour wheel, float ``[55, 3]`` in 0..255 (RY, YG, GC, CB, BM, MR)."""
    segments = (15, 6, 4, 11, 13, 6)
    # For each segment: the channel held at 255, the ramping channel, ramp up or down.
    plan = ((0, 1, True), (1, 0, False), (1, 2, True), (2, 1, False), (2, 0, True),
            (0, 2, False))
    wheel = np.zeros((sum(segments), 3))
    start = 0
    for n, (full, ramp, up) in zip(segments, plan, strict=True):
        steps = np.floor(255.0 * np.arange(n) / n)
        wheel[start:start + n, full] = 255.0
        wheel[start:start + n, ramp] = steps if up else 255.0 - steps
        start += n
    return wheel


def _require_finite(values: np.ndarray, what: str,
                    hint: str = ". The prediction failed upstream: check the frames "
                                "(prepare_frames) and the variables") -> np.ndarray:
    """The finite mask of ``values``; ``ValueError`` if there is none (a blank picture)."""
    finite = np.isfinite(values)
    if values.size and not finite.any():
        raise ValueError(f"{what} has no finite value (all {values.size} are NaN/inf): "
                         f"nothing to draw{hint}")
    return finite


def _auto_scale(scale: float, values: np.ndarray, name: str) -> float:
    """``scale`` if > 0, else the largest finite value (NaN/inf pixels ignored)."""
    if not np.isfinite(scale):
        raise ValueError(f"{name} must be a finite number (<= 0: automatic), got {scale!r}")
    if scale > 0:
        return float(scale)
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else -1.0


def _flow_colors(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # compute_color of the original: hue from the angle, saturation from the radius.
    nan = np.isnan(u) | np.isnan(v)
    u = np.where(nan, 0.0, u)
    v = np.where(nan, 0.0, v)
    wheel = make_color_wheel()
    ncols = wheel.shape[0]
    rad = np.sqrt(u**2 + v**2)
    angle = np.arctan2(-v, -u) / np.pi
    fk = (angle + 1.0) / 2.0 * (ncols - 1) + 1.0
    k0 = np.floor(fk).astype(int)
    k1 = np.where(k0 + 1 == ncols + 1, 1, k0 + 1)
    f = fk - k0
    img = np.zeros(u.shape + (3,))
    for c in range(3):
        col = (1 - f) * wheel[k0 - 1, c] / 255.0 + f * wheel[k1 - 1, c] / 255.0
        col = np.where(rad <= 1, 1 - rad * (1 - col), col * 0.75)
        img[..., c] = np.uint8(np.floor(255.0 * col * (1 - nan)))
    return img


def flow_to_color(flow: np.ndarray, max_flow: float = -1.0, mask: np.ndarray | None = None
                  ) -> np.ndarray:
    """Middlebury colour coding of optical flow, as the original ``colored_flow``.

    Args:
      flow: ``[H, W, >=2]`` (u, v in the first two channels).
      max_flow: radius mapped to full saturation; <= 0 = the largest flow in the image.
      mask: optional ``[H, W]``; pixels where it is not 1 are black.

    Returns:
      uint8 ``[H, W, 3]``; pixels with a NaN/inf (or above 1e7, the Middlebury "unknown"
      marker) u or v are black and do not set the automatic scale.

    Raises:
      ValueError: a wrong shape, or no pixel with a finite flow.
    """
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[2] < 2:
        raise ValueError(f"flow must be [H, W, >=2], got {flow.shape}")
    u, v = flow[..., 0].copy(), flow[..., 1].copy()
    with np.errstate(invalid="ignore", over="ignore"):
        finite = _require_finite(u + v, "flow (u, v)")  # NaN/inf if u or v is
    with np.errstate(invalid="ignore"):
        unknown = ~finite | (np.abs(u) > UNKNOWN_FLOW_THRESH) | \
            (np.abs(v) > UNKNOWN_FLOW_THRESH)
    u[unknown] = 0.0
    v[unknown] = 0.0
    max_rad = max_flow
    if not np.isfinite(max_rad):
        raise ValueError(f"max_flow must be a finite number (<= 0: automatic), got {max_flow!r}")
    if max_rad < 0:
        max_rad = max(-1.0, float(np.max(np.sqrt(u**2 + v**2))))
    eps = np.finfo(float).eps
    img = _flow_colors(u / (max_rad + eps), v / (max_rad + eps))
    img[unknown] = 0
    if mask is not None:
        img[np.asarray(mask) != 1] = 0
    return img.astype(np.uint8)


def jet_lut(n: int = 256) -> np.ndarray:
    """The jet colour map as an ``[n, 3]`` float table in [0, 1] (matplotlib's, N = 256)."""
    x = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(x, *np.array(_JET[c]).T) for c in ("red", "green", "blue")],
                    axis=-1)


def apply_jet(values: np.ndarray, n: int = 256) -> np.ndarray:
    """matplotlib ``cm.jet(values)`` (RGB only): under 0 -> first, over 1 -> last colour,
    NaN -> black."""
    values = np.asarray(values, np.float64)
    lut = jet_lut(n)
    index = values * n
    index = np.where(index == n, n - 1, index)
    index = np.clip(np.nan_to_num(index, nan=0.0), -1, n)
    index = np.clip(index.astype(int), 0, n - 1)  # truncation toward zero, as matplotlib
    out = lut[index]
    out[np.isnan(values)] = 0.0
    return out


def disparity_to_color(disp: np.ndarray, max_disp: float = -1.0,
                       mask: np.ndarray | None = None) -> np.ndarray:
    """Jet colour coding of a disparity map, as the original ``colored_disparity``.

    Args:
      disp: ``[H, W]`` disparity.
      max_disp: value mapped to the top colour; <= 0 = the image maximum (of the finite
        pixels). Larger values are pure red.
      mask: optional ``[H, W]``; pixels where it is not 1 are black.

    Returns:
      uint8 ``[H, W, 3]``; NaN/inf pixels are black.

    Raises:
      ValueError: a wrong shape, or no finite pixel.
    """
    disp = np.asarray(disp, np.float64)
    if disp.ndim != 2:
        raise ValueError(f"disp must be [H, W], got {disp.shape}")
    finite = _require_finite(disp, "disparity")
    max_d = _auto_scale(max_disp, disp, "max_disp")
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = np.where(finite, disp / max_d, np.nan)
    img = apply_jet(vals)
    with np.errstate(invalid="ignore"):
        img[vals > 1] = (1.0, 0.0, 0.0)
    if mask is not None:
        img[np.asarray(mask) != 1] = 0.0
    return np.uint8(img * 255)


def _errors(pred: np.ndarray, gt: np.ndarray):
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[2] != 4:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be [H, W, 4]")
    valid = gt[..., 2] > 0
    w = valid[..., None]
    flow_err = np.linalg.norm(pred[..., :2] * w - gt[..., :2] * w, axis=-1)
    d0_err = np.abs(pred[..., 2] * valid - gt[..., 2] * valid)
    d1_err = np.abs(pred[..., 3] * valid - gt[..., 3] * valid)
    flow_mag = np.linalg.norm(gt[..., :2] * w, axis=-1)
    return valid, gt, flow_err, d0_err, d1_err, flow_mag


def outlier_map(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Green (inlier) / magenta (outlier) maps of Fl, D0 and D1 (``get_error_maps``).

    Args:
      pred, gt: ``[H, W, 4]`` scene flow.

    Returns:
      dict ``fl``, ``d0``, ``d1`` of uint8 ``[H, W, 3]``; invalid pixels black.
    """
    valid, gt, flow_err, d0_err, d1_err, flow_mag = _errors(pred, gt)
    flags = {"fl": (flow_err > ABS_THRESH) & (flow_err > flow_mag * REL_THRESH),
             "d0": (d0_err > ABS_THRESH) & (d0_err > gt[..., 2] * REL_THRESH),
             "d1": (d1_err > ABS_THRESH) & (d1_err > gt[..., 3] * REL_THRESH)}
    out = {}
    for name, bad in flags.items():
        img = np.where(bad[..., None], (255, 0, 255), (0, 255, 0)) * valid[..., None]
        out[name] = img.astype(np.uint8)
    return out


def error_map(pred: np.ndarray, gt: np.ndarray, noc: np.ndarray | None = None,
              dilate: bool = True) -> np.ndarray:
    """KITTI devkit scene-flow error image (``get_error_KITTI``).

    The error of a pixel is the largest of ``min(e / 3, 20 e / |gt|)`` over flow, D0 and
    D1, binned into the devkit's 10 log-spaced colours; invalid pixels are black and
    pixels outside ``noc`` (if given) are darkened by half. With ``dilate`` each black
    pixel takes the colour of a coloured 3x3 neighbour so sparse ground truth stays
    visible (the original does the same in place, in an order-dependent way).

    Args:
      pred, gt: ``[H, W, 4]``.
      noc: optional ``[H, W]``, 0 where a pixel is occluded.
      dilate: spread colours into black neighbours.

    Returns:
      uint8 ``[H, W, 3]``.
    """
    valid, gt, flow_err, d0_err, d1_err, flow_mag = _errors(pred, gt)
    with np.errstate(divide="ignore", invalid="ignore"):
        n_err = np.zeros(valid.shape)
        for err, ref in ((flow_err, flow_mag), (d0_err, gt[..., 2]), (d1_err, gt[..., 3])):
            # fmin / fmax: a 0 / 0 ratio (no error, zero ground truth) counts as 0, as in
            # the devkit's std::min, instead of NaN (black) as np.minimum would give.
            n_err = np.fmax(n_err, np.fmin(err / 3.0, 20.0 * err / ref))
    img = np.zeros(valid.shape + (3,), np.uint8)
    for lo, hi, r, g, b in KITTI_ERROR_COLORS:
        img[valid & (n_err >= lo) & (n_err < hi)] = (r, g, b)
    if noc is not None:
        dark = np.asarray(noc) == 0
        img[dark] = (img[dark] * 0.5).astype(np.uint8)
    if dilate:
        img = _fill_from_neighbours(img)
    return img


def _fill_from_neighbours(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    out = img.copy()
    empty = ~img.any(axis=-1)
    padded = np.pad(img, ((1, 1), (1, 1), (0, 0)))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            take = empty & shifted.any(axis=-1)
            out[take] = shifted[take]
            empty &= ~take
    return out


def color_scales(ref: np.ndarray, valid: np.ndarray | None = None, floor: float = 1.0
                 ) -> tuple[float, float]:
    """``(max_flow, max_disp)`` of a scene flow ``[H, W, 4]`` for shared colour scales.

    The largest flow radius and disparity over ``valid`` pixels (default all) whose
    values are finite (a NaN pixel must not turn the whole picture black), at least
    ``floor``.
    """
    ref = np.asarray(ref, np.float64)
    ok = np.isfinite(ref).all(axis=-1)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    return (float(np.max(np.linalg.norm(ref[..., :2], axis=-1)[ok], initial=floor)),
            float(np.max(ref[..., 2:4][ok], initial=floor)))


def sceneflow_panels(sceneflow: np.ndarray, mask: np.ndarray | None = None,
                     max_flow: float = -1.0, max_disp: float = -1.0) -> list[np.ndarray]:
    """Colour-coded flow, D0 and D1 of a scene flow ``[H, W, 4]`` (``plot_sceneflow``)."""
    sceneflow = np.asarray(sceneflow)
    return [flow_to_color(sceneflow[..., :2], max_flow, mask),
            disparity_to_color(sceneflow[..., 2], max_disp, mask),
            disparity_to_color(sceneflow[..., 3], max_disp, mask)]


def _to_uint8_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 ``[H, W, 3]`` (``[H, W, 1]`` stays grey) of a uint8 or float [0, 1] image.

    Float NaN/inf pixels become black; an image with no finite pixel, a channels-first
    array, integers other than uint8 and 0..255 floats are refused (``ValueError``).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        hint = ("; it looks channels-first (C, H, W): pass np.moveaxis(image, 0, -1)"
                if image.shape[0] in (1, 3, 4) else "")
        raise ValueError(f"{name} must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] "
                         f"(channels last), got shape {image.shape}{hint}")
    if image.ndim not in (2, 3):
        raise ValueError(f"{name} must be [H, W] or [H, W, C] (channels last), got shape "
                         f"{image.shape}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.integer):
        raise ValueError(f"{name} is {image.dtype}: pass uint8 (0..255) or float in [0, 1]")
    image = np.asarray(image, np.float64)
    finite = _require_finite(image, name, "")
    if image[finite].max(initial=0.0) > 2.0:
        raise ValueError(f"{name} is float with values up to {image[finite].max():g}, but "
                         "float images are [0, 1]: these look like 0..255 values; pass "
                         "image.astype(np.uint8) or image / 255")
    return np.uint8(np.clip(np.where(finite, image, 0.0), 0.0, 1.0) * 255.0 + 0.5)


def compose_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 4,
                 background: int = 255) -> np.ndarray:
    """Tiles images (uint8 RGB or float in [0, 1]) into one uint8 image, row by row.

    Args:
      rows: list of rows, each a list of ``[H, W(, 3)]`` images (shorter rows are
        left-aligned; all tiles get the size of the largest).
      pad: pixels between tiles.
      background: grey level of the gaps.
    """
    rows = [[_to_uint8_rgb(im) for im in row] for row in rows if len(row)]
    if not rows:
        raise ValueError("compose_grid needs at least one image")
    th = max(im.shape[0] for row in rows for im in row)
    tw = max(im.shape[1] for row in rows for im in row)
    ncol = max(len(row) for row in rows)
    out = np.full((len(rows) * (th + pad) - pad, ncol * (tw + pad) - pad, 3), background,
                  np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            y, x = r * (th + pad), c * (tw + pad)
            out[y:y + im.shape[0], x:x + im.shape[1]] = im
    return out


def fig5_image(image0: np.ndarray, image1: np.ndarray,
               results: Sequence[tuple[str, np.ndarray]], gt: np.ndarray | None = None,
               max_flow: float = -1.0, max_disp: float = -1.0, pad: int = 4) -> np.ndarray:
    """A figure like the paper's Fig. 5: the two input images, then per configuration
    its flow, D0 and D1, colour-coded on a common scale.

    Args:
      image0, image1: input RGB frames (float [0, 1] or uint8).
      results: ``(label, sceneflow [H, W, 4])`` per configuration, one row each.
      gt: optional ground truth; added as a first result row and, when given, the scale
        (largest flow radius / disparity) is taken from its valid pixels.
      max_flow, max_disp: explicit colour scales (<= 0 = from gt or the first result).
      pad: pixels between tiles.

    Returns:
      uint8 ``[H', W', 3]`` image.
    """
    if not results and gt is None:
        raise ValueError("fig5_image needs at least one result or a ground truth")
    ref = np.asarray(gt if gt is not None else results[0][1], np.float64)
    auto_flow, auto_disp = color_scales(ref, ref[..., 2] > 0 if gt is not None else None)
    max_flow = max_flow if max_flow > 0 else auto_flow
    max_disp = max_disp if max_disp > 0 else auto_disp
    rows = [[image0, image1]]
    if gt is not None:
        rows.append(sceneflow_panels(gt, (gt[..., 2] > 0).astype(int), max_flow, max_disp))
    rows += [sceneflow_panels(sf, None, max_flow, max_disp) for _, sf in results]
    return compose_grid(rows, pad)


def save_png(path: PathLike, image: np.ndarray) -> Path:
    """Writes a uint8 RGB (or float [0, 1]) image as PNG with pypng; returns the path.

    Args:
      path: output file (parent folders are created).
      image: ``[H, W, 3]`` (extra channels such as alpha are dropped), ``[H, W]``
        (grey, written as RGB) or ``[H, W, 1]`` (a grey PNG); uint8, or float
        clipped to [0, 1] and scaled to 0..255.

    Returns:
      ``path`` as a ``Path``.

    Raises:
      ValueError: ``image`` is not ``[H, W]`` or ``[H, W, C]`` with C in 1, 3, 4
        (channels-first arrays are refused, naming the fix), an integer type other
        than uint8, 0..255 floats, or no finite pixel (NaN/inf pixels of an image
        that has finite ones are written black).

    Example:
      >>> import tempfile
      >>> import numpy as np
      >>> from pathlib import Path
      >>> from deepliflow_jax.data.io import read_png
      >>> ramp = np.linspace(0.0, 1.0, 8).reshape(2, 4)  # float grey levels
      >>> path = save_png(Path(tempfile.mkdtemp()) / "ramp.png", ramp)
      >>> path.name
      'ramp.png'
      >>> read_png(path)[..., 0].tolist()
      [[0, 36, 73, 109], [146, 182, 219, 255]]
    """
    path = Path(path)
    write_png(path, _to_uint8_rgb(image))
    return path


def save_fig5(path: PathLike, image0, image1, results, gt=None, **kwargs) -> Path:
    """Writes ``fig5_image`` (see there) as a PNG; returns the path."""
    return save_png(path, fig5_image(image0, image1, results, gt, **kwargs))


def save_fig5_matplotlib(path: PathLike, image0, image1, results, gt=None, dpi: int = 100,
                         **kwargs) -> Path:
    """Like ``save_fig5`` but with row labels and column titles (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # optional "viz" extra
        raise ImportError("save_fig5_matplotlib needs matplotlib (pip install "
                          "'deepliflow_jax[viz]'); save_fig5 writes the same tiles "
                          "without labels") from err
    ref = gt if gt is not None else results[0][1]
    grid_rows = [("inputs", [image0, image1])]
    max_flow = kwargs.get("max_flow", -1.0)
    max_disp = kwargs.get("max_disp", -1.0)
    valid = ref[..., 2] > 0 if gt is not None else np.ones(ref.shape[:2], bool)
    auto_flow, auto_disp = color_scales(ref, valid)
    max_flow = max_flow if max_flow > 0 else auto_flow
    max_disp = max_disp if max_disp > 0 else auto_disp
    if gt is not None:
        grid_rows.append(("ground truth", sceneflow_panels(gt, valid.astype(int), max_flow,
                                                           max_disp)))
    grid_rows += [(label, sceneflow_panels(sf, None, max_flow, max_disp))
                  for label, sf in results]
    h, w = np.asarray(image0).shape[:2]
    # tiles at half their size, but never so small that the 8-pt labels crowd them
    fig_w = max(9.0, 1.5 * w / dpi)
    fig, axes = plt.subplots(len(grid_rows), 3, squeeze=False,
                             figsize=(fig_w, len(grid_rows) * (fig_w / 3 * h / w + 0.15) + 0.3))
    titles = ("optical flow", "D0", "D1")
    for r, (label, tiles) in enumerate(grid_rows):
        for c in range(3):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(tiles):
                ax.imshow(_to_uint8_rgb(tiles[c]))
            if r == 1:
                ax.set_title(titles[c], fontsize=8)
        axes[r][0].text(-0.02, 0.5, label, transform=axes[r][0].transAxes, ha="right",
                        va="center", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    savefig_atomic(fig, path, dpi=dpi)  # never a half-written picture
    plt.close(fig)
    return path
