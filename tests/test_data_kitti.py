"""KITTI Scene Flow reader on files in the real formats (independently encoded / shared)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from deepliflow_jax.data import io, kitti
from tests.test_data_io import decode_png_independent, encode_png_independent

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLES = SHARED_DATA / "deeplidarflow_examples"
H, W = 5, 7
TRAIN_FRAME, TEST_FRAME = "000031", "000032"  # line 32 of the original split is a test frame


def _write(path: Path, array, filters=(0, 1, 2, 3, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png_independent(array, filters))


def _raw_frame(seed: int):
    rng = np.random.default_rng(seed)
    d0 = rng.integers(256, 100 * 256, (H, W)).astype(np.uint16)
    d0[0, :3] = 0  # invalid disparity at t
    d1 = rng.integers(256, 100 * 256, (H, W)).astype(np.uint16)
    d1[1, 1] = 0  # invalid d1 where d0 is valid: kept as 0 by the original
    flow = np.zeros((H, W, 3), np.uint16)
    flow[..., :2] = rng.integers(0, 65536, (H, W, 2))
    flow[..., 2] = 1
    flow[2, 2] = 0  # KITTI writes invalid flow as (0, 0, 0)
    flow[0, 0, :2] = (2**15 + 64, 2**15 - 96)  # u = 1.0, v = -1.5 where d0 is invalid
    d1_second = rng.integers(0, 60 * 256, (H, W)).astype(np.uint16)
    d1_second[rng.uniform(size=(H, W)) < 0.3] = 0
    images = [rng.integers(0, 256, (H, W, 3)).astype(np.uint8) for _ in range(2)]
    return {"image0": images[0], "image1": images[1], "disp0": d0, "disp1": d1,
            "flow": flow, "disp1_second_view": d1_second}


@pytest.fixture()
def kitti_root(tmp_path):
    raws = {}
    for i, name in enumerate((TRAIN_FRAME, TEST_FRAME)):
        raws[name] = _raw_frame(i)
        for key, path in kitti.frame_paths(tmp_path, name).items():
            _write(path, raws[name][key])
    return tmp_path, raws


def test_ground_truth_decoding_and_validity_rule(kitti_root):
    root, raws = kitti_root
    raw = raws[TEST_FRAME]
    sample = kitti.load_frame(root, TEST_FRAME)
    d0 = raw["disp0"] / 256.0
    valid = d0 > 0
    expected = np.stack([(raw["flow"][..., 0] - 32768.0) / 64.0,
                         (raw["flow"][..., 1] - 32768.0) / 64.0, d0, raw["disp1"] / 256.0], -1)
    expected[~valid] = 0.0
    np.testing.assert_array_equal(sample.gt, expected.astype(np.float32))
    assert sample.gt.dtype == np.float32 and sample.gt.shape == (H, W, 4)
    # The flow at (0, 0) is valid and (1, -1.5) but d0 is invalid there: all zero.
    np.testing.assert_array_equal(sample.gt[0, 0], 0.0)
    # d1 invalid (0) with d0 valid: kept (the original masks with d0 only).
    assert sample.gt[1, 1, 2] > 0 and sample.gt[1, 1, 3] == 0
    # Invalid flow inside the d0 mask decodes to -512 (the original never reads valid).
    np.testing.assert_array_equal(sample.gt[2, 2, :2], -512.0)
    assert not sample.flow_valid[2, 2] and sample.flow_valid.sum() == H * W - 1
    np.testing.assert_array_equal(sample.valid0, valid)
    np.testing.assert_array_equal(sample.disp0, (raw["disp0"] / 256.0).astype(np.float32))
    np.testing.assert_array_equal(sample.disp1, (raw["disp1_second_view"] / 256.0)
                                  .astype(np.float32))
    np.testing.assert_array_equal(sample.valid1, raw["disp1_second_view"] > 0)
    np.testing.assert_allclose(sample.image1, raw["image1"] / 255.0, rtol=1e-6)


def test_split_and_listing(kitti_root):
    root, _ = kitti_root
    assert kitti.list_frames(root, "train") == [TRAIN_FRAME]
    assert kitti.list_frames(root, "test") == [TEST_FRAME]
    ds = kitti.KittiSceneFlow(root, "all")
    assert len(ds) == 2 and ds[1].name == TEST_FRAME
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(ValueError, match="split"):
        kitti.list_frames(root, "val")


def test_packaged_split_is_the_original(tmp_path):
    flags = kitti.read_split_file()
    assert len(flags) == 200 and sum(flags) == 20
    shared = kitti.read_split_file(SHARED_DATA / "kitti_sceneflow_test_split.txt")
    assert flags == shared
    assert flags[32] and not flags[31]


def test_frames_beyond_the_split_file_are_rejected(kitti_root):
    root, raws = kitti_root
    for key, path in kitti.frame_paths(root, "000250").items():
        _write(path, raws[TEST_FRAME][key], filters=(0,))
    with pytest.raises(ValueError, match="000250"):
        kitti.list_frames(root, "train")
    split = root / "split.txt"
    split.write_text("\n" * 250 + "x\n")
    assert kitti.list_frames(root, "test", split) == ["000250"]


def test_missing_folder_file_and_bad_files_name_the_path(kitti_root):
    root, raws = kitti_root
    paths = kitti.frame_paths(root, TEST_FRAME)
    paths["image1"].unlink()
    with pytest.raises(FileNotFoundError, match="000032_11.png"):
        kitti.load_frame(root, TEST_FRAME)
    _write(paths["image1"], np.zeros((H, W + 1, 3), np.uint8))
    with pytest.raises(ValueError, match="000032_11.png"):
        kitti.load_frame(root, TEST_FRAME)
    _write(paths["image1"], raws[TEST_FRAME]["image1"])
    paths["flow"].write_bytes(b"garbage")
    with pytest.raises(ValueError, match="flow_occ"):
        kitti.load_frame(root, TEST_FRAME)
    _write(paths["flow"], raws[TEST_FRAME]["flow"].astype(np.uint8))  # an 8-bit flow map
    with pytest.raises(ValueError, match="16-bit"):
        kitti.load_frame(root, TEST_FRAME)
    shutil.rmtree(root / "training" / kitti.DISP1_SECOND_VIEW_DIR)
    with pytest.raises(FileNotFoundError, match="transformedOnSecFrame"):
        kitti.KittiSceneFlow(root, "all")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        kitti.KittiSceneFlow(root / "nowhere")


def test_reader_on_the_shared_real_pngs(tmp_path):
    paths = kitti.frame_paths(tmp_path, TEST_FRAME)
    for key, src in (("image0", "ex_1_im_10.png"), ("image1", "ex_1_im_11.png"),
                     ("disp0", "ex_1_disp_10.png"), ("disp1", "ex_1_disp_11.png"),
                     ("disp1_second_view", "ex_1_disp_11.png")):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / src, paths[key])
    flow = np.zeros((375, 1242, 3), np.uint16)
    flow[..., 0] = 2**15 + 64 * 3  # u = 3
    flow[..., 1] = 2**15 - 32  # v = -0.5
    flow[..., 2] = 1
    _write(paths["flow"], flow, filters=(0,))
    sample = kitti.KittiSceneFlow(tmp_path, "test")[0]
    disp = io.read_png(EXAMPLES / "ex_1_disp_10.png") / 256.0
    valid = disp > 0
    assert sample.image0.shape == (375, 1242, 3)
    assert 4000 < valid.sum() < 6000
    np.testing.assert_array_equal(sample.valid0, valid)
    np.testing.assert_array_equal(sample.gt[..., 2], disp.astype(np.float32))
    np.testing.assert_array_equal(sample.gt[valid][:, :2], np.tile([3.0, -0.5], (valid.sum(), 1)))
    np.testing.assert_array_equal(sample.gt[~valid], 0.0)


def test_writers_encode_kitti_values(tmp_path):
    flow = np.array([[[1.0, -1.5], [700.0, 0.0]]], np.float32)
    valid = np.array([[True, False]])
    kitti.write_flow(tmp_path / "f.png", flow, valid)
    raw = decode_png_independent((tmp_path / "f.png").read_bytes())
    np.testing.assert_array_equal(raw[0, 0], [2**15 + 64, 2**15 - 96, 1])
    np.testing.assert_array_equal(raw[0, 1], [0, 0, 0])
    kitti.write_disparity(tmp_path / "d.png", np.array([[1.5, 0.0, 1e-4, np.nan]]))
    raw = decode_png_independent((tmp_path / "d.png").read_bytes())
    np.testing.assert_array_equal(raw, [[384, 0, 1, 0]])
    back, ok = kitti.read_flow(tmp_path / "f.png")
    np.testing.assert_array_equal(back[0, 0], [1.0, -1.5])
    np.testing.assert_array_equal(ok, valid)
