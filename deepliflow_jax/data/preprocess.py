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
KITTI_MODEL_SHAPE = (384, 1216)


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
    """
    image0 = np.asarray(image0)[..., :3]
    image1 = np.asarray(image1)[..., :3]
    if dataset_type is None:
        dataset_type = guess_dataset_type(image0.shape[1])
    frames = make_frames(image0, image1, disp0, disp1, np.asarray(disp0) > 0,
                         np.asarray(disp1) > 0, dataset_type)
    if dataset_type == "FT3D":
        frames = center_crop(frames, FT3D_CROP, axes=(1, 2))
    return frames, dataset_type
