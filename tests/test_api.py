"""The functional API (``deepliflow_jax.api``, re-exported lazily by the package).

Network work runs at the study's ``tiny`` shapes (64x192 synthetic frames, batch 1), so
the compiled forward, train step and evaluation are shared with ``test_study`` (in this
process) and, through the persistent XLA cache, with the notebook and README tests.
"""

import doctest
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deepliflow_jax as dl
from deepliflow_jax import api
from deepliflow_jax.data.dataset import effective_samples

H, W = 64, 192


# ----------------------------------------------------------------------------- package


def test_import_is_lazy_and_light():
    code = ("import sys, deepliflow_jax as dl\n"
            "heavy = ('jax', 'flax', 'orbax', 'torch', 'matplotlib')\n"
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
            "assert not loaded, loaded\n"
            "assert 'format_table' in dir(dl) and 'format_table' in dl.__all__\n"
            "dl.format_table\n"
            "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_every_exported_name_resolves_and_is_documented():
    assert dl.__all__ == sorted(set(dl.__all__))
    for name in dl.__all__:
        obj = getattr(dl, name)
        doc = obj.__doc__ or ""
        assert doc.strip(), f"{name} has no docstring"
        sections = ("Example:",) if isinstance(obj, type) else ("Args:", "Returns:", "Example:")
        assert all(s in doc for s in sections), f"{name}: docstring needs {sections}"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dl.nope  # noqa: B018
    # a submodule import does not shadow an exported function
    import deepliflow_jax.predict  # noqa: F401

    assert callable(dl.predict_sceneflow) and not hasattr(dl.predict_sceneflow, "__path__")


# ----------------------------------------------------------------------------- frames


def _pair(h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    disps = rng.uniform(1.0, 80.0, (2, h, w)) * (rng.uniform(size=(2, h, w)) < 0.05)
    return images[0], images[1], disps[0], disps[1]


def test_prepare_frames_matches_the_original_preprocessing():
    from deepliflow_jax.data.preprocess import prepare_inference_inputs

    im0, im1, d0, d1 = _pair()
    frames = dl.prepare_frames(im0, im1, d0, d1, "KITTI")
    ref, _ = prepare_inference_inputs(im0 / np.float32(255), im1 / np.float32(255), d0, d1,
                                      dataset_type="KITTI")
    assert frames.shape == (2, H, W, 4) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames, ref)
    # uint8 and [0, 1] floats are the same input; RGBA drops alpha
    rgba = np.concatenate([im0, np.full((H, W, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(
        dl.prepare_frames(rgba, im1.astype(np.float32) / 255, d0, d1), frames)
    assert (frames[..., 3] != 0).sum() == ((d0 > 0).sum() + (d1 > 0).sum())
    # FT3D: the original's 512x960 center crop
    big = _pair(540, 960)
    assert dl.prepare_frames(*big, dataset="ft3d").shape == (2, 512, 960, 4)
    # the images come back from the frames
    back0, back1 = dl.input_images(frames[None], "kitti")
    np.testing.assert_allclose(back0, im0 / 255.0, atol=1e-6)
    np.testing.assert_allclose(back1, im1 / 255.0, atol=1e-6)


@pytest.mark.parametrize("change, match", [
    (dict(dataset="nuscenes"), "dataset must be one of"),
    (dict(image0=np.zeros((H, W), np.uint8)), "image0 must be"),
    (dict(image1=np.zeros((H, W, 3), np.int32)), "image1 must be uint8 or float"),
    (dict(image0=np.full((H, W, 3), 200.0)), r"image0 must be uint8 or float in \[0, 1\]"),
    (dict(image1=np.zeros((H, W + 64, 3), np.uint8)), "differ in size"),
    (dict(disp1=np.zeros((H, W + 1))), r"disp1 must be \[H, W\]"),
    (dict(disp0=np.full((H, W), np.nan)), "disp0 contains NaN"),
])
def test_prepare_frames_names_bad_arguments(change, match):
    im0, im1, d0, d1 = _pair()
    args = {"image0": im0, "image1": im1, "disp0": d0, "disp1": d1, "dataset": "kitti", **change}
    with pytest.raises(ValueError, match=match):
        dl.prepare_frames(**args)


def test_input_images_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"frames must be \[2, H, W, 4\]"):
        dl.input_images(np.zeros((3, H, W, 4)))


def test_read_example_reads_the_release_examples(shared_data):
    ex = dl.read_example(shared_data / "deeplidarflow_examples", 2)
    assert ex["dataset"] == "ft3d" and ex["frames"].shape == (2, 512, 960, 4)
    assert ex["image0"].shape == (512, 960, 3) and 0.0 <= ex["image0"].min() <= 1.0
    with pytest.raises(FileNotFoundError):
        dl.read_example(shared_data, 1)


# ----------------------------------------------------------------------------- pictures


def test_flow_and_disparity_images_are_the_original_colour_codes():
    from deepliflow_jax import vis

    sf = np.random.default_rng(0).normal(0, 5, (H, W, 4)).astype(np.float32)
    sf[..., 2:] = np.abs(sf[..., 2:]) + 1
    np.testing.assert_array_equal(dl.flow_image(sf[None]), vis.flow_to_color(sf[..., :2]))
    np.testing.assert_array_equal(dl.flow_image(jnp.asarray(sf), max_flow=3.0),
                                  vis.flow_to_color(sf[..., :2], 3.0))
    np.testing.assert_array_equal(dl.disparity_image(sf, 1), vis.disparity_to_color(sf[..., 3]))
    with pytest.raises(ValueError, match="pick one frame"):
        dl.flow_image(np.stack([sf, sf]))
    with pytest.raises(ValueError, match="frame must be 0"):
        dl.disparity_image(sf, 2)


def test_plot_sceneflow_lays_out_inputs_prediction_and_ground_truth():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sf = np.ones((H, W, 4), np.float32)
    im = np.zeros((H, W, 3), np.float32)
    fig = dl.plot_sceneflow(sf, im, im, gt=sf * 2, title="t")
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["image t", "image t+1", "optical flow (pred)", "disparity t (pred)",
                          "disparity t+1 (pred)", "optical flow (gt)", "disparity t (gt)",
                          "disparity t+1 (gt)"]
    finally:
        plt.close(fig)
    plt.close(dl.plot_sceneflow(sf))


def test_format_table():
    row = {"percent": 0.0, "bits": 0, "zero_percent": 0.1, "epe": 1.0, "d0": 2.0, "d1": 3.0,
           "fl": 4.0, "sf": 5.0, "median_ms": 12.34}
    text = dl.format_table([row, dict(row, percent=25.0, bits=6, median_ms=None)])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| pruning |")
    assert lines[2] == "| 0% | float32 | 0.10 | 1.000 | 2.00 | 3.00 | 4.00 | 5.00 | 12.3 |"
    assert lines[3].startswith("| 25% | 6 bits |") and lines[3].endswith("| - |")


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


def test_load_dataset_splits_like_the_study(data, world, tmp_path):
    from deepliflow_jax.study import make_config
    from deepliflow_jax.study.data import study_dataset

    assert (len(data.train), len(data.val)) == (9, 1)
    assert data.num_samples == effective_samples(4096, H, W) and data.interp_size is None
    study = study_dataset(make_config("tiny"), world)
    assert [s.name for s in data.val] == [s.name for s in study.val]
    as_text = study_dataset(make_config("tiny"), str(world))  # a folder given as text
    assert [s.name for s in as_text.train] == [s.name for s in study.train]
    np.testing.assert_array_equal(data.train_batch(3, data.num_samples)["frames"],
                                  study.train_batch(3, data.num_samples)["frames"])
    assert dl.load_dataset(world, num_samples=50).num_samples == 50
    with pytest.raises(FileNotFoundError, match="no data set"):
        dl.load_dataset(tmp_path)
    with pytest.raises(ValueError, match="max_val_frames"):
        dl.load_dataset(world, max_val_frames=0)
    with pytest.raises(ValueError, match="num_scenes"):
        dl.make_synthetic_dataset(tmp_path / "w", num_scenes=0)


def test_validation_pair_is_what_evaluate_sees(data, world):
    pair = dl.validation_pair(world)  # a folder works too
    batch = data.val_batches(data.num_samples)[0]
    np.testing.assert_array_equal(pair["frames"], batch["frames"][0])
    np.testing.assert_array_equal(pair["gt"], batch["gt"][0])
    assert pair["image0"].shape == (H, W, 3)
    with pytest.raises(ValueError, match=r"index must be in \[0, 1\)"):
        dl.validation_pair(data, 1)
    with pytest.raises(ValueError, match="data must be a data-set folder"):
        dl.validation_pair({"frames": 1})


# ----------------------------------------------------------------------------- network


@pytest.fixture(scope="module")
def model():
    return dl.init_params(seed=0, bias_std=0.1)


def test_predict_sceneflow(model, data):
    from deepliflow_jax.predict import predict

    pair = dl.validation_pair(data)
    sf = dl.predict_sceneflow(model, pair["frames"])
    assert sf.shape == (H, W, 4) and bool(jnp.isfinite(sf).all())
    batched = dl.predict_sceneflow(model, pair["frames"][None])
    assert batched.shape == (1, H, W, 4)
    np.testing.assert_array_equal(np.asarray(batched[0]), np.asarray(sf))
    np.testing.assert_array_equal(np.asarray(predict(model, pair["frames"])[0][0]),
                                  np.asarray(sf))
    with pytest.raises(ValueError, match=r"variables must be a \{'params'"):
        dl.predict_sceneflow(model["params"], pair["frames"])
    with pytest.raises(ValueError, match="multiples of 64"):
        dl.predict_sceneflow(model, np.zeros((2, 60, W, 4), np.float32))


@pytest.mark.slow
def test_evaluate_post_training_equals_host_compression(small_variables, data):
    dense = dl.evaluate(small_variables, data)
    assert set(dense) == {"epe", "d0", "d1", "fl", "sf", "nonfinite", "frames"}
    assert dense["frames"] == 1 and dense["nonfinite"] == 0
    assert dense["epe"] > 0 and 0 <= dense["sf"] <= 100
    # prune then quantize on the host == the engine's masked, fake-quantized forward
    pruned, _ = dl.prune(small_variables, 10.0)
    host = dl.evaluate(dl.quantize(pruned, 8), data)
    engine = dl.evaluate(small_variables, data, percent=10, bits=8)
    assert host == engine and engine != dense
    for kwargs, match in ((dict(percent=100), "percent"), (dict(bits=1), "bits"),
                          (dict(bits=17), "bits")):
        with pytest.raises(ValueError, match=match):
            dl.evaluate(small_variables, data, **kwargs)


@pytest.mark.slow
def test_finetune_keeps_the_mask_and_the_grid_and_leaves_its_input_alone(small_variables, data):
    before = jax.tree.map(np.array, small_variables)
    tuned, history = dl.finetune(small_variables, data, 2, percent=10, bits=8, lr=1e-4)
    jax.tree.map(np.testing.assert_array_equal, small_variables, before)  # not donated
    # a structured model trains as itself
    assert jax.tree.map(np.shape, tuned) == jax.tree.map(np.shape, small_variables)
    assert [h["step"] for h in history] == [0, 1]
    assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in history)
    pruned, masks = dl.prune(small_variables, 10.0)  # floor(10 % of the entries): just under 10 %
    assert dl.zero_fraction(tuned) >= dl.zero_fraction(pruned) > 9.99
    for p, m in zip(jax.tree.leaves(tuned), jax.tree.leaves(masks), strict=True):
        p = np.asarray(p)
        assert not p[~np.asarray(m)].any()  # pruned entries stay exactly zero
        assert len(np.unique(p)) <= 255  # 8-bit symmetric per-tensor grid
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(tuned), jax.tree.leaves(dl.quantize(pruned, 8)))]
    assert any(changed)  # it trained
    # the same call again is the same run; `start` continues the data order
    again, history2 = dl.finetune(small_variables, data, 2, percent=10, bits=8)
    assert history2 == history
    jax.tree.map(np.testing.assert_array_equal, again, tuned)
    _, cont = dl.finetune(tuned, data, 1, start=2, l2=False)
    assert cont[0]["step"] == 2 and cont[0]["reg"] == 0.0
    assert np.isfinite(dl.evaluate(tuned, data)["epe"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=-1), "steps must be"), (dict(steps=1.5), "steps must be"),
    (dict(percent=-5), "percent"), (dict(bits=20), "bits"), (dict(lr=0.0), "lr must be"),
])
def test_finetune_names_bad_arguments(model, world, kwargs, match):
    args = dict(steps=1, **kwargs) if "steps" not in kwargs else kwargs
    with pytest.raises(ValueError, match=match):
        dl.finetune(model, world, **args)


def test_time_model(model):
    t = dl.time_model(model, H, W, repeats=2)
    assert t["repeats"] == 2 and t["median_ms"] > 0 and t["first_call_s"] > 0
    assert (t["height"], t["width"], t["batch"], t["backend"]) == (H, W, 1, jax.default_backend())
    with pytest.raises(ValueError, match="repeats must be"):
        dl.time_model(model, H, W, repeats=0)
    with pytest.raises(ValueError, match="multiples of 64"):
        dl.time_model(model, 60, W, repeats=1)


@pytest.mark.slow
def test_compression_table(small_variables, data):
    rows = dl.compression_table(small_variables, data, [(0, 0), (10, 0), (10, 8)], repeats=1)
    assert [(r["percent"], r["bits"]) for r in rows] == [(0, 0), (10, 0), (10, 8)]
    assert rows[0]["zero_percent"] < 1.0 and rows[1]["zero_percent"] > 9.99
    assert rows[2]["zero_percent"] >= rows[1]["zero_percent"]
    assert rows[0]["epe"] == dl.evaluate(small_variables, data)["epe"]
    assert all(r["median_ms"] > 0 for r in rows)
    assert dl.format_table(rows).count("\n") == 4
    with pytest.raises(ValueError, match=r"\(percent, bits\) pair"):
        dl.compression_table(small_variables, data, [(10,)])
    with pytest.raises(ValueError, match="at least one"):
        dl.compression_table(small_variables, data, [])


# ----------------------------------------------------------------------------- docstrings

# Re-exports defined outside ``deepliflow_jax.api`` (whose doctests run below): their
# examples run here, each in its defining module's namespace.
REEXPORTED_WITH_EXAMPLES = ("Dataset", "create_model", "enable_compilation_cache",
                            "init_params", "load_checkpoint", "make_config", "param_shapes",
                            "prune", "quantize", "run_study", "save_checkpoint", "save_png",
                            "zero_fraction")


def test_reexported_doctests_run():
    import importlib

    elsewhere = {n for n in dl.__all__ if getattr(dl, n).__module__ != api.__name__}
    assert set(REEXPORTED_WITH_EXAMPLES) == elsewhere  # every export's examples run somewhere
    finder = doctest.DocTestFinder(recurse=False)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    for name in REEXPORTED_WITH_EXAMPLES:
        obj = getattr(dl, name)
        module = importlib.import_module(obj.__module__)
        tests = finder.find(obj, name, module=module, globs=dict(vars(module)))
        runner = doctest.DocTestRunner(optionflags=flags)
        for test in tests:
            runner.run(test)
        result = runner.summarize(verbose=False)
        assert result.attempted > 0 and result.failed == 0, f"{name}: {result}"


@pytest.mark.slow
def test_docstring_examples_run(data, world, shared_data):
    import matplotlib

    matplotlib.use("Agg")
    # the examples run the original network (the notebook and the README's blocks run the
    # same functions on the tiny study's 8-wide one)
    extra = {"init_params": dl.init_params, "data": data, "root": world,
             "examples_dir": shared_data / "deeplidarflow_examples"}
    result = doctest.testmod(api, extraglobs=extra, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 20 and result.failed == 0
