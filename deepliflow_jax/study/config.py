"""Study presets: what to run, at which size and length.

``demo`` (the default, the README's main job) runs everything on the built-in
synthetic KITTI-format world at reduced resolution on a CPU; ``paper`` is the
paper's protocol on KITTI 2015 at 384x1216 from a converted checkpoint, fine-tuning
as the original's KITTI fine-tuning does (``train.py``, ``run_finetune.sh``,
``data_loader/data_generator.py``: the fields from ``batch_size`` on; the README's
table "The original's fine-tuning protocol vs ours" lists them and what departs);
``tiny`` is the smallest end-to-end run (the integration test).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from deepliflow_jax.data.kitti import VALIDITY_MODES
from deepliflow_jax.data.lidar import LIDAR_SWEEP, TRAIN_SAMPLES
from deepliflow_jax.data.preprocess import AUGMENT_MODES, KITTI_BATCH_CROP
from deepliflow_jax.data.synthetic import KITTI_SIZE as KITTI_FULL_SIZE
from deepliflow_jax.model.widths import uniform_widths
from deepliflow_jax.scalars import check_number, check_numbers

# the original's KITTI fine-tuning (run_finetune.sh, README): batch 2 over the 180
# training frames (train.py: data_size // BATCH_SIZE // STEP_SIZE = 90 steps per epoch,
# STEP_SIZE = 1 for KITTI), 100 epochs at 1e-4, then 100 at 1e-5
PAPER_BATCH_SIZE = 2
PAPER_STEPS_PER_EPOCH = 180 // PAPER_BATCH_SIZE
PAPER_EPOCHS = 100
OPTIMIZERS = ("adam", "tf1_adam")  # train.trainer.OPTIMIZERS
PAPER_PRUNE_PERCENTS = (5.0, 10.0, 15.0, 20.0, 25.0)
PAPER_QUANT_BITS = (16, 14, 12, 10, 8, 6)


# the study's parts; Table III comes from the aware records, Figs. 2/3 and 6 from every record
EXPERIMENTS = ("post_prune", "post_quant", "aware_prune", "aware_quant", "dynamic_prune",
               "hybrid")
# fields a resumed study may change: they only add or drop configurations (seeds: whole
# studies, one per seed folder; from 1 to more or back the layout changes, see
# resume_conflicts)
RESUMABLE_CHANGES = ("prune_percents", "quant_bits", "experiments", "seeds")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything a study run depends on (written to ``config.json``).

    Attributes:
      preset: name of the preset this came from.
      data: ``"synthetic"`` (made on the fly) or ``"kitti"`` (``data_dir``).
      data_dir: KITTI root (``training/...``) or where the synthetic world goes.
      checkpoint: converted checkpoint dir to start from; None = pre-train here.
      height, width: synthetic image size (KITTI: the files' own size).
      interp_size: network input size inside the model (KITTI: 384x1216), or
        None to run at the image size (must then be a multiple of 64).
      num_scenes: synthetic frame pairs (split 9:1 like the original's KITTI split).
      num_samples: LiDAR points per frame *at KITTI resolution*; reduced-size
        images get the same density (see ``data.dataset.effective_samples``).
      pretrain_steps, pretrain_lr: brief pre-training of the baseline (synthetic).
      finetune_steps, lr1: aware training at the original's rate (1e-4).
      refine_steps, lr2: then "refine" at the 10x lower rate (1e-5).
      eval_every: validation every this many aware-training steps (best kept
        by SF outlier rate, as the original).
      prune_percents, quant_bits: the sweeps.
      dynamic_start, dynamic_increment: the dynamic threshold's first percentile and
        its step (percent of all weights and biases; the paper: 5 and 5).
      dynamic_tolerance: a level is accepted while its fine-tuned validation EPE is at
        most ``(1 + dynamic_tolerance) x`` the baseline's (ours: 0.05).
      dynamic_backoff: the step is multiplied by this after a rejected level (ours: 0.5).
      dynamic_min_increment: the search stops once the step falls below this (ours:
        2.5, one halving of the paper's 5 % step).
      dynamic_max_percent: the highest percentile tried (ours: 50).
      dynamic_steps, dynamic_refine_steps: fine-tuning steps per level at lr1, then at
        lr2 (ours; see ``deepliflow_jax.study.dynamic``).
      lidar_sweep: LiDAR sample counts of the Figs. 2/3 sweep.
      runtime_repeats: timed forward passes per configuration (0 = no timing).
      max_val_frames: cap on validation frames (None = the whole split).
      seed: seed of data, LiDAR draws and training.
      seeds: how many times the whole study runs, with seeds ``seed``, ``seed + 1``, ...,
        each in its own subfolder ``seed_<n>`` of the results folder, which then holds
        their aggregate (``runner.run_seeds``); 1: one study in the folder itself.
      experiments: which parts run (a subset of ``EXPERIMENTS``); the baseline and
        zero-flow reference always do.
      validity: which ground-truth pixels the evaluation counts: ``"original"`` (the
        original's rule, frames averaged: what the paper's numbers mean) or ``"devkit"``
        (the KITTI devkit's per-quantity validity, pixels pooled over the set); see
        ``deepliflow_jax.metrics``. Training always uses the original's ground truth.
      batch_size: frames per training step (the original: 2, ``run_finetune.sh``).
      crop: centre crop (height, width) of the training frames before the network's own
        resize, the loss at the crop (the original: 370x1220 at batch 2,
        ``data_generator.get_batch_gen``/``get_cropped``); None: whole frames.
      train_samples: LiDAR counts (KITTI resolution) of which each training frame visit
        draws one, the same for t and t+1, anew every epoch (the original's
        ``train.py`` ``SAMPLES``); None: ``num_samples`` always.
      augment: training-time photometric augmentation, one of ``AUGMENT_MODES``
        (``"original"``: ``data_generator.augment_images``, one draw per batch, on the
        mean-subtracted RGB as the original; ``data/augment.py``).
      optimizer: ``"adam"`` (``optax.adam``) or ``"tf1_adam"`` (TF 1.x's ``ApplyAdam``,
        the original's ``tf.train.AdamOptimizer``; ``train/tf_adam.py``).
      restore_optimizer: start every aware run from the checkpoint's Adam state (the
        original's ``load_model`` restores slots and beta powers with the weights; needs
        a checkpoint converted with ``--with_optimizer_state`` and ``tf1_adam``).
      phase2_from_best: the lr2 phase starts from the best lr1 state (parameters and
        Adam state), the selection carried on (the original's ``--best_checkpoint True``
        restart); False: from the last lr1 state.
      group_width: None studies the original network; a width studies the structured
        DeepLiDARFlow with this many channels in every channel group
        (``deepliflow_jax.model.widths``; a ``checkpoint`` must have that architecture).
        The tiny preset's 8 keep its every layer and step while running ~10x faster.
    """

    preset: str = "demo"
    data: str = "synthetic"
    data_dir: str | None = None
    checkpoint: str | None = None
    height: int = 64
    width: int = 192
    interp_size: tuple[int, int] | None = None
    num_scenes: int = 80
    num_samples: int = 4096
    pretrain_steps: int = 300
    pretrain_lr: float = 3e-4
    finetune_steps: int = 12
    lr1: float = 1e-4
    refine_steps: int = 12
    lr2: float = 1e-5
    eval_every: int = 12
    prune_percents: tuple[float, ...] = PAPER_PRUNE_PERCENTS
    quant_bits: tuple[int, ...] = PAPER_QUANT_BITS
    dynamic_start: float = 5.0
    dynamic_increment: float = 5.0
    dynamic_tolerance: float = 0.05
    dynamic_backoff: float = 0.5
    dynamic_min_increment: float = 2.5
    dynamic_max_percent: float = 50.0
    dynamic_steps: int = 6
    dynamic_refine_steps: int = 6
    lidar_sweep: tuple[int, ...] = (2048, 4096, 8192, 16384)
    runtime_repeats: int = 5
    max_val_frames: int | None = None
    seed: int = 0
    seeds: int = 1
    experiments: tuple[str, ...] = EXPERIMENTS
    validity: str = "original"
    # defaults: the behaviour before these fields existed (a resumed results folder)
    batch_size: int = 1
    crop: tuple[int, int] | None = None
    train_samples: tuple[int, ...] | None = None
    augment: str = "none"
    optimizer: str = "adam"
    restore_optimizer: bool = False
    phase2_from_best: bool = False
    group_width: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, StudyConfig] = {
    "demo": StudyConfig(),
    "tiny": StudyConfig(
        preset="tiny", num_scenes=10, pretrain_steps=3, finetune_steps=2, refine_steps=1,
        eval_every=2, prune_percents=(10.0,), quant_bits=(8,), lidar_sweep=(2048, 8192),
        runtime_repeats=1, max_val_frames=2,
        # two levels (10 %, 20 %), one step at each rate; a wide tolerance so that the
        # second level runs on the barely trained model
        dynamic_start=10.0, dynamic_increment=10.0, dynamic_min_increment=10.0,
        dynamic_max_percent=20.0, dynamic_tolerance=1.0, dynamic_steps=1,
        dynamic_refine_steps=1, group_width=8,
    ),
    "paper": StudyConfig(
        preset="paper", data="kitti", height=KITTI_FULL_SIZE[0], width=KITTI_FULL_SIZE[1],
        interp_size=(384, 1216), pretrain_steps=0,
        finetune_steps=PAPER_STEPS_PER_EPOCH * PAPER_EPOCHS,
        refine_steps=PAPER_STEPS_PER_EPOCH * PAPER_EPOCHS, eval_every=PAPER_STEPS_PER_EPOCH,
        lidar_sweep=LIDAR_SWEEP, runtime_repeats=50, batch_size=PAPER_BATCH_SIZE,
        crop=KITTI_BATCH_CROP, train_samples=TRAIN_SAMPLES, augment="original",
        optimizer="tf1_adam", restore_optimizer=True, phase2_from_best=True,
        dynamic_steps=PAPER_STEPS_PER_EPOCH * 10, dynamic_refine_steps=PAPER_STEPS_PER_EPOCH * 10,
    ),
}


def model_widths(cfg: StudyConfig) -> dict[str, int] | None:
    """The ``widths`` of the network the study runs (None: the original's)."""
    return None if cfg.group_width is None else uniform_widths(cfg.group_width)


def make_config(preset: str, **overrides: Any) -> StudyConfig:
    """A study configuration: the preset with ``overrides`` (None values ignored), validated.

    Args:
      preset: ``"demo"``, ``"tiny"`` or ``"paper"`` (see ``PRESETS``).
      **overrides: ``StudyConfig`` fields to change (e.g. ``seed=1``,
        ``prune_percents=(10.0,)``); a None value keeps the preset's.

    Returns:
      The frozen ``StudyConfig``.

    Raises:
      ValueError: unknown preset, or an invalid sweep value or size.
      TypeError: an override that is not a ``StudyConfig`` field.

    Example:
      >>> cfg = make_config("tiny", seed=3, max_val_frames=None)
      >>> cfg.height, cfg.width, cfg.seed, cfg.max_val_frames
      (64, 192, 3, 2)
      >>> make_config("tiny", prune_percents=(100.0,))
      Traceback (most recent call last):
      ...
      ValueError: prune_percents[0] must be a number in [0, 100), got 100.0
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return replace_config(PRESETS[preset],
                          **{k: v for k, v in overrides.items() if v is not None})


def replace_config(cfg: StudyConfig, **fields: Any) -> StudyConfig:
    """``cfg`` with ``fields`` set, None values included (``group_width=None``: the
    original network, which ``make_config`` cannot express), validated.

    Raises:
      ValueError: an invalid value (see ``validate``).
      TypeError: a name that is not a ``StudyConfig`` field.
    """
    return validate(dataclasses.replace(cfg, **fields))


def resume_conflicts(saved: dict[str, Any], cfg: StudyConfig) -> list[str]:
    """Fields whose value differs from a results folder's saved ``config.json``.

    Records of a study with other data, lengths, learning rates, LiDAR counts or timing
    must not be mixed with new ones; the sweeps and the parts may change.
    """
    now = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as saved
    # a field added after the folder was written ran with its default's behaviour; the
    # dynamic threshold's settings shaped no record of a folder from before that part
    defaults = json.loads(json.dumps(StudyConfig().to_dict()))
    saved = {**{k: now[k] if k.startswith("dynamic_") else v for k, v in defaults.items()
                if k not in saved}, **saved}
    conflicts = {k for k in set(now) | set(saved)
                 if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)}
    if (saved.get("seeds", 1) > 1) != (now["seeds"] > 1):  # one study vs seed folders
        conflicts.add("seeds")
    return sorted(conflicts)


# The numeric fields and their ranges (``deepliflow_jax.scalars.check_number``'s keywords).
_COUNTS = {"height": 1, "width": 1, "num_scenes": 1, "num_samples": 1, "pretrain_steps": 0,
           "finetune_steps": 0, "refine_steps": 0, "eval_every": 1, "dynamic_steps": 0,
           "dynamic_refine_steps": 0, "runtime_repeats": 0, "seed": 0, "seeds": 1,
           "batch_size": 1}
_RATES = ("pretrain_lr", "lr1", "lr2")
_DYNAMIC = ("dynamic_start", "dynamic_increment", "dynamic_tolerance", "dynamic_backoff",
            "dynamic_min_increment", "dynamic_max_percent")


def _numbers(cfg: StudyConfig) -> dict[str, Any]:
    """Every numeric field checked by the one validator, as Python numbers: a NumPy or
    JAX scalar is accepted, and saved to ``config.json`` as the number it holds."""
    out: dict[str, Any] = {name: check_number(getattr(cfg, name), name, integer=True,
                                              minimum=low) for name, low in _COUNTS.items()}
    out.update({name: check_number(getattr(cfg, name), name, "a positive number", above=0)
                for name in _RATES})
    out.update({name: check_number(getattr(cfg, name), name) for name in _DYNAMIC})
    out["prune_percents"] = check_numbers(cfg.prune_percents, "prune_percents", minimum=0,
                                          below=100)
    out["quant_bits"] = check_numbers(cfg.quant_bits, "quant_bits", integer=True, minimum=2,
                                      maximum=16)
    out["lidar_sweep"] = check_numbers(cfg.lidar_sweep, "lidar_sweep",
                                       "a positive LiDAR sample count", integer=True, minimum=1)
    if cfg.train_samples is not None:
        out["train_samples"] = check_numbers(cfg.train_samples, "train_samples",
                                             "a positive LiDAR sample count", integer=True,
                                             minimum=1)
        if not out["train_samples"]:
            raise ValueError("train_samples must be None or a non-empty list of LiDAR counts")
    for name in ("interp_size", "crop"):
        size = getattr(cfg, name)
        if size is not None:
            out[name] = check_numbers(size, name, "(height, width) > 0 or None", integer=True,
                                      minimum=1)
            if len(out[name]) != 2:
                raise ValueError(f"{name} must be (height, width) > 0 or None, got {size}")
    if cfg.max_val_frames is not None:
        out["max_val_frames"] = check_number(cfg.max_val_frames, "max_val_frames",
                                             integer=True, minimum=1)
    if cfg.group_width is not None:
        out["group_width"] = check_number(
            cfg.group_width, "group_width", "None (the original network) or a whole number >= 1",
            integer=True, minimum=1)
    return out


def validate(cfg: StudyConfig) -> StudyConfig:
    """Fails fast, before any long work, on values the study cannot use.

    Returns:
      ``cfg`` with its numbers as Python ``int`` / ``float`` (a NumPy or JAX scalar is
      accepted; see :func:`deepliflow_jax.scalars.check_number`).

    Raises:
      ValueError: a value the study cannot use; the message names the field.
    """
    cfg = dataclasses.replace(cfg, **_numbers(cfg))
    if cfg.data not in ("synthetic", "kitti"):
        raise ValueError(f"data must be 'synthetic' or 'kitti', got {cfg.data!r}")
    if cfg.data == "kitti" and not cfg.data_dir:
        raise ValueError("the KITTI study needs --data_dir (a folder with training/image_2, ...)")
    if cfg.data == "kitti" and not cfg.checkpoint:
        raise ValueError("the KITTI study needs --checkpoint (a converted DeepLiDARFlow model; "
                         "see `python -m weights_convert`)")
    if cfg.data == "synthetic" and cfg.crop is not None and (
            cfg.crop[0] > cfg.height or cfg.crop[1] > cfg.width):
        raise ValueError(f"crop {tuple(cfg.crop)} is larger than the frames "
                         f"{cfg.height}x{cfg.width}")
    net = cfg.interp_size or cfg.crop or (cfg.height, cfg.width)
    if net[0] % 64 or net[1] % 64:
        raise ValueError(f"network input {net[0]}x{net[1]} is not a multiple of 64; set "
                         "height/width (synthetic), crop or interp_size")
    if cfg.data == "kitti" and cfg.batch_size > 1 and cfg.crop is None:
        raise ValueError(f"batch_size {cfg.batch_size} on KITTI needs a crop (its frames differ "
                         f"in size; the original crops to {KITTI_BATCH_CROP})")
    if cfg.augment not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {list(AUGMENT_MODES)}, got {cfg.augment!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.restore_optimizer and (cfg.optimizer != "tf1_adam" or not cfg.checkpoint):
        raise ValueError("restore_optimizer continues a converted TF checkpoint's Adam: it needs "
                         "optimizer='tf1_adam' and --checkpoint (converted with "
                         "--with_optimizer_state)")
    if cfg.data == "synthetic" and cfg.num_scenes < 10:
        raise ValueError(f"num_scenes must be >= 10 (9:1 split), got {cfg.num_scenes}")
    unknown = sorted(set(cfg.experiments) - set(EXPERIMENTS))
    if unknown or not cfg.experiments:
        raise ValueError(f"experiments must be a non-empty subset of {list(EXPERIMENTS)}, got "
                         f"{list(cfg.experiments)}")
    if "hybrid" in cfg.experiments and not (cfg.prune_percents and cfg.quant_bits):
        raise ValueError("the hybrid needs at least one pruning level and one bit width")
    if cfg.validity not in VALIDITY_MODES:
        raise ValueError(f"validity must be one of {list(VALIDITY_MODES)}, got {cfg.validity!r}")
    if "dynamic_prune" in cfg.experiments:
        _validate_dynamic(cfg)
    return cfg


def _validate_dynamic(cfg: StudyConfig) -> None:
    """The dynamic threshold's settings (see ``StudyConfig``)."""
    if not 0 < cfg.dynamic_start <= cfg.dynamic_max_percent < 100:
        raise ValueError("need 0 < dynamic_start <= dynamic_max_percent < 100, got "
                         f"{cfg.dynamic_start:g} and {cfg.dynamic_max_percent:g}")
    if not 0 < cfg.dynamic_min_increment <= cfg.dynamic_increment:
        raise ValueError("need 0 < dynamic_min_increment <= dynamic_increment, got "
                         f"{cfg.dynamic_min_increment:g} and {cfg.dynamic_increment:g}")
    if not 0 < cfg.dynamic_backoff < 1:
        raise ValueError(f"dynamic_backoff must be in (0, 1), got {cfg.dynamic_backoff:g}")
    if not 0 <= cfg.dynamic_tolerance < float("inf"):
        raise ValueError(f"dynamic_tolerance must be a finite number >= 0, got "
                         f"{cfg.dynamic_tolerance:g}")
