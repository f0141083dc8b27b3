"""Functional API for notebooks and scripts (re-exported lazily by ``deepliflow_jax``).

Thin wrappers over the library, for a Colab user or a script that does not want absl
flags: pure functions over ``{'params': ...}`` pytrees and arrays, no global state,
the same on CPU and GPU. Training and evaluation go through the one trainer,
:func:`deepliflow_jax.train.trainer.get_trainer`, so dense, pruned and quantized
configurations (and a study in the same process, or one that shares the persistent
XLA cache) share ONE compiled train step and ONE compiled evaluation; prediction and
timing share one compiled forward per frame size (:func:`deepliflow_jax.model.build.forward`).

Typical use (64x192 frames keep a CPU run to minutes; see ``experiments/quickstart.ipynb``)::

    import deepliflow_jax as dl
    root = dl.make_synthetic_dataset("/tmp/world", num_scenes=10)
    data = dl.load_dataset(root)
    variables = dl.init_params(seed=0)
    pair = dl.validation_pair(data)
    sceneflow = dl.predict_sceneflow(variables, pair["frames"])      # [64, 192, 4]
    tuned, history = dl.finetune(variables, data, steps=2, percent=10, bits=8)
    print(dl.evaluate(tuned, data))
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.compress.prune import post_training_masks, zero_fraction
from deepliflow_jax.data import submission
from deepliflow_jax.data.dataset import DEFAULT_SAMPLES, Dataset
from deepliflow_jax.data.dataset import load_dataset as _load_dataset
from deepliflow_jax.data.kitti import check_validity
from deepliflow_jax.metrics import check_as_submission, evaluate_np
from deepliflow_jax.model.channels import architecture_widths
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, check_conv_impl, resolve_conv_impl
from deepliflow_jax.profile.timer import time_calls
from deepliflow_jax.scalars import check_number
from deepliflow_jax.train.recipe import fine_tune
from deepliflow_jax.train.tf_adam import TF1AdamState, state_from_checkpoint
from deepliflow_jax.train.trainer import (
    OPTIMIZERS,
    Phase,
    Trainer,
    check_training,
    get_trainer,
)

PathLike = str | Path
DATASETS = {"kitti": "KITTI", "ft3d": "FT3D"}
# the study runs KITTI frames at the original's network size
KITTI_INTERP_SIZE = (384, 1216)


# ----------------------------------------------------------------------------- checks


def _check_variables(variables: Any, name: str = "variables") -> Mapping:
    from deepliflow_jax.predict import check_variable_dtypes

    if not isinstance(variables, Mapping) or "params" not in variables:
        got = type(variables).__name__ if not isinstance(variables, Mapping) else \
            f"keys {sorted(variables)}"
        raise ValueError(f"{name} must be a {{'params': ...}} pytree (as init_params or "
                         f"load_checkpoint return), got {got}")
    check_variable_dtypes(variables, name)
    return variables


def _dataset_type(dataset: str) -> str:
    if not isinstance(dataset, str) or dataset.lower() not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)} (any case), got {dataset!r}")
    return DATASETS[dataset.lower()]


def _percent(percent: Any) -> float:
    from deepliflow_jax.compress.prune import check_percent

    return 0.0 if percent is None else check_percent(percent)


def _bits(bits: Any) -> int:
    from deepliflow_jax.compress.quantize import MAX_BITS, MIN_BITS, check_bits

    # 0 (float) is checked as a number first, so that jnp.int32(0) means float too
    what = f"0 (float) or an integer in [{MIN_BITS}, {MAX_BITS}]"
    if bits is None or check_number(bits, "bits", what, integer=True) == 0:
        return 0
    return check_bits(bits)


def _count(value: Any, name: str, minimum: int = 1) -> int:
    return check_number(value, name, integer=True, minimum=minimum)


# ----------------------------------------------------------------------------- frames


def prepare_frames(image0: Any, image1: Any, disp0: Any, disp1: Any,
                   dataset: str = "kitti") -> np.ndarray:
    """Network input for one frame pair, preprocessed exactly as the original ``inference.py``.

    RGB in [0, 1] minus the dataset mean, and the sparse LiDAR disparity normalised with
    the dataset's statistics (0 where there is no point). KITTI frames keep their size
    (:func:`predict_sceneflow` resizes them inside the network, as the original);
    FlyingThings3D frames are center-cropped to 512x960.

    Args:
      image0, image1: RGB ``[H, W, 3]`` (or RGBA) of frames t and t+1, uint8 or float
        in [0, 1].
      disp0, disp1: sparse disparities ``[H, W]`` in pixels (float), 0 = no LiDAR point.
        A KITTI 16-bit disparity PNG holds 256 x pixels: divide it by 256 first (or read
        it with ``deepliflow_jax.data.kitti.read_disparity``).
      dataset: ``'kitti'`` or ``'ft3d'`` (any case): the RGB mean, disparity statistics
        and crop.

    Returns:
      float32 ``[2, h, w, 4]`` frames for :func:`predict_sceneflow`.

    Raises:
      ValueError: an unknown dataset, wrong shapes or dtypes, 0..255 floats, NaNs, or a
        disparity that is not in pixels (uint16, negative, above 1000 px); the message
        names the argument and the fix.

    Example:
      >>> import numpy as np
      >>> image = np.zeros((64, 128, 3), np.uint8)
      >>> disp = np.zeros((64, 128), np.float32); disp[10, 20] = 30.0
      >>> prepare_frames(image, image, disp, disp, "kitti").shape
      (2, 64, 128, 4)
    """
    from deepliflow_jax.data.preprocess import check_disparity_pixels, prepare_inference_inputs

    dataset_type = _dataset_type(dataset)
    images = []
    for name, image in (("image0", image0), ("image1", image1)):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"{name} must be [H, W, 3] (or RGBA), got shape {arr.shape}")
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / np.float32(255.0)
        elif np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} contains NaN/inf values")
            if arr.size and (arr.min() < -1e-3 or arr.max() > 1.0 + 1e-3):
                raise ValueError(f"{name} must be uint8 or float in [0, 1], got float values "
                                 f"in [{arr.min():g}, {arr.max():g}] (divide by 255?)")
        else:
            raise ValueError(f"{name} must be uint8 or float, got dtype {arr.dtype}")
        images.append(arr[..., :3])
    if images[0].shape != images[1].shape:
        raise ValueError(f"image0 {images[0].shape} and image1 {images[1].shape} differ in size")
    disps = []
    for name, disp in (("disp0", disp0), ("disp1", disp1)):
        arr = np.asarray(disp)
        if arr.shape != images[0].shape[:2]:
            raise ValueError(f"{name} must be [H, W] = {images[0].shape[:2]} like the images, "
                             f"got {arr.shape}")
        disps.append(check_disparity_pixels(arr, name))
    frames, _ = prepare_inference_inputs(images[0], images[1], disps[0], disps[1],
                                         dataset_type=dataset_type)
    return frames


def input_images(frames: Any, dataset: str = "kitti") -> tuple[np.ndarray, np.ndarray]:
    """The RGB images (float in [0, 1]) of preprocessed frames: the mean added back.

    Args:
      frames: ``[2, H, W, 4]`` or ``[1, 2, H, W, 4]`` network input.
      dataset: ``'kitti'`` or ``'ft3d'``: whose RGB mean was subtracted.

    Returns:
      ``(image0, image1)``, float32 ``[H, W, 3]`` each, clipped to [0, 1].

    Example:
      >>> import numpy as np
      >>> image = np.full((64, 128, 3), 128, np.uint8)
      >>> disp = np.zeros((64, 128))
      >>> im0, im1 = input_images(prepare_frames(image, image, disp, disp))
      >>> round(float(im0[0, 0, 0]), 3)
      0.502
    """
    from deepliflow_jax.data.preprocess import rgb_mean

    arr = np.asarray(frames, np.float32)
    if arr.ndim == 5 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[0] != 2 or arr.shape[-1] != 4:
        raise ValueError(f"frames must be [2, H, W, 4] or [1, 2, H, W, 4], got {np.shape(frames)}")
    images = np.clip(arr[..., :3] + rgb_mean(_dataset_type(dataset)), 0.0, 1.0)
    return images[0], images[1]


def read_example(directory: PathLike, example: int = 1) -> dict[str, Any]:
    """One of the original release's example pairs (``ex_{n}_im_10.png`` ...) as input.

    Args:
      directory: folder with the files (e.g. ``shared/data/deeplidarflow_examples``).
      example: 1 (KITTI, 375x1242) or 2 (FlyingThings3D, cropped to 512x960).

    Returns:
      ``{'frames': [2, h, w, 4], 'dataset': 'kitti' | 'ft3d', 'image0', 'image1'}``
      (the images as float [0, 1] ``[h, w, 3]``).

    Raises:
      FileNotFoundError / ValueError: a missing or unreadable file (named).

    Example:
      >>> ex = read_example(examples_dir, 1)  # e.g. shared/data/deeplidarflow_examples
      >>> ex["frames"].shape, ex["dataset"]
      ((2, 375, 1242, 4), 'kitti')
    """
    from deepliflow_jax.data.pipeline import read_inference_example

    example = check_number(example, "example", "1 (KITTI) or 2 (FlyingThings3D)", integer=True,
                           minimum=1, maximum=2)
    frames, dataset_type = read_inference_example(directory, example)
    dataset = dataset_type.lower()
    image0, image1 = input_images(frames, dataset)
    return {"frames": frames, "dataset": dataset, "image0": image0, "image1": image1}


def predict_sceneflow(variables: Mapping, frames: Any, dataset: str | None = None, *,
                      interp_size: tuple[int, int] | None = None,
                      dtype: Any = jnp.float32, resize: bool = False,
                      conv_impl: str = CONV_IMPL_DEFAULT) -> jax.Array:
    """Scene flow (u, v, d0, d1 in pixels) at the frames' resolution.

    :func:`deepliflow_jax.predict.predict` without the per-level outputs: KITTI frames
    run at 384x1216 inside the network (``dataset='kitti'``), FT3D at the 512x960 crop,
    anything else at its own size (a multiple of 64) or at ``interp_size``. One compiled
    forward per size, shared with :func:`time_model`. Every check runs before anything
    is compiled.

    Args:
      variables: ``{'params': ...}`` of float arrays (dense, pruned or quantized alike;
        not the boolean masks of ``prune``).
      frames: ``[2, H, W, 4]`` (one pair) or ``[B, 2, H, W, 4]`` from
        :func:`prepare_frames`: RGB in [0, 1] minus the mean (within [-1, 1]) and the
        normalised sparse disparity.
      dataset: ``'kitti'``, ``'ft3d'`` (any case) or None (run at the frame size).
        ``'kitti'`` takes frames of about KITTI's size (375x1242, each side within
        1.25x of 384x1216) unless ``resize``.
      interp_size: network input ``(h, w)`` (multiples of 64) overriding the dataset's.
      dtype: floating compute dtype (``jnp.float32`` or ``jnp.bfloat16``).
      resize: with ``dataset='kitti'``, resize frames of any size to 384x1216.
      conv_impl: how the convs are computed: ``"auto"`` (default, the fastest exact
        form on the backend), ``"xla"`` (the plain reference) or a form of
        :mod:`deepliflow_jax.model.layers`; the same numbers to float rounding.

    Returns:
      ``[H, W, 4]`` for one pair, else ``[B, H, W, 4]`` (a jax array).

    Raises:
      ValueError: bad variables (not ``{'params': ...}``, non-float leaves), frames
        (shape, NaN/inf, values that are not preprocessed), sizes (not multiples of 64,
        a KITTI preset on non-KITTI frames) or compute dtype (see ``predict``).

    Example:
      >>> import numpy as np
      >>> variables = init_params(0)
      >>> frames = np.zeros((2, 64, 192, 4), np.float32)
      >>> predict_sceneflow(variables, frames).shape
      (64, 192, 4)
    """
    from deepliflow_jax.predict import predict

    _check_variables(variables)
    single = np.ndim(frames) == 4
    sceneflow, _ = predict(variables, frames, dataset=dataset, interp_size=interp_size,
                           dtype=dtype, resize=resize, conv_impl=conv_impl)
    return sceneflow[0] if single else sceneflow


# ----------------------------------------------------------------------------- data


def make_synthetic_dataset(directory: PathLike, num_scenes: int = 10, height: int = 64,
                           width: int = 192, seed: int = 0, progress: bool = False) -> Path:
    """Writes the built-in synthetic street world (exact scene-flow ground truth), KITTI layout.

    Resumable: scenes already on disk are kept. The defaults are the study's ``tiny``
    preset (64x192, 10 scenes: 9 train, 1 validation).

    Args:
      directory: data-set root (``training/`` is created in it).
      num_scenes: frame pairs (>= 10 for :func:`load_dataset`'s 9:1 split).
      height, width: image size (multiples of 64 run at that size).
      seed: data-set seed.
      progress: show progress.

    Returns:
      The root path.

    Example:
      >>> import tempfile
      >>> root = make_synthetic_dataset(tempfile.mkdtemp(), num_scenes=10)
      >>> sorted(p.name for p in (root / "training").iterdir())[:2]
      ['disp_occ_0', 'disp_occ_1']
    """
    from deepliflow_jax.data.synthetic import generate_dataset

    num_scenes = _count(num_scenes, "num_scenes")
    height, width = _count(height, "height"), _count(width, "width")
    seed = _count(seed, "seed", minimum=0)
    root = Path(directory).expanduser()
    generate_dataset(root, num_scenes, height, width, seed=seed, progress=progress)
    return root


def load_dataset(directory: PathLike, *, max_val_frames: int | None = None, seed: int = 0,
                 num_samples: int | None = None,
                 interp_size: tuple[int, int] | None = None,
                 validity: str = "original") -> Dataset:
    """Decodes a scene-flow data set in the KITTI layout, split as the study splits it.

    :func:`deepliflow_jax.data.dataset.load_dataset` (the one loader the study and the
    search use too) with the network size checked here, before anything is compiled. A
    synthetic world (it has ``synthetic.json``) gets the study's 9:1 split (every tenth
    frame is validation) and the KITTI LiDAR density at its size; a KITTI 2015 root gets
    the original release's 180/20 split, 4096 LiDAR points and the 384x1216 network size.
    LiDAR draws are seeded per frame, so evaluations are reproducible.

    Args:
      directory: the root (with ``training/``).
      max_val_frames: cap on validation frames (None: all).
      seed: LiDAR draw / training order seed.
      num_samples: LiDAR points per frame, overriding the default.
      interp_size: network input ``(h, w)`` (multiples of 64) for every function that
        uses this data set: frames are resized to it inside the network and the output
        back (None: the frame size if it is a multiple of 64, KITTI frames 384x1216).
      validity: ground truth of the validation frames: ``"original"`` (the original's
        rule, what the paper's numbers mean) or ``"devkit"`` (the KITTI devkit's
        per-quantity validity); see :mod:`deepliflow_jax.metrics`.

    Returns:
      A :class:`~deepliflow_jax.data.dataset.Dataset` (``.train``, ``.val`` samples;
      ``train_batch``, ``val_batches``).

    Raises:
      FileNotFoundError: no data set there.
      ValueError: a split is empty, a bad argument, or frames whose size is not a
        multiple of 64 and no ``interp_size`` (the message suggests one), or an
        unknown ``validity``.

    Example:
      >>> data = load_dataset(root)  # root = make_synthetic_dataset(folder)
      >>> len(data.train), len(data.val), data.num_samples, data.interp_size
      (9, 1, 108, None)
    """
    from deepliflow_jax.predict import check_interp_size

    if interp_size is not None:
        interp_size = check_interp_size(interp_size)
    data = _load_dataset(directory, max_val_frames=max_val_frames, seed=seed,
                         num_samples=num_samples, interp_size=interp_size, validity=validity)
    _network_input(data, None, "load_dataset")
    return data


def _network_input(data: Dataset, interp_size: Any, caller: str) -> tuple[int, int] | None:
    """The network input size ``caller`` runs ``data`` at, checked before any compile.

    The advice in the message fits the caller: ``interp_size`` of ``finetune`` /
    ``evaluate``, else of ``load_dataset``.
    """
    from deepliflow_jax.predict import check_interp_size, check_network_size, nearest_network_size

    if interp_size is not None:
        return check_interp_size(interp_size)
    if data.interp_size is not None:
        return check_interp_size(data.interp_size, "Dataset.interp_size")
    for h, w in data.frame_sizes():
        size = nearest_network_size(h, w)
        where = "load_dataset" if caller in ("load_dataset", "compression_table") else \
            f"{caller} (or to load_dataset)"
        root = f" at {data.root}" if data.root else ""
        check_network_size(h, w, f"the frame size of the data set{root}", (
            f"pass interp_size={size} to {where} to resize the frames inside the network "
            f"(as the original does for KITTI), or use frames of a multiple of 64"))
    return None


def _as_dataset(data: Any, need: str | None = None, caller: str = "",
                validity: str = "original") -> Dataset:
    """``data`` as a :class:`Dataset`; ``need='train'`` / ``'val'``: that split is not empty."""
    if isinstance(data, str | Path):
        data = load_dataset(data, validity=validity)
    elif not isinstance(data, Dataset):
        raise ValueError(f"data must be a data-set folder or a Dataset from load_dataset, "
                         f"got {type(data).__name__}")
    if need is not None and not getattr(data, need):
        split = "validation" if need == "val" else "training"
        raise ValueError(f"{caller} needs {split} frames, but the data set has none "
                         f"(data.{need} is empty); load_dataset(root) keeps every tenth frame "
                         f"of a synthetic world for validation (KITTI: the original's 180/20 "
                         f"split)")
    return data


def _checked_data(data: Any, interp_size: Any, caller: str, need: str,
                  validity: str = "original") -> Dataset:
    """The input checks of ``finetune`` / ``evaluate`` / ``compression_table``: the data set,
    its split, and the network size, before anything is compiled."""
    data = _as_dataset(data, need, caller, validity)
    _network_input(data, interp_size, caller)
    return data


def validation_pair(data: Dataset | PathLike, index: int = 0) -> dict[str, np.ndarray]:
    """One validation frame pair with its ground truth, as the study evaluates it.

    Args:
      data: a :class:`Dataset` or its folder.
      index: validation frame index.

    Returns:
      ``{'frames': [2, H, W, 4], 'gt': [H, W, 4], 'image0', 'image1': [H, W, 3] float}``
      (the same LiDAR draw as :func:`evaluate` uses).

    Example:
      >>> pair = validation_pair(data)  # data = load_dataset(make_synthetic_dataset(folder))
      >>> pair["frames"].shape, pair["gt"].shape
      ((2, 64, 192, 4), (64, 192, 4))
    """
    from deepliflow_jax.data.lidar import frame_rng
    from deepliflow_jax.data.pipeline import preprocess_sample

    data = _as_dataset(data, "val", "validation_pair")
    index = check_number(index, "index", f"in [0, {len(data.val)}) (validation "
                         "frames)", integer=True, minimum=0, below=len(data.val))
    sample = data.val[index]
    # the draw of Dataset.val_batches for this frame
    frames, gt = preprocess_sample(sample, data.dataset_type, data.num_samples,
                                   frame_rng(data.seed, int(index), 0))
    return {"frames": frames, "gt": gt, "image0": sample.image0, "image1": sample.image1}


# ----------------------------------------------------------------------------- train / eval


def _trainer(data: Dataset, params: Any, interp_size: tuple[int, int] | None = None,
             conv_impl: str = CONV_IMPL_DEFAULT, optimizer: str = "adam") -> Trainer:
    size = data.interp_size if interp_size is None else tuple(interp_size)
    # seed 0 always: the trainer's seed is unused by the step, and another value
    # would compile another step; a structured model trains and runs as itself
    return get_trainer(size, 0, widths=architecture_widths(params), conv_impl=conv_impl,
                       optimizer=optimizer)


def _adam_start(params: Any, optimizer: str, optimizer_state: Any) -> TF1AdamState | None:
    """``finetune``'s starting Adam state from ``optimizer_state`` (None: fresh), checked."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    if optimizer_state is None:
        return None
    if optimizer != "tf1_adam":
        raise ValueError("optimizer_state continues TF1's Adam (the original's): pass "
                         f"optimizer='tf1_adam' with it, not optimizer={optimizer!r}")
    if not isinstance(optimizer_state, Mapping):
        raise ValueError("optimizer_state must be the mapping load_optimizer_state(checkpoint) "
                         f"returns, got {type(optimizer_state).__name__}")
    try:
        return state_from_checkpoint(params, optimizer_state)
    except ValueError as err:
        raise ValueError(f"optimizer_state does not fit variables: {err}") from err


def _state(trainer: Trainer, params: Any, percent: float, bits: int):
    pruned, masks = post_training_masks(params, percent)
    return trainer.new_state(pruned, masks=masks, bits=bits)


def finetune(variables: Mapping, data: Dataset | PathLike, steps: int, *,
             percent: float | None = None, bits: int | None = None, lr: float = 1e-4,
             l2: bool = True, start: int = 0, interp_size: tuple[int, int] | None = None,
             log_every: int = 0, conv_impl: str = CONV_IMPL_DEFAULT,
             optimizer: str = "adam", optimizer_state: Mapping | None = None
             ) -> tuple[dict, list[dict[str, float]]]:
    """Compression-aware fine-tuning for ``steps`` steps (Adam, batch 1, as the paper).

    Pruning by ``percent`` (global magnitude, weights and biases) happens first and its
    mask is kept through training; ``bits`` fake-quantizes every tensor in the forward
    pass (straight-through gradient). The step is the study's one compiled step, so any
    ``percent`` / ``bits`` / ``lr`` reuses it; the training recipe is the study's
    (``deepliflow_jax.train.recipe.fine_tune``, one phase at ``lr``).

    To continue the original's training as its ``train.py`` does (``load_model``
    restores Adam's slots and beta powers with the weights): convert its training
    checkpoint with ``python -m weights_convert --format=tf --with_optimizer_state``,
    then ``finetune(load_checkpoint(path), data, steps, optimizer="tf1_adam",
    optimizer_state=deepliflow_jax.checkpoint.load_optimizer_state(path))``.

    Args:
      variables: ``{'params': ...}`` to start from (not modified): the original network
        or a structured one (``load_checkpoint`` of a pruned model; widths read from the
        shapes, as ``predict_sceneflow`` does).
      data: a :class:`Dataset` or its folder (the training split is used).
      steps: number of steps (>= 0).
      percent: pruning percentage in [0, 100), or None.
      bits: weight bit width in [2, 16], or None / 0 for float.
      lr: learning rate (the paper: 1e-4, then 1e-5).
      l2: add the original's L2 weight decay term to the loss.
      start: data position of the first step (continue a run with ``start=steps``).
      interp_size: network input size, overriding the data set's.
      log_every: print the loss every this many steps (0: silent).
      conv_impl: how the convs are computed: ``"auto"`` (default, the fastest exact
        form on the backend), ``"xla"`` (the plain reference) or a form of
        :mod:`deepliflow_jax.model.layers`; the same numbers to float rounding.
      optimizer: ``"adam"`` (``optax.adam``, bias-corrected moments) or ``"tf1_adam"``
        (TF 1.x's ``ApplyAdam``, the original's ``tf.train.AdamOptimizer``;
        ``deepliflow_jax.train.tf_adam``).
      optimizer_state: the Adam state to continue (``"tf1_adam"`` only):
        ``deepliflow_jax.checkpoint.load_optimizer_state(path)`` of a checkpoint saved
        with one (``save_checkpoint(..., optimizer=)``, the converter's
        ``--with_optimizer_state``): ``{"mu", "nu", "beta1_power", "beta2_power",
        "count"}``, moments shaped like ``variables``; moments of pruned entries are
        zeroed. None: a fresh state.

    Returns:
      ``(variables, history)``: the parameters as the forward pass uses them (pruned
      entries exactly 0, values on the quantization grid: ready for
      :func:`predict_sceneflow`) and one dict per step: ``step`` (data position),
      ``loss`` = ``data_loss + reg``, ``data_loss`` (the original's multi-scale robust
      KITTI loss, ``losses.kitti_loss``: flows in network units, pixels / 20, robust
      error ``(|.|_1 + 0.01) ** 0.4`` averaged over valid pixels, levels weighted
      1, 1, 1, 2, 4; dimensionless), ``reg`` (the L2 weight decay ``1e-4 * sum(w**2) / 2``
      of the conv kernels, 0 with ``l2=False``) and ``grad_norm`` (global L2 norm of
      the gradient).

    Raises:
      FileNotFoundError: ``data`` is a folder without a data set.
      ValueError: bad variables (not ``{'params': ...}`` of floats), data (no training
        frames, a frame size that is not a multiple of 64 without ``interp_size``),
        steps, lr, percent, bits, an unknown ``optimizer``, or an ``optimizer_state``
        that is not a mapping, lacks an entry, does not match ``variables``' shapes or
        comes without ``optimizer="tf1_adam"``; all checked before anything is compiled.
      DivergenceError: (a ``FloatingPointError``) a step's loss or the final parameters
        are not finite; it names the step and the learning rate, and nothing is returned.

    Example:
      >>> tuned, history = finetune(init_params(0), data, steps=2, percent=10, bits=8)
      >>> len(history), history[-1]["step"], history[-1]["loss"] > 0
      (2, 1, True)
    """
    data = _checked_data(data, interp_size, "finetune", "train")
    params = _check_variables(variables)["params"]
    steps = _count(steps, "steps", minimum=0)
    # a Python float: a NumPy or JAX scalar rate must not key another trace of the step
    lr = check_number(lr, "lr", "a positive number", above=0)
    start = _count(start, "start", minimum=0)
    log_every = _count(log_every, "log_every", minimum=0)
    percent, bits = _percent(percent), _bits(bits)
    adam = _adam_start(params, optimizer, optimizer_state)
    trainer = _trainer(data, params, interp_size, check_conv_impl(conv_impl), optimizer)
    pruned, masks = post_training_masks(params, percent)
    history = []

    def record(pos: int, metrics: dict) -> None:
        history.append({"step": pos, **{k: float(v) for k, v in
                                        jax.device_get(metrics).items()}})
        check_training([pos], [history[-1]["loss"]], lr)  # the loss is on the host already
        i = pos - start
        if log_every and (i % log_every == 0 or i == steps - 1):
            print(f"step {pos}: loss {history[-1]['loss']:.4f} "
                  f"(data {history[-1]['data_loss']:.4f})", flush=True)

    fit = fine_tune(trainer, pruned, lambda pos: data.train_batch(pos, data.num_samples),
                    [Phase("finetune", lr, steps)], masks=masks, bits=bits, adam=adam, l2=l2,
                    start=start, on_step=record)
    return {"params": trainer.compressed_params(fit.state)}, history


def evaluate(variables: Mapping, data: Dataset | PathLike, *, percent: float | None = None,
             bits: int | None = None, interp_size: tuple[int, int] | None = None,
             validity: str | None = None, as_submission: bool = False,
             conv_impl: str = CONV_IMPL_DEFAULT) -> dict[str, float]:
    """EPE and outlier rates on the validation split, as the study (and the original).

    ``percent`` / ``bits`` compress the model post-training first (prune, then quantize);
    every configuration runs the study's one compiled evaluation. A pixel whose
    prediction is not finite counts as an outlier in every rate (``nonfinite`` says how
    many there were; the EPE is then NaN or inf).

    Args:
      variables: ``{'params': ...}`` of the original or a structured network.
      data: a :class:`Dataset` or its folder.
      percent: post-training pruning percentage, or None.
      bits: post-training weight bit width, or None / 0 for float.
      interp_size: network input size, overriding the data set's.
      validity: ``"original"`` (frames averaged, as the paper) or ``"devkit"`` (the
        KITTI devkit's per-quantity validity, pixels pooled); None: the data set's (see
        :func:`load_dataset`, which reads a folder with this mode).
      as_submission: score the predictions as their KITTI submission files would be
        scored (``"devkit"`` only; see :func:`write_submission`): rounded to the PNG
        encoding, missing values filled by the devkit's interpolation.
      conv_impl: how the convs are computed: ``"auto"`` (default, the fastest exact
        form on the backend), ``"xla"`` (the plain reference) or a form of
        :mod:`deepliflow_jax.model.layers`; the same numbers to float rounding.

    Returns:
      ``{'epe': px, 'd0', 'd1', 'fl', 'sf': outlier %, 'nonfinite': pixels,
      'frames': n}``.

    Raises:
      FileNotFoundError: ``data`` is a folder without a data set.
      ValueError: bad variables (not ``{'params': ...}`` of floats), data (no validation
        frames, a frame size that is not a multiple of 64 without ``interp_size``),
        percent, bits, a ``validity`` other than the one ``data`` was loaded with, or
        ``as_submission`` without ``"devkit"``; all checked before anything is compiled.

    Example:
      >>> evaluate(init_params(0), data, bits=8)["epe"] > 0
      True
    """
    if validity is not None:
        check_validity(validity)
    data = _checked_data(data, interp_size, "evaluate", "val", validity or "original")
    params = _check_variables(variables)["params"]
    percent, bits = _percent(percent), _bits(bits)
    validity = data.validity if validity is None else validity
    if validity != data.validity:
        raise ValueError(f"data was loaded with validity={data.validity!r}, its ground truth "
                         f"does not support validity={validity!r}: load it with "
                         f"load_dataset(root, validity={validity!r})")
    submitted = check_as_submission(as_submission, validity)
    trainer = _trainer(data, params, interp_size, check_conv_impl(conv_impl))
    batches = data.val_batches(data.num_samples)
    state = _state(trainer, params, percent, bits)
    if not submitted:
        return {**trainer.evaluate(state, batches, validity=validity), "frames": len(data.val)}
    _, outputs = trainer.evaluate(state, batches, keep_outputs=True, validity=validity)
    return evaluate_np([(o, g, v) for b, out in zip(batches, outputs, strict=True)
                        for o, g, v in zip(out, b["gt"], b["valid"], strict=True)],
                       validity=validity, as_submission=True)


SUBMISSION_SPLITS = ("testing", "validation")


def _submission_split(data: Any, split: str | None) -> str:
    """``split``, or None resolved: ``"testing"`` when the data's root has ``testing/``."""
    from deepliflow_jax.data.kitti import TEST_SPLIT

    if split is not None:
        if split not in SUBMISSION_SPLITS:
            raise ValueError(f"split must be one of {SUBMISSION_SPLITS} or None, got {split!r}")
        return split
    root = data.root if isinstance(data, Dataset) else data
    if not isinstance(root, str | Path) or not str(root):
        return "validation"
    root = Path(root).expanduser()
    if (root / TEST_SPLIT).is_dir():
        return "testing"
    if not isinstance(data, Dataset) and not (root / "training").is_dir():
        raise FileNotFoundError(f"no data set at {root}: expected {root / TEST_SPLIT} (frames "
                                f"to submit) or {root / 'training'} (validation frames)")
    return "validation"


@dataclasses.dataclass(frozen=True)
class _TestFrames:
    """The frames of a ``testing/`` folder and how they are run (no ground truth needed)."""

    root: Path
    names: list[str]
    num_samples: int
    seed: int
    dataset_type: str
    settings: Dataset  # no frames: the network size (and root) _trainer reads


def _test_frames(data: Any, interp_size: Any) -> _TestFrames:
    """``data``'s ``testing/`` frames, every input file and network size checked.

    A :class:`Dataset` lends its LiDAR count, seed and network size; a folder gets
    :func:`load_dataset`'s KITTI settings (4096 points, seed 0, 384x1216 unless every
    frame is a multiple of 64).
    """
    from deepliflow_jax.data.io import png_size
    from deepliflow_jax.data.kitti import IMAGE_DIR, TEST_SPLIT, list_input_frames
    from deepliflow_jax.predict import check_interp_size, check_network_size, nearest_network_size

    if isinstance(data, Dataset):
        if not data.root:
            raise ValueError("split='testing' reads the testing/ folder of the data set's "
                             "root, but this Dataset has none (data.root is empty): pass "
                             "the folder")
        root, num_samples, seed = Path(data.root), data.num_samples, data.seed
        dataset_type, default_size = data.dataset_type, data.interp_size
    elif isinstance(data, str | Path):
        root, num_samples, seed = Path(data).expanduser(), DEFAULT_SAMPLES, 0
        dataset_type, default_size = "KITTI", KITTI_INTERP_SIZE
    else:
        raise ValueError(f"data must be a data-set folder or a Dataset from load_dataset, "
                         f"got {type(data).__name__}")
    if not root.is_dir():
        raise FileNotFoundError(f"no data set at {root}")
    names = list_input_frames(root, TEST_SPLIT)
    sizes = sorted({png_size(root / TEST_SPLIT / IMAGE_DIR / f"{n}_10.png") for n in names})
    multiples = all(h % 64 == 0 and w % 64 == 0 for h, w in sizes)
    if interp_size is not None:
        size = check_interp_size(interp_size)
    elif isinstance(data, Dataset):
        size = default_size
    else:  # load_dataset's rule for a KITTI root
        size = None if multiples else default_size
    if size is None:
        for h, w in sizes:
            check_network_size(h, w, f"the frame size of {root / TEST_SPLIT}", (
                f"pass interp_size={nearest_network_size(h, w)} to write_submission to "
                "resize the frames inside the network (as the original does for KITTI)"))
    settings = Dataset(train=[], val=[], dataset_type=dataset_type, seed=seed,
                       num_samples=num_samples, interp_size=size, root=str(root))
    return _TestFrames(root, names, num_samples, seed, dataset_type, settings)


def _submission_prediction(trainer: Trainer, state: Any, frames: np.ndarray) -> np.ndarray:
    """Scene flow ``[H, W, 4]`` of one frame pair ``[2, H, W, 4]``, by evaluate's compiled
    forward (resized to the network size and back inside); the ground truth it is given
    only sets the output size, and its metrics are dropped."""
    placeholder = np.zeros((1, *frames.shape[1:3], 4), np.float32)
    _, (sf,) = trainer.evaluate(state, [{"frames": frames[None], "gt": placeholder}],
                                keep_outputs=True)
    return sf[0]


def write_submission(variables: Mapping, data: Dataset | PathLike, directory: PathLike, *,
                     split: str | None = None, percent: float | None = None,
                     bits: int | None = None, interp_size: tuple[int, int] | None = None,
                     overwrite: bool = False, conv_impl: str = CONV_IMPL_DEFAULT) -> Path:
    """Writes predictions as a KITTI scene flow submission folder.

    ``directory/disp_0``, ``disp_1`` and ``flow`` hold ``NNNNNN_10.png`` per frame
    (16-bit: disparity x 256, 0 = missing; flow u x 64 + 2**15, v x 64 + 2**15, valid),
    named by the frame ids; see :mod:`deepliflow_jax.data.submission`.

    ``split="testing"`` (the KITTI test set): every frame of ``ROOT/testing/``, which
    holds only the network inputs, no ground truth (``data.kitti.INPUT_FILES``)::

      testing/image_2/NNNNNN_10.png, NNNNNN_11.png     8-bit RGB at t and t+1
      testing/disp_occ_0/NNNNNN_10.png                 16-bit LiDAR disparity at t
      testing/disp_occ_1_transformedOnSecFrame/NNNNNN_10.png
                                                       16-bit LiDAR disparity at t+1

    (the files the training frames' inputs come from). Each frame runs as an evaluated
    frame does: ``num_samples`` LiDAR points drawn from each map (seeded by the seed and
    the frame's index in the sorted list), resized to the network size inside the
    network and the output back to the frame's size. A :class:`Dataset` lends its
    ``num_samples``, ``seed`` and ``interp_size``; a folder gets KITTI's (4096 points,
    seed 0, 384x1216 unless every frame is a multiple of 64).

    ``split="validation"``: the validation frames of :func:`load_dataset` (ground truth
    needed), the predictions :func:`evaluate` scores (same LiDAR draw, same
    compression); ``evaluate(..., validity="devkit", as_submission=True)`` gives what the
    devkit scores for these files.

    Every input file and the network size are checked before anything runs; the folder
    is written crash-safe (nothing is left on an error).

    Args:
      variables: ``{'params': ...}`` of the original or a structured network.
      data: a :class:`Dataset` or its folder (a folder may hold only ``testing/``).
      directory: the submission folder.
      split: ``"testing"`` or ``"validation"``; None: ``"testing"`` when the root
        (``data`` or ``data.root``) has a ``testing/`` folder, else ``"validation"``.
      percent, bits, interp_size, conv_impl: as :func:`evaluate`.
      overwrite: replace a submission folder written by this function (an empty folder
        is always filled; any other folder is never replaced).

    Returns:
      The folder, absolute.

    Raises:
      FileExistsError: ``directory`` is not empty and ``overwrite`` is False, or it is
        not a submission folder.
      FileNotFoundError: no data set, no ``testing/image_2`` folder, or a frame's input
        file is missing (named).
      ValueError: an unknown ``split``, an unreadable input file or one whose size
        differs from its frame's (named), no frames, a frame size the network cannot run
        without ``interp_size``; and as :func:`evaluate`.

    Example:
      >>> import tempfile
      >>> folder = write_submission(init_params(0), data, tempfile.mkdtemp())
      >>> sorted(p.name for p in folder.iterdir())
      ['deepliflow_submission.json', 'disp_0', 'disp_1', 'flow']
    """
    from deepliflow_jax.data.kitti import TEST_SPLIT, load_inputs
    from deepliflow_jax.data.lidar import frame_rng
    from deepliflow_jax.data.pipeline import input_frames

    split = _submission_split(data, split)
    if split == "testing":
        test = _test_frames(data, interp_size)
        settings, names = test.settings, test.names
    else:
        settings = _checked_data(data, interp_size, "write_submission", "val", "original")
        names = [s.name for s in settings.val]
    params = _check_variables(variables)["params"]
    percent, bits = _percent(percent), _bits(bits)
    trainer = _trainer(settings, params, None if split == "testing" else interp_size,
                       check_conv_impl(conv_impl))
    state = _state(trainer, params, percent, bits)

    def frames():
        for index, name in enumerate(names):
            if split == "testing":
                inputs = load_inputs(test.root, name, TEST_SPLIT)
                pair = input_frames(inputs, test.dataset_type, test.num_samples,
                                    frame_rng(test.seed, index, 0))
            else:
                pair = validation_pair(settings, index)["frames"]
            yield name, _submission_prediction(trainer, state, pair)

    info = {"root": settings.root, "split": split, "frames": names, "percent": percent,
            "bits": bits, "num_samples": settings.num_samples,
            "interp_size": None if trainer.interp_size is None else list(trainer.interp_size)}
    # the folder is checked before the generator runs the network
    return submission.write_submission(directory, frames(), overwrite=overwrite, info=info)


def time_model(variables: Mapping, height: int = 64, width: int = 192, repeats: int = 10, *,
               batch: int = 1, warmup: int = 1, dataset: str | None = None,
               interp_size: tuple[int, int] | None = None,
               dtype: Any = jnp.float32, conv_impl: str = CONV_IMPL_DEFAULT) -> dict[str, Any]:
    """Wall time of the jitted forward pass (the :func:`predict_sceneflow` executable).

    Pruned or fake-quantized weights are still dense float tensors, so every
    configuration of one size runs the same convolutions (the paper's Fig. 6 measures
    the same thing on its GPU).

    Args:
      variables: ``{'params': ...}``.
      height, width: frame size (multiples of 64, or KITTI's, about 375x1242, with
        ``dataset='kitti'``, or any with ``interp_size``).
      repeats: timed calls (>= 1).
      batch: frame pairs per call.
      warmup: untimed calls after the first (compiling) one.
      dataset: as :func:`predict_sceneflow` (``'kitti'`` runs at 384x1216 inside).
      interp_size: network input ``(h, w)`` (multiples of 64) the frames are resized to.
      dtype: floating compute dtype.
      conv_impl: how the convs are computed: ``"auto"`` (default, the fastest exact
        form on the backend), ``"xla"`` (the plain reference) or a form of
        :mod:`deepliflow_jax.model.layers`; the same numbers to float rounding.

    Returns:
      ``{'first_call_s' (compile + run), 'median_ms', 'p10_ms', 'p90_ms', 'repeats',
      'batch', 'height', 'width', 'backend', 'device', 'conv_impl'}`` (``conv_impl``:
      the form that ran, ``"auto"`` resolved).

    Raises:
      ValueError: bad variables, counts, dataset or dtype, or a size the network cannot
        run (the message names the fix); all checked before anything is compiled.

    Example:
      >>> time_model(init_params(0), 64, 192, repeats=2)["median_ms"] > 0
      True
    """
    from deepliflow_jax.predict import (
        check_compute_dtype,
        check_interp_size,
        check_kitti_size,
        check_network_size,
        nearest_network_size,
    )
    from deepliflow_jax.profile.inputs import random_frames

    _check_variables(variables)
    repeats = _count(repeats, "repeats")
    batch = _count(batch, "batch")
    warmup = _count(warmup, "warmup", minimum=0)
    height, width = _count(height, "height"), _count(width, "width")
    dtype = check_compute_dtype(dtype)
    conv_impl = check_conv_impl(conv_impl)
    kind = None if dataset is None else _dataset_type(dataset)
    size = nearest_network_size(height, width)
    if interp_size is not None:
        interp_size = check_interp_size(interp_size)
    elif kind == "KITTI":
        check_kitti_size(height, width, "pass height=375, width=1242 (a KITTI frame), "
                         "dataset=None to time the network at the frame size, or "
                         f"interp_size=(h, w) (e.g. {size})")
    elif kind is None:
        check_network_size(height, width, "height x width", (
            f"pass height and width that are multiples of 64 (e.g. {size[0]}x{size[1]}), or "
            f"interp_size={size} to time the network at that size on these frames"))
    frames = jax.device_put(random_frames(batch, height, width))
    variables = jax.device_put(variables)

    def call():
        return predict_sceneflow(variables, frames, dataset, interp_size=interp_size,
                                 dtype=dtype, conv_impl=conv_impl)

    t0 = time.perf_counter()
    jax.block_until_ready(call())  # compiles (or finds the executable)
    first = time.perf_counter() - t0
    stats = time_calls(call, repeats=repeats, warmup=warmup)
    return {"first_call_s": first, "median_ms": stats["median_ms"], "p10_ms": stats["p10_ms"],
            "p90_ms": stats["p90_ms"], "repeats": repeats, "batch": batch, "height": height,
            "width": width, "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "conv_impl": resolve_conv_impl(conv_impl)}


DEFAULT_CONFIGS = ((0.0, 0), (10.0, 0), (0.0, 8), (10.0, 8))


def compression_table(variables: Mapping, data: Dataset | PathLike,
                      configs: Sequence[tuple[float, int]] = DEFAULT_CONFIGS, *,
                      repeats: int = 0, conv_impl: str = CONV_IMPL_DEFAULT
                      ) -> list[dict[str, Any]]:
    """Post-training compression of one model, one row per ``(percent, bits)``.

    Args:
      variables: ``{'params': ...}`` of the original or a structured network.
      data: a :class:`Dataset` or its folder (validation split).
      configs: ``(pruning percent, bits)`` pairs; 0 = no pruning / float.
      repeats: timed forward passes per configuration (0: no timing).
      conv_impl: how the convs are computed: ``"auto"`` (default, the fastest exact
        form on the backend), ``"xla"`` (the plain reference) or a form of
        :mod:`deepliflow_jax.model.layers`; the same numbers to float rounding.

    Returns:
      Rows ``{'percent', 'bits', 'zero_percent', 'epe', 'd0', 'd1', 'fl', 'sf',
      'median_ms'}`` (``median_ms`` None without timing); :func:`format_table` prints them.

    Raises:
      FileNotFoundError: ``data`` is a folder without a data set.
      ValueError: bad variables, data (no validation frames, an unusable frame size) or
        configs; all checked before anything is compiled.

    Example:
      >>> rows = compression_table(init_params(0), data, [(0, 0), (10, 8)])
      >>> rows[1]["zero_percent"] > 9.99  # floor(10 % of the entries), plus 8-bit zeros
      True
    """
    params = _check_variables(variables)["params"]
    data = _checked_data(data, None, "compression_table", "val")
    repeats = _count(repeats, "repeats", minimum=0)
    if not configs:
        raise ValueError("configs must hold at least one (percent, bits) pair")
    checked = []
    for config in configs:
        if not isinstance(config, Sequence) or len(config) != 2:
            raise ValueError(f"each config must be a (percent, bits) pair, got {config!r}")
        checked.append((_percent(config[0]), _bits(config[1])))
    conv_impl = check_conv_impl(conv_impl)
    trainer = _trainer(data, params, None, conv_impl)
    batches = data.val_batches(data.num_samples)
    h, w = data.val[0].image0.shape[:2]
    rows = []
    for percent, bits in checked:
        state = _state(trainer, params, percent, bits)
        compressed = trainer.compressed_params(state)
        row = {"percent": percent, "bits": bits,
               "zero_percent": zero_fraction(compressed),
               **trainer.evaluate(state, batches, validity=data.validity),
               "median_ms": None}
        if repeats:
            # the network size of the evaluation (KITTI: 384x1216, as dataset='kitti')
            row["median_ms"] = time_model({"params": compressed}, h, w, repeats,
                                          interp_size=data.interp_size,
                                          conv_impl=conv_impl)["median_ms"]
        rows.append(row)
    return rows


def compression_search(variables: Mapping, data: Dataset | PathLike, budget: str = "2x", *,
                       workdir: PathLike, save_to: PathLike | None = None,
                       sensitivity_cache: PathLike | None = None, log: Any = print,
                       **settings: Any) -> dict[str, Any]:
    """The most accurate compressed model for a budget on this device (the search).

    Per layer group a channel-pruning ratio (and, for size budgets, weight bits and
    unstructured sparsity) chosen from measured sensitivities and measured costs, the
    best few plans fine-tuned with the one trainer and measured for real; see
    :mod:`deepliflow_jax.search` (``python -m experiments.compression_search``).

    Args:
      variables: ``{'params': ...}`` of the trained original (dense) network.
      data: a :class:`Dataset` or its folder; its frames must be a network size (multiples
        of 64), its validation frames one size.
      budget: ``"120ms"``, ``"8MB"``, ``"2.5x"`` (over dense) or a reference plan's name.
      workdir: scratch folder (fine-tuned models, the sensitivity cache).
      save_to: checkpoint of the chosen model (default ``workdir/searched_model``).
      sensitivity_cache: JSON cache (default ``workdir/sensitivity_cache.json``).
      log: progress printer.
      **settings: fields of :class:`~deepliflow_jax.search.config.SearchConfig` (e.g.
        ``ratios``, ``finetune_steps``, ``candidates``, ``groups``).

    Returns:
      The result: ``rows`` (every measured model), ``chosen``, ``chosen_checkpoint``,
      ``budget`` (its one figure, resolved from the cost rounds), ``verdict`` (the chosen
      model against the references, ``summary`` in words), ``frontier``,
      ``additivity``, ``sensitivity``, ``costs``;
      ``search.report.to_markdown`` / ``plot`` show it.

    Raises:
      ValueError: bad variables, data or settings (before anything is compiled);
        ``InfeasibleBudgetError`` (a ValueError) when the budget is out of reach: raised
        once the costs are timed, before the sensitivities and the fine-tuning; it names
        the reachable range and the nearest feasible budget (its ``nearest``).

    Example:
      >>> result = compression_search(variables, data, "2x", workdir=folder)  # doctest: +SKIP
      >>> result["chosen"], result["rows"][0]["latency_ms"]  # doctest: +SKIP
      ('searched1', 87.2)
      >>> compression_search(init_params(0), data, "g99", workdir="/tmp/search")
      Traceback (most recent call last):
      ...
      ValueError: budget 'g99' names no reference plan; the references are ['g70h10', ...
    """
    from deepliflow_jax.search.config import SearchConfig
    from deepliflow_jax.search.run import run_search

    params = _check_variables(variables)["params"]
    data = _checked_data(data, None, "compression_search", "val")
    if not data.train:
        raise ValueError("compression_search fine-tunes on the training frames, but the data "
                         "set has none")
    if _network_input(data, None, "compression_search") is not None:
        raise ValueError("compression_search runs the network at the frame size: load the data "
                         "set without interp_size, with frames of a multiple of 64")
    try:
        cfg = SearchConfig(budget=budget, **settings)
    except TypeError as err:
        raise ValueError(f"compression_search: {err}; the settings are the fields of "
                         "deepliflow_jax.search.config.SearchConfig") from err
    data.val_batch()  # raises now, before anything is compiled, for frames of several sizes
    return run_search(cfg, data, {"params": params}, workdir, save_to=save_to,
                      sensitivity_cache=sensitivity_cache, log=log)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`compression_table` rows.

    Args:
      rows: the rows.

    Returns:
      The table text.

    Example:
      >>> print(format_table([{"percent": 10.0, "bits": 8, "zero_percent": 12.5, "epe": 3.2,
      ...                      "d0": 1.0, "d1": 2.0, "fl": 3.0, "sf": 4.0, "median_ms": None}]))
      | pruning | weights | zeros % | EPE (px) | D0 % | D1 % | Fl % | SF % | time (ms) |
      |---|---|---|---|---|---|---|---|---|
      | 10% | 8 bits | 12.50 | 3.200 | 1.00 | 2.00 | 3.00 | 4.00 | - |
    """
    lines = ["| pruning | weights | zeros % | EPE (px) | D0 % | D1 % | Fl % | SF % | time (ms) |",
             "|---" * 9 + "|"]
    for r in rows:
        ms = "-" if r.get("median_ms") is None else f"{r['median_ms']:.1f}"
        weights = f"{r['bits']} bits" if r["bits"] else "float32"
        lines.append(
            f"| {r['percent']:g}% | {weights} | "
            f"{r['zero_percent']:.2f} | {r['epe']:.3f} | {r['d0']:.2f} | {r['d1']:.2f} | "
            f"{r['fl']:.2f} | {r['sf']:.2f} | {ms} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pictures


def _one_frame(sceneflow: Any, name: str = "sceneflow") -> np.ndarray:
    arr = np.asarray(sceneflow, np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[-1] != 4:
        raise ValueError(f"{name} must be [H, W, 4] (or [1, H, W, 4]; pick one frame of a "
                         f"batch), got {np.shape(sceneflow)}")
    return arr


def flow_image(sceneflow: Any, max_flow: float = -1.0) -> np.ndarray:
    """The optical flow of a scene flow, Middlebury colour coded (as the original).

    Args:
      sceneflow: ``[H, W, 4]`` (or ``[1, H, W, 4]``) from :func:`predict_sceneflow`.
      max_flow: flow radius of full saturation (<= 0: the image's largest finite one).

    Returns:
      uint8 RGB ``[H, W, 3]``; pixels with a NaN/inf flow are black.

    Raises:
      ValueError: a wrong shape, or no pixel with a finite flow (a failed prediction:
        refused rather than drawn as a black picture).

    Example:
      >>> import numpy as np
      >>> flow_image(np.ones((64, 128, 4), np.float32)).shape
      (64, 128, 3)
    """
    from deepliflow_jax.vis import flow_to_color

    return flow_to_color(_one_frame(sceneflow)[..., :2], check_number(max_flow, "max_flow"))


def disparity_image(sceneflow: Any, frame: int = 0, max_disp: float = -1.0) -> np.ndarray:
    """Disparity at t (``frame=0``) or t+1 (``frame=1``), jet colour coded (as the original).

    Args:
      sceneflow: ``[H, W, 4]`` (or ``[1, H, W, 4]``).
      frame: 0 (d0) or 1 (d1).
      max_disp: disparity of the top colour (<= 0: the image's largest finite one).

    Returns:
      uint8 RGB ``[H, W, 3]``; NaN/inf pixels are black.

    Raises:
      ValueError: a wrong shape or ``frame``, or no finite disparity.

    Example:
      >>> import numpy as np
      >>> disparity_image(np.ones((64, 128, 4), np.float32), frame=1).dtype
      dtype('uint8')
    """
    from deepliflow_jax.vis import disparity_to_color

    frame = check_number(frame, "frame", "0 (disparity at t) or 1 (at t+1)", integer=True,
                         minimum=0, maximum=1)
    max_disp = check_number(max_disp, "max_disp")
    return disparity_to_color(_one_frame(sceneflow)[..., 2 + frame], max_disp)


def plot_sceneflow(sceneflow: Any, image0: Any = None, image1: Any = None, *,
                   gt: Any = None, title: str | None = None):
    """A matplotlib figure: inputs, then flow / D0 / D1 of the prediction (and ``gt``).

    Colour scales come from ``gt`` when given (its valid pixels), else from the
    prediction, and are shared by both rows.

    Args:
      sceneflow: ``[H, W, 4]`` prediction.
      image0, image1: optional input images (float [0, 1] or uint8).
      gt: optional ground truth ``[H, W, 4]`` (``d0 > 0`` = valid).
      title: figure title.

    Returns:
      The ``matplotlib.figure.Figure`` (needs the ``viz`` extra).

    Example:
      >>> import numpy as np
      >>> fig = plot_sceneflow(np.ones((64, 128, 4), np.float32), title="ones")
      >>> len(fig.axes)
      3
    """
    import matplotlib.pyplot as plt

    from deepliflow_jax.vis import color_scales, sceneflow_panels

    pred = _one_frame(sceneflow)
    ref = pred if gt is None else _one_frame(gt, "gt")
    valid = ref[..., 2] > 0 if gt is not None else np.ones(ref.shape[:2], bool)
    max_flow, max_disp = color_scales(ref, valid, floor=1e-6)
    rows = []
    if image0 is not None or image1 is not None:
        rows.append([("image t", image0), ("image t+1", image1)])
    names = ("optical flow", "disparity t", "disparity t+1")
    rows.append(list(zip([f"{n} (pred)" for n in names],
                         sceneflow_panels(pred, None, max_flow, max_disp), strict=True)))
    if gt is not None:
        rows.append(list(zip([f"{n} (gt)" for n in names],
                             sceneflow_panels(ref, valid.astype(int), max_flow, max_disp),
                             strict=True)))
    ncol = max(len(r) for r in rows)
    h, w = pred.shape[:2]
    fig, axes = plt.subplots(len(rows), ncol, squeeze=False,
                             figsize=(3.2 * ncol, 3.2 * h / w * len(rows) + 0.8))
    for r, row in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            if c < len(row) and row[c][1] is not None:
                ax.imshow(row[c][1])
                ax.set_title(row[c][0], fontsize=9)
                ax.axis("off")
            else:
                fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
