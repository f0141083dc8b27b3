"""The most accurate compressed DeepLiDARFlow for a budget: sensitivity, cost, search, frontier.

  python -m experiments.compression_search                    # demo: as fast as g70h10, CPU
  python -m experiments.compression_search --budget=100ms     # or 8MB, or 2.5x
  python -m experiments.compression_search --budget=6MB --bits=8,6 --percents=30,60

The defaults are the demo scale (the synthetic world at 64x192, every layer group,
ratios 0.3/0.5/0.7, 3 candidates, 30 fine-tuning steps each); the dense baseline is
``--checkpoint`` (pre-trained there first if it does not exist). Writes
<output_prefix>.{json,md,png} (default results/compression_search/compression_search
under the current directory; the committed experiments/results/ only when named) and
the chosen model as a checkpoint (``--save_model``) that ``load_checkpoint`` and
``predict_sceneflow`` take. The sensitivities are cached per checkpoint
(``--sensitivity_cache``): a second run with other budgets skips them.

Library: ``deepliflow_jax.search.run_search`` (``dl.compression_search``).
"""

from __future__ import annotations

from absl import app, flags, logging

from deepliflow_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("budget", "g70h10", "Latency '120ms', size on disk '8MB', speed-up '2.5x' "
                    "over dense, or a reference plan's name (as fast as it, measured in the "
                    "same rounds).")
flags.DEFINE_list("groups", None, "Layer groups searched (default all: rgb, depth, fusion, "
                  "fused, estimator6..estimator2, context).")
flags.DEFINE_list("ratios", ["0.3", "0.5", "0.7"], "Channel-pruning ratios per group.")
flags.DEFINE_list("bits", ["8", "6"], "Weight bit widths per group (size budgets).")
flags.DEFINE_list("percents", ["30", "60"], "Unstructured pruning percentiles per group (size "
                  "budgets).")
flags.DEFINE_list("margins", ["0", "0.05", "0.1"], "Budget tightened by each fraction: one "
                  "candidate plan each (hedges the cost model's error).")
flags.DEFINE_integer("candidates", 3, "Distinct searched plans fine-tuned and measured.")
flags.DEFINE_list("uniform", ["0.3", "0.5", "0.7"], "Uniform pruning ratios measured as "
                  "references ('' for none).")
flags.DEFINE_multi_string("plan", None, "Hand-written reference plan NAME:REGEX=RATIO[;...] "
                          "(default: the trade-off tool's g70h10, g70h30 and g70).")
flags.DEFINE_integer("finetune_steps", 30, "Fine-tuning steps of every candidate and reference.")
flags.DEFINE_float("lr", 3e-4, "Fine-tuning learning rate (Adam; the last quarter at lr / 10).")
flags.DEFINE_integer("repeats", 7, "Timed rounds of the whole models.")
flags.DEFINE_integer("block_repeats", 5, "Timed rounds of the blocks (the cost table).")
flags.DEFINE_string("checkpoint", "/tmp/study_demo/baseline_checkpoint",
                    "Trained dense checkpoint; pre-trained here if it does not exist.")
flags.DEFINE_integer("pretrain_steps", 300, "Pre-training steps when no checkpoint exists.")
flags.DEFINE_string("data_dir", None, "Synthetic world (default: next to --checkpoint, else "
                    "<workdir>/synthetic_kitti).")
flags.DEFINE_string("workdir", "/tmp/compression_search", "Scratch: fine-tuned models, caches.")
flags.DEFINE_string("save_model", None, "Checkpoint of the chosen model (default "
                    "<workdir>/searched_model).")
flags.DEFINE_string("sensitivity_cache", None, "JSON cache of the sensitivities (default "
                    "<workdir>/sensitivity_cache.json).")
flags.DEFINE_string("output_prefix", "results/compression_search/compression_search",
                    "Writes PREFIX.json, PREFIX.md and PREFIX.png.")
flags.DEFINE_integer("seed", 0, "Seed.")


def _numbers(values, name, kind=float):
    try:
        out = tuple(kind(float(v)) for v in values if str(v).strip())
    except ValueError as err:
        raise app.UsageError(f"--{name}: {err}") from err
    if kind is int and any(float(v) != int(float(v)) for v in values if str(v).strip()):
        raise app.UsageError(f"--{name}: bit widths are whole numbers, got {list(values)}")
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    import json
    from pathlib import Path

    from deepliflow_jax import search as se
    from deepliflow_jax.fileio import write_text_atomic
    from deepliflow_jax.train.trainer import enable_compilation_cache

    groups = se.LAYER_GROUPS
    if FLAGS.groups:
        known = dict(se.LAYER_GROUPS)
        unknown = sorted(set(FLAGS.groups) - set(known))
        if unknown:
            raise app.UsageError(f"--groups: unknown {unknown}; choose from {list(known)}")
        groups = tuple((g, known[g]) for g in FLAGS.groups)
    try:
        cfg = se.SearchConfig(
            budget=FLAGS.budget, groups=groups, ratios=_numbers(FLAGS.ratios, "ratios"),
            bits=_numbers(FLAGS.bits, "bits", int), percents=_numbers(FLAGS.percents, "percents"),
            margins=_numbers(FLAGS.margins, "margins"), candidates=FLAGS.candidates,
            uniform=_numbers(FLAGS.uniform, "uniform"),
            plans=tuple(FLAGS.plan) if FLAGS.plan is not None else se.HAND_PLANS,
            finetune_steps=FLAGS.finetune_steps, lr=FLAGS.lr, repeats=FLAGS.repeats,
            block_repeats=FLAGS.block_repeats, seed=FLAGS.seed)
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    cli.announce_results("python -m experiments.compression_search",
                         f"{FLAGS.output_prefix}.{{json,md,png}}")
    enable_compilation_cache()
    work = Path(FLAGS.workdir)
    data = se.data_beside(FLAGS.checkpoint, FLAGS.data_dir, work, FLAGS.seed)
    print(data.description, flush=True)
    baseline = se.baseline_params(FLAGS.checkpoint, data,
                                  se.TradeoffConfig(pretrain_steps=FLAGS.pretrain_steps,
                                                    seed=FLAGS.seed),
                                  work / "baseline_checkpoint")
    try:
        result = se.run_search(cfg, data, baseline, work, save_to=FLAGS.save_model,
                               sensitivity_cache=FLAGS.sensitivity_cache)
    except se.InfeasibleBudgetError as err:
        raise app.UsageError(str(err)) from err
    prefix = Path(FLAGS.output_prefix)
    write_text_atomic(prefix.with_suffix(".json"),
                      json.dumps(result, indent=2, default=float) + "\n")
    write_text_atomic(prefix.with_suffix(".md"), se.to_markdown(result))
    se.plot(result, prefix.with_suffix(".png"))
    print(se.to_markdown(result))
    print(f"chosen model: {result['chosen_checkpoint']}")


if __name__ == "__main__":
    app.run(main)
