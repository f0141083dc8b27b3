"""FlyingThings3D reader on PFM files written by hand and the shared example PNGs."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from deepliflow_jax.data import ft3d
from tests.test_data_io import _pfm_big_endian, encode_png_independent

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "deeplidarflow_examples"
H, W = 4, 6


def _scene(root: Path, split: str, scene: str, seed: int, frames=range(6, 16)):
    rng = np.random.default_rng(seed)
    data = {}
    for i in frames:
        name = f"{i:04d}"
        img = root / "frames_finalpass" / split / scene / "left" / f"{name}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        rgba = rng.integers(0, 256, (H, W, 4)).astype(np.uint8)
        img.write_bytes(encode_png_independent(rgba, filters=(0,)))
        maps = {"disp": rng.uniform(1, 80, (H, W)).astype(np.float32),
                "change": rng.normal(0, 2, (H, W)).astype(np.float32),
                "flow": rng.normal(0, 10, (H, W, 3)).astype(np.float32)}
        targets = {
            "disp": root / "disparity" / split / scene / "left" / f"{name}.pfm",
            "change": root / "disparity_change" / split / scene / "into_future" / "left"
            / f"{name}.pfm",
            "flow": root / "optical_flow" / split / scene / "into_future" / "left"
            / f"OpticalFlowIntoFuture_{name}_L.pfm"}
        for key, path in targets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_pfm_big_endian(maps[key]))
        data[name] = {"rgba": rgba, **maps}
    return data


def test_sample_matches_the_original_composition(tmp_path):
    data = {letter: _scene(tmp_path, "TEST", f"{letter}/0000", i)
            for i, letter in enumerate("ABC")}
    ds = ft3d.FlyingThings3D(tmp_path, "TEST")
    assert len(ds) == 3 * 9  # frames 6..14 of each scene
    assert ds.frames[0] == ("A/0000", "0006") and ds.frames[-1] == ("C/0000", "0014")
    sample = ds[1]  # A/0000 frame 7 -> 8
    a, b = data["A"]["0007"], data["A"]["0008"]
    np.testing.assert_allclose(sample.image0, a["rgba"][..., :3] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(sample.image1, b["rgba"][..., :3] / 255.0, rtol=1e-6)
    expected = np.stack([a["flow"][..., 0], a["flow"][..., 1], a["disp"],
                         a["disp"] + a["change"]], -1)
    np.testing.assert_array_equal(sample.gt, expected)
    np.testing.assert_array_equal(sample.disp1, b["disp"])
    assert sample.valid0.all() and sample.valid1.all() and sample.name == "A/0000/0007"


def test_train_val_selection_drops_the_excluded_scenes():
    scenes = [f"{i:04d}" for i in range(746)]
    train = ft3d.select_scenes(scenes, "A", "TRAIN")
    val = ft3d.select_scenes(scenes, "A", "VAL")
    assert len(train) + len(val) == 746 - 20 and len(val) == 50
    assert "0012" not in train + val and "0060" not in train + val and "0013" in train
    assert val[-1] == "0745" and not set(train) & set(val)
    assert len(ft3d.select_scenes(scenes, "B", "TRAIN")) == 746 - 9 - 50
    assert len(ft3d.select_scenes(scenes, "C", "TRAIN")) == 746 - 8 - 50
    assert ft3d.select_scenes(scenes[:5], "C", "TEST") == scenes[:5]


def test_real_example_png_and_errors(tmp_path):
    _scene(tmp_path, "TEST", "A/0001", 0, frames=range(6, 8))
    for letter in "BC":
        (tmp_path / "disparity_change" / "TEST" / letter).mkdir(parents=True)
    real = tmp_path / "frames_finalpass" / "TEST" / "A" / "0001" / "left"
    for name, src in (("0006.png", "ex_2_im_10.png"), ("0007.png", "ex_2_im_11.png")):
        shutil.copy(EXAMPLES / src, real / name)
    with pytest.raises(ValueError, match="differs"):  # 540x960 images vs 4x6 maps
        ft3d.load_frame(tmp_path, "TEST", "A/0001", "0006")
    image = ft3d._image(real / "0006.png")
    assert image.shape == (540, 960, 3) and 0.0 <= image.min() and image.max() <= 1.0
    with pytest.raises(FileNotFoundError, match="0008.png"):
        ft3d.load_frame(tmp_path, "TEST", "A/0001", "0007")
    with pytest.raises(FileNotFoundError, match="disparity_change"):
        ft3d.FlyingThings3D(tmp_path, "TRAIN")
    with pytest.raises(ValueError, match="mode"):
        ft3d.FlyingThings3D(tmp_path, "train")
