"""KITTI submission files and scoring a prediction as its submission would be scored.

The files are written with pypng (``data.io.write_png``) and read back here with Pillow
(16-bit grey exactly; 16-bit RGB Pillow reduces to its high bytes) and, for the flow's
full 16 bits, with a few lines of zlib below: never with the writer's library. The
interpolation is checked on hand-made rows and against the devkit's loops written out.
"""

import json

import numpy as np
import pytest
from PIL import Image

from deepliflow_jax import metrics
from deepliflow_jax.data import submission
from deepliflow_jax.data.submission import (
    decode_submission,
    devkit_estimate,
    interpolate_background,
    write_submission,
)
from tests.test_data_io import decode_png_independent

# ----------------------------------------------------------------------------- readers


def _pillow(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def _zlib_png(path) -> np.ndarray:
    """A 16-bit PNG's samples ``[H, W, C]`` decoded from the spec (no PNG library)."""
    pixels = decode_png_independent(path.read_bytes())
    assert pixels.dtype == np.uint16
    return pixels if pixels.ndim == 3 else pixels[..., None]


# ----------------------------------------------------------------------------- the files


def _frame():
    sf = np.zeros((2, 3, 4), np.float32)
    sf[..., 0] = [[1.5, -2.25, 0.0], [511.0, -600.0, np.nan]]  # u
    sf[..., 1] = [[0.0, 3.0, -0.015625], [7.0, 1.0, 2.0]]  # v
    sf[..., 2] = [[10.3, 0.0, -4.0], [1 / 1024, 1 / 256, np.nan]]  # d0
    sf[..., 3] = [[300.0, 47.001, 2.5], [1.0, np.inf, 0.5]]  # d1
    return sf


# hand-computed codes of _frame: round(d x 256) (0 = missing), round(u x 64) + 32768
DISP0 = [[2637, 0, 0], [0, 1, 0]]  # 10.3 * 256 = 2636.8; 1/1024 rounds to 0: missing
DISP1 = [[65535, 12032, 640], [256, 0, 128]]  # 300 px clips; 47.001 * 256 = 12032.26
FLOW = [[(32864, 32768, 1), (32624, 32960, 1), (32768, 32767, 1)],
        [(65472, 33216, 1), (0, 32832, 1), (0, 0, 0)]]  # -600 clips to 0; NaN is missing


def test_written_files_hold_kittis_encoding_read_by_other_decoders(tmp_path):
    path = write_submission(tmp_path / "sub", [("000007", _frame())], info={"note": "t"})
    assert sorted(p.name for p in path.iterdir()) == ["deepliflow_submission.json", "disp_0",
                                                       "disp_1", "flow"]
    for key, expected in (("disp_0", DISP0), ("disp_1", DISP1)):
        got = _pillow(path / key / "000007_10.png")
        assert got.dtype == np.uint16, key
        np.testing.assert_array_equal(got, expected, err_msg=key)
        np.testing.assert_array_equal(_zlib_png(path / key / "000007_10.png")[..., 0],
                                      expected)
    flow_file = path / "flow" / "000007_10.png"
    np.testing.assert_array_equal(_zlib_png(flow_file), FLOW)
    # Pillow decodes 16-bit RGB to its high bytes: the same channels in the same order
    np.testing.assert_array_equal(_pillow(flow_file), np.asarray(FLOW) >> 8)
    # what the devkit reads from them
    sf, present = decode_submission({"disp_0": np.asarray(DISP0), "disp_1": np.asarray(DISP1),
                                     "flow": np.asarray(FLOW)})
    np.testing.assert_array_equal(present[..., 0], [[1, 0, 0], [0, 1, 0]])
    assert sf[0, 0, 2] == np.float32(2637 / 256) and sf[0, 1, 2] == -1.0  # -1: missing
    np.testing.assert_array_equal(sf[1, 2, :2], [0.0, 0.0])  # missing flow reads (0, 0)
    assert tuple(sf[0, 1, :2]) == (-2.25, 3.0)


def test_write_refuses_a_non_empty_folder_unless_asked(tmp_path):
    def never():
        raise AssertionError("the folder must be checked before any frame is drawn")
        yield

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="foreign"):
            write_submission(foreign, never(), overwrite=overwrite)
    assert (foreign / "notes.txt").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    write_submission(empty, [("000000", _frame())])  # an empty folder is filled
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        write_submission(empty, never())
    frame = _frame()
    frame[0, 0, 2] = 20.0
    write_submission(empty, [("000001", frame)], overwrite=True)
    assert sorted(p.name for p in (empty / "disp_0").iterdir()) == ["000001_10.png"]
    assert _pillow(empty / "disp_0" / "000001_10.png")[0, 0] == 20 * 256
    with pytest.raises(ValueError, match="no frames"):
        write_submission(tmp_path / "none", [])
    with pytest.raises(ValueError, match=r"\[H, W, 4\]"):
        write_submission(tmp_path / "bad", [("000000", np.zeros((2, 3)))])
    assert not (tmp_path / "none").exists() and not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- interpolation

M = -1.0  # a missing disparity as the devkit holds it


def test_interpolation_on_hand_made_rows():
    rows = np.array([[M, M, M, M, M, M, M],  # above the first valid row: copies it
                     [M, 5, M, M, 3, M, M],  # lead 5, gap min(5, 3) = 3, trail 3
                     [M, M, M, M, M, M, M],  # between valid rows: stays missing (devkit)
                     [2, M, 7, M, M, M, 1],  # gaps min(2, 7) = 2 and min(7, 1) = 1
                     [M, M, M, M, M, M, M]], np.float32)  # below the last: copies it
    values, valid = interpolate_background(rows, rows >= 0)
    row1 = [5, 5, 3, 3, 3, 3, 3]
    row3 = [2, 2, 7, 1, 1, 1, 1]
    np.testing.assert_array_equal(values, [row1, row1, [M] * 7, row3, row3])
    np.testing.assert_array_equal(valid.all(axis=1), [1, 1, 0, 1, 1])
    # the flow: each component takes its own minimum (io_flow.h)
    flow = np.array([[(1, 9), (0, 0), (4, 2)]], np.float32)
    got, valid = interpolate_background(flow, np.array([[True, False, True]]))
    np.testing.assert_array_equal(got[0, 1], (1, 2))
    assert valid.all()
    # nothing valid: nothing changes
    got, valid = interpolate_background(np.full((2, 3), M, np.float32), np.zeros((2, 3), bool))
    assert (got == M).all() and not valid.any()


def _devkit_loops(values, valid):
    """interpolateBackground of io_disp.h / io_flow.h, loop for loop."""
    v = np.array(values, np.float32).copy()
    ok = np.array(valid, bool).copy()
    height, width = ok.shape
    for r in range(height):
        count = 0
        for u in range(width):
            if ok[r, u]:
                if count >= 1:
                    u1, u2 = u - count, u - 1
                    if u1 > 0 and u2 < width - 1:
                        fill = np.minimum(v[r, u1 - 1], v[r, u2 + 1])
                        for c in range(u1, u2 + 1):
                            v[r, c], ok[r, c] = fill, True
                count = 0
            else:
                count += 1
        for u in range(width):
            if ok[r, u]:
                for c in range(u):
                    v[r, c], ok[r, c] = v[r, u], True
                break
        for u in range(width - 1, -1, -1):
            if ok[r, u]:
                for c in range(u + 1, width):
                    v[r, c], ok[r, c] = v[r, u], True
                break
    for u in range(width):
        for r in range(height):
            if ok[r, u]:
                for r2 in range(r):
                    v[r2, u], ok[r2, u] = v[r, u], True
                break
        for r in range(height - 1, -1, -1):
            if ok[r, u]:
                for r2 in range(r + 1, height):
                    v[r2, u], ok[r2, u] = v[r, u], True
                break
    return v, ok


@pytest.mark.parametrize("channels", [None, 2])
def test_interpolation_equals_the_devkits_loops(channels):
    rng = np.random.default_rng(channels or 1)
    for density in (0.02, 0.2, 0.7):
        shape = (9, 13) + (() if channels is None else (channels,))
        values = rng.uniform(0, 50, shape).astype(np.float32)
        valid = rng.random((9, 13)) < density
        valid[rng.integers(0, 9)] = False  # a whole missing row
        got = interpolate_background(values, valid)
        ref = _devkit_loops(values, valid)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


# ----------------------------------------------------------------------------- scoring


def test_as_submission_scores_what_the_written_files_hold(tmp_path):
    gt = np.zeros((3, 4, 4), np.float32)
    gt[..., :2] = (42.0, 56.0)  # |flow| 70
    gt[..., 2:] = 70.0
    valid = np.ones((3, 4, 3), bool)
    pred = gt.copy()
    pred[0, 0, 2] = 73.499  # rounds to 73.5 in the PNG: an exact 5 % tie, a devkit outlier
    pred[0, 1, 3] = 0.0  # missing: the devkit fills it from its neighbours (70)
    pred[1, :, 3] = -5.0  # a d1 row missing between valid rows: stays -1 (devkit): 4 outliers
    pred[2, 2, 1] = np.nan  # flow missing: filled
    pred[2, 3, 1] = 59.499  # v 59.5 after rounding to 1/64: |e| 3.5 = 5 % of 70: Fl outlier
    plain = metrics.evaluate_np([(pred, gt, valid)], validity="devkit")
    # unsubmitted: 73.499 is 4.998 %, only the NaN pixel is an outlier
    assert plain["d0"] == pytest.approx(100 / 12) and plain["nonfinite"] == 1
    sub = metrics.evaluate_np([(pred, gt, valid)], validity="devkit", as_submission=True)
    n = 12
    assert (sub["d0"], sub["d1"], sub["fl"]) == pytest.approx((100 / n, 400 / n, 100 / n))
    assert sub["sf"] == pytest.approx(600 / n) and sub["nonfinite"] == 0
    # the same numbers from the files, read back by another decoder
    path = write_submission(tmp_path / "sub", [("000000", pred)])
    codes = {"disp_0": _pillow(path / "disp_0" / "000000_10.png"),
             "disp_1": _pillow(path / "disp_1" / "000000_10.png"),
             "flow": _zlib_png(path / "flow" / "000000_10.png")}
    decoded, present = decode_submission(codes)
    est = np.concatenate([
        interpolate_background(decoded[..., :2], present[..., 2])[0],
        interpolate_background(decoded[..., 2], present[..., 0])[0][..., None],
        interpolate_background(decoded[..., 3], present[..., 1])[0][..., None]], axis=-1)
    np.testing.assert_array_equal(est, devkit_estimate(pred))
    assert metrics.evaluate_np([(est, gt, valid)], validity="devkit") == sub
    np.testing.assert_array_equal(metrics.as_submitted(pred[None])[0], est)
    m = metrics.batch_metrics_np(pred, gt, valid=valid, validity="devkit", as_submission=True)
    assert {k: m[k] for k in metrics.METRIC_NAMES} == \
        pytest.approx({k: sub[k] for k in metrics.METRIC_NAMES})
    with pytest.raises(ValueError, match="as_submission=True .* needs validity='devkit'"):
        metrics.evaluate_np([(pred, gt)], as_submission=True)
    assert submission.frame_file("000000") == "000000_10.png"
    with pytest.raises(ValueError, match="file-name stem"):
        submission.frame_file("../x")


# ----------------------------------------------------------------------------- API and CLI


@pytest.mark.slow
def test_api_and_infer_write_what_evaluate_as_submission_scores(small_variables, tiny_world,
                                                                tmp_path, capsys):
    import deepliflow_jax as dl
    from deepliflow_jax.checkpoint import save_checkpoint
    from experiments import infer

    dev = dl.load_dataset(tiny_world, validity="devkit")
    path = dl.write_submission(small_variables, tiny_world, tmp_path / "api")
    names = [s.name for s in dev.val]
    for key in submission.SUBMISSION_DIRS:
        assert sorted(p.name for p in (path / key).iterdir()) == [f"{n}_10.png" for n in names]
    # the devkit's score of the files: read back, decode, interpolate
    ests = []
    for name in names:
        codes = {"disp_0": _pillow(path / "disp_0" / f"{name}_10.png"),
                 "disp_1": _pillow(path / "disp_1" / f"{name}_10.png"),
                 "flow": _zlib_png(path / "flow" / f"{name}_10.png")}
        decoded, present = decode_submission(codes)
        ests.append(np.concatenate([
            interpolate_background(decoded[..., :2], present[..., 2])[0],
            interpolate_background(decoded[..., 2], present[..., 0])[0][..., None],
            interpolate_background(decoded[..., 3], present[..., 1])[0][..., None]], -1))
    (batch,) = dev.val_batches(dev.num_samples)  # one 64x192 group, in dev.val's order
    ref = metrics.evaluate_np(list(zip(ests, batch["gt"], batch["valid"], strict=True)),
                              validity="devkit")
    got = dl.evaluate(small_variables, dev, as_submission=True)
    assert got == pytest.approx(ref)
    with pytest.raises(ValueError, match="needs validity='devkit'"):
        dl.evaluate(small_variables, tiny_world, as_submission=True)

    # the command line writes the same files, and refuses to overwrite unless asked
    ckpt = save_checkpoint(tmp_path / "ckpt", small_variables, {"source": "test"})
    args = [f"--checkpoint={ckpt}", f"--data_root={tiny_world}",
            f"--submission_dir={tmp_path / 'cli'}"]
    assert infer.main(args) == 0
    assert "wrote a KITTI submission" in capsys.readouterr().out
    for key in submission.SUBMISSION_DIRS:
        for name in names:
            file = f"{key}/{name}_10.png"
            assert (tmp_path / "cli" / file).read_bytes() == (path / file).read_bytes(), file
    assert infer.main(args) == 1
    assert "pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert infer.main([*args, "--overwrite"]) == 0
    with pytest.raises(SystemExit) as info:
        infer.main([*args, "--image1=a.png"])
    assert info.value.code == 2 and "do not go with --image1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        infer.main([f"--checkpoint={ckpt}", f"--submission_dir={tmp_path / 'x'}"])
    assert info.value.code == 2 and "missing --data_root" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the test split

# frames of two sizes, neither a multiple of 64: the network runs them at 64x192 and
# resizes its output back to each frame's size (the evaluation's path)
TEST_SIZES = {"000000": (56, 180), "000001": (64, 192), "000002": (60, 170)}


# the inputs of a test frame, as README's "KITTI submissions" lists them
TEST_LAYOUT = {"image0": "testing/image_2/{}_10.png", "image1": "testing/image_2/{}_11.png",
               "disp0": "testing/disp_occ_0/{}_10.png",
               "disp1_second_view": "testing/disp_occ_1_transformedOnSecFrame/{}_10.png"}


def _testing_folder(world, root):
    """A ``root/testing/`` of inputs only (no ground-truth file), cut from the synthetic
    world's frames and written with the package's PNG writer; returns the arrays written."""
    from deepliflow_jax.data import kitti
    from deepliflow_jax.data.io import read_png, write_png

    written = {}
    for name, (h, w) in TEST_SIZES.items():
        src = kitti.frame_paths(world, name)
        written[name] = {}
        for key, file in TEST_LAYOUT.items():
            array = read_png(src[key])[:h, :w]
            write_png(root / file.format(name), array)
            written[name][key] = array
    return written


def _expected_prediction(variables, arrays, index):
    """The scene flow of a test frame from the arrays written, by the evaluation's
    primitives (LiDAR draw per (seed 0, frame index), preprocessing) and the predictor."""
    import deepliflow_jax as dl
    from deepliflow_jax.data import lidar, preprocess

    images = [arrays[k].astype(np.float32) / np.float32(255.0) for k in ("image0", "image1")]
    disps = [arrays[k].astype(np.float32) / np.float32(256.0)
             for k in ("disp0", "disp1_second_view")]
    rng = lidar.frame_rng(0, index, 0)
    masks = [lidar.sample_lidar_mask(d > 0, 4096, rng) for d in disps]  # t, then t+1
    frames = preprocess.make_frames(*images, *disps, *masks, "KITTI")
    return np.asarray(dl.predict_sceneflow(variables, frames, interp_size=(64, 192)))


def _read_codes(path, name):
    return {"disp_0": _pillow(path / "disp_0" / f"{name}_10.png"),
            "disp_1": _pillow(path / "disp_1" / f"{name}_10.png"),
            "flow": _zlib_png(path / "flow" / f"{name}_10.png")}


@pytest.mark.slow
def test_testing_frames_without_ground_truth_api_and_cli(small_variables, tiny_world, tiny_data,
                                                         tmp_path, capsys):
    import dataclasses
    import shutil

    import deepliflow_jax as dl
    from deepliflow_jax.checkpoint import save_checkpoint
    from deepliflow_jax.data import kitti
    from deepliflow_jax.data.submission import encode_submission
    from experiments import infer

    root = tmp_path / "kitti"
    arrays = _testing_folder(tiny_world, root)
    assert sorted(p.name for p in root.iterdir()) == ["testing"]  # no training/, no ground truth
    assert sorted(p.name for p in (root / "testing").iterdir()) == sorted(
        [kitti.IMAGE_DIR, kitti.DISP0_DIR, kitti.DISP1_SECOND_VIEW_DIR])

    path = dl.write_submission(small_variables, root, tmp_path / "api", interp_size=(64, 192))
    info = json.loads((path / submission.MARKER).read_text())
    assert (info["split"], info["frames"], info["num_samples"], info["interp_size"]) == (
        "testing", list(TEST_SIZES), 4096, [64, 192])
    for key in submission.SUBMISSION_DIRS:
        assert sorted(p.name for p in (path / key).iterdir()) == [
            f"{n}_10.png" for n in TEST_SIZES]
    for index, (name, size) in enumerate(TEST_SIZES.items()):
        codes = _read_codes(path, name)
        assert codes["disp_0"].shape == size and codes["flow"].shape == (*size, 3)
        expected = encode_submission(_expected_prediction(small_variables, arrays[name], index))
        for key in submission.SUBMISSION_DIRS:
            # the files hold the prediction's codes (equal here); two compiled forwards of
            # one network may differ in the last float bit, i.e. by one code at a rounding
            # tie, so a few such codes are let through (another LiDAR draw changes ~4 %)
            diff = np.abs(codes[key].astype(np.int64) - expected[key].astype(np.int64))
            assert diff.max() <= 1 and np.mean(diff == 0) > 0.999, (name, key)
    # the network size is checked before anything runs: a Dataset lends its own (None
    # here: the 64x192 world), which these frames do not fit
    with pytest.raises(ValueError, match=r"testing is 56x180.*interp_size=\(64, 192\) to "
                                         "write_submission"):
        dl.write_submission(small_variables, dataclasses.replace(tiny_data, root=str(root)),
                            tmp_path / "never")
    with pytest.raises(FileNotFoundError, match="training"):  # no validation frames there
        dl.write_submission(small_variables, root, tmp_path / "never", split="validation")
    with pytest.raises(ValueError, match="split must be one of"):
        dl.write_submission(small_variables, root, tmp_path / "never", split="test")
    assert not (tmp_path / "never").exists()

    # the command line writes the same files
    ckpt = save_checkpoint(tmp_path / "ckpt", small_variables, {"source": "test"})
    args = [f"--checkpoint={ckpt}", f"--data_root={root}", "--interp_size=64,192"]
    assert infer.main([*args, f"--submission_dir={tmp_path / 'cli'}"]) == 0
    assert "wrote a KITTI submission of 3 testing frames" in capsys.readouterr().out
    for key in submission.SUBMISSION_DIRS:
        for name in TEST_SIZES:
            file = f"{key}/{name}_10.png"
            assert (tmp_path / "cli" / file).read_bytes() == (path / file).read_bytes(), file
    assert infer.main([*args, f"--submission_dir={tmp_path / 'cli2'}", "--split=testing"]) == 0
    assert (tmp_path / "cli2" / "flow" / "000002_10.png").read_bytes() == \
        (path / "flow" / "000002_10.png").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        infer.main([f"--checkpoint={ckpt}", "--split=testing"])
    assert exit_info.value.code == 2 and "--split goes with --data_root" in \
        capsys.readouterr().err

    # a missing LiDAR file is refused, named, before anything is written
    lidar_file = root / TEST_LAYOUT["disp1_second_view"].format("000001")
    shutil.move(lidar_file, tmp_path / "moved.png")
    with pytest.raises(FileNotFoundError, match=r"disp_occ_1_transformedOnSecFrame/000001_10"
                                                r"\.png \(LiDAR disparity at t\+1"):
        dl.write_submission(small_variables, root, tmp_path / "missing", interp_size=(64, 192))
    assert infer.main([*args, f"--submission_dir={tmp_path / 'missing'}"]) == 1
    assert "transformedOnSecFrame/000001_10.png" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()
