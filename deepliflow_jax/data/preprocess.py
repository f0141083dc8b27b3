"""Input normalisation and cropping exactly as the original data loaders.

Network input frames are float32 ``[2, H, W, 4]`` per pair (``[B, 2, H, W, 4]`` batched):
RGB in [0, 1] minus the dataset RGB mean, and channel 3 the sparse disparity
``(d - mean) / std`` times the LiDAR mask (0 where there is no point). The KITTI resize
to 384x1216 happens inside the model; FlyingThings3D (and KITTI with batches of more
than one frame) is center-cropped here (``get_cropped``).
"""

from __future__ import annotations

import numpy as np

DATASET_TYPES = ("KITTI", "FT3D")
# utils/preprocessing_utils.py: get_rgb_mean / get_disp_mean_std.
RGB_MEAN = {
    "KITTI": (0.3791041, 0.39846687, 0.38367166),
    "FT3D": (0.424101, 0.40341005, 0.36796424),
}
DISP_MEAN_STD = {
    "KITTI": (28.1591, 19.9899),
    "FT3D": (41.232, 35.423),
}
# data_generator.py: FT3D is always cropped; KITTI only when batching frames together.
FT3D_CROP = (512, 960)
KITTI_BATCH_CROP = (370, 1220)
# training-time photometric augmentation (data/augment.py): none; the original's chain on
# the mean-subtracted RGB (its clip zeroes values below the mean); or the chain on the colours
AUGMENT_MODES = ("none", "original", "rgb")
KITTI_MODEL_SHAPE = (384, 1216)
# Value ranges that tell preprocessed input from raw input (checked before any compile).
# RGB in [0, 1] minus a dataset mean (0.37..0.42) lies in [-0.43, 0.64]: anything outside
# [-1, 1] was not divided by 255 or not preprocessed at all.
RGB_LIMIT = 1.0
# KITTI's largest ground-truth disparities are about 230 px (1242 px wide frames); a
# 16-bit KITTI disparity PNG read without the /256 holds thousands.
MAX_DISPARITY_PX = 1000.0
# Mean normalised disparity of a frame's LiDAR points above which they cannot have been
# normalised (10 = a mean disparity of 228 px for KITTI, 395 px for FT3D).
MAX_MEAN_NORMALIZED_DISPARITY = 10.0


def check_dataset_type(dataset_type: str) -> str:
    """Returns ``dataset_type`` or raises ValueError naming it."""
    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"dataset_type must be one of {DATASET_TYPES}, got {dataset_type!r}")
    return dataset_type


def rgb_mean(dataset_type: str) -> np.ndarray:
    """float32 ``[3]`` RGB mean of the dataset (``"KITTI"`` or ``"FT3D"``)."""
    return np.asarray(RGB_MEAN[check_dataset_type(dataset_type)], np.float32)


def disp_mean_std(dataset_type: str) -> tuple[float, float]:
    """(mean, std) of the disparity used to normalise the LiDAR channel."""
    return DISP_MEAN_STD[check_dataset_type(dataset_type)]


def normalized_disparity_range() -> tuple[float, float]:
    """``(low, high)``: normalised disparities of points at 0..``MAX_DISPARITY_PX`` pixels.

    Over both datasets' statistics: about ``(-1.41, 48.6)``.
    """
    return (min(-m / s for m, s in DISP_MEAN_STD.values()),
            max((MAX_DISPARITY_PX - m) / s for m, s in DISP_MEAN_STD.values()))


def check_disparity_pixels(disp: np.ndarray, name: str = "disp") -> np.ndarray:
    """A sparse disparity in pixels as float32, refusing what cannot be one.

    Args:
      disp: ``[H, W]`` disparities in pixels, 0 = no LiDAR point (float or int).
      name: the argument's name, for the messages.

    Returns:
      ``disp`` as float32.

    Raises:
      ValueError: a uint16 array (KITTI's PNG encoding, 256 x pixels), a bool or
        non-numeric dtype, NaN/inf, negative values, or values above
        ``MAX_DISPARITY_PX``; the message names ``name`` and the fix.
    """
    arr = np.asarray(disp)
    if arr.dtype == np.uint16:
        raise ValueError(f"{name} is uint16: KITTI's 16-bit disparity PNGs store 256 x the "
                         f"disparity in pixels (0 = no point); pass {name} / 256.0 (float "
                         "pixels), or read the PNG with deepliflow_jax.data.kitti.read_disparity")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating)
                                     or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a disparity map in pixels (float), got dtype "
                         f"{arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN/inf values; use 0 for 'no LiDAR point'")
    if arr.size and arr.min() < 0:
        y, x = np.unravel_index(int(np.argmin(arr)), arr.shape)[-2:]
        raise ValueError(f"{name} has negative disparities (down to {arr.min():g} px, at "
                         f"pixel ({y}, {x})); a disparity is >= 0 pixels, 0 = no LiDAR point")
    if arr.size and arr.max() > MAX_DISPARITY_PX:
        raise ValueError(f"{name} reaches {arr.max():g}, more than {MAX_DISPARITY_PX:g} px: "
                         "not a disparity in pixels (KITTI's largest are about 230 px). A "
                         "16-bit KITTI disparity PNG holds 256 x pixels: divide it by 256 "
                         "(deepliflow_jax.data.kitti.read_disparity does)")
    return arr


def check_network_frames(frames: np.ndarray) -> None:
    """Refuses finite ``[..., 4]`` frames whose values are not preprocessed network input.

    RGB (channels 0-2) must lie in [-1, 1] (RGB in [0, 1] minus the dataset mean) and
    the LiDAR points of channel 3 (0 = no point) in the normalised range of
    :func:`normalized_disparity_range` (symmetric: beyond +-48.6 is raw data), with a
    mean of at most ``MAX_MEAN_NORMALIZED_DISPARITY``.

    Raises:
      ValueError: naming the channel, what the values look like, and the fix.
    """
    rgb = frames[..., :3]
    if rgb.size and (rgb.min() < -RGB_LIMIT or rgb.max() > RGB_LIMIT):
        lo, hi = float(rgb.min()), float(rgb.max())
        looks = ("0..255 RGB (a forgotten / 255)" if hi > 2.0 * RGB_LIMIT
                 else "RGB that was not preprocessed")
        raise ValueError(
            f"frames channels 0-2 (RGB in [0, 1] minus the dataset mean, about [-0.43, 0.64]) "
            f"hold values in [{lo:g}, {hi:g}], outside [-{RGB_LIMIT:g}, {RGB_LIMIT:g}]: this "
            f"looks like {looks}. Preprocess raw frames with prepare_frames(image0, image1, "
            "disp0, disp1, dataset) (RGB / 255 minus the mean, normalised disparity)")
    disp = frames[..., 3]
    points = disp[disp != 0]
    if not points.size:
        return
    low, high = normalized_disparity_range()
    lo, hi = float(points.min()), float(points.max())
    if lo < -high or hi > high:
        raise ValueError(
            f"frames channel 3 (sparse disparity normalised as (d - mean) / std, 0 = no LiDAR "
            f"point) holds values in [{lo:g}, {hi:g}]; points at 0..{MAX_DISPARITY_PX:g} px "
            f"normalise to [{low:.2f}, {high:.1f}]. This looks like a raw disparity: KITTI's "
            "16-bit PNGs store 256 x pixels (divide by 256), and disparities in pixels are "
            "normalised by prepare_frames(image0, image1, disp0, disp1, dataset)")
    mean = float(points.mean())
    if mean > MAX_MEAN_NORMALIZED_DISPARITY:
        raise ValueError(
            f"frames channel 3 (sparse disparity normalised as (d - mean) / std, 0 = no LiDAR "
            f"point): its {points.size} points average {mean:g}, but normalised disparities "
            f"average about 0 (above {MAX_MEAN_NORMALIZED_DISPARITY:g} would be a mean of "
            f"over 228 px for KITTI). These look like disparities in pixels that were not "
            "normalised: use prepare_frames(image0, image1, disp0, disp1, dataset)")


def normalize_disparity(disp: np.ndarray, mask: np.ndarray, dataset_type: str) -> np.ndarray:
    """``(disp - mean) / std * mask`` as float32 (0 where there is no LiDAR point).

    Args:
      disp: disparity in pixels, any shape.
      mask: same shape, 1 (or True) at LiDAR points.
      dataset_type: ``"KITTI"`` or ``"FT3D"``.
    """
    mean, std = disp_mean_std(dataset_type)
    disp = np.asarray(disp, np.float32)
    return ((disp - np.float32(mean)) / np.float32(std) * np.asarray(mask, np.float32)
            ).astype(np.float32)


def make_frame(image: np.ndarray, disp: np.ndarray, mask: np.ndarray,
               dataset_type: str) -> np.ndarray:
    """One network input frame ``[H, W, 4]``: RGB minus mean, normalised sparse disparity.

    Args:
      image: RGB in [0, 1], ``[H, W, 3]``.
      disp: dense disparity ``[H, W]`` in pixels.
      mask: LiDAR mask ``[H, W]``.
      dataset_type: ``"KITTI"`` or ``"FT3D"``.

    Raises:
      ValueError: shapes do not match.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3], got {image.shape}")
    if np.shape(disp) != image.shape[:2] or np.shape(mask) != image.shape[:2]:
        raise ValueError(f"disp {np.shape(disp)} and mask {np.shape(mask)} must be "
                         f"{image.shape[:2]}")
    rgb = image - rgb_mean(dataset_type)
    lidar = normalize_disparity(disp, mask, dataset_type)
    return np.concatenate([rgb, lidar[..., None]], axis=-1).astype(np.float32)


def make_frames(image0, image1, disp0, disp1, mask0, mask1, dataset_type: str) -> np.ndarray:
    """Both input frames of a pair, float32 ``[2, H, W, 4]`` (see ``make_frame``)."""
    return np.stack([make_frame(image0, disp0, mask0, dataset_type),
                     make_frame(image1, disp1, mask1, dataset_type)])


def crop_offset(shape: tuple[int, int], crop_shape: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the centered crop, ``(shape - crop) // 2`` as ``get_cropped``.

    Raises:
      ValueError: the crop is larger than the image.
    """
    if crop_shape[0] > shape[0] or crop_shape[1] > shape[1]:
        raise ValueError(f"crop_shape {tuple(crop_shape)} is larger than the image "
                         f"{tuple(shape[:2])}")
    return (shape[0] - crop_shape[0]) // 2, (shape[1] - crop_shape[1]) // 2


def center_crop(array: np.ndarray, crop_shape: tuple[int, int], axes: tuple[int, int] = (0, 1)
                ) -> np.ndarray:
    """Center crop of ``array`` along two spatial axes (default the first two).

    Args:
      array: array with the spatial axes at ``axes``.
      crop_shape: (height, width).
      axes: the (height, width) axes.
    """
    array = np.asarray(array)
    shape = (array.shape[axes[0]], array.shape[axes[1]])
    top, left = crop_offset(shape, crop_shape)
    index = [slice(None)] * array.ndim
    index[axes[0]] = slice(top, top + crop_shape[0])
    index[axes[1]] = slice(left, left + crop_shape[1])
    return array[tuple(index)]


def default_crop_shape(dataset_type: str, batch_size: int) -> tuple[int, int] | None:
    """The original's crop choice: FT3D 512x960 always; KITTI 370x1220 when batching.

    The original crops KITTI only for ``batch_size == 2``; any batch of more than one
    frame needs one shape, so this crops for every ``batch_size > 1``.
    """
    if check_dataset_type(dataset_type) == "FT3D":
        return FT3D_CROP
    return KITTI_BATCH_CROP if batch_size > 1 else None


def guess_dataset_type(width: int) -> str:
    """inference.py's rule: images wider than 1000 pixels are KITTI, others FT3D."""
    return "KITTI" if width > 1000 else "FT3D"


def prepare_inference_inputs(image0: np.ndarray, image1: np.ndarray, disp0: np.ndarray,
                             disp1: np.ndarray, dataset_type: str | None = None
                             ) -> tuple[np.ndarray, str]:
    """Network input from already-sparse LiDAR disparities, as ``inference.py``.

    The LiDAR mask is ``disp > 0`` (no sampling); FT3D frames are center-cropped to
    512x960, KITTI frames keep their size (the model resizes them to 384x1216).

    Args:
      image0, image1: RGB in [0, 1], ``[H, W, >=3]`` (extra channels are dropped).
      disp0, disp1: sparse disparities ``[H, W]`` in pixels, 0 = no point.
      dataset_type: ``"KITTI"``, ``"FT3D"`` or ``None`` to guess from the width.

    Returns:
      ``(frames [2, h, w, 4] float32, dataset_type)``.

    Raises:
      ValueError: a disparity that is not in pixels (``check_disparity_pixels``), or
        shapes that do not match.
    """
    image0 = np.asarray(image0)[..., :3]
    image1 = np.asarray(image1)[..., :3]
    disp0 = check_disparity_pixels(disp0, "disp0")
    disp1 = check_disparity_pixels(disp1, "disp1")
    if dataset_type is None:
        dataset_type = guess_dataset_type(image0.shape[1])
    frames = make_frames(image0, image1, disp0, disp1, np.asarray(disp0) > 0,
                         np.asarray(disp1) > 0, dataset_type)
    if dataset_type == "FT3D":
        frames = center_crop(frames, FT3D_CROP, axes=(1, 2))
    return frames, dataset_type
