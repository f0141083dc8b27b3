"""Batches of fixed shape with background prefetch, from any indexable scene-flow dataset.

A dataset is anything with ``__len__``, ``__getitem__`` returning a ``SceneFlowSample``
and a ``dataset_type`` (``"KITTI"`` or ``"FT3D"``). Each sample is turned into network
input frames ``[2, H, W, 4]`` and ground truth ``[H, W, 4]`` exactly as the original
generator does (RGB mean, LiDAR sampling, disparity normalisation, center crop); the LiDAR
draw is seeded by (seed, epoch, frame index), so an evaluation pass is reproducible.
Decoding runs in a background thread that keeps ``prefetch`` batches ready (optionally
already on the accelerator); the photometric augmentation is a JAX function
(``augment.augment_frames``) meant to run on the device inside the train step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from deepliflow_jax.data import lidar, preprocess
from deepliflow_jax.data.kitti import SceneFlowSample


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
    mask0 = lidar.sample_lidar_mask(sample.valid0, num_samples, rng, lidar_method)
    mask1 = lidar.sample_lidar_mask(sample.valid1, num_samples, rng, lidar_method)
    frames = preprocess.make_frames(sample.image0, sample.image1, sample.disp0, sample.disp1,
                                    mask0, mask1, dataset_type)
    gt = np.asarray(sample.gt, np.float32)
    if crop_shape is not None:
        frames = preprocess.center_crop(frames, crop_shape, axes=(1, 2))
        gt = preprocess.center_crop(gt, crop_shape)
    return frames, gt


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
    """One batch of the frames ``indices``: what ``iterate_batches`` yields for them.

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


def epoch_order(num_frames: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Frame order of one epoch: a seeded permutation, or ``arange`` without shuffling."""
    if not shuffle:
        return np.arange(num_frames)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 2**31 - 1]))
    return rng.permutation(num_frames)


def iterate_batches(dataset, batch_size: int, num_samples: int | Sequence[int] = 5000,
                    seed: int = 0, shuffle: bool = False, num_epochs: int | None = 1,
                    crop_shape: tuple[int, int] | None | str = "default",
                    lidar_method: str = "bernoulli", drop_remainder: bool = True,
                    start_epoch: int = 0) -> Iterator[dict[str, Any]]:
    """Yields NumPy batches of fixed shape (single thread; see ``prefetch``).

    Args:
      dataset: indexable dataset with ``dataset_type``.
      batch_size: frames per batch.
      num_samples: LiDAR points per frame, or a list to pick from per frame.
      seed: seed of the LiDAR draws and the shuffling.
      shuffle: permute the frames each epoch (the original shuffled its train list once).
      num_epochs: passes over the data; ``None`` = forever.
      crop_shape: (height, width), ``None`` for no crop, or ``"default"`` for the
        original's choice (``preprocess.default_crop_shape``).
      lidar_method: ``"bernoulli"`` (original) or ``"exact"``.
      drop_remainder: drop a last incomplete batch (else it is yielded smaller).
      start_epoch: first epoch number (to resume with the same draws).

    Yields:
      dicts with ``frames`` ``[B, 2, h, w, 4]``, ``gt`` ``[B, h, w, 4]`` (float32),
      ``valid`` ``[B, h, w, 3]`` (bool, ``gt_valid_map``), ``index`` ``[B]`` (frame
      indices) and ``epoch``.

    Raises:
      ValueError: bad batch size, or frames of different sizes in one batch without a
        crop (message names the frame).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    dataset_type = preprocess.check_dataset_type(dataset.dataset_type)
    if isinstance(crop_shape, str):
        if crop_shape != "default":
            raise ValueError(f"crop_shape must be (h, w), None or 'default', got {crop_shape!r}")
        crop_shape = preprocess.default_crop_shape(dataset_type, batch_size)
    epoch = start_epoch
    while num_epochs is None or epoch < start_epoch + num_epochs:
        order = epoch_order(len(dataset), seed, epoch, shuffle)
        stop = len(order) - len(order) % batch_size if drop_remainder else len(order)
        for begin in range(0, stop, batch_size):
            batch = load_batch(dataset, order[begin:begin + batch_size], num_samples, seed,
                               epoch, crop_shape, lidar_method)
            del batch["num_samples"]  # the yields keep their documented keys
            yield {**batch, "epoch": epoch}
        epoch += 1


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def prefetch(iterator: Iterator[Any], size: int = 2,
             transform: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """Runs ``iterator`` in a background thread, keeping up to ``size`` items ready.

    Args:
      iterator: the producer (e.g. ``iterate_batches(...)``).
      size: queue length (>= 1).
      transform: applied in the background thread to each item (e.g. ``to_device``).

    Yields:
      The items, in order. An exception in the producer is re-raised here. Closing the
      generator (or leaving a ``for`` loop early) stops the thread.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterator:
                if not put(transform(item) if transform is not None else item):
                    return
        except BaseException as error:  # handed to the consumer, which re-raises it
            put(_Failure(error))
            return
        put(_END)

    thread = threading.Thread(target=work, daemon=True, name="deepliflow-prefetch")
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5.0)


def to_device(batch: dict[str, Any], sharding=None) -> dict[str, Any]:
    """Starts the host-to-device copy of a batch's arrays (``jax.device_put``).

    Args:
      batch: dict from ``iterate_batches``.
      sharding: optional ``jax.sharding.Sharding`` for ``frames`` and ``gt``.
    """
    import jax  # imported here so the NumPy-only pipeline does not need a backend

    out = dict(batch)
    for key in ("frames", "gt"):
        out[key] = jax.device_put(batch[key], sharding)
    return out


def batches(dataset, batch_size: int, num_samples: int | Sequence[int] = 5000, seed: int = 0,
            shuffle: bool = False, num_epochs: int | None = 1,
            crop_shape: tuple[int, int] | None | str = "default",
            lidar_method: str = "bernoulli", drop_remainder: bool = True,
            prefetch_size: int = 2, device: bool = True, sharding=None,
            start_epoch: int = 0) -> Iterator[dict[str, Any]]:
    """``iterate_batches`` in a background thread, optionally copied to the device.

    Args:
      dataset, batch_size, num_samples, seed, shuffle, num_epochs, crop_shape,
        lidar_method, drop_remainder, start_epoch: see ``iterate_batches``.
      prefetch_size: batches kept ready.
      device: put ``frames`` and ``gt`` on the default device (or ``sharding``).
      sharding: optional sharding for the device copy.

    Yields:
      Batches as ``iterate_batches``, with jax arrays when ``device``.
    """
    source = iterate_batches(dataset, batch_size, num_samples, seed, shuffle, num_epochs,
                             crop_shape, lidar_method, drop_remainder, start_epoch)
    transform = (lambda b: to_device(b, sharding)) if device else None
    return prefetch(source, prefetch_size, transform)


class CachedDataset:
    """Keeps decoded samples in memory (PNG decoding in pure Python is slow).

    Args:
      dataset: the dataset to wrap; its ``dataset_type`` is passed on.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.dataset_type = dataset.dataset_type
        self._cache: dict[int, SceneFlowSample] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> SceneFlowSample:
        with self._lock:
            if index in self._cache:
                return self._cache[index]
        sample = self.dataset[index]
        with self._lock:
            self._cache[index] = sample
        return sample


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
