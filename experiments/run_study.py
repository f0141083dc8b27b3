"""The whole compression study in one command.

  python -m experiments.run_study                      # --preset=demo, CPU, synthetic
  python -m experiments.run_study --preset=paper --data_dir=KITTI --checkpoint=CKPT
      (CKPT converted with --with_optimizer_state: the paper preset continues its Adam)
  python -m experiments.run_study --experiments=post_prune,post_quant   # one part
  python -m experiments.run_study --validity=devkit    # KITTI devkit's validity rule
  python -m experiments.run_study --experiments=dynamic_prune --dynamic_tolerance=0.1
  python -m experiments.run_study --devices=2          # data parallel over 2 local devices
  python -m experiments.run_study --group_width=16     # a structured network, 16 channels a group
  python -m experiments.run_study --seeds=3            # 3 whole studies (seeds 0, 1, 2), aggregated
  # one worker per GPU, all in one results folder (they split the configurations):
  for i in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$i python -m experiments.run_study \
      --preset=paper ... --results_dir=results/paper & done; wait

Library: ``deepliflow_jax.study.run_study(make_config(preset, ...), results_dir)``.

Re-running with the same --results_dir skips finished configurations. Any number
of workers (processes, on one machine or many sharing the folder) may run at once:
each claims a configuration before running it, and a dead worker's claim is taken
over (at once on the same machine, after --claim_timeout elsewhere).
"""

from __future__ import annotations

from absl import app, flags, logging

from deepliflow_jax import cli
from deepliflow_jax.scalars import check_numbers

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
flags.DEFINE_integer("seeds", None, "Run the whole study (data draws, pre-training, sweeps, "
                     "dynamic threshold) once per seed: --seed, --seed+1, ..., each in "
                     "<results_dir>/seed_<n>, then aggregate them in <results_dir> (per-seed "
                     "values, mean ± std, min–max). Workers split the seeds; finished seeds "
                     "are reused. Default 1: one study in <results_dir> itself.")
flags.DEFINE_list("experiments", None, "Parts to run (default all): post_prune, post_quant, "
                  "aware_prune, aware_quant, dynamic_prune, hybrid.")
flags.DEFINE_float("dynamic_tolerance", None, "Dynamic threshold: a level is accepted while "
                   "its fine-tuned EPE <= (1 + this) x the baseline's (default 0.05).")
flags.DEFINE_float("dynamic_start", None, "Dynamic threshold: first pruned % (default 5).")
flags.DEFINE_float("dynamic_increment", None, "Dynamic threshold: step in percentage points "
                   "(default 5).")
flags.DEFINE_float("dynamic_min_increment", None, "Dynamic threshold: stop once the step "
                   "(halved after each rejected level) is below this (default 2.5).")
flags.DEFINE_float("dynamic_max_percent", None, "Dynamic threshold: highest pruned % tried "
                   "(default 50).")
flags.DEFINE_integer("dynamic_steps", None, "Dynamic threshold: fine-tuning steps per level "
                     "at lr1.")
flags.DEFINE_integer("dynamic_refine_steps", None, "Dynamic threshold: then steps at lr2.")
flags.DEFINE_list("lidar_sweep", None, "Override the LiDAR sample counts (KITTI-resolution "
                  "equivalent), e.g. 2048,16384.")
flags.DEFINE_integer("runtime_repeats", None, "Timed forward passes per configuration "
                     "(0: no timing).")
flags.DEFINE_string("devices", "all", "Data parallel inside a configuration over this many of "
                    "the process's devices; the training batch must divide by it ('all': as "
                    "many local devices as the batch splits over, every one when it allows).")
flags.DEFINE_float("claim_timeout", 180.0, "Seconds without a heartbeat after which another "
                   "worker takes over a configuration (a worker on the same machine whose "
                   "process is gone: at once).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a jax.distributed "
                    "launch (one worker per machine; or set JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Processes of a jax.distributed launch "
                     "(or JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "This process's index in a jax.distributed launch "
                     "(or JAX_PROCESS_ID).")
flags.DEFINE_enum("validity", None, ["original", "devkit"],
                  "Evaluation: 'original' (default; the original's rule, every quantity on "
                  "pixels with a valid first-frame disparity, frames averaged: the paper's "
                  "numbers) or 'devkit' (the KITTI devkit's: D0 / D1 / Fl each on its own valid "
                  "pixels, SF where all are valid, pixels pooled over the set).")
flags.DEFINE_bool("restore_optimizer", None, "Start aware training from the checkpoint's Adam "
                  "state (paper preset: yes, as the original; needs a checkpoint converted with "
                  "--with_optimizer_state). --norestore_optimizer starts a fresh TF1 Adam.")
flags.DEFINE_string("group_width", None, "Channels in every channel group: study a structured "
                    "DeepLiDARFlow of that width (the tiny preset: 8), or 'original' for the "
                    "original network (the other presets).")


def default_results_dir(preset: str) -> str:
    """``--results_dir``'s default: ``results/<preset>`` under the current directory."""
    return cli.study_results_dir(preset)


DYNAMIC_FLAGS = ("dynamic_tolerance", "dynamic_start", "dynamic_increment",
                 "dynamic_min_increment", "dynamic_max_percent", "dynamic_steps",
                 "dynamic_refine_steps")


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
    try:
        return check_numbers(numbers, f"--{name}", "a whole number", integer=True)
    except ValueError as err:
        raise app.UsageError(str(err)) from err


def _word_or_int(value: str, word: str, flag: str, positive: bool = False) -> int | None:
    """``word`` (None) or a whole number (``positive``: at least 1), else a usage error
    naming ``--flag``."""
    if value.strip().lower() == word:
        return None
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or (positive and n < 1):
        kind = "a positive whole number" if positive else "a whole number"
        raise app.UsageError(f"--{flag} must be '{word}' or {kind}, got {value!r}")
    return n


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    devices = _word_or_int(FLAGS.devices, "all", "devices", positive=True)
    from deepliflow_jax.train.sharding import initialize_distributed

    # before any other JAX call; each process then runs whole configurations on its own
    # devices, sharing the results folder with the others
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from deepliflow_jax.study import make_config
    from deepliflow_jax.study.config import replace_config

    bits = _ints(FLAGS.quant_bits, "quant_bits")
    lidar = _ints(FLAGS.lidar_sweep, "lidar_sweep")
    try:
        cfg = make_config(
            FLAGS.preset, data_dir=FLAGS.data_dir, checkpoint=FLAGS.checkpoint,
            prune_percents=_floats(FLAGS.prune_percents, "prune_percents"),
            quant_bits=bits,
            pretrain_steps=FLAGS.pretrain_steps, finetune_steps=FLAGS.finetune_steps,
            refine_steps=FLAGS.refine_steps, seed=FLAGS.seed, seeds=FLAGS.seeds,
            experiments=None if FLAGS.experiments is None else tuple(FLAGS.experiments),
            lidar_sweep=lidar,
            runtime_repeats=FLAGS.runtime_repeats, validity=FLAGS.validity,
            **{name: getattr(FLAGS, name) for name in DYNAMIC_FLAGS},
            restore_optimizer=FLAGS.restore_optimizer,
        )
        if FLAGS.group_width is not None:  # its None (the original network) is a value
            width = _word_or_int(FLAGS.group_width, "original", "group_width")
            cfg = replace_config(cfg, group_width=width)
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    from pathlib import Path

    if cfg.checkpoint and not Path(cfg.checkpoint).exists():
        raise app.UsageError(f"--checkpoint {cfg.checkpoint} does not exist")
    if cfg.data == "kitti" and not (Path(cfg.data_dir) / "training").is_dir():
        raise app.UsageError(f"--data_dir {cfg.data_dir} has no training/ folder")
    from deepliflow_jax.study import runner
    from deepliflow_jax.study.runner import Study
    from deepliflow_jax.train.trainer import enable_compilation_cache

    results_dir = FLAGS.results_dir or default_results_dir(cfg.preset)
    cli.announce_results("python -m experiments.run_study", results_dir)
    enable_compilation_cache()  # a resumed or second worker reuses the compiled steps
    if cfg.seeds > 1:  # one study per seed folder, then their aggregate
        try:
            runner.check_resume(Path(results_dir), cfg)
        except ValueError as err:
            raise app.UsageError(str(err)) from err
        out = runner.run_seeds(cfg, results_dir, devices=devices,
                               claim_timeout_s=FLAGS.claim_timeout)
        print("\n".join(f"{k}: {v}" for k, v in out.items() if k != "seeds"))
        return
    try:
        study = Study(cfg, results_dir, devices=devices,
                      claim_timeout_s=FLAGS.claim_timeout)
        study.prepare()
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    out = study.run()
    print("\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    app.run(main)
