"""The compression study of Alhimdiat et al. (2023), end to end and resumable.

Order of work (each finished configuration is a record; a re-run skips it):
  1. data: the synthetic KITTI-format world (demo) or KITTI 2015 (paper);
  2. baseline: pre-trained briefly here (demo) or loaded from a checkpoint;
     evaluated beside the zero-flow prediction;
  3. post-training sweeps: pruning 5..25 % and quantization 16..6 bits;
  4. aware-training sweeps: fine-tuning at lr1 = 1e-4, then "refine" at
     lr2 = 1e-5, the best validation SF outlier rate kept (as the original); a run
     whose loss or weights turn non-finite is recorded as failed (``"failed"``, no
     metrics) and the study goes on;
  5. dynamic threshold (``study/dynamic.py``): the percentile raised while the fine-tuned
     validation EPE stays within a tolerance of the baseline's;
  6. hybrid: the best pruning level (the sweep's or the dynamic one) with the best bit
     width, post and aware;
  7. every model above also at each LiDAR sample count of the sweep;
  8. run time of every configuration (Fig. 6);
  9. tables (Table II / III layout), JSON/CSV and plots; each record keeps the
     per-frame counts of its validation, from which the reports draw 95 % bootstrap
     intervals over frames, paired with the baseline (``report.intervals``).

``StudyConfig.seeds`` > 1 repeats all of it per seed, each in its own subfolder, then
aggregates the seeds (:func:`run_seeds`).

Scale: ``Study(..., devices=n)`` trains every configuration data-parallel over
``n`` local devices (default all; see ``train.sharding``). Several worker
processes, on one machine or many, may run the same study in one results folder:
each configuration (the dynamic-threshold part as one, and the data, the baseline,
Fig. 5 and the reports) is claimed by one worker (``claims.py``); the others run the
rest, wait at the steps that need every record (the hybrid needs the sweeps' best
levels) and take over the claim of a worker that died. The records, and so the
tables, are the same as from one process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from deepliflow_jax.compress.prune import post_training_masks, zero_fraction
from deepliflow_jax.fileio import claim_dir, create_exclusive, write_json_atomic
from deepliflow_jax.profile.environment import load_average
from deepliflow_jax.profile.timer import time_calls
from deepliflow_jax.study import dynamic, report
from deepliflow_jax.study.claims import CLAIMS_DIR, DEFAULT_TIMEOUT_S, ClaimBoard, run_claimed
from deepliflow_jax.study.config import (
    StudyConfig,
    model_widths,
    replace_config,
    resume_conflicts,
)
from deepliflow_jax.study.data import make_synthetic, study_dataset
from deepliflow_jax.study.records import RecordStore, RunLog, progress
from deepliflow_jax.train.recipe import fine_tune, paper_phases, pretrain
from deepliflow_jax.train.trainer import DivergenceError, Trainer, get_trainer

BASELINE = "baseline"
CONFIG_FILE = "config.json"  # written first: it marks a folder as a study's results folder


def _say(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def first_step_message(seconds: float, steps: int) -> str:
    """The line for the pre-training's first step, timed apart from the progress bar."""
    return (f"baseline: first pre-training step {seconds:.1f} s (compiling the train step, or "
            f"loading it from the compilation cache); the progress bar counts the other "
            f"{steps - 1}")


def _summary(rec: dict) -> str:
    if rec.get("failed"):
        return f"FAILED: {rec['failed']} (records/{rec['key']}.json; delete it to retry)"
    m = rec["metrics"]
    text = f"EPE {m['epe']:.3f}, SF {m['sf']:.2f} %"
    if m.get("nonfinite"):
        text += f", {m['nonfinite']} pixels with a non-finite prediction (counted as outliers)"
    return text


def check_resume(folder: Path, cfg: StudyConfig) -> None:
    """Refuses a results folder written with another configuration (before any work).

    Raises:
      ValueError: ``folder/config.json`` is unreadable or differs from ``cfg`` in a
        field that is not a ``RESUMABLE_CHANGES`` (``resume_conflicts``).
    """
    saved = Path(folder) / CONFIG_FILE
    if not saved.is_file():
        return
    try:
        conflicts = resume_conflicts(json.loads(saved.read_text()), cfg)
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{saved} is not a study configuration ({err}); use another "
                         "results folder") from err
    if conflicts:
        raise ValueError(
            f"{folder} holds a study run with other settings ({', '.join(conflicts)} "
            f"differ from {saved}); its records would be mixed with new ones: use another "
            "results folder, or the same settings to resume")


def open_results_dir(folder: Path, cfg: StudyConfig) -> None:
    """Checks (``check_resume``), creates or claims ``folder`` and writes its config.json.

    Raises:
      ValueError: see ``check_resume``.
      FileExistsError: ``folder`` is neither empty nor a study's results folder.
    """
    check_resume(folder, cfg)  # before anything is written there
    claim_dir(folder, CONFIG_FILE, "a deepliflow_jax study results folder")
    # workers starting together: one creates config.json, the others find it equal
    path, saved = Path(folder) / CONFIG_FILE, cfg.to_dict()
    text = json.dumps(saved, indent=2, sort_keys=True)
    if create_exclusive(path, text) or json.loads(path.read_text()) == json.loads(text):
        return
    write_json_atomic(path, saved)  # a resumed study with other sweeps, parts or seeds


class Study:
    """One study run in ``results_dir`` (see module docstring).

    Args:
      cfg: the configuration.
      results_dir: the results folder (shared by every worker of the study).
      devices: data parallel over this many of the process's devices, or a device
        list; the training batch must divide over them. None: as many of its devices
        as divide the training batch (all of them when the batch allows).
      claim_timeout_s: a configuration claimed by a worker whose heartbeat is older
        than this is taken over (a worker on this host whose pid is gone: at once).
      poll_s: seconds between looks at other workers' progress while waiting.
    """

    def __init__(self, cfg: StudyConfig, results_dir: str | Path, *,
                 devices: int | Sequence[jax.Device] | None = None,
                 claim_timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = 2.0):
        self.cfg = cfg
        self.dir = Path(results_dir)
        open_results_dir(self.dir, cfg)
        self.records = RecordStore(self.dir)
        self.devices = devices  # None: chosen in prepare(), once the batch is known
        self.claims = ClaimBoard(self.dir / CLAIMS_DIR, timeout_s=claim_timeout_s)
        self.poll_s = poll_s
        self.trainer: Trainer | None = None
        self.data = None
        self._val: dict[int, list] = {}
        self._timing_frames = None
        self._optimizer_state = None  # the checkpoint's Adam state (restore_optimizer)
        self._baseline = None  # the baseline's parameters, once trained or loaded

    # -- setup -------------------------------------------------------------------
    def _work(self, items: list, done) -> None:
        run_claimed(items, self.claims, done, poll_s=self.poll_s, say=_say)

    def prepare(self) -> None:
        """Data and trainer (run once; :meth:`run` calls it).

        Raises:
          ValueError: the data set has no frames in a split, or the training batch does
            not divide over ``devices`` (``--devices``).
        """
        if self.data is not None:
            return
        cfg = self.cfg
        local = len(jax.local_devices())
        n_dev = (local if self.devices is None else
                 self.devices if isinstance(self.devices, int) else len(self.devices))
        if not 1 <= n_dev <= local:
            raise ValueError(f"devices (--devices) is {n_dev}, but this process has "
                             f"{len(jax.local_devices())} device(s): {jax.local_devices()}")
        if cfg.data == "synthetic":
            root = Path(cfg.data_dir) if cfg.data_dir else self.dir / "synthetic_kitti"
            ready = root / "study_ready.json"
            world = {k: getattr(cfg, k) for k in ("num_scenes", "height", "width", "seed")}

            def generate() -> None:
                _say(f"synthetic KITTI-format world: {cfg.num_scenes} scenes "
                     f"{cfg.height}x{cfg.width} in {root}")
                make_synthetic(cfg, root)
                write_json_atomic(ready, world)

            # one worker writes the world; the others wait for its marker
            self._work([("data", generate)],
                       lambda _: ready.is_file() and json.loads(ready.read_text()) == world)
        else:
            root = Path(cfg.data_dir)
        self.data = study_dataset(cfg, root)
        _say(f"data: {len(self.data.train)} train / {len(self.data.val)} validation frames; "
             f"{self.data.num_samples} LiDAR points per frame")
        batch = len(self.data.train_batch(0, self.data.num_samples)["gt"])
        if self.devices is None:  # 'all': the most devices the batch splits over
            n_dev = max(d for d in range(1, n_dev + 1) if batch % d == 0)
            self.devices = n_dev
            if n_dev < local:
                _say(f"data parallel over {n_dev} of {local} devices (the training batch "
                     f"of {batch} splits no further; run one worker per device instead)")
        if batch % n_dev:
            raise ValueError(f"devices (--devices) is {n_dev}, but the training batch of "
                             f"{batch} frame(s) does not split over {n_dev} devices: use a "
                             f"device count that divides {batch} (e.g. --devices=1)")
        self.trainer = get_trainer(cfg.interp_size, cfg.seed, self.devices, cfg.optimizer,
                                   widths=model_widths(cfg))

    def check_resume(self) -> None:
        """Refuses a results folder written with another configuration (before any work)."""
        check_resume(self.dir, self.cfg)

    def val_batches(self, num_samples: int | None = None) -> list:
        n = self.data.num_samples if num_samples is None else self.data.samples_for(num_samples)
        if n not in self._val:
            self._val[n] = self.data.val_batches(n)
        return self._val[n]

    def _baseline_params(self) -> Any:
        """The baseline's parameters: loaded, pre-trained here (and saved), or the ones this
        run already has (then nothing is said or done again)."""
        if self._baseline is None:
            self._baseline = self._load_or_train_baseline()
        return self._baseline

    def _load_or_train_baseline(self) -> Any:
        from deepliflow_jax.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint

        cfg = self.cfg
        if cfg.checkpoint:
            _say(f"baseline: loading {cfg.checkpoint}")
            params = load_checkpoint(cfg.checkpoint, widths=model_widths(cfg))["params"]
            if cfg.restore_optimizer:  # fails now, not after the post-training sweeps
                self._adam_start(params)
            return params
        ckpt = self.dir / "baseline_checkpoint"
        if checkpoint_exists(ckpt):  # also settles a save that an interruption cut short
            _say(f"baseline: loading {ckpt} (pre-trained by an earlier run or another worker)")
            return load_checkpoint(ckpt, widths=model_widths(cfg))["params"]
        t_start = time.perf_counter()
        if cfg.pretrain_steps:
            _say(f"baseline: pre-training {cfg.pretrain_steps} steps at lr {cfg.pretrain_lr} "
                 "on the synthetic world")
        log = RunLog(self.dir / "logs", "pretrain") if cfg.pretrain_steps else None
        n = self.data.num_samples

        def log_step(pos: int, m: dict) -> None:
            if pos % 10 == 0 or pos == cfg.pretrain_steps - 1:
                log.log(pos, {k: float(v) for k, v in jax.device_get(m).items()})

        # the recipe's initialisation and L2 setting (He-scaled, no L2; train/recipe.py)
        params = pretrain(self.trainer, lambda pos: self.data.train_batch(pos, n),
                          cfg.pretrain_steps, cfg.pretrain_lr, seed=cfg.seed,
                          widths=model_widths(cfg), on_step=log_step, progress=progress,
                          on_first_step=lambda s: _say(first_step_message(
                              s, cfg.pretrain_steps)))
        if log is not None:
            log.close()
        save_checkpoint(ckpt, {"params": params},
                        {"source": "study pre-training", "preset": cfg.preset,
                         "pretrain_steps": cfg.pretrain_steps})
        _say(f"baseline: pre-trained {cfg.pretrain_steps} steps in "
             f"{time.perf_counter() - t_start:.0f} s, saved to {ckpt}")
        return params

    # -- configurations ----------------------------------------------------------
    def _evaluate(self, state, batches: list, **kwargs):
        return self.trainer.evaluate(state, batches, validity=self.cfg.validity, **kwargs)

    def _evaluate_all_lidar(self, state) -> dict[str, dict]:
        out = {}
        for n in self.cfg.lidar_sweep:
            out[str(n)] = self._evaluate(state, self.val_batches(n))
        return out

    def _timing(self, params) -> dict:
        """Run time of the forward pass with ``params`` (the compressed parameters, host)."""
        if not self.cfg.runtime_repeats:
            return {}
        if self._timing_frames is None:
            self._timing_frames = jax.device_put(self.val_batches()[0]["frames"][:1])
        # one executable serves every configuration: masked or fake-quantized weights
        # are still dense float tensors, so they run the same convolutions
        before = load_average()  # other work on the cores makes the time a shared one
        timed = time_calls(self.trainer.forward, jax.device_put(params), self._timing_frames,
                           repeats=self.cfg.runtime_repeats)
        return {**timed, "load": {"before": before, "after": load_average()}}

    def _evaluate_recorded(self, state) -> dict:
        """``metrics`` and ``frame_counts`` of a record: the validation metrics and the
        per-frame counts they pool (``report.intervals`` bootstraps them)."""
        metrics, counts = self._evaluate(state, self.val_batches(), with_counts=True)
        return {"metrics": metrics, "frame_counts": {k: np.asarray(v, np.float64).tolist()
                                                     for k, v in counts.items()}}

    def _finish(self, key: str, kind: str, state, extra: dict) -> dict:
        evaluated = self._evaluate_recorded(state)
        compressed = self.trainer.compressed_params(state)
        record = {"key": key, "kind": kind, **extra, **evaluated,
                  "zero_percent": zero_fraction(compressed),
                  "lidar": self._evaluate_all_lidar(state), "time": self._timing(compressed)}
        return self.records.put(key, record)

    def post(self, key: str, params: Any, percent: float = 0.0, bits: int = 0) -> dict:
        if self.records.has(key):
            return self.records.get(key)
        pruned, masks = post_training_masks(params, percent)
        state = self.trainer.new_state(pruned, masks=masks, bits=bits)
        return self._finish(key, "post", state, {"percent": percent, "bits": bits})

    def _adam_start(self, params: Any) -> Any:
        """The checkpoint's TF1 Adam state for ``params`` (``cfg.restore_optimizer``), or None.

        The original restores Adam's slots and beta powers with the weights
        (``train.py`` ``load_model``: its saver holds every variable).
        """
        if not self.cfg.restore_optimizer:
            return None
        from deepliflow_jax.checkpoint import load_optimizer_state
        from deepliflow_jax.train.tf_adam import state_from_checkpoint

        if self._optimizer_state is None:
            self._optimizer_state = load_optimizer_state(self.cfg.checkpoint)
        return state_from_checkpoint(params, self._optimizer_state)

    def aware(self, key: str, params: Any, percent: float = 0.0, bits: int = 0) -> dict:
        """Fine-tunes a compressed model: lr1 phase, then lr2 phase; best by SF outliers.

        As the configuration says (the ``paper`` preset: as the original's KITTI
        fine-tuning): the starting Adam state, the lr2 phase from the best lr1 state,
        the training LiDAR counts (``StudyConfig``).

        A non-finite loss or non-finite weights (checked at each validation, where the
        loop waits for the device anyway) end the run: its record says ``"failed"`` (the
        ``DivergenceError`` message, step and learning rate) instead of metrics.
        """
        if self.records.has(key):
            return self.records.get(key)
        cfg = self.cfg
        pruned, masks = post_training_masks(params, percent)
        adam = self._adam_start(pruned)
        log = RunLog(self.dir / "logs", key)
        n = (self.data.num_samples if cfg.train_samples is None else
             self.data.samples_for(cfg.train_samples))
        try:
            fit = fine_tune(self.trainer, pruned, lambda pos: self.data.train_batch(pos, n),
                            paper_phases(cfg.lr1, cfg.finetune_steps, cfg.lr2, cfg.refine_steps),
                            masks=masks, bits=bits, adam=adam,
                            evaluate=lambda s: self._evaluate(s, self.val_batches()),
                            eval_every=cfg.eval_every, on_eval=log.log,
                            restart_from_best=cfg.phase2_from_best)
        except DivergenceError as err:
            log.close()
            return self.records.put(key, {
                "key": key, "kind": "aware", "percent": percent, "bits": bits,
                "failed": str(err), "failed_step": err.step, "failed_lr": err.lr,
                "history": err.history})
        log.close()
        return self._finish(key, "aware", fit.state,
                            {"percent": percent, "bits": bits, "phases": fit.per_phase,
                             "history": fit.history, "steps": fit.steps})

    # -- the whole study -------------------------------------------------------------
    def _baseline_done(self, key: str) -> bool:
        from deepliflow_jax.checkpoint import checkpoint_exists

        return self.records.has(key) and bool(
            self.cfg.checkpoint or checkpoint_exists(self.dir / "baseline_checkpoint"))

    def run(self) -> dict:
        t_start = time.perf_counter()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.prepare()
        cfg = self.cfg
        # one worker pre-trains (or loads) the baseline; the others load its checkpoint
        self._work([(BASELINE, lambda: self.post(BASELINE, self._baseline_params()))],
                   self._baseline_done)
        params = self._baseline_params()
        _say(f"baseline: {_summary(self.records.get(BASELINE))} (validity '{cfg.validity}')")

        def zero_flow() -> None:
            state = self.trainer.new_state(jax.tree.map(np.zeros_like, params))
            self.records.put("zero_flow", {"key": "zero_flow", "kind": "reference",
                                           **self._evaluate_recorded(state)})

        def config(key: str, kind: str, p: float, b: int, hybrid: bool = False):
            def work() -> None:
                rec = getattr(self, kind)(key, params, p, b)
                _say(f"{key}: {_summary(rec)}" + ("" if rec.get("failed") or hybrid else
                                                  f", zeros {rec['zero_percent']:.2f} %"))
            return key, work

        sweeps = []
        for kind in ("post", "aware"):
            if f"{kind}_prune" in cfg.experiments:
                sweeps += [(f"{kind}_prune_{p:g}", kind, p, 0) for p in cfg.prune_percents]
            if f"{kind}_quant" in cfg.experiments:
                sweeps += [(f"{kind}_quant_{b}", kind, 0.0, b) for b in cfg.quant_bits]
        items = [("zero_flow", zero_flow)] + [config(*s) for s in sweeps]
        if "dynamic_prune" in cfg.experiments:
            def dynamic_part() -> None:  # one claim: its levels build on each other
                rec = dynamic.run_part(self, params, say=_say)
                _say(f"dynamic_prune: final {rec['percent']:g} % after "
                     f"{len(rec['trajectory'])} levels (stop: {rec['stop']}), {_summary(rec)}")
            items.append((dynamic.PART, dynamic_part))
        self._work(items, self.records.has)
        best_p, best_b = report.best_levels(self.records.all(), cfg)
        items = [config(f"hybrid_{kind}_{best_b}_{best_p:g}", kind, best_p, best_b, True)
                 for kind in (("post", "aware") if "hybrid" in cfg.experiments else ())]
        fig5 = self.dir / "fig5_qualitative.png"
        items.append(("fig5", lambda: self._qualitative(params, best_p, best_b)))
        self._work(items, lambda k: fig5.exists() if k == "fig5" else self.records.has(k))
        outputs = {}

        def write_reports() -> None:  # every worker, one at a time: the last one's stays
            outputs.update(report.write_all(
                self.dir, self.records.all(), cfg,
                run={"started": started, "wall_s": time.perf_counter() - t_start},
                extra_plots=[fig5] if fig5.exists() else []))

        self._work([("reports", write_reports)], lambda _: bool(outputs))
        loaded = report.time_load_note(self.records.all())
        if loaded:
            _say(loaded)
        _say(f"done in {time.perf_counter() - t_start:.0f} s; results in {self.dir}")
        return outputs

    def _qualitative(self, params: Any, percent: float, bits: int) -> None:
        """Fig. 5: inputs and flow/D0/D1 of a few configurations on one frame."""
        path = self.dir / "fig5_qualitative.png"
        if path.exists():
            return
        from deepliflow_jax import vis

        batch = self.val_batches()[0]
        rows = []
        for label, p, b in (("original", 0.0, 0), (f"post {bits} bits", 0.0, bits),
                            (f"post {percent:g} %", percent, 0)):
            pruned, masks = post_training_masks(params, p)
            state = self.trainer.new_state(pruned, masks=masks, bits=b)
            _, out = self._evaluate(state, [batch], keep_outputs=True)
            rows.append((label, out[0][0]))
        sample = self.data.val[0]
        try:  # labelled rows and columns when matplotlib (the viz extra) is there
            vis.save_fig5_matplotlib(path, sample.image0, sample.image1, rows,
                                     gt=batch["gt"][0])
        except ImportError:
            vis.save_fig5(path, sample.image0, sample.image1, rows, gt=batch["gt"][0])


def run_study(cfg: StudyConfig, results_dir: str | Path, **options: Any) -> dict:
    """Runs (or resumes) the study; returns the paths of what it wrote.

    Finished configurations are records in ``results_dir``; a re-run with the same
    settings skips them (see the module docstring for the order of work). An end-to-end
    run takes minutes even for the ``tiny`` preset; ``tests/test_study.py`` runs it
    (``test_tiny_study_end_to_end_and_resume``). Several processes calling this on the
    same folder split the configurations between them (see :class:`Study`).

    Args:
      cfg: the configuration, e.g. from ``make_config``.
      results_dir: folder for the records, logs, tables and plots (created; a folder
        of an earlier run with the same settings is resumed).
      **options: :class:`Study`'s ``devices``, ``claim_timeout_s``, ``poll_s``.

    Returns:
      ``{"json": ..., "csv": ..., "tables": ..., "plots": [...]}``: the paths (str)
      of ``results.json``, ``results.csv``, ``tables.md`` and the plots (none without
      matplotlib).

    Raises:
      ValueError: ``results_dir`` holds a run with other settings (or an unreadable
        ``config.json``), checked before anything is written; or the data set has
        no frames in one of its splits.
      FileExistsError: ``results_dir`` is neither empty nor a study's results folder
        (it has no ``config.json``): "refusing to write into DIR: it is not a
        deepliflow_jax study results folder (holds ...); remove it or choose another
        path".
      FileNotFoundError: the configured checkpoint or KITTI data is missing.
      ValueError: the training batch does not divide over ``devices``.

    Example:
      >>> import tempfile
      >>> from deepliflow_jax.study import make_config
      >>> cfg = make_config("tiny")
      >>> cfg.pretrain_steps, cfg.finetune_steps, cfg.prune_percents, cfg.quant_bits
      (3, 2, (10.0,), (8,))
      >>> sorted(run_study(cfg, tempfile.mkdtemp()))  # doctest: +SKIP
      ['csv', 'json', 'plots', 'tables']
    """
    if cfg.seeds > 1:
        return run_seeds(cfg, results_dir, **options)
    return Study(cfg, results_dir, **options).run()


SEED_DIR = "seed_{}"


def seed_config(cfg: StudyConfig, seed: int) -> StudyConfig:
    """The configuration of seed ``seed``'s study in a ``seeds`` > 1 run: that seed, one
    study; a synthetic world in ``data_dir`` goes to its own ``seed_<n>`` subfolder
    (each seed draws its own world)."""
    fields: dict[str, Any] = {"seed": seed, "seeds": 1}
    if cfg.data == "synthetic" and cfg.data_dir:
        fields["data_dir"] = str(Path(cfg.data_dir) / SEED_DIR.format(seed))
    return replace_config(cfg, **fields)


def _seed_finished(folder: Path, cfg: StudyConfig) -> bool:
    """Whether ``folder`` holds a finished study of ``cfg`` (its closing results.json)."""
    try:
        saved = json.loads((folder / "results.json").read_text())
    except (FileNotFoundError, ValueError):
        return False
    return saved.get("config") == json.loads(json.dumps(cfg.to_dict()))


def run_seeds(cfg: StudyConfig, results_dir: str | Path, **options: Any) -> dict:
    """The whole study once per seed, ``cfg.seed`` .. ``cfg.seed + cfg.seeds - 1``, then
    their aggregate (``run_study`` with ``seeds`` > 1).

    Seed ``s`` runs in ``results_dir/seed_<s>`` (``seed_config``): data draws,
    pre-training, sweeps and dynamic threshold of its own, its own tables and intervals
    over frames. Workers on one folder (``claims.py``) first each take a seed no other
    worker has started (claim ``seed_<s>``), then join the seeds still running, whose
    configurations they split as in one study. A seed whose results.json holds this
    configuration is finished and is not run again (a resumed or larger ``--seeds`` run
    reuses it). Last, ``results_dir`` gets the aggregate
    (``report.write_seeds_report``: per-seed values, mean ± std, min–max).

    Args:
      cfg: the configuration, ``seeds`` > 1.
      results_dir: the folder of the seed folders and the aggregate.
      **options: :class:`Study`'s.

    Returns:
      ``{"json", "tables", "plots": [...], "seeds": {seed: that study's outputs or
      None if it was finished before}}``.

    Raises:
      ValueError: ``results_dir`` holds a single-seed study or other settings.
    """
    out_dir = Path(results_dir)
    open_results_dir(out_dir, cfg)
    board = ClaimBoard(out_dir / CLAIMS_DIR,
                       timeout_s=options.get("claim_timeout_s", DEFAULT_TIMEOUT_S))
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    configs = {s: seed_config(cfg, s) for s in seeds}
    folders = {s: out_dir / SEED_DIR.format(s) for s in seeds}
    outputs: dict[int, dict | None] = dict.fromkeys(seeds)

    def run_one(s: int) -> None:
        _say(f"seed {s} ({seeds.index(s) + 1} of {len(seeds)}): {folders[s]}")
        outputs[s] = Study(configs[s], folders[s], **options).run()

    def finished(s: int) -> bool:
        return _seed_finished(folders[s], configs[s])

    for s in seeds:  # first the seeds no other worker has started, each claimed ...
        if finished(s):
            continue
        with board.hold(SEED_DIR.format(s)) as held:
            if held is not None and not finished(s):
                run_one(s)
    for s in seeds:  # ... then the others' (a study's own claims split the configurations)
        if not finished(s):
            run_one(s)
    reused = [s for s in seeds if outputs[s] is None]
    if reused:
        _say(f"seeds {', '.join(map(str, reused))}: finished before, their records reused")
    per_seed = {s: RecordStore(folders[s]).all() for s in seeds}
    out = report.write_seeds_report(out_dir, per_seed, cfg, folders)
    _say(f"{len(seeds)} seeds aggregated in {out_dir}")
    return {**out, "seeds": outputs}
