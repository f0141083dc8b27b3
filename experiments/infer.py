"""Scene flow for one frame pair, as the original ``inference.py``.

    python -m experiments.infer --checkpoint=DIR --image1=PNG --image2=PNG \\
        --disp1=PNG --disp2=PNG --dataset=kitti|ft3d --output_dir=OUT [--interp_size=H,W]
        [--resize] [--random_init --seed=N]

Inputs: two 8-bit RGB(A) frames and two 16-bit sparse disparity PNGs (value /
256 pixels, 0 = no LiDAR point). Preprocessing is the original's
(``deepliflow_jax.data.preprocess.prepare_inference_inputs``): RGB / 255 minus
the dataset mean, disparity ``(d - mean) / std`` at the given points (all of
them, no sampling) and 0 elsewhere; KITTI frames keep their size and the network
resizes them to 384x1216 inside (``predict(..., dataset='kitti')``), FT3D frames
are center-cropped to 512x960.

Outputs in ``OUT``: ``sceneflow.npy`` (float32 ``[H, W, 4]``: optical flow u, v,
disparity at t, disparity at t+1, in pixels, at the input resolution, or at the
crop for FT3D), ``optical_flow.png``, ``disparity1.png``, ``disparity2.png``
(colour coded as the original's ``colored_flow`` / ``colored_disparity``) and
``run_info.json``. ``--random_init`` runs untrained random weights instead of a
checkpoint (the output then means nothing; it is said loudly).

A KITTI submission for a data set folder instead of one pair:

    python -m experiments.infer --checkpoint=DIR --data_root=ROOT --submission_dir=SUB
        [--split=testing|validation] [--interp_size=H,W] [--overwrite]

writes ``SUB/disp_0``, ``SUB/disp_1`` and ``SUB/flow`` with one ``NNNNNN_10.png`` per
frame, in KITTI's 16-bit encoding (``deepliflow_jax.write_submission``). ``--split=testing``
(the default when ``ROOT/testing/`` exists; the KITTI test set): every frame of
``ROOT/testing/``, which needs only the inputs, no ground truth:
``testing/image_2/NNNNNN_10.png`` and ``NNNNNN_11.png`` (RGB at t, t+1),
``testing/disp_occ_0/NNNNNN_10.png`` (16-bit LiDAR disparity at t) and
``testing/disp_occ_1_transformedOnSecFrame/NNNNNN_10.png`` (at t+1); frames are resized
to 384x1216 inside the network (unless every frame is a multiple of 64; ``--interp_size``
for another size) and the output back to each frame's size.
``--split=validation`` (the default otherwise): the validation frames of a training
root as ``deepliflow_jax.load_dataset`` reads it (the predictions
``deepliflow_jax.evaluate`` scores). A folder that is not empty is refused unless
``--overwrite`` (and then only a submission folder this tool wrote).

Flags are absl flags, kept in this script's own ``FlagValues`` (``FLAGS``) so that
``main(argv)`` can run in a process where other scripts defined flags of the same
names (``--checkpoint``, ``--output_dir``); ``--help`` lists them. A usage error exits
with status 2, an input error (a missing or unreadable file, a size the network
cannot run) with 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import flags

from deepliflow_jax import cli
from deepliflow_jax.data.submission import MARKER
from deepliflow_jax.fileio import atomic_write, write_text_atomic

DATASETS = {"kitti": "KITTI", "ft3d": "FT3D"}
RANDOM_WARNING = ("WARNING: --random_init: RANDOM, UNTRAINED WEIGHTS. The scene flow this run "
                  "writes is meaningless; it only exercises the pipeline.")
KITTI_SIZE_ADVICE = ("pass --interp_size=H,W (multiples of 64) to run the network at another "
                     "size, or --resize to resize to 384x1216 anyway")


def read_rgb(path) -> np.ndarray:
    """An 8-bit RGB or RGBA PNG as float32 RGB in [0, 1] ``[H, W, 3]`` (alpha dropped).

    Raises:
      FileNotFoundError: missing file.
      ValueError: unreadable, not 8-bit, or not RGB(A); the message names the file.
    """
    from deepliflow_jax.data.io import read_png

    image = read_png(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{path}: expected an 8-bit RGB or RGBA image, got {image.dtype} "
                         f"{list(image.shape)}")
    return image[..., :3].astype(np.float32) / np.float32(255.0)


def read_sparse_disparity(path) -> np.ndarray:
    """A 16-bit grey sparse disparity PNG as float32 pixels ``[H, W]`` (0 = no point).

    Raises:
      FileNotFoundError: missing file.
      ValueError: unreadable, not single-channel 16-bit; the message names the file.
    """
    from deepliflow_jax.data.io import read_png
    from deepliflow_jax.data.kitti import read_disparity

    raw = read_png(path)  # read_disparity does not say the bit depth: check it first
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel 16-bit disparity PNG (value/256), "
                         f"got {raw.dtype} {list(raw.shape)}")
    return read_disparity(path)[0]


def load_inputs(image1, image2, disp1, disp2, dataset: str) -> np.ndarray:
    """Reads and preprocesses one frame pair.

    Args:
      image1, image2: 8-bit RGB(A) PNGs of frames t and t+1.
      disp1, disp2: 16-bit sparse disparity PNGs of frames t and t+1.
      dataset: ``'kitti'`` or ``'ft3d'``.

    Returns:
      Network input frames ``[2, h, w, 4]`` float32 (FT3D: the 512x960 crop).

    Raises:
      FileNotFoundError, ValueError: a missing/unreadable file, mismatched sizes,
        or an FT3D frame smaller than the crop.
    """
    from deepliflow_jax.data.preprocess import prepare_inference_inputs

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    paths = {"image1": image1, "image2": image2, "disp1": disp1, "disp2": disp2}
    arrays = {k: (read_rgb(p) if k.startswith("image") else read_sparse_disparity(p))
              for k, p in paths.items()}
    shapes = {k: tuple(a.shape[:2]) for k, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError("frames and disparities must have one size, got " + ", ".join(
            f"{paths[k]}: {s[0]}x{s[1]}" for k, s in shapes.items()))
    frames, _ = prepare_inference_inputs(arrays["image1"], arrays["image2"], arrays["disp1"],
                                         arrays["disp2"], dataset_type=DATASETS[dataset])
    return frames


def run_model(variables: dict, frames: np.ndarray, dataset: str,
              interp_size: tuple[int, int] | None = None, resize: bool = False) -> np.ndarray:
    """Scene flow ``[h, w, 4]`` float32 for preprocessed ``frames [2, h, w, 4]``.

    Raises:
      ValueError: KITTI frames far from KITTI's size without ``interp_size`` or
        ``resize`` (the message names the flags), or anything ``predict`` refuses.
    """
    from deepliflow_jax.predict import check_kitti_size, predict

    if dataset == "kitti" and interp_size is None and not resize:
        check_kitti_size(*frames.shape[1:3], advice=KITTI_SIZE_ADVICE)
    sceneflow, _ = predict(variables, frames[None], dataset=dataset, interp_size=interp_size,
                           resize=resize)
    return np.asarray(sceneflow[0], np.float32)


def write_outputs(output_dir, sceneflow: np.ndarray) -> dict[str, Path]:
    """Writes ``sceneflow.npy`` and the colour-coded flow and disparity PNGs.

    Returns:
      ``{name: path}`` of the written files.
    """
    from deepliflow_jax import vis

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"sceneflow": out / "sceneflow.npy"}
    atomic_write(paths["sceneflow"], lambda f: np.save(f, np.asarray(sceneflow, np.float32)))
    paths["optical_flow"] = vis.save_png(out / "optical_flow.png",
                                         vis.flow_to_color(sceneflow[..., :2]))
    paths["disparity1"] = vis.save_png(out / "disparity1.png",
                                       vis.disparity_to_color(sceneflow[..., 2]))
    paths["disparity2"] = vis.save_png(out / "disparity2.png",
                                       vis.disparity_to_color(sceneflow[..., 3]))
    return paths


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``'H,W'`` (or ``'HxW'``) as ``(H, W)``, multiples of 64; None stays None.

    Raises:
      ValueError: anything else, with an example.
    """
    from deepliflow_jax.model.deeplidarflow import SIZE_MULTIPLE

    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError as err:
        raise ValueError(f"expected H,W (e.g. 384,1216), got {text!r}") from err
    if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(f"H and W must be positive multiples of {SIZE_MULTIPLE} (e.g. "
                         f"384,1216), got {text!r}")
    return h, w


def _valid_size(text: str | None) -> bool:
    try:
        parse_size(text)
    except ValueError as err:
        raise flags.ValidationError(str(err)) from err
    return True


FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "Checkpoint directory (deepliflow_jax.checkpoint).",
                    flag_values=FLAGS)
flags.DEFINE_bool("random_init", False, "Use random, untrained weights (pipeline check only).",
                  flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of --random_init.", flag_values=FLAGS)
PAIR_FLAGS = ("image1", "image2", "disp1", "disp2", "dataset", "output_dir")
SUBMISSION_FLAGS = ("data_root", "submission_dir")
SUBMISSION_OPTIONS = ("split",)  # only with SUBMISSION_FLAGS
for _name, _what in (("image1", "8-bit RGB(A) PNG of frame t."),
                     ("image2", "8-bit RGB(A) PNG of frame t+1."),
                     ("disp1", "16-bit sparse disparity PNG of frame t."),
                     ("disp2", "16-bit sparse disparity PNG of frame t+1.")):
    flags.DEFINE_string(_name, None, _what + " (one pair)", flag_values=FLAGS)
flags.DEFINE_enum("dataset", None, sorted(DATASETS), "kitti: resized to 384x1216 inside the "
                  "network (frames of about KITTI's 375x1242); ft3d: 512x960 crop (one pair).",
                  flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Folder for the outputs (one pair).", flag_values=FLAGS)
flags.DEFINE_string("data_root", None, "A KITTI-layout data set root: with --submission_dir, "
                    "the frames of --split are predicted.", flag_values=FLAGS)
flags.DEFINE_string("submission_dir", None, "Write a KITTI scene flow submission (disp_0/, "
                    "disp_1/, flow/ with NNNNNN_10.png) of --data_root here.",
                    flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace an existing --submission_dir written by this "
                  "tool.", flag_values=FLAGS)
flags.DEFINE_enum("split", None, ["testing", "validation"], "With --submission_dir: every "
                  "frame of ROOT/testing/ (inputs only, no ground truth: the KITTI test set) "
                  "or the validation frames of ROOT/training/; default: testing when "
                  "ROOT/testing/ exists.", flag_values=FLAGS)


def _one_mode(values: dict) -> bool:
    """Either one pair (every PAIR_FLAGS) or a submission (every SUBMISSION_FLAGS)."""
    given = {k for k, v in values.items() if v is not None}
    if given & set(SUBMISSION_OPTIONS) and not given & set(SUBMISSION_FLAGS):
        raise flags.ValidationError(
            ", ".join(f"--{k}" for k in SUBMISSION_OPTIONS if k in given) + " goes with "
            "--data_root --submission_dir (a submission)")
    if given & set(SUBMISSION_FLAGS):
        if given & set(PAIR_FLAGS):
            raise flags.ValidationError(
                "--data_root/--submission_dir write a submission for a data set; they do not "
                "go with " + ", ".join(f"--{k}" for k in PAIR_FLAGS if k in given))
        missing = [k for k in SUBMISSION_FLAGS if k not in given]
    else:
        missing = [k for k in PAIR_FLAGS if k not in given]
    if missing:
        raise flags.ValidationError("missing " + ", ".join(f"--{k}" for k in missing) + (
            " (one pair: --image1 --image2 --disp1 --disp2 --dataset --output_dir; a "
            "submission: --data_root --submission_dir)"))
    return True


flags.register_multi_flags_validator([*PAIR_FLAGS, *SUBMISSION_FLAGS, *SUBMISSION_OPTIONS],
                                     _one_mode, flag_values=FLAGS)
flags.DEFINE_string("interp_size", None, "Network input size H,W (multiples of 64) instead of "
                    "the dataset's.", flag_values=FLAGS)
flags.register_validator("interp_size", _valid_size, flag_values=FLAGS)
flags.DEFINE_bool("resize", False, "With --dataset=kitti: resize frames of any size to "
                  "384x1216 (otherwise frames far from KITTI's size are refused).",
                  flag_values=FLAGS)
flags.register_multi_flags_validator(
    ["checkpoint", "random_init"], lambda v: bool(v["checkpoint"]) != bool(v["random_init"]),
    "exactly one of --checkpoint and --random_init is required", flag_values=FLAGS)


def parse_flags(argv: list[str]) -> None:
    """Parses ``argv`` (flags only, no program name) into ``FLAGS``, from the defaults.

    Raises:
      SystemExit: 0 after ``--help``; 2 on a usage error (printed to stderr).
    """
    cli.parse_flags(FLAGS, argv, "python -m experiments.infer", __doc__)


def _variables(args) -> tuple[dict, dict]:
    """The weights (checkpoint or random) and what to record about their source."""
    if args.random_init:
        from deepliflow_jax.model.build import init_params

        print(RANDOM_WARNING, file=sys.stderr)
        return init_params(args.seed), {"random_init": True, "seed": args.seed}
    from deepliflow_jax.checkpoint import load_checkpoint, load_metadata

    variables = load_checkpoint(args.checkpoint)
    meta = load_metadata(args.checkpoint)
    return variables, {"checkpoint": str(Path(args.checkpoint).absolute()),
                       "checkpoint_source": meta.get("source"), "random_init": False}


def write_submission(args, interp_size: tuple[int, int] | None) -> int:
    """``--submission_dir``: the frames of ``--split`` as a KITTI submission.

    Returns:
      The exit status (1 on an input error or a folder that may not be written).
    """
    from deepliflow_jax.api import write_submission as write

    try:
        variables, _ = _variables(args)
        path = write(variables, args.data_root, args.submission_dir, split=args.split,
                     interp_size=interp_size, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    info = json.loads((path / MARKER).read_text())
    print(f"wrote a KITTI submission of {len(info['frames'])} {info['split']} frames: {path} "
          f"(upload: cd {path} && zip -r submission.zip disp_0 disp_1 flow)")
    if args.random_init:
        print(RANDOM_WARNING, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit status (1 on an input error).

    Args:
      argv: the flags (default ``sys.argv[1:]``).

    Raises:
      SystemExit: 2 on a usage error (an unknown, missing or malformed flag).
    """
    parse_flags(sys.argv[1:] if argv is None else list(argv))
    args = FLAGS
    interp_size = parse_size(args.interp_size)
    if args.submission_dir is not None:
        return write_submission(args, interp_size)
    try:
        variables, source = _variables(args)
        frames = load_inputs(args.image1, args.image2, args.disp1, args.disp2, args.dataset)
        start = time.perf_counter()
        sceneflow = run_model(variables, frames, args.dataset, interp_size, args.resize)
        seconds = time.perf_counter() - start
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    paths = write_outputs(args.output_dir, sceneflow)
    info = dict(source, dataset=args.dataset, inputs={k: str(Path(getattr(args, k)).absolute())
                                                      for k in ("image1", "image2", "disp1",
                                                                "disp2")},
                frame_size=list(frames.shape[1:3]),
                interp_size=None if interp_size is None else list(interp_size),
                output_shape=list(sceneflow.shape), seconds_with_compile=round(seconds, 3))
    write_text_atomic(Path(args.output_dir) / "run_info.json", json.dumps(info, indent=2) + "\n")
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    print(f"scene flow {sceneflow.shape[0]}x{sceneflow.shape[1]}x4 in {seconds:.1f} s "
          "(including compilation)")
    if args.random_init:
        print(RANDOM_WARNING, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
