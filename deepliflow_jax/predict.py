"""Public prediction: validated inputs, the original's resize policy, one jit.

Resize policy (original ``inference.py``): KITTI frames are resized inside the
network to 384x1216 (legacy nearest) and the output back to the frame size
(legacy bilinear); FlyingThings3D frames are center-cropped to 512x960 by the
caller (``deepliflow_jax.data``) and run at that size. For any other size the
network runs at the frame size, which must be a multiple of 64 in both
dimensions (six stride-2 levels whose transposed convs must double exactly),
unless ``interp_size`` is given.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepliflow_jax.model.build import forward
from deepliflow_jax.model.channels import architecture_widths
from deepliflow_jax.model.deeplidarflow import SIZE_MULTIPLE
from deepliflow_jax.model.layers import CONV_IMPL_DEFAULT, check_conv_impl

KITTI_INTERP_SIZE = (384, 1216)
FT3D_CROP_SIZE = (512, 960)
# dataset='kitti' resizes to 384x1216 inside the network; KITTI frames are about
# 375x1242 (370..376 x 1224..1242). Frames whose sides would scale by more than this
# factor (either way) are not KITTI frames, and are refused unless resize=True.
KITTI_MAX_SCALE = 1.25
CHANNELS = ("R (RGB minus mean)", "G (RGB minus mean)", "B (RGB minus mean)",
            "sparse disparity (normalised, 0 = no LiDAR point)")


def nearest_network_size(height: int, width: int) -> tuple[int, int]:
    """The nearest sizes that are positive multiples of 64 (a suggestion for messages)."""
    return tuple(max(SIZE_MULTIPLE, SIZE_MULTIPLE * round(v / SIZE_MULTIPLE))
                 for v in (height, width))


def check_network_size(height: int, width: int, what: str = "network input",
                       advice: str | None = None) -> None:
    """Raises ``ValueError`` unless both sizes are positive multiples of 64.

    Args:
      height, width: the size.
      what: how the message names it (e.g. ``'frame size'``).
      advice: the fix the message offers; default: pass ``interp_size`` (for callers
        that take one).
    """
    if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        if advice is None:
            advice = (f"pass interp_size=(h, w) to resize inside the network (legacy nearest, "
                      f"as the original does for KITTI), e.g. interp_size="
                      f"{nearest_network_size(height, width)}")
        raise ValueError(
            f"{what} is {height}x{width}, but DeepLiDARFlow needs height and width that are "
            f"multiples of {SIZE_MULTIPLE} (e.g. 384x1216 for KITTI, 512x960 for "
            f"FlyingThings3D); {advice}"
        )


def check_size_pair(size: Any, name: str = "interp_size") -> tuple[int, int]:
    """``(h, w)`` of two positive ints, or ``ValueError`` naming ``name``."""
    try:
        h, w = size
        ok = all(not isinstance(v, bool) and isinstance(v, int | np.integer) and v > 0
                 for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a pair (height, width) of positive integers, "
                         f"got {size!r}")
    return int(h), int(w)


def check_interp_size(size: Any, name: str = "interp_size") -> tuple[int, int]:
    """A usable ``interp_size``: a pair of positive multiples of 64."""
    h, w = check_size_pair(size, name)
    check_network_size(h, w, "network input",
                       f"{name}={(h, w)} itself must be multiples of {SIZE_MULTIPLE}, e.g. "
                       f"{name}={nearest_network_size(h, w)}")
    return h, w


def check_kitti_size(height: int, width: int, advice: str | None = None) -> None:
    """Refuses frames that ``dataset='kitti'`` would resize by more than ``KITTI_MAX_SCALE``.

    Args:
      height, width: the frame size.
      advice: the fix the message offers; default: ``dataset=None``, ``interp_size`` or
        ``resize=True``.
    """
    scales = (KITTI_INTERP_SIZE[0] / height, KITTI_INTERP_SIZE[1] / width)
    if all(1 / KITTI_MAX_SCALE <= s <= KITTI_MAX_SCALE for s in scales):
        return
    if advice is None:
        advice = ("pass dataset=None to run at the frame size, interp_size=(h, w) for another "
                  "network size, or resize=True to resize to 384x1216 anyway")
    h, w = KITTI_INTERP_SIZE
    raise ValueError(
        f"dataset='kitti' runs the network at {h}x{w} (KITTI frames are about 375x1242), but "
        f"these frames are {height}x{width}: they would be scaled {scales[0]:.2f}x (height) "
        f"and {scales[1]:.2f}x (width). {advice[0].upper()}{advice[1:]}")


def check_compute_dtype(dtype: Any) -> Any:
    """``dtype`` as a ``jnp.dtype``, refusing anything but floating point."""
    try:
        dt = jnp.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"dtype must be a floating compute dtype (jnp.float32 or "
                         f"jnp.bfloat16), got {dtype!r}") from err
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"dtype must be a floating compute dtype (jnp.float32 or "
                         f"jnp.bfloat16), got {dt.name}: the network cannot run in integers")
    return dt


def check_variable_dtypes(variables: Any, name: str = "variables") -> None:
    """Refuses a parameter tree with non-floating leaves (e.g. the masks of ``prune``).

    Raises:
      ValueError: naming the dtypes, the first such leaf, and the likely mix-up.
    """
    leaves = jax.tree.leaves(variables)
    dtypes = [np.result_type(leaf) if not hasattr(leaf, "dtype") else leaf.dtype
              for leaf in leaves]
    bad = [i for i, dt in enumerate(dtypes) if not jnp.issubdtype(dt, jnp.floating)]
    if not bad:
        return
    path = jax.tree_util.tree_flatten_with_path(variables)[0][bad[0]][0]
    first = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    kinds = sorted({np.dtype(dtypes[i]).name for i in bad})
    if kinds == ["bool"] and len(bad) == len(leaves):
        hint = ("this looks like the masks of prune(), which returns (params, masks): pass "
                "the pruned params")
    elif kinds == ["bool"]:
        hint = "boolean leaves are masks, not weights"
    else:
        hint = ("integer leaves are quantized codes or indices, not weights: dequantize them "
                "(scale x code) first")
    raise ValueError(f"{name} must hold floating-point parameters, but {len(bad)} of "
                     f"{len(leaves)} leaves are {'/'.join(kinds)} (first: {first}); {hint}")


def validate_frames(frames: Any) -> np.ndarray:
    """Checks a ``[B, 2, H, W, 4]`` (or ``[2, H, W, 4]``) float frame stack.

    Shape, dtype, finite values, and the value ranges of preprocessed input
    (:func:`deepliflow_jax.data.preprocess.check_network_frames`).

    Returns:
      The frames as a float32 numpy array with a batch axis.

    Raises:
      ValueError: naming the problem, the channel's meaning and the fix.
    """
    from deepliflow_jax.data.preprocess import check_network_frames

    arr = np.asarray(frames)
    if arr.ndim == 4:
        arr = arr[None]
    if arr.ndim != 5 or arr.shape[1] != 2 or arr.shape[-1] != 4:
        raise ValueError(
            f"frames must have shape [B, 2, H, W, 4] (two frames of RGB minus mean + "
            f"normalised sparse disparity), got {tuple(np.shape(frames))}"
        )
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"frames must be floating point, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        b, f, y, x, c = np.argwhere(bad)[0]
        fix = ("fill missing LiDAR with 0, not NaN" if c == 3 else
               "RGB values must be finite: check how the image was read and preprocessed")
        raise ValueError(
            f"frames contain {int(bad.sum())} NaN/inf values (first at batch {b}, frame {f}, "
            f"pixel ({y}, {x}), channel {c}: {CHANNELS[c]}); {fix}"
        )
    check_network_frames(arr)
    return arr


def predict(variables: dict, frames: Any, dataset: str | None = None,
            interp_size: tuple[int, int] | None = None,
            out_size: tuple[int, int] | None = None, dtype: Any = jnp.float32,
            resize: bool = False, conv_impl: str = CONV_IMPL_DEFAULT):
    """Scene flow for preprocessed frame pairs, at the frame resolution.

    Args:
      variables: ``{'params': ...}`` of floating-point arrays: the original network or a
        structured (channel-pruned) one, whose widths are read from the shapes.
      frames: ``[B, 2, H, W, 4]`` or ``[2, H, W, 4]``: RGB in [0, 1] minus the
        dataset mean and the normalised sparse disparity (0 = no point), for
        frames t and t+1.
      dataset: ``'kitti'`` resizes to 384x1216 inside the network as the
        original (frames of about KITTI's 375x1242 only, unless ``resize``);
        ``'ft3d'`` expects the 512x960 crop; None runs at the frame size (or
        ``interp_size``).
      interp_size: network input size, overriding the dataset default.
      out_size: output size; default the frame size.
      dtype: floating compute dtype (``jnp.float32`` or ``jnp.bfloat16``).
      resize: with ``dataset='kitti'``, resize frames of any size to 384x1216
        (otherwise frames scaled by more than 1.25x are refused).
      conv_impl: how the convs are computed (default ``"auto"``: the fastest exact
        form on the backend; see :mod:`deepliflow_jax.model.layers`).

    Returns:
      ``(sceneflow, aux)``: ``[B, H, W, 4]`` (u, v, d0, d1) in pixels, and the
      per-level outputs (see ``DeepLiDARFlow``).

    Raises:
      ValueError: for a wrong shape, non-finite or unpreprocessed values, an
        unusable size, non-float variables, compute dtype or ``conv_impl``; checked
        before anything is compiled.
    """
    conv_impl = check_conv_impl(conv_impl)
    check_variable_dtypes(variables)
    dtype = check_compute_dtype(dtype)
    arr = validate_frames(frames)
    h, w = arr.shape[2:4]
    if dataset is not None and (not isinstance(dataset, str)
                                or dataset.lower() not in ("kitti", "ft3d")):
        raise ValueError(f"dataset must be 'kitti', 'ft3d' or None, got {dataset!r}")
    if interp_size is not None:
        interp_size = check_interp_size(interp_size)
    elif dataset is not None and dataset.lower() == "kitti":
        if not resize:
            check_kitti_size(h, w)
        interp_size = KITTI_INTERP_SIZE
    if dataset is not None and dataset.lower() == "ft3d" and (h, w) != FT3D_CROP_SIZE:
        raise ValueError(f"FlyingThings3D frames must be the {FT3D_CROP_SIZE} center crop, "
                         f"got {h}x{w} (see deepliflow_jax.data preprocessing)")
    if interp_size is None:
        check_network_size(h, w, "frame size")
    # a structured (channel-pruned) model runs with the widths its parameters hold
    return forward(variables, jax.device_put(arr), interp_size=interp_size,
                   out_size=out_size or (h, w), dtype=dtype,
                   widths=architecture_widths(variables), conv_impl=conv_impl)
