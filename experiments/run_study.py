"""The whole compression study in one command.

  python -m experiments.run_study                      # --preset=demo, CPU, synthetic
  python -m experiments.run_study --preset=paper --data_dir=KITTI --checkpoint=CKPT
      (CKPT converted with --with_optimizer_state: the paper preset continues its Adam)
  python -m experiments.run_study --experiments=post_prune,post_quant   # one part
  python -m experiments.run_study --validity=devkit    # KITTI devkit's validity rule

Library: ``deepliflow_jax.study.run_study(make_config(preset, ...), results_dir)``.

Re-running with the same --results_dir skips finished configurations.
"""

from __future__ import annotations

import math

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "demo", "demo (synthetic, CPU), paper (KITTI, GPU) or tiny.")
flags.DEFINE_string("results_dir", None, "Output folder (default: results/<preset>).")
flags.DEFINE_string("data_dir", None, "KITTI root (paper) or where to put the synthetic world.")
flags.DEFINE_string("checkpoint", None, "Converted checkpoint to start from (paper preset).")
flags.DEFINE_list("prune_percents", None, "Override the pruning sweep, e.g. 5,10,15.")
flags.DEFINE_list("quant_bits", None, "Override the quantization sweep, e.g. 16,12,8.")
flags.DEFINE_integer("pretrain_steps", None, "Override the pre-training length.")
flags.DEFINE_integer("finetune_steps", None, "Override the lr1 fine-tuning length.")
flags.DEFINE_integer("refine_steps", None, "Override the lr2 refinement length.")
flags.DEFINE_integer("seed", None, "Seed.")
flags.DEFINE_list("experiments", None, "Parts to run (default all): post_prune, post_quant, "
                  "aware_prune, aware_quant, hybrid.")
flags.DEFINE_list("lidar_sweep", None, "Override the LiDAR sample counts (KITTI-resolution "
                  "equivalent), e.g. 2048,16384.")
flags.DEFINE_integer("runtime_repeats", None, "Timed forward passes per configuration "
                     "(0: no timing).")
flags.DEFINE_enum("validity", None, ["original", "devkit"],
                  "Evaluation: 'original' (default; the original's rule, every quantity on "
                  "pixels with a valid first-frame disparity, frames averaged: the paper's "
                  "numbers) or 'devkit' (the KITTI devkit's: D0 / D1 / Fl each on its own valid "
                  "pixels, SF where all are valid, pixels pooled over the set).")
flags.DEFINE_bool("restore_optimizer", None, "Start aware training from the checkpoint's Adam "
                  "state (paper preset: yes, as the original; needs a checkpoint converted with "
                  "--with_optimizer_state). --norestore_optimizer starts a fresh TF1 Adam.")


def _floats(values, name):
    if values is None:
        return None
    try:
        return tuple(float(v) for v in values)
    except ValueError as err:
        raise app.UsageError(f"--{name}: {err}") from err


def _ints(values, name):
    """Whole numbers (``16`` or ``16.0``); ``8.5`` or ``inf`` is refused, not truncated."""
    numbers = _floats(values, name)
    if numbers is None:
        return None
    for v in numbers:
        if not math.isfinite(v) or v != int(v):
            raise app.UsageError(f"--{name}: {v:g} is not a whole number")
    return tuple(int(v) for v in numbers)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    from deepliflow_jax.study import make_config

    bits = _ints(FLAGS.quant_bits, "quant_bits")
    lidar = _ints(FLAGS.lidar_sweep, "lidar_sweep")
    try:
        cfg = make_config(
            FLAGS.preset, data_dir=FLAGS.data_dir, checkpoint=FLAGS.checkpoint,
            prune_percents=_floats(FLAGS.prune_percents, "prune_percents"),
            quant_bits=bits,
            pretrain_steps=FLAGS.pretrain_steps, finetune_steps=FLAGS.finetune_steps,
            refine_steps=FLAGS.refine_steps, seed=FLAGS.seed,
            experiments=None if FLAGS.experiments is None else tuple(FLAGS.experiments),
            lidar_sweep=lidar,
            runtime_repeats=FLAGS.runtime_repeats, validity=FLAGS.validity,
            restore_optimizer=FLAGS.restore_optimizer,
        )
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    from pathlib import Path

    if cfg.checkpoint and not Path(cfg.checkpoint).exists():
        raise app.UsageError(f"--checkpoint {cfg.checkpoint} does not exist")
    if cfg.data == "kitti" and not (Path(cfg.data_dir) / "training").is_dir():
        raise app.UsageError(f"--data_dir {cfg.data_dir} has no training/ folder")
    from deepliflow_jax.study.runner import Study

    try:
        study = Study(cfg, FLAGS.results_dir or f"results/{cfg.preset}")
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    out = study.run()
    print("\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    app.run(main)
