"""Bad input gets a clear error (naming the value, what it looks like and the fix), never
a silent wrong number.

Every refusal here happens before anything is compiled, so these tests are fast; the
forward pass is replaced by a recorder only where a test checks that a request is
*accepted* at a size the CPU would need minutes to compile (KITTI's 384x1216).
"""

import dataclasses

import flax
import jax
import numpy as np
import pytest

import deepliflow_jax as dl
from deepliflow_jax import predict as predict_module
from deepliflow_jax.data.io import read_png

H, W = 64, 192


def _frames(h=H, w=W, seed=0):
    """Preprocessed-looking frames [2, h, w, 4]: RGB minus mean, sparse normalised LiDAR."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.4, 0.6, (2, h, w, 4)).astype(np.float32)
    x[..., 3] = rng.normal(0.0, 1.0, (2, h, w)) * (rng.uniform(size=(2, h, w)) < 0.05)
    return x


@pytest.fixture
def forward_calls(monkeypatch):
    """Records the network calls ``predict`` makes instead of compiling them."""
    calls = []

    def record(variables, frames, interp_size=None, out_size=None, dtype=None, widths=None,
               conv_impl=None):
        calls.append({"shape": frames.shape, "interp_size": interp_size})
        b, _, h, w, _ = frames.shape
        return jax.numpy.zeros((b, h, w, 4)), {}

    monkeypatch.setattr(predict_module, "forward", record)
    return calls


@pytest.fixture(scope="module")
def example1(shared_data):
    """The release's KITTI example pair as read from the PNGs (uint8 RGB, uint16 disparity)."""
    folder = shared_data / "deeplidarflow_examples"
    return [read_png(folder / f"ex_1_{kind}_{t}.png") for kind in ("im", "disp")
            for t in (10, 11)]


# ----------------------------------------------------------------------------- values


def test_0_255_rgb_frames_are_refused_naming_prepare_frames(variables):
    raw = _frames()
    raw[..., :3] = np.random.default_rng(1).uniform(0, 255, raw[..., :3].shape)
    with pytest.raises(ValueError, match=r"channels 0-2 .* 0\.\.255 RGB .* prepare_frames"):
        dl.predict_sceneflow(variables, raw)
    # mean subtracted but not divided by 255: still far outside [-1, 1]
    with pytest.raises(ValueError, match=r"outside \[-1, 1\]"):
        dl.predict_sceneflow(variables, raw - np.float32(100.0))


def test_raw_kitti_disparities_are_refused(example1):
    im0, im1, d0, d1 = example1
    assert d0.dtype == np.uint16  # the 16-bit PNG: 256 x pixels
    with pytest.raises(ValueError, match=r"disp0 is uint16: .* disp0 / 256\.0"):
        dl.prepare_frames(im0, im1, d0, d1, "kitti")
    with pytest.raises(ValueError, match=r"disp0 reaches 22645, .* divide it by 256"):
        dl.prepare_frames(im0, im1, d0.astype(np.float32), d1 / 256.0, "kitti")
    with pytest.raises(ValueError, match=r"disp1 has negative disparities \(down to -89\.35"):
        dl.prepare_frames(im0, im1, d0 / 256.0, -(d1 / 256.0), "kitti")
    # the right call: the original's normalised range (max 3.06 on this example)
    frames = dl.prepare_frames(im0, im1, d0 / 256.0, d1 / 256.0, "kitti")
    assert 3.0 < frames[..., 3].max() < 3.1


def test_unnormalised_disparity_channel_is_refused(variables):
    frames = _frames()
    frames[0, 5, 7, 3] = 1142.9  # a uint16 KITTI value through (d - mean) / std
    with pytest.raises(ValueError, match=r"channel 3 .*1142\.9\].*divide by 256"):
        dl.predict_sceneflow(variables, frames)
    pixels = _frames()
    # disparities of 15..40 px, not normalised: within the range, but centred far from 0
    pixels[..., 3] = np.where(pixels[..., 3] != 0, np.linspace(15, 40, W), 0.0)
    with pytest.raises(ValueError, match="not normalised: use prepare_frames"):
        dl.predict_sceneflow(variables, pixels)


def test_inf_in_rgb_names_the_rgb_channel_not_lidar(variables):
    frames = _frames()
    frames[1, 3, 4, 2] = np.inf
    with pytest.raises(ValueError, match=r"channel 2: B \(RGB minus mean\)\); RGB values") as e:
        dl.predict_sceneflow(variables, frames)
    assert "LiDAR" not in str(e.value)
    frames = _frames()
    frames[1, 3, 4, 3] = np.nan
    with pytest.raises(ValueError, match=r"channel 3: sparse disparity.*fill missing LiDAR"):
        dl.predict_sceneflow(variables, frames)


@pytest.mark.parametrize("dataset", ["KITTI", "kitti", "Kitti"])
def test_kitti_preset_on_small_frames_needs_an_explicit_resize(variables, forward_calls,
                                                               dataset):
    frames = _frames()
    with pytest.raises(ValueError, match=r"384x1216 .* these frames are 64x192.* resize=True"):
        dl.predict_sceneflow(variables, frames, dataset)
    assert not forward_calls
    dl.predict_sceneflow(variables, frames, dataset, resize=True)  # asked for: allowed
    assert forward_calls[-1]["interp_size"] == (384, 1216)


def test_kitti_preset_takes_kitti_sized_frames(variables, forward_calls, shared_data):
    example = dl.read_example(shared_data / "deeplidarflow_examples", 1)
    dl.predict_sceneflow(variables, example["frames"], "KITTI")
    assert forward_calls[-1] == {"shape": (1, 2, 375, 1242, 4), "interp_size": (384, 1216)}


# ----------------------------------------------------------------------------- sizes


@pytest.fixture(scope="module")
def odd_world(tmp_path_factory):
    """A synthetic world of 100x200 frames: not multiples of 64."""
    return dl.make_synthetic_dataset(tmp_path_factory.mktemp("odd") / "world", num_scenes=10,
                                     height=100, width=200)


def test_frame_size_is_checked_when_the_data_set_is_loaded(odd_world):
    with pytest.raises(ValueError, match=r"frame size of the data set at .* is 100x200, .* "
                                         r"pass interp_size=\(128, 192\) to load_dataset"):
        dl.load_dataset(odd_world)
    data = dl.load_dataset(odd_world, interp_size=(128, 192))
    assert data.interp_size == (128, 192)
    with pytest.raises(ValueError, match=r"interp_size=\(100, 200\) itself must be multiples "
                                         r"of 64, e.g. interp_size=\(128, 192\)"):
        dl.load_dataset(odd_world, interp_size=(100, 200))


def test_evaluate_and_finetune_check_the_size_with_advice_that_fits(variables, odd_world):
    from deepliflow_jax.data.dataset import load_dataset

    # a Dataset read by the data layer's loader, which does not check the network size
    # (dl.load_dataset does: it refuses this one)
    data = load_dataset(odd_world, num_samples=100)
    assert isinstance(data, dl.Dataset) and data.interp_size is None
    for fn, call in (("evaluate", lambda: dl.evaluate(variables, data)),
                     ("finetune", lambda: dl.finetune(variables, data, 1))):
        with pytest.raises(ValueError, match=rf"is 100x200, .* pass interp_size=\(128, 192\) "
                                             rf"to {fn} \(or to load_dataset\)"):
            call()
    with pytest.raises(ValueError, match=r"interp_size=\(128, 192\) to load_dataset"):
        dl.compression_table(variables, data, [(0, 0)])  # it has no interp_size argument
    # a caller who passed a bad interp_size is not told to pass interp_size again
    with pytest.raises(ValueError, match=r"interp_size=\(60, 190\) itself must be multiples "
                                         r"of 64, e.g. interp_size=\(64, 192\)"):
        dl.evaluate(variables, data, interp_size=(60, 190))
    with pytest.raises(ValueError, match=r"interp_size=\(60, 190\) itself"):
        dl.predict_sceneflow(variables, _frames(100, 200), interp_size=(60, 190))
    with pytest.raises(ValueError, match=r"pass interp_size=\(h, w\) .* interp_size=\(128, 192"):
        dl.predict_sceneflow(variables, _frames(100, 200))


def test_time_model_advice_fits_its_arguments(variables):
    with pytest.raises(ValueError, match=r"height x width is 100x200, .* pass height and width "
                                         r"that are multiples of 64 \(e.g. 128x192\)"):
        dl.time_model(variables, 100, 200)
    with pytest.raises(ValueError, match=r"these frames are 64x192.* height=375, width=1242"):
        dl.time_model(variables, 64, 192, dataset="kitti")
    with pytest.raises(ValueError, match=r"interp_size=\(60, 190\) itself"):
        dl.time_model(variables, 100, 200, interp_size=(60, 190))


def test_data_set_without_the_split_a_function_needs(variables, tiny_data):
    no_val = dataclasses.replace(tiny_data, val=[])
    for call in (lambda: dl.evaluate(variables, no_val),
                 lambda: dl.compression_table(variables, no_val, [(0, 0)]),
                 lambda: dl.validation_pair(no_val)):
        with pytest.raises(ValueError, match="needs validation frames, but the data set has "
                                             "none"):
            call()
    with pytest.raises(ValueError, match="finetune needs training frames"):
        dl.finetune(variables, dataclasses.replace(tiny_data, train=[]), 1)


# ----------------------------------------------------------------------------- types


def test_masks_and_integer_dtypes_are_refused(variables):
    frames = _frames()
    _, masks = dl.prune(variables, 10.0)
    with pytest.raises(ValueError, match=r"257 of 257 leaves are bool .* masks of prune\(\)"):
        dl.predict_sceneflow(masks, frames)
    with pytest.raises(ValueError, match=r"masks of prune\(\)"):
        predict_module.predict(masks, frames)  # the lower-level entry point too
    ints = jax.tree.map(lambda x: np.asarray(x).astype(np.int8), variables)
    with pytest.raises(ValueError, match="int8 .* quantized codes"):
        dl.predict_sceneflow(ints, frames)
    with pytest.raises(ValueError, match="dtype must be a floating compute dtype .* int32"):
        dl.predict_sceneflow(variables, frames, dtype=np.int32)
    with pytest.raises(ValueError, match="dtype must be a floating compute dtype"):
        dl.time_model(variables, 64, 192, dtype="int8")


def test_pictures_of_nothing_are_refused_and_nan_pixels_are_black():
    nan = np.full((32, 48, 4), np.nan, np.float32)
    with pytest.raises(ValueError, match=r"flow \(u, v\) has no finite value"):
        dl.flow_image(nan)
    with pytest.raises(ValueError, match="disparity has no finite value"):
        dl.disparity_image(nan, frame=1)
    rng = np.random.default_rng(0)
    sf = rng.normal(0.0, 5.0, (32, 48, 4)).astype(np.float32)
    sf[..., 2:] = np.abs(sf[..., 2:]) + 1.0
    sf[0, 0] = sf[..., 0].max() + 1.0  # the largest values sit where the NaN will be
    holed = sf.copy()
    holed[0, 0] = np.nan
    ref = sf.copy()
    ref[0, 0] = 0.0  # the same picture without that pixel's values
    for draw in (dl.flow_image, dl.disparity_image):
        img = draw(holed)
        assert img[0, 0].tolist() == [0, 0, 0]  # a NaN pixel is black ...
        # ... and leaves the others as without it (the colour scale ignores it)
        np.testing.assert_array_equal(img[1:], draw(ref)[1:])


def test_save_png_refuses_channels_first_and_non_finite_images(tmp_path):
    with pytest.raises(ValueError, match=r"got shape \(3, 64, 64\); it looks channels-first "
                                         r".* np\.moveaxis\(image, 0, -1\)"):
        dl.save_png(tmp_path / "a.png", np.zeros((3, 64, 64)))
    with pytest.raises(ValueError, match="image has no finite value"):
        dl.save_png(tmp_path / "b.png", np.full((8, 8, 3), np.nan))
    with pytest.raises(ValueError, match="look like 0..255 values"):
        dl.save_png(tmp_path / "c.png", np.full((8, 8, 3), 200.0))
    with pytest.raises(ValueError, match="image is int64: pass uint8"):
        dl.save_png(tmp_path / "d.png", np.full((8, 8, 3), 200))
    assert not list(tmp_path.iterdir())
    image = np.full((8, 8, 3), 0.5)
    image[2, 3] = np.nan
    out = read_png(dl.save_png(tmp_path / "e.png", image))
    assert out.shape == (8, 8, 3) and out[2, 3].tolist() == [0, 0, 0] and out[0, 0, 0] == 128


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("bad, match", [("10", "got the string '10'"), (True, "got the bool"),
                                        (np.bool_(True), "got the bool")])
def test_prune_and_quantize_refuse_bool_and_str_alike(variables, tiny_data, bad, match):
    for call in (lambda: dl.prune({"w": np.ones(4)}, bad),
                 lambda: dl.quantize({"w": np.ones(4)}, bad),
                 lambda: dl.evaluate(variables, tiny_data, percent=bad),
                 lambda: dl.evaluate(variables, tiny_data, bits=bad)):
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(ValueError, match="got the bool False"):
        dl.finetune(variables, tiny_data, 1, bits=False)


def _another_model():
    return {"params": {"Dense_0": {"kernel": np.zeros((3, 4), np.float32),
                                   "bias": np.zeros(4, np.float32)}}}


def test_checkpoint_of_another_model_is_summarised(tmp_path):
    import orbax.checkpoint as ocp

    from deepliflow_jax.checkpoint import PARAMS_DIR

    with ocp.StandardCheckpointer() as c:
        c.save((tmp_path / "other" / PARAMS_DIR).absolute(), _another_model())
    with pytest.raises(ValueError) as info:
        dl.load_checkpoint(tmp_path / "other")
    text = str(info.value)
    assert "(259 problems): 2 unexpected, 257 missing; this looks like a checkpoint of " \
           "another model: none of its 2 tensors is a DeepLiDARFlow parameter" in text
    assert "unexpected: params/Dense_0/kernel [3, 4]" in text
    assert "... and 252 more missing" in text
    assert len(text.splitlines()) == 9 and len(text) < 1500  # not 259 lines


def test_train_states_nested_and_structured_trees_are_named(variables):
    from deepliflow_jax.checkpoint import check_variables
    from deepliflow_jax.compress.structured import structured_prune

    state = {"params": variables, "opt_state": {"mu": np.zeros(3)}, "step": np.zeros(())}
    with pytest.raises(ValueError, match=r"train state \(it holds opt_state, params, step\), "
                                         r"with .* under 'params/params/': pass "
                                         r"\{'params': variables\['params'\]\['params'\]\}"):
        check_variables(state)
    with pytest.raises(ValueError, match=r"under 'params/model/'"):
        check_variables({"params": {"model": variables["params"]}})
    small = structured_prune(variables, 0.25).variables
    flat = flax.traverse_util.flatten_dict(small, sep="/")
    no_mass = flax.traverse_util.unflatten_dict(
        {k: v for k, v in flat.items() if not k.endswith("conf_mass")}, sep="/")
    with pytest.raises(ValueError, match=r"structured \(channel-pruned\)"):
        check_variables(no_mass, widths=None)


# ----------------------------------------------------------------------------- CLI and docs


def test_infer_is_absl_flag_driven_beside_other_scripts(capsys):
    from absl import flags

    from experiments import infer, profile_model  # both define --checkpoint

    assert isinstance(infer.FLAGS, flags.FlagValues)
    assert {"checkpoint", "random_init", "image1", "dataset", "output_dir", "interp_size",
            "resize"} <= set(infer.FLAGS)
    assert "checkpoint" in profile_model.FLAGS
    with pytest.raises(SystemExit) as info:
        infer.main(["--help"])
    assert info.value.code == 0 and "--interp_size" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        infer.main(["--random_init", "--dataset=kitti", "--image1=a", "--image2=b",
                    "--disp1=c", "--disp2=d", "--output_dir=o", "--interp_size=60,190"])
    assert info.value.code == 2
    assert "multiples of 64" in capsys.readouterr().err


def test_docstrings_name_errors_and_history_keys():
    doc = dl.finetune.__doc__
    for needle in ("``data_loss``", "``reg``", "``grad_norm``", "pixels / 20",
                   "FileNotFoundError"):
        assert needle in doc, needle
    for fn in (dl.evaluate, dl.time_model, dl.compression_table, dl.load_dataset):
        assert "Raises:" in fn.__doc__, fn.__name__
