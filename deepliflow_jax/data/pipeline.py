"""Batches of fixed shape from any indexable scene-flow dataset.

A dataset is anything with ``__len__``, ``__getitem__`` returning a ``SceneFlowSample``
and a ``dataset_type`` (``"KITTI"`` or ``"FT3D"``). Each sample is turned into network
input frames ``[2, H, W, 4]`` and ground truth ``[H, W, 4]`` exactly as the original
generator does (RGB mean, LiDAR sampling, disparity normalisation, center crop); the LiDAR
draw is seeded by (seed, epoch, frame index), so an evaluation pass is reproducible. The
data set type (``deepliflow_jax.data.dataset``) orders the frames of each epoch and calls
:func:`load_batch`; the photometric augmentation is ``augment.augment_frames``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deepliflow_jax.data import lidar, preprocess
from deepliflow_jax.data.kitti import FrameInputs, SceneFlowSample


def preprocess_sample(sample: SceneFlowSample, dataset_type: str, num_samples: int,
                      rng: np.random.Generator, crop_shape: tuple[int, int] | None = None,
                      lidar_method: str = "bernoulli") -> tuple[np.ndarray, np.ndarray]:
    """Network input and ground truth for one sample, as the original generator.

    Args:
      sample: a ``SceneFlowSample``.
      dataset_type: ``"KITTI"`` or ``"FT3D"`` (means and disparity statistics).
      num_samples: LiDAR points per frame.
      rng: generator for the LiDAR draw (t and t+1 are drawn independently, in order).
      crop_shape: center crop (height, width) or ``None``.
      lidar_method: see ``lidar.sample_lidar_mask``.

    Returns:
      ``(frames, gt)``: float32 ``[2, h, w, 4]`` and ``[h, w, 4]``.
    """
    frames = input_frames(sample, dataset_type, num_samples, rng, lidar_method)
    gt = np.asarray(sample.gt, np.float32)
    if crop_shape is not None:
        frames = preprocess.center_crop(frames, crop_shape, axes=(1, 2))
        gt = preprocess.center_crop(gt, crop_shape)
    return frames, gt


def input_frames(sample: SceneFlowSample | FrameInputs, dataset_type: str, num_samples: int,
                 rng: np.random.Generator, lidar_method: str = "bernoulli") -> np.ndarray:
    """Network input of one frame pair, with or without ground truth (no crop).

    The LiDAR draw and preprocessing of ``preprocess_sample``: ``num_samples`` points
    from ``sample.valid0``, then from ``sample.valid1`` (in that order, from ``rng``),
    and the original's normalisation (``preprocess.make_frames``).

    Args:
      sample: a ``SceneFlowSample`` or a ``FrameInputs`` (e.g. a KITTI test frame).
      dataset_type, num_samples, rng, lidar_method: as ``preprocess_sample``.

    Returns:
      float32 ``[2, H, W, 4]``.
    """
    mask0 = lidar.sample_lidar_mask(sample.valid0, num_samples, rng, lidar_method)
    mask1 = lidar.sample_lidar_mask(sample.valid1, num_samples, rng, lidar_method)
    return preprocess.make_frames(sample.image0, sample.image1, sample.disp0, sample.disp1,
                                  mask0, mask1, dataset_type)


def gt_valid_map(sample: SceneFlowSample, crop_shape: tuple[int, int] | None = None
                 ) -> np.ndarray:
    """The ground truth's validity beside ``preprocess_sample``'s ``gt``, cropped the same way.

    Args:
      sample: a ``SceneFlowSample``.
      crop_shape: center crop (height, width) or ``None``.

    Returns:
      bool ``[h, w, 3]``: (d0, d1, flow) valid (``SceneFlowSample.gt_valid``), what the
      devkit validity of ``deepliflow_jax.metrics`` evaluates each quantity on.
    """
    valid = sample.gt_valid
    return valid if crop_shape is None else preprocess.center_crop(valid, crop_shape)


def _choose_num_samples(num_samples: int | Sequence[int], rng: np.random.Generator) -> int:
    # The original picks one of a list per frame (training) or uses the single value.
    if np.isscalar(num_samples):
        return int(num_samples)
    choices = list(num_samples)
    if not choices:
        raise ValueError("num_samples must be an int or a non-empty sequence")
    return int(choices[rng.integers(len(choices))]) if len(choices) > 1 else int(choices[0])


def load_batch(dataset, indices: Sequence[int], num_samples: int | Sequence[int], seed: int,
               epoch: int, crop_shape: tuple[int, int] | None = None,
               lidar_method: str = "bernoulli", dataset_type: str | None = None
               ) -> dict[str, Any]:
    """One batch of the frames ``indices``.

    Each frame's LiDAR draw comes from ``lidar.frame_rng(seed, index, epoch)``: with a
    list of counts, one count is picked per frame from that generator first (the
    original's ``data_generator.get_batch_gen``: ``np.random.randint`` over its
    ``SAMPLES`` at every visit, the same count for t and t+1), so a frame gets a new
    count and new points each epoch.

    Args:
      dataset: indexable dataset (or list) of ``SceneFlowSample``.
      indices: frame indices.
      num_samples: LiDAR points per frame, or the counts to pick from per frame.
      seed, epoch: the draw's seed and epoch.
      crop_shape: center crop (height, width) or ``None``.
      lidar_method: see ``lidar.sample_lidar_mask``.
      dataset_type: ``"KITTI"`` or ``"FT3D"``; None: ``dataset.dataset_type``.

    Returns:
      ``{"frames" [B, 2, h, w, 4], "gt" [B, h, w, 4], "valid" [B, h, w, 3], "index" [B],
      "num_samples" [B]}`` (the LiDAR count each frame was drawn with).

    Raises:
      ValueError: frames of different sizes without a crop (naming the frame), an empty
        list of counts.
    """
    dataset_type = preprocess.check_dataset_type(dataset_type or dataset.dataset_type)
    frames, gts, valids, counts = [], [], [], []
    for index in indices:
        rng = lidar.frame_rng(seed, int(index), epoch)
        count = _choose_num_samples(num_samples, rng)
        sample = dataset[int(index)]
        f, g = preprocess_sample(sample, dataset_type, count, rng, crop_shape, lidar_method)
        if frames and f.shape != frames[0].shape:
            raise ValueError(
                f"Frame {int(index)} has shape {f.shape[1:3]}, not "
                f"{frames[0].shape[1:3]} like the rest of its batch: set crop_shape")
        valids.append(gt_valid_map(sample, crop_shape))
        frames.append(f)
        gts.append(g)
        counts.append(count)
    return {"frames": np.stack(frames), "gt": np.stack(gts), "valid": np.stack(valids),
            "index": np.asarray(indices, np.int64), "num_samples": np.asarray(counts, np.int64)}


_END = object()


def read_inference_example(directory, example: int) -> tuple[np.ndarray, str]:
    """Reads ``ex_{n}_im_10/11.png`` and ``ex_{n}_disp_10/11.png`` (the original release's
    example inputs, e.g. ``shared/data/deeplidarflow_examples``) into network input.

    Args:
      directory: folder with the example files.
      example: example number (1 = KITTI, 2 = FlyingThings3D in the release).

    Returns:
      ``(frames [2, h, w, 4], dataset_type)`` (see ``preprocess.prepare_inference_inputs``).

    Raises:
      FileNotFoundError / ValueError naming a missing or unreadable file.
    """
    from pathlib import Path

    from deepliflow_jax.data.io import read_png
    from deepliflow_jax.data.kitti import read_disparity

    directory = Path(directory)
    images = []
    for frame in (10, 11):
        path = directory / f"ex_{example}_im_{frame}.png"
        image = read_png(path)
        if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
            raise ValueError(f"Expected an 8-bit RGB(A) image, got {image.dtype} "
                             f"{image.shape}: {path}")
        images.append(image[..., :3].astype(np.float32) / np.float32(255.0))
    disps = [read_disparity(directory / f"ex_{example}_disp_{frame}.png")[0]
             for frame in (10, 11)]
    return preprocess.prepare_inference_inputs(images[0], images[1], disps[0], disps[1])
