"""The most accurate compressed DeepLiDARFlow for a budget: sensitivity, cost, search, frontier.

  python -m experiments.run_study                             # first: the main job (demo)
  python -m experiments.compression_search                    # demo: as fast as g70h10, CPU
  python -m experiments.compression_search --preset=tiny      # a small run: smoke test / CI
  python -m experiments.compression_search --budget=100ms     # or 8MB, or 2.5x
  python -m experiments.compression_search --budget=6MB --bits=8,6 --percents=30,60

Presets (--preset; any flag below overrides its value), wall time on a 2-core CPU:
  demo (default): every layer group, ratios 0.3/0.5/0.7, 3 candidates, the uniform and
    hand-written references, 30 fine-tuning steps each: about 10 minutes with the main
    job's baseline (9 min 45 s measured on an idle 2-core Xeon), ~3 more to pre-train
    one here when it is missing.
  tiny: 2 layer groups (context, estimator6), ratio 0.5, 8 bits, a 27.6MB budget, one
    candidate, no references, no fine-tuning (measured as pruned), one timed round:
    about 6 minutes, most of it compiling (on a loaded 2-core AMD EPYC, from a fresh
    --workdir without the main job's baseline; see the README).

The dense baseline is --checkpoint, by default the main job's
(``results/demo/baseline_checkpoint``, written by ``python -m experiments.run_study``
in the same directory); when it is missing, --pretrain_steps pre-train one here (saved in
--workdir and reused by the next run). The data is the synthetic world beside it (else
made in --workdir). A budget out of reach of the search space stops the run right after
the costs are timed, naming the reachable range and the nearest feasible budget.

Writes <output_prefix>.{json,md,png} (default results/compression_search/compression_search
under the current directory; the committed experiments/results/ only when named) and
the chosen model as a checkpoint (``--save_model``) that ``load_checkpoint`` and
``predict_sceneflow`` take. The sensitivities are cached per checkpoint
(``--sensitivity_cache``): a second run with other budgets skips them.

Library: ``deepliflow_jax.search.run_search`` (``dl.compression_search``).
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging

from deepliflow_jax import cli

PROG = "python -m experiments.compression_search"
#: pre-training steps when no baseline checkpoint exists, per preset
PRETRAIN_STEPS = {"demo": 300, "tiny": 2}
#: what pre-training them costs on a 2-core CPU (the message when the baseline is missing)
PRETRAIN_TIME = {"demo": "about 3 minutes: a ~1 minute compile, then ~0.3 s a step",
                 "tiny": "about 1 minute, mostly compiling the train step"}
# own flag set: tests call main() in the process where run_study defines --checkpoint
FLAGS = flags.FlagValues()
_PRESET = "the preset's"
_DEFINE = (
    (flags.DEFINE_string, "preset", "demo", "demo (the default scale, ~10 min on a 2-core CPU) "
     "or tiny (a smoke run, no fine-tuning: ~6 min); the flags below default to its "
     "values."),
    (flags.DEFINE_string, "budget", None, "Latency '120ms', size on disk '8MB', speed-up '2.5x' "
     "over dense, or a reference plan's name (as fast as it, measured in the same rounds); "
     f"default {_PRESET} (demo: g70h10, tiny: 27.6MB)."),
    (flags.DEFINE_list, "groups", None, "Layer groups searched (demo: all: rgb, depth, fusion, "
     "fused, estimator6..estimator2, context; tiny: context, estimator6)."),
    (flags.DEFINE_list, "ratios", None, "Channel-pruning ratios per group (demo: 0.3,0.5,0.7)."),
    (flags.DEFINE_list, "bits", None, "Weight bit widths per group, size budgets (demo: 8,6)."),
    (flags.DEFINE_list, "percents", None, "Unstructured pruning percentiles per group, size "
     "budgets (demo: 30,60)."),
    (flags.DEFINE_list, "margins", None, "Budget tightened by each fraction: one candidate "
     "plan each (hedges the cost model's error; demo: 0,0.05,0.1)."),
    (flags.DEFINE_integer, "candidates", None, "Distinct searched plans fine-tuned and measured "
     "(demo: 3)."),
    (flags.DEFINE_list, "uniform", None, "Uniform pruning ratios measured as references ('' "
     "for none; demo: 0.3,0.5,0.7)."),
    (flags.DEFINE_multi_string, "plan", None, "Hand-written reference plan "
     "NAME:REGEX=RATIO[;...] (demo: the trade-off tool's g70h10, g70h30 and g70)."),
    (flags.DEFINE_integer, "finetune_steps", None, "Fine-tuning steps of every candidate and "
     "reference (demo: 30, tiny: 0: measured as pruned)."),
    (flags.DEFINE_float, "lr", None, "Fine-tuning learning rate (Adam; the last quarter at "
     "lr / 10; demo: 3e-4)."),
    (flags.DEFINE_integer, "repeats", None, "Timed rounds of the whole models (demo: 7)."),
    (flags.DEFINE_integer, "block_repeats", None, "Timed rounds of the blocks, the cost table "
     "(demo: 5)."),
    (flags.DEFINE_string, "checkpoint", None, "Trained dense checkpoint (default: the main "
     f"job's, {cli.study_baseline('demo')}); pre-trained here if it does not exist."),
    (flags.DEFINE_integer, "pretrain_steps", None, "Pre-training steps when no checkpoint "
     f"exists (demo: {PRETRAIN_STEPS['demo']}, tiny: {PRETRAIN_STEPS['tiny']})."),
    (flags.DEFINE_string, "data_dir", None, "Synthetic world (default: next to --checkpoint, "
     "else <workdir>/synthetic_kitti)."),
    (flags.DEFINE_string, "workdir", "/tmp/compression_search", "Scratch: fine-tuned models, "
     "caches, a baseline pre-trained here."),
    (flags.DEFINE_string, "save_model", None, "Checkpoint of the chosen model (default "
     "<workdir>/searched_model)."),
    (flags.DEFINE_string, "sensitivity_cache", None, "JSON cache of the sensitivities (default "
     "<workdir>/sensitivity_cache.json)."),
    (flags.DEFINE_string, "output_prefix", "results/compression_search/compression_search",
     "Writes PREFIX.json, PREFIX.md and PREFIX.png."),
    (flags.DEFINE_integer, "seed", 0, "Seed."),
)
for _define, _name, _default, _help in _DEFINE:
    _define(_name, _default, _help, flag_values=FLAGS)


def _numbers(values, name, kind=float):
    try:
        out = tuple(kind(float(v)) for v in values if str(v).strip())
    except ValueError as err:
        raise app.UsageError(f"--{name}: {err}") from err
    if kind is int and any(float(v) != int(float(v)) for v in values if str(v).strip()):
        raise app.UsageError(f"--{name}: bit widths are whole numbers, got {list(values)}")
    return out


def search_config(flag_values: flags.FlagValues = FLAGS):
    """The :class:`~deepliflow_jax.search.SearchConfig` of the parsed flags: the preset's,
    with every flag given in its place.

    Raises:
      app.UsageError: an unknown preset or group, or a bad value (naming the flag).
    """
    # the library (JAX) is imported once the flags are parsed: --help stays quick
    from deepliflow_jax.search.config import SEARCH_PRESETS
    from deepliflow_jax.search.plans import LAYER_GROUPS

    f = flag_values
    if f.preset not in SEARCH_PRESETS:
        raise app.UsageError(f"--preset={f.preset}: choose one of {sorted(SEARCH_PRESETS)}")
    changes = {}
    if f.groups:
        known = dict(LAYER_GROUPS)
        unknown = sorted(set(f.groups) - set(known))
        if unknown:
            raise app.UsageError(f"--groups: unknown {unknown}; choose from {list(known)}")
        changes["groups"] = tuple((g, known[g]) for g in f.groups)
    for name, kind in (("ratios", float), ("bits", int), ("percents", float),
                       ("margins", float), ("uniform", float)):
        if f[name].value is not None:
            changes[name] = _numbers(f[name].value, name, kind)
    if f.plan is not None:
        changes["plans"] = tuple(f.plan)
    for name in ("budget", "candidates", "finetune_steps", "lr", "repeats", "block_repeats",
                 "seed"):
        if f[name].value is not None:
            changes[name] = f[name].value
    try:
        return dataclasses.replace(SEARCH_PRESETS[f.preset], **changes)
    except ValueError as err:
        raise app.UsageError(str(err)) from err


def baseline_note(checkpoint: str, preset: str, pretrain_steps: int, save_to) -> str | None:
    """What happens when the baseline checkpoint is missing (None: it exists)."""
    from deepliflow_jax.checkpoint import checkpoint_exists

    if checkpoint_exists(checkpoint):
        return None
    if checkpoint_exists(save_to):
        return f"baseline: {checkpoint} does not exist; using {save_to}, pre-trained by an " \
               "earlier run here"
    return (f"baseline: {checkpoint} does not exist (the main job, `python -m "
            f"experiments.run_study`, writes it: 5-11 minutes on a 2-core CPU; or give "
            f"--checkpoint); pre-training {pretrain_steps} steps here instead "
            f"({PRETRAIN_TIME.get(preset, 'minutes')} on a 2-core CPU), saved to {save_to} "
            "and reused by the next run")


def main(argv: list[str] | None = None) -> int:
    """Parses the flags (``argv`` after the program name) and runs the search; returns 0.

    Raises:
      SystemExit: 0 after ``--help``; 2 on a usage error or a budget out of reach of the
        search space (one line on stderr, no help text).
    """
    cli.parse_flags(FLAGS, sys.argv[1:] if argv is None else list(argv), PROG, __doc__)
    try:
        _search()
    except app.UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    return 0


def _search() -> None:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    import json
    from pathlib import Path

    from deepliflow_jax import search as se
    from deepliflow_jax.fileio import write_text_atomic
    from deepliflow_jax.train.trainer import enable_compilation_cache

    cfg = search_config()
    checkpoint = FLAGS.checkpoint or cli.study_baseline("demo")
    pretrain_steps = FLAGS.pretrain_steps
    if pretrain_steps is None:
        pretrain_steps = PRETRAIN_STEPS[FLAGS.preset]
    cli.announce_results(PROG, f"{FLAGS.output_prefix}.{{json,md,png}}")
    enable_compilation_cache()
    work = Path(FLAGS.workdir)
    note = baseline_note(checkpoint, FLAGS.preset, pretrain_steps, work / "baseline_checkpoint")
    if note:
        print(note, flush=True)
    data = se.data_beside(checkpoint, FLAGS.data_dir, work, FLAGS.seed)
    print(data.description, flush=True)
    baseline = se.baseline_params(checkpoint, data,
                                  se.TradeoffConfig(pretrain_steps=pretrain_steps,
                                                    seed=FLAGS.seed),
                                  work / "baseline_checkpoint")
    try:
        result = se.run_search(cfg, data, baseline, work, save_to=FLAGS.save_model,
                               sensitivity_cache=FLAGS.sensitivity_cache)
    except se.InfeasibleBudgetError as err:  # one line, before any fine-tuning
        raise app.UsageError(f"--budget={cfg.budget}: {err}") from err
    prefix = Path(FLAGS.output_prefix)
    write_text_atomic(prefix.with_suffix(".json"),
                      json.dumps(result, indent=2, default=float) + "\n")
    write_text_atomic(prefix.with_suffix(".md"), se.to_markdown(result))
    se.plot(result, prefix.with_suffix(".png"))
    print(se.to_markdown(result))
    print(f"chosen model: {result['chosen_checkpoint']}")


if __name__ == "__main__":
    sys.exit(main())
