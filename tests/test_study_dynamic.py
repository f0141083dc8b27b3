"""The dynamic-threshold search (``study/dynamic.py``) with a fake fine-tuning and evaluation.

No network: a 301-entry parameter tree, an "evaluation" that reads the pruned share off
the masks and a "fine-tuning" that scales the kept weights, so that the trajectory, the
model each level starts from and the resume are checked exactly and in milliseconds.
"""

import json
import math

import jax
import numpy as np
import pytest

from deepliflow_jax.study.config import StudyConfig
from deepliflow_jax.study.dynamic import (
    DynamicSettings,
    _as_record,
    load_level,
    save_level,
    search,
    stop_reason,
)
from deepliflow_jax.train.trainer import DivergenceError

PARAMS = {
    "conv": {"kernel": np.random.RandomState(0).randn(3, 3, 4, 8).astype(np.float32)},
    "head": {"bias": np.random.RandomState(1).randn(12).astype(np.float32)},
    # the largest magnitude (never pruned before fine-tuning sets it to 0): a penalty on
    # the EPE that only fine-tuning removes, so "before" and "after" differ
    "penalty": np.array([50.0], np.float32),
}
N = 3 * 3 * 4 * 8 + 12 + 1  # 301
BASELINE = 2.0
SCALE = 3.0  # the fake fine-tuning multiplies the kept weights by this


def pruned_share(masks):
    if masks is None:
        return 0.0
    return 1.0 - sum(float(np.sum(m)) for m in _leaves(masks)) / N


def _leaves(tree):
    return [tree["conv"]["kernel"], tree["head"]["bias"], tree["penalty"]]


def steep_after_22_percent(params, masks):
    """EPE rises sharply once more than 22 % of the entries are pruned."""
    s = pruned_share(masks)
    return {"epe": BASELINE + (0.01 if s <= 0.22 else 1.0) * s
            + float(np.asarray(params["penalty"])[0]), "sf": 10.0 * s}


class FakeFinetune:
    def __init__(self, diverge_at=()):
        self.calls, self.diverge_at = [], set(diverge_at)

    def __call__(self, params, masks, *, level, start):
        self.calls.append((level, start))
        # as the trainer's donating step: device arrays handed to it are consumed
        for leaf in jax.tree.leaves((params, masks)):
            if isinstance(leaf, jax.Array):
                leaf.delete()
        if level in self.diverge_at:
            raise DivergenceError(2, 1e-4, "the loss is nan")
        tuned = {"conv": {"kernel": np.asarray(params["conv"]["kernel"]) * SCALE},
                 "head": {"bias": np.asarray(params["head"]["bias"]) * SCALE},
                 "penalty": np.zeros(1, np.float32)}
        return tuned, {"steps": 3, "history": [{"step": 3, "epe": 0.0}]}


RULE = DynamicSettings(start=5.0, increment=5.0, tolerance=0.05, backoff=0.5,
                       min_increment=1.0, max_percent=95.0)
# (percent, accepted) of RULE on steep_after_22_percent: 5 % steps until 25 % fails,
# then halved steps around the 22 % edge until the step (0.625) is below 1
TRAJECTORY = [(5.0, True), (10.0, True), (15.0, True), (20.0, True), (25.0, False),
              (22.5, False), (21.25, True), (22.5, False)]


def _run(settings=RULE, evaluate=steep_after_22_percent, finetune=None, **kwargs):
    finetune = finetune or FakeFinetune()
    seen = []
    state, params, masks = search(PARAMS, None, BASELINE, settings, finetune=finetune,
                                  evaluate=evaluate,
                                  on_level=lambda e, p, m: seen.append((e, p, m)), **kwargs)
    return state, params, masks, seen, finetune


def test_search_accepts_backs_off_and_stops_at_the_minimum_increment():
    state, params, masks, seen, finetune = _run()
    assert [(e["percent"], e["accepted"]) for e in state.log] == TRAJECTORY
    assert state.done and state.accepted == 21.25 and stop_reason(state, RULE) == "min_increment"
    # the decision uses the EPE after fine-tuning: before it, the penalty fails every level
    first = state.log[0]
    assert first["before"]["epe"] > first["limit"] == pytest.approx(BASELINE * 1.05)
    assert first["metrics"]["epe"] == first["epe"] <= first["limit"]
    # every level is fine-tuned; data positions continue over all levels, rejected too
    assert finetune.calls == [(i, 3 * i) for i in range(len(TRAJECTORY))]
    assert [e["start_step"] for e in state.log] == [3 * i for i in range(len(TRAJECTORY))]
    # on_level saw each new entry with its candidate model
    assert [e for e, _, _ in seen] == list(state.log)
    # the result is the last accepted level, pruned from the accepted models only: its
    # weights were fine-tuned (scaled) once per accepted level, never by a rejected one
    accepted = sum(a for _, a in TRAJECTORY)
    kept = np.asarray(masks["conv"]["kernel"])
    np.testing.assert_allclose(np.asarray(params["conv"]["kernel"])[kept],
                               PARAMS["conv"]["kernel"][kept] * SCALE**accepted, rtol=1e-6)
    assert N - sum(int(np.sum(m)) for m in _leaves(masks)) == math.floor(21.25 * N / 100)
    assert not np.any(np.asarray(params["conv"]["kernel"])[~kept])


def test_search_stops_at_the_maximum_percentile():
    rule = DynamicSettings(start=5.0, increment=5.0, tolerance=0.05, backoff=0.5,
                           min_increment=1.0, max_percent=12.0)
    state, _, masks, _, _ = _run(rule, evaluate=lambda p, m: {"epe": BASELINE})
    assert [(e["percent"], e["accepted"]) for e in state.log] == [
        (5.0, True), (10.0, True), (12.0, True)]
    assert stop_reason(state, rule) == "max_percent" and state.log[-1]["next_percent"] is None
    assert N - sum(int(np.sum(m)) for m in _leaves(masks)) == math.floor(12.0 * N / 100)


def test_a_diverged_level_is_rejected_and_the_search_goes_on():
    state, _, _, seen, _ = _run(finetune=FakeFinetune(diverge_at={1}))
    failed = state.log[1]
    assert failed["percent"] == 10.0 and not failed["accepted"] and failed["epe"] == math.inf
    assert "diverged" in failed["failed"] and failed["steps"] == 2
    assert seen[1][1] is None  # no model to keep
    assert state.log[2]["percent"] == 7.5  # back from the accepted 5 % with half the step
    assert state.log[2]["start_step"] == 3 + 2
    # its record is strict JSON (no Infinity) and resumes to the same search
    recorded = [json.loads(json.dumps(_as_record(e), allow_nan=False)) for e in state.log[:2]]
    assert recorded[1]["epe"] is None
    again, _, _ = search(seen[0][1], seen[0][2], BASELINE, RULE, finetune=FakeFinetune(),
                         evaluate=steep_after_22_percent, recorded=recorded)
    assert [(e["percent"], e["accepted"]) for e in again.log] == [
        (e["percent"], e["accepted"]) for e in state.log]


def test_search_resumes_from_a_recorded_trajectory():
    full, params, masks, seen, _ = _run()
    for done in (4, 6):  # after an accepted level; after two rejected ones
        last = max(i for i in range(done) if seen[i][0]["accepted"])
        finetune = FakeFinetune()
        state, p, m = search(seen[last][1], seen[last][2], BASELINE, RULE,
                             finetune=finetune, evaluate=steep_after_22_percent,
                             recorded=[e for e, _, _ in seen[:done]])
        assert [lvl for lvl, _ in finetune.calls] == list(range(done, len(TRAJECTORY)))
        assert finetune.calls[0][1] == 3 * done  # positions go on from the recorded steps
        assert list(state.log) == list(full.log)
        np.testing.assert_array_equal(p["conv"]["kernel"], params["conv"]["kernel"])
        np.testing.assert_array_equal(m["conv"]["kernel"], masks["conv"]["kernel"])
    # a finished trajectory is not redone
    finetune = FakeFinetune()
    state, _, _ = search(params, masks, BASELINE, RULE, finetune=finetune,
                         evaluate=steep_after_22_percent, recorded=list(full.log))
    assert finetune.calls == [] and state.accepted == 21.25
    # records of other settings are refused, not mixed in
    other = DynamicSettings(start=10.0, increment=5.0, tolerance=0.05, backoff=0.5,
                            min_increment=1.0, max_percent=95.0)
    with pytest.raises(ValueError, match="tried 5 % where these settings try 10 %"):
        search(PARAMS, None, BASELINE, other, finetune=FakeFinetune(),
               evaluate=steep_after_22_percent, recorded=list(full.log[:2]))
    strict = DynamicSettings(start=5.0, increment=5.0, tolerance=0.0001, backoff=0.5,
                             min_increment=1.0, max_percent=95.0)
    with pytest.raises(ValueError, match="was accepted, these settings decide otherwise"):
        search(PARAMS, None, BASELINE, strict, finetune=FakeFinetune(),
               evaluate=steep_after_22_percent, recorded=list(full.log[:2]))


def test_level_model_round_trip(tmp_path):
    _, params, masks, _, _ = _run()
    path = save_level(tmp_path / "level_06.npz", params, masks)
    p, m = load_level(path, PARAMS)
    for a, b in zip(_leaves(p) + _leaves(m), _leaves(params) + _leaves(masks), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert np.asarray(m["head"]["bias"]).dtype == bool
    with pytest.raises(ValueError, match=r"masks/conv/kernel is \(2,\), expected \(3, 3, 4, 8\)"):
        bad = {**masks, "conv": {"kernel": np.ones(2, bool)}}
        load_level(save_level(tmp_path / "bad.npz", params, bad), PARAMS)
    with pytest.raises(FileNotFoundError, match="level_01.npz is missing"):
        load_level(tmp_path / "level_01.npz", PARAMS)


def test_a_level_exactly_at_the_limit_is_accepted():
    """"At most (1 + tolerance) x baseline": an EPE equal to the limit passes."""
    limit = BASELINE * (1.0 + RULE.tolerance)  # the limit as the rule computes it
    rule = DynamicSettings(start=5.0, increment=5.0, tolerance=RULE.tolerance, backoff=0.5,
                           min_increment=1.0, max_percent=15.0)
    state, _, _, _, _ = _run(rule, evaluate=lambda p, m: {"epe": limit})
    assert [e["limit"] for e in state.log] == [limit] * 3
    assert [(e["percent"], e["accepted"]) for e in state.log] == [
        (5.0, True), (10.0, True), (15.0, True)]
    assert stop_reason(state, rule) == "max_percent"


def test_the_paper_style_defaults_run_as_a_state_machine():
    """The study's defaults (start 5 %, +5 points, step halved after a rejection, a step of
    exactly the minimum 2.5 still tried), with a fake evaluation and fine-tuning: a level
    passes up to 13 % pruned."""
    settings = DynamicSettings.from_config(StudyConfig())
    assert settings == DynamicSettings(start=5.0, increment=5.0, tolerance=0.05, backoff=0.5,
                                       min_increment=2.5, max_percent=50.0)

    def up_to_13_percent(params, masks):
        return {"epe": BASELINE * (1.0 if pruned_share(masks) <= 0.13 else 2.0)}

    state, _, masks, _, finetune = _run(settings, evaluate=up_to_13_percent)
    # 15 % fails: the step halves to 2.5 (= the minimum: tried), 12.5 % passes, 15 % fails
    # again and the step (1.25) is below the minimum
    assert [(e["percent"], e["accepted"], e["increment"]) for e in state.log] == [
        (5.0, True, 5.0), (10.0, True, 5.0), (15.0, False, 2.5), (12.5, True, 2.5),
        (15.0, False, 1.25)]
    assert state.done and state.accepted == 12.5
    assert stop_reason(state, settings) == "min_increment"
    assert len(finetune.calls) == 5
    assert N - sum(int(np.sum(m)) for m in _leaves(masks)) == math.floor(12.5 * N / 100)
