"""The compression search: its solver and candidates on hand-made tables, the size model
against the real shapes and packing, the sensitivity options and their cache, and one
tiny end-to-end search (size budget: deterministic) whose chosen model loads and predicts."""

import dataclasses
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest

from deepliflow_jax.search.budget import Budget
from deepliflow_jax.search.config import SEARCH_PRESETS, SearchConfig
from deepliflow_jax.search.costs import predicted_latency
from deepliflow_jax.search.plans import (
    LAYER_GROUPS,
    Choice,
    check_groups,
    fake_quantize,
    group_ratios,
    plan_bits,
    plan_label,
    ratio_spec,
    sparsify,
)
from deepliflow_jax.search.report import plot, to_markdown
from deepliflow_jax.search.run import run_search
from deepliflow_jax.search.sensitivity import measure_sensitivity
from deepliflow_jax.search.size import SizeModel, leaf_bytes
from deepliflow_jax.search.solver import (
    InfeasibleBudgetError,
    pareto_front,
    search_candidates,
    solve,
    within_budget,
)

CTX = ("context", r"^context_network/")
EST6 = ("estimator6", r"^scene_flow_estimator_6/")


# ----------------------------------------------------------------------------- the solver


def _brute(options, need):
    best = None
    for picks in itertools.product(*options.values()):
        saving = sum(p[2] for p in picks)
        delta = sum(p[1] for p in picks)
        if saving >= need and (best is None or delta < best):
            best = delta
    return best


def test_solve_is_exact_on_random_tables():
    rng = np.random.default_rng(0)
    for trial in range(40):
        options = {f"g{i}": [(("noop", i), 0.0, 0.0)] + [
            ((j, i), float(rng.uniform(-0.05, 1.0)), float(rng.integers(-1, 8)))
            for j in range(int(rng.integers(1, 4)))] for i in range(4)}
        for need in (1.0, 5.0, 9.0, 14.0):
            best = _brute(options, need)
            if best is None:
                with pytest.raises(InfeasibleBudgetError):
                    solve(options, need, resolution=int(need))
                continue
            choice, delta, saving = solve(options, need, resolution=int(need))  # unit 1: exact
            assert delta == pytest.approx(best), (trial, need)
            picked = [next(o for o in options[g] if o[0] == c) for g, c in choice.items()]
            assert saving == pytest.approx(sum(o[2] for o in picked)) and saving >= need
            assert delta == pytest.approx(sum(o[1] for o in picked))


def test_solve_prefers_the_larger_saving_on_ties_and_rejects_bad_input():
    options = {"a": [("a0", 0.0, 0.0), ("a1", 0.1, 2.0), ("a2", 0.1, 3.0)],
               "b": [("b0", 0.0, 0.0), ("b1", 0.5, 5.0)]}
    assert solve(options, 2.0) == ({"a": "a2", "b": "b0"}, pytest.approx(0.1), 3.0)
    assert solve(options, 4.0)[0] == {"a": "a0", "b": "b1"}
    assert solve(options, 5.5)[0] == {"a": "a2", "b": "b1"}  # tie: the larger saving
    assert solve(options, -1.0)[0] == {"a": "a0", "b": "b0"}  # nothing needed
    with pytest.raises(InfeasibleBudgetError, match="add up to 8, 9 are needed"):
        solve(options, 9.0)
    with pytest.raises(ValueError, match="layer group 'c' has no option"):
        solve({**options, "c": []}, 1.0)
    # savings are rounded down to units of need / resolution: 2.4 + 2.4 never pass for 5
    near = {"a": [("a0", 0.0, 0.0), ("a1", 0.1, 2.4)], "b": [("b0", 0.0, 0.0), ("b1", 0.1, 2.4)],
            "c": [("c0", 0.0, 0.0), ("c1", 0.5, 5.0)]}
    assert solve(near, 5.0, resolution=10) == ({"a": "a0", "b": "b0", "c": "c1"}, 0.5, 5.0)
    assert solve(near, 4.8, resolution=10)[0] == {"a": "a1", "b": "b1", "c": "c0"}


# ----------------------------------------------------------------------------- candidates


def _tables():
    """Three groups; pruning ``b`` is cheap in EPE per ms, ``c`` is expensive."""
    delta = {"a": {0.5: 0.10, 0.7: 0.30}, "b": {0.5: 0.02, 0.7: 0.05}, "c": {0.5: 0.50, 0.7: 1.0}}
    # each group's pruning changes one block (dense: A 40 ms, B 20 ms, C 40 ms)
    option_ms = {"a": {0.5: {"A": 20.0}, 0.7: {"A": 10.0}}, "b": {0.5: {"B": 10.0},
                                                                 0.7: {"B": 5.0}},
                 "c": {0.5: {"C": 10.0}, 0.7: {"C": 0.0}}}
    return _costs(delta, {"A": 40.0, "B": 20.0, "C": 40.0}, option_ms)


def _costs(delta, blocks, option_ms, dense_ms=100.0):
    saved = {g: {r: sum(blocks[n] - ms for n, ms in per.items()) for r, per in t.items()}
             for g, t in option_ms.items()}
    sens = {"delta": {g: {"ratio": d, "bits": {}, "percent": {}} for g, d in delta.items()}}
    costs = {"dense_ms": dense_ms, "saved_ms": saved, "option_ms": option_ms,
             "blocks": {n: {"median_ms": ms} for n, ms in blocks.items()}}
    groups = tuple((g, f"^{g}/") for g in delta)
    return groups, sens, costs


def test_latency_candidates_meet_the_budget_with_the_best_plan_first():
    groups, sens, costs = _tables()
    found = search_candidates(groups, sens, 75.0, "latency", costs=costs,
                                margins=(0.0, 0.05, 0.1), count=3)
    # 25 ms to save: a0.5 + b0.5 (delta 0.12) beats a0.7 (0.30), b0.7 + a0.5 (0.15), c (0.5)
    assert found[0]["plan"] == {"a": Choice(0.5), "b": Choice(0.5)}
    assert found[0]["delta_epe"] == pytest.approx(0.12)
    assert found[0]["predicted_ms"] == pytest.approx(70.0)
    for c, limit in zip(found, (75.0, 71.25, 67.5), strict=False):
        assert c["predicted_ms"] <= limit + 1e-9
    # 5 % tighter still fits a0.5 + b0.5 (70 ms): not repeated; 10 % needs 32.5 ms
    assert [c["margin"] for c in found] == [0.0, 0.1]
    assert found[1]["plan"] == {"a": Choice(0.5), "b": Choice(0.7)}
    assert plan_label(found[1]["plan"], groups) == "a r0.5, b r0.7"


def test_groups_pruning_one_block_multiply_and_the_search_checks_it():
    # a prunes the block's inputs, b its outputs: together 0.5 * 0.5 of it remains, not 0
    groups, sens, costs = _costs({"a": {0.5: 0.1, 0.7: 0.5}, "b": {0.5: 0.1}}, {"X": 100.0},
                                 {"a": {0.5: {"X": 50.0}, 0.7: {"X": 30.0}},
                                  "b": {0.5: {"X": 50.0}}})
    assert predicted_latency(costs, {"a": 0.5, "b": 0.5}) == pytest.approx(25.0)
    assert predicted_latency(costs, {"a": 0.7, "b": 0.0}) == pytest.approx(30.0)
    assert predicted_latency(costs, {"a": 0.3}) is None  # not measured
    # 40 ms: a0.5 + b0.5 (25 ms) is the cheapest in EPE
    assert search_candidates(groups, sens, 40.0, "latency", costs=costs)[0]["plan"] == {
        "a": Choice(0.5), "b": Choice(0.5)}
    # 20 ms: the summed savings (100 ms) would accept a0.5 + b0.5, its real 25 ms does not
    for limit in (20.0, 24.999):  # also when the real time misses by a hair
        found = search_candidates(groups, sens, limit, "latency", costs=costs)
        assert found[0]["plan"] == {"a": Choice(0.7), "b": Choice(0.5)}
        assert found[0]["predicted_ms"] == pytest.approx(15.0)
    with pytest.raises(InfeasibleBudgetError, match="predicted at 15.0 ms"):
        search_candidates(groups, sens, 14.0, "latency", costs=costs)


def test_an_unreachable_budget_is_a_clear_error():
    groups, sens, costs = _tables()
    with pytest.raises(InfeasibleBudgetError) as err:
        search_candidates(groups, sens, 10.0, "latency", costs=costs)
    assert str(err.value) == (
        "budget 10.0 ms is out of reach of the search space: its plans are predicted at 15.0 ms "
        "(the most compressed: a r0.7, b r0.7, c r0.7) to 100.0 ms (dense); the nearest "
        "feasible budget is '15ms' (or allow more layer groups, larger ratios)")
    assert (err.value.fastest, err.value.slowest, err.value.nearest) == (15.0, 100.0, "15ms")
    # the nearest feasible budget is feasible; a hair below it is not
    assert search_candidates(groups, sens, 15.0, "latency", costs=costs)[0]["plan"] == {
        "a": Choice(0.7), "b": Choice(0.7), "c": Choice(0.7)}
    with pytest.raises(InfeasibleBudgetError):
        search_candidates(groups, sens, 14.99, "latency", costs=costs)
    # a budget above the dense model's time keeps it dense
    assert search_candidates(groups, sens, 120.0, "latency", costs=costs)[0]["plan"] == {}


def test_the_nearest_feasible_budget_keeps_the_budget_s_kind():
    # the fastest plan at 15.04 ms of a dense 100 ms; 27.601 MB on disk
    assert Budget.parse("10ms").nearest_feasible(15.04, 100.0) == "15.1ms"
    assert Budget.parse("g70").nearest_feasible(15.04, 100.0) == "15.1ms"
    assert Budget.parse("8x").nearest_feasible(15.04, 100.0) == "6.64x"  # 100 / 15.04 = 6.649
    assert Budget.parse("8x").nearest_feasible(25.0, 100.0) == "4x"  # exactly: not rounded off
    assert Budget.parse("1MB").nearest_feasible(27.601e6, 30e6) == "27.61MB"
    for text, fastest in (("10ms", 15.04), ("8x", 15.04), ("1MB", 27.601e6)):
        nearest = Budget.parse(Budget.parse(text).nearest_feasible(fastest, 100.0))
        assert within_budget(fastest, nearest.limit(100.0, {}))  # the fastest plan meets it


def test_size_candidates_use_bits_and_sparsity_and_meet_the_exact_size(variables):
    groups = (CTX, EST6)
    sens = {"delta": {"context": {"ratio": {0.5: 0.4}, "bits": {8: 0.001}, "percent": {50.0: 0.02}},
                      "estimator6": {"ratio": {0.5: 0.3}, "bits": {8: 0.002},
                                     "percent": {50.0: 0.5}}}}
    model = SizeModel(variables["params"], groups, disk_factor={0: 0.9, 8: 0.7})
    dense = model.disk_bytes({})
    # 8 bits in both groups save 3.19 MB; with half of the context's parameters zeroed 3.32
    limit = dense - 3.25e6
    found = search_candidates(groups, sens, limit, "size", size_model=model, count=2,
                                margins=(0.0, 0.02))
    # 8 bits are nearly free; context sparsity is the cheapest further saving
    assert found[0]["plan"] == {"context": Choice(bits=8, percent=50.0),
                                "estimator6": Choice(bits=8)}
    for c in found:
        assert c["predicted_bytes"] == pytest.approx(model.disk_bytes(c["plan"]))
        assert c["predicted_bytes"] <= limit
    with pytest.raises(InfeasibleBudgetError, match="budget 1.00 MB is out of reach"):
        search_candidates(groups, sens, 1e6, "size", size_model=model)


def test_budget_forms_and_errors():
    assert Budget.parse("120ms") == Budget("latency_ms", 120.0)
    assert Budget.parse(" 5.5MB") == Budget("size_mb", 5.5)
    assert Budget.parse("2x") == Budget("speedup", 2.0)
    assert Budget.parse("g70h10") == Budget("reference", "g70h10")
    assert Budget.parse("2x").measure == "latency" and Budget.parse("1mb").measure == "size"
    # every kind is described in the log, the default (a reference plan's name) included
    assert [Budget.parse(t).describe() for t in ("120ms", "5.5MB", "2x", "g70h10")] == [
        "120 ms", "5.5 MB", "2x faster than dense", "as fast as g70h10"]
    with pytest.raises(ValueError, match="the speedup must be a positive number"):
        Budget.parse("0x")
    with pytest.raises(ValueError, match="expected a latency like '120ms'"):
        Budget.parse("fast!")
    with pytest.raises(ValueError, match=r"budget 'g99' names no reference plan; the references "
                                         r"are \['g70h10', 'g70h30', 'g70', 'uniform30'"):
        SearchConfig(budget="g99")


# ----------------------------------------------------------------------------- plans and sizes


def test_groups_and_reference_ratios(variables):
    from deepliflow_jax.model.channels import widths_of

    widths = widths_of(variables)
    members = check_groups(LAYER_GROUPS, widths)
    assert sorted(c for cs in members.values() for c in cs) == sorted(widths)  # a partition
    assert members["fused"] == [f"guidance_network/fusion/convconcat_refine_d{k}"
                                for k in range(5)]
    ratios = group_ratios({"guidance_network": 0.7, "scene_flow_estimator|context_network":
                             0.1}, LAYER_GROUPS, widths)
    assert ratios == {**{g: 0.7 for g in ("rgb", "depth", "fusion", "fused")},
                      **{f"estimator{lv}": 0.1 for lv in (6, 5, 4, 3, 2)}, "context": 0.1}
    assert group_ratios({"rgb_encoder": 0.5}, LAYER_GROUPS, widths) is None  # splits "rgb"
    assert group_ratios(0.3, (CTX,), widths) is None  # prunes outside the groups
    with pytest.raises(ValueError, match="channel group context_network/conv1 is in layer "
                                         "groups 'context' and 'c1'"):
        check_groups((CTX, ("c1", "context_network/conv1$")), widths)
    with pytest.raises(ValueError, match="layer group 'x' .* matches no channel group"):
        check_groups((("x", "^nothing/"),), widths)


def test_size_model_has_the_pruned_models_shapes_and_the_packed_bytes(variables):
    import flax

    from deepliflow_jax.compress.export import pack_params
    from deepliflow_jax.compress.quantize import QuantConfig
    from deepliflow_jax.compress.structured import structured_prune

    plan = {"rgb": Choice(0.5), "fused": Choice(0.3, 8), "estimator2": Choice(0.7, 0, 30.0)}
    model = SizeModel(variables["params"], LAYER_GROUPS)
    leaves = {k: (n, b, p) for k, n, b, p in model.leaves(plan)}
    pruned = structured_prune(variables, ratio_spec(plan, LAYER_GROUPS))
    flat = flax.traverse_util.flatten_dict(pruned.variables["params"], sep="/")
    assert set(flat) == set(leaves)
    assert {k: np.size(v) for k, v in flat.items()} == {k: v[0] for k, v in leaves.items()}
    assert leaves["guidance_network/fusion/convconcat_refine_d2/kernel"][1:] == (8, 0.0)
    assert leaves["scene_flow_estimator_2/conv1/bias"][1:] == (0, 30.0)
    assert leaves["guidance_network/depth_decoder/refine1/conf_mass"][1:] == (0, 0.0)
    assert model.payload_bytes({}) == 4 * 8_296_404  # the float checkpoint: float32
    rng = np.random.default_rng(0)
    for bits, zeros in itertools.product((0, 6, 8, 12), (0.0, 0.3, 0.95)):
        x = rng.normal(size=(3, 3, 16, 8)).astype(np.float32)
        x[rng.random(x.shape) < zeros] = 0.0
        arrays, layout = pack_params({"w": x}, quant=QuantConfig(bits=bits or 8),
                                     bits={"w": bits})
        nonzero = layout["leaves"]["w"]["nonzero"]
        assert leaf_bytes(x.size, bits, nonzero, True) == sum(a.nbytes for a in
                                                                 arrays.values()), (bits, zeros)
    assert leaf_bytes(100, 0, 3, False) == 400


def test_bits_and_sparsity_touch_only_their_group(variables):
    import flax

    params = variables["params"]
    plan = {"context": Choice(bits=6, percent=40.0), "estimator6": Choice(0.5)}
    bits = flax.traverse_util.flatten_dict(plan_bits(params, plan, (CTX, EST6)), sep="/")
    assert {k for k, b in bits.items() if b} == {k for k in bits if k.startswith("context_")}
    assert set(bits.values()) == {0, 6}
    pruned, masks = sparsify(params, plan, (CTX, EST6))
    flat = flax.traverse_util.flatten_dict(pruned, sep="/")
    ctx = np.concatenate([np.ravel(v) for k, v in flat.items() if k.startswith("context_")])
    assert np.mean(ctx == 0) == pytest.approx(0.40, abs=1e-4)
    assert all(np.all(m) for k, m in flax.traverse_util.flatten_dict(masks, sep="/").items()
               if not k.startswith("context_"))
    # the sensitivity's numpy quantizer is the trainer's, bit for bit, on the group only
    from deepliflow_jax.compress.quantize import QuantConfig, quantize_tree

    rng = np.random.default_rng(1)
    tree = {"context_network": {"conv1": {"kernel": rng.normal(size=(3, 3, 5, 7)),
                                          "bias": rng.normal(size=7)}},
            "other": {"kernel": rng.normal(size=(4, 4))}}
    tree = {k: {n: {a: np.float32(b) for a, b in v.items()} if isinstance(v, dict)
                else np.float32(v) for n, v in d.items()} for k, d in tree.items()}
    got = flax.traverse_util.flatten_dict(fake_quantize(tree, CTX[1], 5), sep="/")
    want = flax.traverse_util.flatten_dict(
        quantize_tree(tree, QuantConfig(bits=5, include=CTX[1])), sep="/")
    for k in want:
        np.testing.assert_array_equal(got[k], np.asarray(want[k]))
    assert np.array_equal(got["other/kernel"], tree["other"]["kernel"])
    assert not np.array_equal(got["context_network/conv1/kernel"],
                              tree["context_network"]["conv1"]["kernel"])


def test_trainer_state_takes_per_leaf_bits_and_masks(small_variables):
    import flax

    from deepliflow_jax.compress.transforms import MaskState, QuantState, find_state
    from deepliflow_jax.model.channels import widths_of
    from deepliflow_jax.train.trainer import Trainer

    params = small_variables["params"]
    plan = {"context": Choice(bits=6, percent=50.0)}
    pruned, masks = sparsify(params, plan, (CTX,))
    state = Trainer(widths=widths_of(params)).new_state(
        pruned, masks=masks, bits=plan_bits(params, plan, (CTX,)))
    bits = flax.traverse_util.flatten_dict(find_state(state.opt_state, QuantState).bits,
                                           sep="/")
    assert {k: int(b) for k, b in bits.items() if b} == {
        k: 6 for k in bits if k.startswith("context_network/")}
    kept = flax.traverse_util.flatten_dict(find_state(state.opt_state, MaskState).masks,
                                           sep="/")
    assert not np.all(kept["context_network/conv1/kernel"])
    assert np.all(kept["scene_flow_estimator_2/conv1/kernel"])
    # a structured model's conf_mass (the removed inputs' weight mass) stays float
    depth = flax.traverse_util.flatten_dict(
        plan_bits(params, {"depth": Choice(bits=8)}, LAYER_GROUPS), sep="/")
    assert depth["guidance_network/depth_decoder/refine1/conf_mass"] == 0
    assert depth["guidance_network/depth_decoder/refine1/kernels"] == 8


# ----------------------------------------------------------------------------- sensitivity


def test_sensitivity_options_and_cache(variables, tmp_path):
    """Each option compresses its group only; a second call reads everything from the cache."""
    import flax

    from deepliflow_jax.model.channels import widths_of

    params = variables["params"]
    widths = widths_of(params)
    ref = flax.traverse_util.flatten_dict(params, sep="/")
    val = {"frames": np.zeros((1, 2, 64, 64, 4), np.float32),
           "gt": np.zeros((1, 64, 64, 4), np.float32)}
    calls = []

    def evaluate(p, masks):
        flat = flax.traverse_util.flatten_dict(p, sep="/")
        changed = sorted({k.split("/")[0] for k in flat if not np.array_equal(flat[k], ref[k])})
        cut = {} if masks is None else {k: int(m.size - m.sum()) for k, m in masks.items()
                                        if m.sum() < m.size}
        calls.append((changed, cut))
        return {"epe": 1.0 + 0.01 * len(calls), "sf": 0.0}

    cache = tmp_path / "sens.json"
    out = measure_sensitivity(params, val, (CTX, EST6), (0.5,), (6,), (40.0,), cache=cache,
                                evaluate=evaluate, log=lambda _: None)
    assert calls[0] == ([], {})  # the base model
    ratio_ctx, bits_ctx, pct_ctx = calls[1:4]
    assert ratio_ctx[0] == [] and set(ratio_ctx[1]) == {f"context_network/conv{i}"
                                                         for i in range(1, 7)}
    assert ratio_ctx[1]["context_network/conv1"] == widths["context_network/conv1"] // 2
    assert bits_ctx == (["context_network"], {}) and pct_ctx == (["context_network"], {})
    assert calls[4][1] == {f"scene_flow_estimator_6/{n}": widths[f"scene_flow_estimator_6/{n}"]
                           // 2 for n in ("conv1", "conv2", "conv3", "conv4", "conv_f")}
    assert out["delta"]["context"] == {"ratio": {0.5: pytest.approx(0.01)},
                                       "bits": {6.0: pytest.approx(0.02)},
                                       "percent": {40.0: pytest.approx(0.03)}}
    assert (out["evaluated"], out["cached"]) == (6, 0)
    stored = json.loads(cache.read_text())
    assert list(stored["entries"]) == [out["key"]]

    def fail(p, masks):
        raise AssertionError("evaluated although cached")

    again = measure_sensitivity(params, val, (CTX, EST6), (0.5,), (6,), (40.0,), cache=cache,
                                  evaluate=fail, log=lambda _: None)
    assert again["delta"] == out["delta"] and (again["evaluated"], again["cached"]) == (0, 6)
    calls.clear()
    other = flax.traverse_util.flatten_dict(params, sep="/")
    other["context_network/conv1/bias"] = other["context_network/conv1/bias"] + 1.0
    fresh = measure_sensitivity(flax.traverse_util.unflatten_dict(other, sep="/"), val,
                                  (CTX,), (0.5,), cache=cache, evaluate=evaluate,
                                  log=lambda _: None)
    assert len(calls) == 2 and fresh["evaluated"] == 1 and fresh["key"] != out["key"]
    assert len(json.loads(cache.read_text())["entries"]) == 2  # one entry per checkpoint
    calls.clear()
    more = measure_sensitivity(params, val, (CTX,), (0.5, 0.25), (), (), cache=cache,
                                 evaluate=evaluate, log=lambda _: None)
    assert len(calls) == 1 and (more["evaluated"], more["cached"]) == (1, 1)
    cache.write_text("{broken")
    with pytest.raises(ValueError, match="sensitivity cache .*sens.json is not readable JSON"):
        measure_sensitivity(params, val, (CTX,), (0.5,), cache=cache, evaluate=fail)


def test_pareto_front():
    pts = [("dense", 100, 3.0), ("a", 50, 3.2), ("b", 60, 3.5), ("c", 40, 4.0), ("d", 50, 3.1)]
    assert pareto_front(pts) == ["c", "d", "dense"]


# ----------------------------------------------------------------------------- end to end


def test_tiny_search_end_to_end(variables, tiny_data, tmp_path):
    """A size budget (deterministic) on two groups: the chosen model meets it on disk, loads
    with load_checkpoint and predict_sceneflow reproduces the EPE the search reported."""
    import jax

    import deepliflow_jax as dl
    from deepliflow_jax.checkpoint import checkpoint_widths, load_checkpoint, load_metadata
    from deepliflow_jax.search.measure import evaluate_outputs

    data, val = tiny_data, tiny_data.val_batch()
    # the tiny preset (compression_search --preset=tiny): measured as pruned
    cfg = SEARCH_PRESETS["tiny"]
    assert cfg.finetune_steps == 0
    assert cfg.budget == "27.6MB" and set(cfg.groups) == {CTX, EST6}
    result = run_search(cfg, data, variables, tmp_path / "work",
                          save_to=tmp_path / "chosen", log=lambda _: None)
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "searched1"} and result["chosen"] == "searched1"
    chosen = rows["searched1"]
    assert chosen["disk_bytes"] <= 27.6e6 < rows["dense"]["disk_bytes"]
    assert chosen["meets_budget"] and not rows["dense"]["meets_budget"]
    assert result["budget"]["limit"] == 27.6e6
    cand = result["candidates"][0]
    assert cand["predicted_bytes"] <= 27.6e6
    assert chosen["predicted_disk_bytes"] == pytest.approx(cand["predicted_bytes"])
    loaded = load_checkpoint(tmp_path / "chosen")
    meta = load_metadata(tmp_path / "chosen")
    assert meta["plan"] == cand["plan"] and meta["source"] == "compression_search"
    pruned = any(g["ratio"] for g in cand["plan"].values())
    assert (checkpoint_widths(tmp_path / "chosen") is not None) == pruned
    sf = dl.predict_sceneflow(loaded, val["frames"])
    assert evaluate_outputs(np.asarray(sf), val["gt"])["epe"] == pytest.approx(chosen["epe"],
                                                                               rel=1e-5)
    assert result["sensitivity"]["evaluated"] == 4 and result["costs"]["saved_ms"].keys() == {
        "context", "estimator6"}
    assert result["costs"]["changed_blocks"]["context"]["0.5"] == ["context network"]
    md = to_markdown(result)
    assert "**Chosen: `searched1`**" in md and "| context |" in md
    assert result["verdict"]["summary"] == [
        "No reference plan was measured (no uniform or hand-written plans)."]
    plot(result, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    assert jax.tree.leaves(loaded)


def test_the_scripts_find_the_world_beside_the_checkpoint_or_make_one(tmp_path):
    from deepliflow_jax.search import data as tr

    ckpt = tmp_path / "study" / "baseline_checkpoint"
    made = tr.data_beside(ckpt, None, tmp_path / "work")  # no world beside it: made in work
    assert f"({tmp_path / 'work' / 'synthetic_kitti'})" in made.description
    (tmp_path / "study").mkdir()
    (tmp_path / "work" / "synthetic_kitti").rename(tmp_path / "study" / "synthetic_kitti")
    beside = tr.data_beside(ckpt, None, tmp_path / "other")
    assert f"({tmp_path / 'study' / 'synthetic_kitti'})" in beside.description
    assert not (tmp_path / "other").exists()  # the study's world was used


def test_the_machine_load_is_described_or_said_missing():
    from deepliflow_jax.profile.environment import describe_load

    idle = {"load1": 0.4, "cpu_count": 2, "loaded": False}
    busy = {"load1": 4.5, "cpu_count": 2, "loaded": True}
    assert describe_load(None) == describe_load({}) == "not recorded"
    assert describe_load({"before": idle, "after": idle}) == (
        "load average 0.40 before, 0.40 after on 2 cores; not loaded")
    assert "LOADED by other work" in describe_load({"before": idle, "after": busy})


def test_the_pareto_front_drops_points_dominated_by_any_earlier_point():
    # "late" is dominated by "first" (cheaper and better), not by its predecessor "mid"
    pts = [("first", 10, 2.0), ("mid", 20, 3.0), ("late", 30, 2.5), ("best", 40, 1.0)]
    assert pareto_front(pts) == ["first", "best"]
    # two points with equal EPE: the cheaper one stays, once; equal cost and EPE: one
    assert pareto_front([("x", 50, 2.0), ("y", 40, 2.0)]) == ["y"]
    assert len(pareto_front([("x", 40, 2.0), ("y", 40, 2.0)])) == 1


def test_a_budget_equal_to_the_cost_is_met():
    """Exactly at the budget counts as meeting it: in candidate selection (the prediction)
    and in the final check (the measurement, e.g. a reference's own time)."""
    groups, sens, costs = _tables()
    # a0.5 + b0.5 is predicted at exactly 70 ms, the best plan for 70 ms (delta 0.12)
    found = search_candidates(groups, sens, 70.0, "latency", costs=costs, count=1)
    assert found[0]["plan"] == {"a": Choice(0.5), "b": Choice(0.5)}
    assert found[0]["predicted_ms"] == 70.0
    # the final check: "as fast as g70" (g70's own median) accepts g70; a limit computed
    # from other numbers (dense / speedup) is met by a cost equal up to its rounding
    assert within_budget(83.25, 83.25)
    assert within_budget(0.1 + 0.2, 0.3)
    assert not within_budget(70.0 * (1 + 1e-6), 70.0)


# ----------------------------------------------------------------------------- the whole run
# run_search with fake timings, sensitivities and fine-tuning (seconds): the order of its
# stages, the budget's one figure and the verdict; the real stages are covered above and
# by the end-to-end test


def _fake_stages(monkeypatch, whole_ms, final, calls):
    """Fakes run_search's expensive stages: the cost rounds (dense 100 ms; context r0.5
    saves 30 ms, estimator6 r0.5 10 ms; ``whole_ms`` the references), the sensitivities,
    the fine-tuning, saving and measuring (``final``: ``{name: (median ms, EPE)}``).
    ``calls`` records the stages that ran."""
    from types import SimpleNamespace

    from deepliflow_jax.compress.structured import shrink
    from deepliflow_jax.search import run

    option_ms = {"context": {0.5: {"C": 30.0}}, "estimator6": {0.5: {"E": 10.0}}}
    _, _, costs = _costs({"context": {0.5: 0.1}, "estimator6": {0.5: 0.1}},
                         {"C": 60.0, "E": 20.0}, option_ms)
    costs.update(whole={n: {"median_ms": ms} for n, ms in {"dense": 100.0, **whole_ms}.items()},
                 saved_gflops={g: {0.5: 0.0} for g in option_ms},
                 changed_blocks={g: {0.5: list(t[0.5])} for g, t in option_ms.items()})
    sens = {"key": "fake", "base": {"epe": 3.0}, "evaluated": 0, "cached": 0,
            "delta": {g: {"ratio": {0.5: 0.1}, "bits": {}, "percent": {}} for g in option_ms}}
    saved = {}

    def record(name, value):
        def fn(*args, **kwargs):
            calls.append(name)
            return value(*args, **kwargs)
        return fn

    def save(path, tree, meta, **kwargs):
        saved[str(path)] = tree

    def candidate(name, ratio, params, widths, val, workdir, **kwargs):
        ms, epe = final[name]
        return SimpleNamespace(name=name, extra={"metrics": {"epe": epe, "d1": 1.0, "fl": 1.0,
                                                             "sf": 1.0}},
                               info={"conv_gflops_eq3": 1.0, "flops": 1e9}, stats={})

    def timed(cands, repeats, warmup, log):
        for c in cands:
            ms = final[c.name][0]
            c.stats = {"median_ms": ms, "p10_ms": ms, "p90_ms": ms}

    monkeypatch.setattr(run, "measure_costs", record("costs", lambda *a, **k: costs))
    monkeypatch.setattr(run, "calibrate_disk", lambda *a, **k: {0: 1.0, 8: 1.0})
    monkeypatch.setattr(run, "measure_sensitivity", record("sensitivity", lambda *a, **k: sens))
    monkeypatch.setattr(run, "fine_tune_pruned", record(
        "finetune", lambda trainer, params, keep, *a, **k: (None, shrink({"params": params},
                                                                          keep)[0])))
    monkeypatch.setattr(run, "save_checkpoint", save)
    monkeypatch.setattr(run, "load_checkpoint", lambda path: saved[str(path)])
    monkeypatch.setattr(run, "dir_size", lambda path: 1_000_000)
    monkeypatch.setattr(run, "make_candidate", record("measure", candidate))
    monkeypatch.setattr(run, "time_candidates", timed)


def _fake_config(budget):
    """Two groups, one ratio; the reference ``g70`` prunes the context network by half."""
    return SearchConfig(budget=budget, groups=(CTX, EST6), ratios=(0.5,), bits=(8,),
                        percents=(), margins=(0.0,), candidates=1, uniform=(),
                        plans=("g70:context_network=0.5",), finetune_steps=1, repeats=1,
                        block_repeats=1, warmup=0)


def _fake_data():
    """What the run reads of a ``Dataset``: its validation batch, LiDAR count, description."""
    val = {"frames": np.zeros((1, 2, 64, 192, 4), np.float32)}
    return SimpleNamespace(train_batch=None, val_batch=lambda: val, num_samples=8,
                           description="fake")


@pytest.mark.parametrize("budget, message", [
    ("2x", "budget 2x faster than dense = 50.0 ms is out of reach of the search space: its "
           "plans are predicted at 60.0 ms (the most compressed: context r0.5, estimator6 r0.5) "
           "to 100.0 ms (dense); the nearest feasible budget is '1.66x' (or allow more layer "
           "groups, larger ratios)"),
    ("g70", "budget as fast as g70 = 55.0 ms is out of reach of the search space: its plans "
            "are predicted at 60.0 ms (the most compressed: context r0.5, estimator6 r0.5) to "
            "100.0 ms (dense); the nearest feasible budget is '60ms'"),
])
def test_a_budget_out_of_reach_stops_the_run_right_after_the_costs(
        variables, tmp_path, monkeypatch, budget, message):
    """Before the sensitivities and the fine-tuning (minutes): the message gives the
    reachable range and the nearest feasible budget of the same kind."""
    calls = []
    _fake_stages(monkeypatch, {"g70": 55.0}, {}, calls)
    with pytest.raises(InfeasibleBudgetError) as err:
        run_search(_fake_config(budget), _fake_data(), variables, tmp_path, log=lambda _: None)
    assert str(err.value).startswith(message)
    assert calls == ["costs"]  # no sensitivity, no fine-tuning before the error


def test_the_budget_has_one_figure_in_the_console_the_json_and_the_report(
        variables, tmp_path, monkeypatch):
    """"As fast as g70" is resolved once, from the cost rounds (g70 60 ms of a dense
    100 ms); the final rounds ran 30 % faster (dense 70 ms): each model is checked on its
    speed-up there, not on a second figure (g70's 42 ms there)."""
    calls, lines = [], []
    final = {"dense": (70.0, 3.0), "g70": (42.0, 3.5), "searched1": (41.3, 3.4)}
    _fake_stages(monkeypatch, {"g70": 60.0}, final, calls)
    result = run_search(_fake_config("g70"), _fake_data(), variables, tmp_path,
                        log=lines.append)
    assert calls == ["costs", "sensitivity", "finetune", "finetune", "measure", "measure",
                     "measure"]
    text = "as fast as g70 = 60.0 ms (1.67x faster than the dense 100.0 ms in the same rounds)"
    assert f"budget: {text}" in lines
    b = result["budget"]
    assert (b["limit"], b["text"], b["spec"], b["relative"]) == (60.0, text, "g70", True)
    assert "search_limit" not in b
    assert f"Budget: {text} (resolved once" in to_markdown(result)
    rows = {r["name"]: r for r in result["rows"]}
    # 41.3 ms of a 70 ms dense = 59.0 ms of the cost rounds' 100 ms: met; g70 exactly at it
    assert rows["searched1"]["budget_cost"] == pytest.approx(59.0)
    assert rows["searched1"]["meets_budget"] and rows["g70"]["meets_budget"]
    assert not rows["dense"]["meets_budget"]
    assert result["chosen"] == "searched1" and result["chosen_meets_budget"]
    plot(result, tmp_path / "frontier.png")


def test_the_report_says_plainly_when_a_reference_beats_the_searched_plan(
        variables, tmp_path, monkeypatch):
    calls = []
    final = {"dense": (100.0, 3.5), "g70": (42.0, 3.777), "searched1": (67.2, 7.204)}
    _fake_stages(monkeypatch, {"g70": 60.0}, final, calls)
    result = run_search(_fake_config("75ms"), _fake_data(), variables, tmp_path,
                        log=lambda _: None)
    v = result["verdict"]
    sentence = ("The searched plan `searched1` is 90.7 % worse in EPE (7.204 vs 3.777) and "
                "60.0 % slower (67.2 vs 42.0 ms) than reference `g70` (which meets the "
                "budget); `g70` dominates it.")
    assert v["summary"] == [sentence]  # the dense model is more accurate but slower: not named
    assert v["dominated_by"] == ["g70"]
    w = v["worse_than"][0]
    assert (w["epe_change"], w["latency_change"]) == (pytest.approx(7.204 / 3.777 - 1),
                                                      pytest.approx(0.6))
    md = to_markdown(result)
    assert f"* {sentence}" in md and "EPE +90.7% (worse)" in md
    # a reference that is more accurate but slower is named, without "dominates"
    final.update(g70=(80.0, 3.777))
    result = run_search(_fake_config("75ms"), _fake_data(), variables, tmp_path / "2",
                        log=lambda _: None)
    assert result["verdict"]["summary"] == [
        "The searched plan `searched1` is 90.7 % worse in EPE (7.204 vs 3.777) and 16.0 % "
        "faster (67.2 vs 80.0 ms) than reference `g70` (which misses the budget); `g70` is "
        "more accurate but costlier."]
    assert result["verdict"]["dominated_by"] == []
    # none more accurate: said so
    final.update(g70=(42.0, 8.0))
    result = run_search(_fake_config("75ms"), _fake_data(), variables, tmp_path / "3",
                        log=lambda _: None)
    assert result["verdict"]["summary"] == [
        "The searched plan `searched1` is at least as accurate (EPE) as every reference plan."]


# ----------------------------------------------------------------------------- the script


def test_the_script_starts_from_the_main_job_s_baseline_and_says_what_happens_without_it(
        variables, tmp_path, monkeypatch, capsys):
    """No --checkpoint: the main job's (run_study's default folder); missing, the script
    says it pre-trains here and how long; a budget out of reach is one line, exit 2."""
    import deepliflow_jax.search as se
    from experiments import compression_search as cmd
    from experiments.run_study import default_results_dir

    seen = {}

    def data_beside(checkpoint, data_dir, work, seed=0):
        seen["checkpoint"] = checkpoint
        return _fake_data()

    def baseline_params(checkpoint, data, cfg, save_to, log=print):
        seen["pretrain_steps"] = cfg.pretrain_steps
        return variables

    _fake_stages(monkeypatch, {}, {}, [])
    monkeypatch.setattr(se, "data_beside", data_beside)
    monkeypatch.setattr(se, "baseline_params", baseline_params)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cmd.main(["--preset=tiny", "--budget=2x", f"--workdir={tmp_path / 'work'}"])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert seen == {"checkpoint": f"{default_results_dir('demo')}/baseline_checkpoint",
                    "pretrain_steps": 2}
    assert ("baseline: results/demo/baseline_checkpoint does not exist (the main job, `python "
            "-m experiments.run_study`, writes it: 5-11 minutes on a 2-core CPU; or give "
            "--checkpoint); pre-training 2 steps here instead (about 1 minute") in out
    assert err == (
        "python -m experiments.compression_search: error: --budget=2x: budget 2x faster than "
        "dense = 50.0 ms is out of reach of the search space: its plans are predicted at 60.0 "
        "ms (the most compressed: estimator6 r0.5, context r0.5) to 100.0 ms (dense); the "
        "nearest feasible budget is '1.66x' (or allow more layer groups, larger ratios)\n")


def test_the_script_s_presets_and_help(capsys):
    from absl import app

    from experiments import compression_search as cmd

    cmd.FLAGS.unparse_flags()
    cmd.FLAGS(["prog"])
    assert cmd.search_config() == SEARCH_PRESETS["demo"] == SearchConfig()
    cmd.FLAGS(["prog", "--preset=tiny", "--ratios=0.3,0.5", "--uniform="])
    assert cmd.search_config() == dataclasses.replace(SEARCH_PRESETS["tiny"], ratios=(0.3, 0.5))
    cmd.FLAGS(["prog", "--preset=huge"])
    with pytest.raises(app.UsageError, match=r"--preset=huge: choose one of \['demo', 'tiny'\]"):
        cmd.search_config()
    cmd.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exit_:
        cmd.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--preset=tiny" in out and "a small run" in out
    assert "tiny: 2 layer groups" in out and "minutes" in out
