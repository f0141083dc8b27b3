"""Pruning schedules: gradual polynomial (in-graph) and the paper's dynamic threshold.

* :func:`polynomial_schedule` (Zhu & Gupta 2017) is evaluated inside the jitted
  optimizer update (:func:`~deepliflow_jax.compress.transforms.pruned`).
* The dynamic threshold (Alhimdiat et al. 2023: "dynamically adjusting the pruning
  thresholds based on the fine-tuning performance") is a small host-side state
  machine: raise the percentile by ``increment`` while validation EPE stays within
  ``tolerance`` of the uncompressed model; when it does not, return to the last
  accepted percentile and retry with a smaller increment (``backoff``). It stops
  when the increment falls below ``min_increment`` or ``max_percent`` is reached.
  :func:`dynamic_threshold_replay` rebuilds the state from a recorded log (to resume
  a search); the study's ``dynamic_prune`` part (``deepliflow_jax.study.dynamic``)
  drives it with pruning, fine-tuning and validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp

from deepliflow_jax.compress.prune import check_percent


class PruningSchedule(NamedTuple):
    """A pruning schedule usable inside jit.

    Attributes:
      percent: ``step -> percent`` (jnp scalar).
      update: ``step -> bool`` (jnp scalar): recompute masks at this step.
    """

    percent: Callable[[Any], Any]
    update: Callable[[Any], Any]


def polynomial_schedule(
    final_percent: float,
    begin_step: int,
    end_step: int,
    *,
    initial_percent: float = 0.0,
    power: float = 3.0,
    frequency: int = 1,
) -> PruningSchedule:
    """Gradual pruning ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))**power``.

    Args:
      final_percent: sparsity reached at ``end_step``.
      begin_step, end_step: ramp start and end (optimizer update counts).
      initial_percent: sparsity at ``begin_step``.
      power: 3 in Zhu & Gupta; 1 is linear.
      frequency: recompute masks every ``frequency`` steps of the ramp (and at its
        end).

    Returns:
      A :class:`PruningSchedule`.

    Raises:
      ValueError: on percentages outside [0, 100) or an empty/negative ramp.
    """
    s_f, s_i = check_percent(final_percent), check_percent(initial_percent)
    if not 0 <= begin_step <= end_step:
        raise ValueError(f"need 0 <= begin_step <= end_step, got {begin_step}, {end_step}")
    if int(frequency) < 1 or power <= 0:
        raise ValueError(f"frequency must be >= 1 and power > 0, got {frequency}, {power}")
    span = max(end_step - begin_step, 1)

    def percent(step):
        t = jnp.clip((jnp.asarray(step, jnp.float32) - begin_step) / span, 0.0, 1.0)
        return s_f + (s_i - s_f) * (1.0 - t) ** power

    def update(step):
        step = jnp.asarray(step, jnp.int32)
        on_ramp = (step >= begin_step) & (step <= end_step)
        return on_ramp & (((step - begin_step) % int(frequency) == 0) | (step == end_step))

    return PruningSchedule(percent, update)


def one_shot_schedule(percent: float, step: int = 0) -> PruningSchedule:
    """Prune to ``percent`` once, at optimizer step ``step``."""
    p = check_percent(percent)
    return PruningSchedule(
        lambda s: jnp.asarray(p, jnp.float32),
        lambda s: jnp.asarray(s, jnp.int32) == step,
    )


class DynamicThresholdState(NamedTuple):
    """Host-side state of the dynamic threshold search.

    Attributes:
      candidate: percentile to try next.
      accepted: highest percentile whose EPE passed (0.0 = dense model).
      increment: current step size in percentage points.
      done: whether the search has ended.
      log: one dict per evaluation, in order.
    """

    candidate: float
    accepted: float
    increment: float
    done: bool
    log: tuple[dict[str, Any], ...]


def dynamic_threshold_init(start: float = 5.0, increment: float = 5.0) -> DynamicThresholdState:
    """Starts the search at ``start`` % (the paper starts at 5 % in 5 % steps)."""
    start = check_percent(start)
    if not increment > 0:
        raise ValueError(f"increment must be positive, got {increment}")
    return DynamicThresholdState(start, 0.0, float(increment), False, ())


def dynamic_threshold_update(
    state: DynamicThresholdState,
    epe: float,
    baseline_epe: float,
    *,
    tolerance: float = 0.05,
    relative: bool = True,
    backoff: float = 0.5,
    min_increment: float = 1.0,
    max_percent: float = 95.0,
    extra: Mapping[str, Any] | None = None,
) -> DynamicThresholdState:
    """Feeds back the validation EPE measured at ``state.candidate``.

    Args:
      state: current state.
      epe: validation EPE of the model pruned at ``state.candidate`` (after
        fine-tuning if the caller fine-tunes).
      baseline_epe: EPE of the uncompressed model.
      tolerance: allowed EPE increase, a fraction of the baseline if
        ``relative`` else in EPE units.
      relative: see ``tolerance``.
      backoff: factor applied to the increment after a failure (0 < f < 1).
      min_increment: stop once the increment drops below this.
      max_percent: highest percentile ever tried.
      extra: more fields for this evaluation's log entry (e.g. the EPE before
        fine-tuning); they must not reuse the entry's own keys.

    Returns:
      The next state; its last ``log`` entry records this evaluation: ``iteration``,
      ``percent``, ``epe``, ``baseline_epe``, ``limit``, ``accepted``,
      ``best_percent``, ``next_percent`` (None once done), ``increment``, then
      ``extra``.

    Raises:
      ValueError: ``backoff`` outside (0, 1), or ``extra`` reusing an entry key.
    """
    if state.done:
        return state
    if not 0.0 < backoff < 1.0:
        raise ValueError(f"backoff must be in (0, 1), got {backoff}")
    limit = baseline_epe * (1.0 + tolerance) if relative else baseline_epe + tolerance
    ok = math.isfinite(epe) and epe <= limit
    accepted, increment = state.accepted, state.increment
    if ok:
        accepted = state.candidate
    else:
        increment *= backoff
    candidate = min(accepted + increment, max_percent)
    done = increment < min_increment or candidate <= accepted
    entry = {
        "iteration": len(state.log),
        "percent": state.candidate,
        "epe": float(epe),
        "baseline_epe": float(baseline_epe),
        "limit": float(limit),
        "accepted": bool(ok),
        "best_percent": accepted,
        "next_percent": None if done else candidate,
        "increment": increment,
    }
    clash = sorted(set(entry) & set(extra or {}))
    if clash:
        raise ValueError(f"extra log fields {clash} clash with the entry's own keys")
    entry.update(extra or {})
    return DynamicThresholdState(candidate, accepted, increment, done, (*state.log, entry))


def dynamic_threshold_replay(
    log: Sequence[Mapping[str, Any]],
    baseline_epe: float,
    *,
    start: float = 5.0,
    increment: float = 5.0,
    **update_kwargs: Any,
) -> DynamicThresholdState:
    """Rebuilds the search state from a recorded ``log`` (to resume an interrupted search).

    Each entry's ``epe`` is fed back through :func:`dynamic_threshold_update` with
    the same settings; the entries' other fields are kept as they were recorded.

    Args:
      log: entries as :func:`dynamic_threshold_update` made them (e.g. read back from
        JSON), in order; an ``epe`` of None counts as a failed evaluation.
      baseline_epe: EPE of the uncompressed model.
      start, increment: see :func:`dynamic_threshold_init`.
      **update_kwargs: ``tolerance``, ``relative``, ``backoff``, ``min_increment``,
        ``max_percent`` (see :func:`dynamic_threshold_update`).

    Returns:
      The state after the last entry (its ``log`` is ``log``).

    Raises:
      ValueError: the log was made with other settings: an entry at another
        percentile than the rule tries there, with another accept decision, or after
        the search had ended.
    """
    state = dynamic_threshold_init(start, increment)
    for i, recorded in enumerate(log):
        if state.done:
            raise ValueError(f"recorded entry {i} comes after the search ended (at "
                             f"{state.accepted:g} %): the log was made with other settings")
        if float(recorded["percent"]) != state.candidate:
            raise ValueError(f"recorded entry {i} tried {recorded['percent']:g} % where these "
                             f"settings try {state.candidate:g} %: the log was made with other "
                             "settings")
        epe = math.inf if recorded["epe"] is None else float(recorded["epe"])
        state = dynamic_threshold_update(state, epe, baseline_epe, **update_kwargs)
        if state.log[-1]["accepted"] != bool(recorded["accepted"]):
            raise ValueError(f"recorded entry {i} ({recorded['percent']:g} %) was "
                             f"{'accepted' if recorded['accepted'] else 'rejected'}, these "
                             "settings decide otherwise: the log was made with other settings")
        state = state._replace(log=(*state.log[:-1], dict(recorded)))
    return state
