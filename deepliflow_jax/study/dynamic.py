"""The paper's dynamic-threshold pruning, the study's ``dynamic_prune`` part.

What the paper says (Alhimdiat et al., ieCRES 2023): it adapts "the percentile-based
weights pruning [...] by dynamically adjusting the pruning thresholds based on the
fine-tuning performance of the model" (abstract; sec. II: "based on the fine-tuning
performance of the network on the dataset used"), and (sec. IV) "we start with a low
percentage of weight pruning (5%) and gradually increase it by 5% increments",
watching a validation set during fine-tuning. It states no acceptance criterion, no
tolerance, no back-off and no stopping rule.

The rule implemented here (the state machine of ``deepliflow_jax.compress.schedules``):

1. The baseline is the study's uncompressed model, its validation EPE ``E0``.
2. A level at percentile ``p`` (first ``p = start``): prune the *last accepted* model
   (the baseline before any) to ``p`` % of all weights and biases by one global
   magnitude percentile (the paper's pruning; entries pruned at earlier levels stay
   pruned and count towards ``p``); evaluate (EPE *before* fine-tuning); fine-tune
   with the masks fixed, ``steps`` at lr1 then ``refine_steps`` at lr2 (the paper's
   two rates; a fresh Adam state; the lowest validation EPE of the level kept);
   evaluate (EPE *after*).
3. Accept the level iff its EPE after fine-tuning is finite and at most
   ``(1 + tolerance) E0``. Accepted: the fine-tuned model is the one the next level
   prunes further, next ``p = p + increment``. Rejected (or diverged): that model is
   discarded, ``increment *= backoff`` and next ``p = last accepted + increment``.
   Candidates are capped at ``max_percent``.
4. Stop when the increment falls below ``min_increment``, or when the last accepted
   level is ``max_percent``. The result is the last accepted model (the baseline, at
   0 %, if no level passed).

Ours, because the paper does not give them: the metric (validation EPE after
fine-tuning, also what each level's model selection minimises, where the sweeps
select by SF outliers as the original); the tolerance (relative to ``E0``, 5 % by
default); the back-off factor (0.5); the minimum increment (2.5, one halving of the
paper's 5 % step); the maximum (50 %); the fine-tuning length per level
(``StudyConfig.dynamic_steps`` / ``dynamic_refine_steps``, shorter than a sweep
configuration's because every level is fine-tuned); pruning cumulatively from the
last accepted fine-tuned model (not from the baseline each time); data positions
continuing across levels.

On disk (resumable like every record): one record per level,
``records/dynamic_prune_level_<NN>.json`` (percentile, metrics before / after
fine-tuning, accepted, steps, validation history); the model of the last accepted
level, ``dynamic_prune/level_<NN>.npz`` (parameters and masks, ``/``-joined paths);
at the end the record ``records/dynamic_prune.json`` (final percentile, the whole
trajectory, metrics, LiDAR sweep, time). A re-run replays the recorded levels through
the state machine, continues from the last accepted level's model and redoes only an
unrecorded level.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from deepliflow_jax.compress.prune import post_training_masks
from deepliflow_jax.compress.schedules import (
    DynamicThresholdState,
    dynamic_threshold_replay,
    dynamic_threshold_update,
)
from deepliflow_jax.compress.select import flatten
from deepliflow_jax.fileio import atomic_write
from deepliflow_jax.study.config import StudyConfig
from deepliflow_jax.study.records import RunLog
from deepliflow_jax.train.recipe import fine_tune, paper_phases

PART = "dynamic_prune"
MODEL_DIR = "dynamic_prune"  # the last accepted level's model, under the results folder
LEVEL_KIND = "dynamic_level"
_RECORD_ONLY = ("key", "kind", "bits")  # fields a level record adds to its log entry


def level_key(iteration: int) -> str:
    """Record key of the level evaluated ``iteration``-th (0-based)."""
    return f"{PART}_level_{iteration:02d}"


@dataclasses.dataclass(frozen=True)
class DynamicSettings:
    """The search's settings (percentages of all weights and biases; see module docstring).

    Attributes:
      start: first percentile tried.
      increment: step between levels (percentage points).
      tolerance: accepted EPE increase, a fraction of the baseline EPE.
      backoff: factor applied to the step after a rejected level, in (0, 1).
      min_increment: the search stops once the step is below this.
      max_percent: highest percentile tried.
    """

    start: float = 5.0
    increment: float = 5.0
    tolerance: float = 0.05
    backoff: float = 0.5
    min_increment: float = 2.5
    max_percent: float = 50.0

    @classmethod
    def from_config(cls, cfg: StudyConfig) -> DynamicSettings:
        return cls(cfg.dynamic_start, cfg.dynamic_increment, cfg.dynamic_tolerance,
                   cfg.dynamic_backoff, cfg.dynamic_min_increment, cfg.dynamic_max_percent)

    def rule(self) -> dict[str, Any]:
        """Keyword arguments of ``dynamic_threshold_update``."""
        return {"tolerance": self.tolerance, "relative": True, "backoff": self.backoff,
                "min_increment": self.min_increment, "max_percent": self.max_percent}

    def replay(self, log: Sequence[Mapping[str, Any]], baseline_epe: float
               ) -> DynamicThresholdState:
        """The state after the recorded ``log`` (``dynamic_threshold_replay``).

        Raises:
          ValueError: the log was made with other settings.
        """
        return dynamic_threshold_replay(log, baseline_epe, start=self.start,
                                        increment=self.increment, **self.rule())


def stop_reason(state: DynamicThresholdState, settings: DynamicSettings) -> str | None:
    """Why a finished search stopped: ``"max_percent"`` or ``"min_increment"`` (None: running)."""
    if not state.done:
        return None
    return "max_percent" if state.accepted >= settings.max_percent else "min_increment"


Finetune = Callable[..., tuple[Any, dict[str, Any]]]


def search(params: Any, masks: Any, baseline_epe: float, settings: DynamicSettings, *,
           finetune: Finetune, evaluate: Callable[[Any, Any], dict[str, float]],
           recorded: Sequence[Mapping[str, Any]] = (),
           on_level: Callable[[dict, Any, Any], None] | None = None,
           ) -> tuple[DynamicThresholdState, Any, Any]:
    """Runs (or resumes) the dynamic-threshold search (the rule of the module docstring).

    Args:
      params: the model to prune further: the baseline, or (resuming) the model of the
        last accepted level of ``recorded``.
      masks: its masks (None for the baseline).
      baseline_epe: validation EPE of the baseline.
      settings: the rule's settings.
      finetune: ``(params, masks, *, level, start) -> (params, info)``: fine-tunes with
        the masks fixed, ``start`` the data position of its first step; ``info`` holds
        ``"steps"`` (taken) and whatever else the level's log entry should keep. A
        ``FloatingPointError`` (``DivergenceError``) rejects the level.
      evaluate: ``(params, masks) -> validation metrics`` with ``"epe"``.
      recorded: the log entries of an interrupted search, in order (replayed, not
        redone).
      on_level: called after each new level with ``(entry, params, masks)``: the log
        entry (``accepted`` says whether the fine-tuned ``params`` are now the model to
        continue from; None after a divergence).

    Returns:
      ``(state, params, masks)``: the finished state (its ``log`` is the whole
      trajectory) and the last accepted model (``params``, ``masks`` as given if none).

    Raises:
      ValueError: ``recorded`` was made with other settings.
    """
    state = settings.replay(recorded, baseline_epe)
    while not state.done:
        percent, level = state.candidate, len(state.log)
        start = sum(int(e["steps"]) for e in state.log)
        # on the host: a donating train step must not consume the masks that the
        # evaluation after fine-tuning and the next level use again
        pruned, pruned_masks = jax.device_get(post_training_masks(params, percent, masks))
        extra: dict[str, Any] = {"start_step": start, "before": evaluate(pruned, pruned_masks)}
        try:
            tuned, info = finetune(pruned, pruned_masks, level=level, start=start)
        except FloatingPointError as err:  # a diverged level is a rejected one
            tuned, epe = None, math.inf
            extra.update(failed=str(err), steps=int(getattr(err, "step", 0)),
                         history=list(getattr(err, "history", [])))
        else:
            extra.update(info)
            extra["metrics"] = evaluate(tuned, pruned_masks)
            epe = float(extra["metrics"]["epe"])
        state = dynamic_threshold_update(state, epe, baseline_epe, **settings.rule(),
                                         extra=extra)
        entry = state.log[-1]
        if on_level is not None:
            on_level(entry, tuned, pruned_masks)
        if entry["accepted"]:
            params, masks = tuned, pruned_masks
    return state, params, masks


# -- the last accepted level's model on disk ----------------------------------------


def model_path(results_dir: Path, iteration: int) -> Path:
    return Path(results_dir) / MODEL_DIR / f"level_{iteration:02d}.npz"


def save_level(path: Path, params: Any, masks: Any) -> Path:
    """Parameters and masks as one ``.npz`` (``params/<path>``, ``masks/<path>``), atomically."""
    arrays = {f"params/{k}": np.asarray(v) for k, v in flatten(params).items()}
    arrays.update({f"masks/{k}": np.asarray(v, bool) for k, v in flatten(masks).items()})
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_level(path: Path, like: Any) -> tuple[Any, Any]:
    """``(params, masks)`` saved by :func:`save_level`, in the tree structure of ``like``.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: it does not hold the parameters and masks of ``like``'s model.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: the model of the last accepted dynamic "
                                "threshold level; delete the records "
                                f"{PART}_level_*.json to redo the search")
    paths = {k: np.shape(v) for k, v in flatten(like).items()}
    with np.load(path, allow_pickle=False) as data:
        stored = {name: data[name] for name in data.files}
    out = []
    for group in ("params", "masks"):
        leaves = []
        for k, shape in paths.items():
            leaf = stored.get(f"{group}/{k}")
            if leaf is None or leaf.shape != shape:
                raise ValueError(f"{path} does not hold this model's {group}: "
                                 f"{group}/{k} is {'missing' if leaf is None else leaf.shape}, "
                                 f"expected {shape}")
            leaves.append(leaf)
        out.append(jax.tree.unflatten(jax.tree.structure(like), leaves))
    return out[0], out[1]


def _discard_models(results_dir: Path, keep: int | None) -> None:
    """Deletes level models other than ``keep`` (earlier ones, or one whose record an
    interruption prevented)."""
    keep_path = None if keep is None else model_path(results_dir, keep)
    for path in sorted((Path(results_dir) / MODEL_DIR).glob("level_*.npz")):
        if path != keep_path:
            path.unlink()


# -- the study part -------------------------------------------------------------------


def _as_record(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A log entry for JSON: a diverged level's infinite EPE as None (replay reads it back)."""
    out = {k: v for k, v in entry.items() if k not in _RECORD_ONLY}
    if out["epe"] is not None and not math.isfinite(out["epe"]):
        out["epe"] = None
    return out


def _compact(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: h[k] for k in ("step", "phase", "epe", "sf") if k in h} for h in history]


def run_part(study: Any, params: Any, say: Callable[[str], None] = print) -> dict:
    """Runs or resumes the ``dynamic_prune`` part of ``study`` (a ``runner.Study``).

    Args:
      study: the study, prepared, with its baseline record written.
      params: the baseline parameters.
      say: progress lines.

    Returns:
      The record ``dynamic_prune``: ``percent`` (the final percentile), ``trajectory``
      (every level's log entry), ``stop`` (``"max_percent"`` or ``"min_increment"``),
      ``steps`` (fine-tuning steps of all levels), ``settings``, ``baseline_epe``,
      ``limit`` and, as every record, ``metrics``, ``zero_percent``, ``lidar`` and
      ``time`` of the final model.

    Raises:
      ValueError: the level records were made with other settings.
      FileNotFoundError: the last accepted level's model is missing.
    """
    records, cfg, trainer = study.records, study.cfg, study.trainer
    if records.has(PART):
        return records.get(PART)
    settings = DynamicSettings.from_config(cfg)
    baseline_epe = float(records.get("baseline")["metrics"]["epe"])
    recorded = []
    while records.has(level_key(len(recorded))):
        rec = records.get(level_key(len(recorded)))
        recorded.append({k: v for k, v in rec.items() if k not in _RECORD_ONLY})
    try:
        settings.replay(recorded, baseline_epe)
    except ValueError as err:
        raise ValueError(f"{records.dir}: {err}; delete the records {PART}_level_*.json to "
                         "redo the search") from err
    accepted = [e["iteration"] for e in recorded if e["accepted"]]
    masks = None
    if accepted:
        params, masks = load_level(model_path(study.dir, accepted[-1]), params)
        say(f"{PART}: resuming after {len(recorded)} levels from the accepted "
            f"{recorded[accepted[-1]]['percent']:g} %")
    _discard_models(study.dir, accepted[-1] if accepted else None)
    n = study.data.num_samples
    phases = paper_phases(cfg.lr1, cfg.dynamic_steps, cfg.lr2, cfg.dynamic_refine_steps)

    def evaluate(p: Any, m: Any) -> dict:
        return study._evaluate(trainer.new_state(p, masks=m), study.val_batches())

    def finetune(p: Any, m: Any, *, level: int, start: int) -> tuple[Any, dict]:
        log = RunLog(study.dir / "logs", level_key(level))
        try:
            fit = fine_tune(trainer, p, lambda pos: study.data.train_batch(pos, n), phases,
                            masks=m, evaluate=lambda s: study._evaluate(s, study.val_batches()),
                            eval_every=cfg.eval_every, select="epe", start=start,
                            on_eval=log.log)
        finally:
            log.close()
        return fit.state.params, {"steps": fit.steps, "selected_step": fit.selected_step,
                                  "history": _compact(fit.history), "phases": fit.per_phase}

    def on_level(entry: dict, tuned: Any, m: Any) -> None:
        key = level_key(entry["iteration"])
        if entry["accepted"]:  # the model first, then its record, then the older model
            save_level(model_path(study.dir, entry["iteration"]), tuned, m)
        records.put(key, {"key": key, "kind": LEVEL_KIND, "bits": 0, **_as_record(entry)})
        if entry["accepted"]:
            _discard_models(study.dir, entry["iteration"])
        after = (f"failed ({entry['failed']})" if "failed" in entry
                 else f"{entry['metrics']['epe']:.3f}")
        say(f"{key}: {entry['percent']:g} %: EPE {entry['before']['epe']:.3f} before, {after} "
            f"after fine-tuning (limit {entry['limit']:.3f}): "
            f"{'accepted' if entry['accepted'] else 'rejected'}")

    state, params, masks = search(params, masks, baseline_epe, settings, finetune=finetune,
                                  evaluate=evaluate, recorded=recorded, on_level=on_level)
    trajectory = [_as_record(e) for e in state.log]
    extra = {"percent": state.accepted, "bits": 0, "trajectory": trajectory,
             "stop": stop_reason(state, settings), "steps": sum(e["steps"] for e in trajectory),
             "settings": dataclasses.asdict(settings), "baseline_epe": baseline_epe,
             "limit": trajectory[0]["limit"]}
    final = [e for e in trajectory if e["accepted"]]
    if final:  # Table III's rows: the final level before and after fine-tuning
        extra.update(before=final[-1]["before"], phases=final[-1].get("phases", {}))
    return study._finish(PART, "dynamic", trainer.new_state(params, masks=masks), extra)


# -- outputs --------------------------------------------------------------------------

_STOPS = {"max_percent": "the maximum percentile was accepted",
          "min_increment": "the increment fell below the minimum"}


def trajectory_table(rec: Mapping[str, Any]) -> str:
    """The search as a Markdown table and a summary line (``tables.md``).

    Args:
      rec: the ``dynamic_prune`` record (:func:`run_part`).

    Returns:
      Markdown: one row per level in the order tried (percentile, EPE before and after
      fine-tuning, the limit, the decision, fine-tuning steps), then the final
      percentile and why the search stopped.
    """
    s = rec["settings"]
    lines = ["| level | pruned % | EPE before fine-tuning | EPE after | limit | decision | "
             "steps |", "|---|---|---|---|---|---|---|"]
    for e in rec["trajectory"]:
        after = "diverged" if "failed" in e else f"{e['metrics']['epe']:.3f}"
        lines.append(f"| {e['iteration']} | {e['percent']:g} | {e['before']['epe']:.3f} | "
                     f"{after} | {e['limit']:.3f} | "
                     f"{'accepted' if e['accepted'] else 'rejected'} | {e['steps']} |")
    lines += ["", f"Final: {rec['percent']:g} % of all weights and biases pruned "
              f"(zeros {rec['zero_percent']:.2f} %), EPE {rec['metrics']['epe']:.3f} vs "
              f"baseline {rec['baseline_epe']:.3f}; stopped because "
              f"{_STOPS.get(rec['stop'], rec['stop'])}. Rule: start {s['start']:g} %, step "
              f"{s['increment']:g}, accepted while the fine-tuned EPE <= (1 + "
              f"{s['tolerance']:g}) x baseline, step x {s['backoff']:g} after a rejection, "
              f"stop below a step of {s['min_increment']:g} or at {s['max_percent']:g} %; "
              f"{rec['steps']} fine-tuning steps in all."]
    return "\n".join(lines)
