"""Structured pruning (+ int8) trade-offs: params, FLOPs, disk, latency, EPE; Fig. 4-style plot.

  python -m experiments.structured_tradeoff                       # CPU, synthetic world
  python -m experiments.structured_tradeoff --ratios=0.3,0.5,0.7 --finetune_steps=120

Writes <output_prefix>.{json,md,png} (default results/structured_tradeoff/structured_tradeoff
under the current directory; the committed experiments/results/ only when named).
"""

from __future__ import annotations

from absl import app, flags, logging

from deepliflow_jax import cli
from deepliflow_jax.fileio import write_text_atomic

FLAGS = flags.FLAGS
flags.DEFINE_list("ratios", ["0.1", "0.3", "0.5", "0.7"], "Channel pruning ratios per layer.")
flags.DEFINE_multi_string("plan", [], "Extra per-layer plan NAME:REGEX=RATIO[;REGEX=RATIO], e.g. "
                          "'g60h20:guidance_network=0.6;scene_flow_estimator|context_network=0.2'.")
flags.DEFINE_integer("finetune_steps", 120, "Fine-tuning steps per pruned model (and dense_ft).")
flags.DEFINE_float("lr", 3e-4, "Fine-tuning learning rate (Adam).")
flags.DEFINE_float("refine_fraction", 0.25, "Last fraction of the steps at lr / 10.")
flags.DEFINE_integer("eval_every", 0, "Validate every N fine-tuning steps and keep the best "
                     "(by SF outliers, as the original and the study); 0 = keep the last step.")
flags.DEFINE_enum("scope", "layer", ["layer", "global"], "Per-layer or global ratio.")
flags.DEFINE_integer("multiple", 8, "Round kept channel counts to multiples of this.")
flags.DEFINE_string("exclude", None, "Regex of channel groups never pruned.")
flags.DEFINE_bool("int8", True, "Also measure every model in int8.")
flags.DEFINE_integer("calib_batches", 4, "Training batches for the int8 activation ranges.")
flags.DEFINE_integer("repeats", 7, "Timed rounds (every model once per round).")
flags.DEFINE_bool("dense_finetune", True, "Fine-tune the dense model too (accuracy reference).")
flags.DEFINE_enum("finetune_mode", "masked", ["masked", "shrunk"],
                  "masked: one compiled step for all ratios (full model under channel masks, "
                  "shrunk afterwards; the same function); shrunk: each smaller model trains "
                  "with its own compiled step.")
flags.DEFINE_string("checkpoint", cli.study_baseline("demo"),
                    "Trained dense checkpoint (default: the main job's baseline, "
                    "python -m experiments.run_study); pre-trained here if it does not exist.")
flags.DEFINE_integer("pretrain_steps", 300, "Pre-training steps when no checkpoint exists.")
flags.DEFINE_string("data_dir", None, "Synthetic world (default: next to --checkpoint, else "
                    "/tmp/structured_tradeoff/synthetic_kitti).")
flags.DEFINE_string("workdir", "/tmp/structured_tradeoff", "Scratch and pre-trained baseline.")
flags.DEFINE_string("output_prefix", "results/structured_tradeoff/structured_tradeoff",
                    "Writes PREFIX.json, PREFIX.md and PREFIX.png.")
flags.DEFINE_integer("seed", 0, "Seed.")


def _plans(specs):
    from deepliflow_jax.search import parse_plan

    try:
        return tuple(parse_plan(spec) for spec in specs)
    except ValueError as err:
        raise app.UsageError(f"--plan: {err}") from err


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    import json
    from pathlib import Path

    from deepliflow_jax import search as tr
    from deepliflow_jax.train.trainer import enable_compilation_cache

    try:
        cfg = tr.TradeoffConfig(
            ratios=tuple(float(r) for r in FLAGS.ratios), plans=_plans(FLAGS.plan),
            finetune_steps=FLAGS.finetune_steps,
            lr=FLAGS.lr, refine_fraction=FLAGS.refine_fraction, eval_every=FLAGS.eval_every,
            scope=FLAGS.scope,
            multiple=FLAGS.multiple, exclude=FLAGS.exclude,
            int8=FLAGS.int8, calib_batches=FLAGS.calib_batches, repeats=FLAGS.repeats,
            dense_finetune=FLAGS.dense_finetune, finetune_mode=FLAGS.finetune_mode,
            pretrain_steps=FLAGS.pretrain_steps,
            seed=FLAGS.seed)
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    cli.announce_results("python -m experiments.structured_tradeoff",
                         f"{FLAGS.output_prefix}.{{json,md,png}}")
    enable_compilation_cache()
    work = Path(FLAGS.workdir)
    data = tr.data_beside(FLAGS.checkpoint, FLAGS.data_dir, work, FLAGS.seed)
    print(data.description, flush=True)
    baseline = tr.baseline_params(FLAGS.checkpoint, data, cfg, work / "baseline_checkpoint")
    result = tr.run_tradeoff(cfg, data, baseline, work / "scratch")
    prefix = Path(FLAGS.output_prefix)
    write_text_atomic(prefix.with_suffix(".json"),
                      json.dumps(result, indent=2, default=float) + "\n")
    write_text_atomic(prefix.with_suffix(".md"), tr.tradeoff_markdown(result))
    tr.tradeoff_plot(result, prefix.with_suffix(".png"))
    print(tr.tradeoff_markdown(result))


if __name__ == "__main__":
    app.run(main)
