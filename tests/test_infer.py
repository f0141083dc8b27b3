"""``experiments.infer`` end to end on small PNGs it writes itself.

The frames are 120x200 and run with ``--dataset=kitti --interp_size=128,192``, the
same compiled network as the second PyTorch parity size, so the suite compiles
it once. The scene flow is checked against the PyTorch reference run on frames
preprocessed by hand with the original's formulas.
"""

import json

import numpy as np
import pytest

from deepliflow_jax.checkpoint import save_checkpoint
from deepliflow_jax.data.io import write_png
from deepliflow_jax.data.preprocess import DISP_MEAN_STD, RGB_MEAN
from experiments.infer import RANDOM_WARNING, load_inputs, main

SIZE = (120, 200)
INTERP = "128,192"


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """Two frames (one RGB, one RGBA) and two sparse 16-bit disparities."""
    folder = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(5)
    paths = {}
    for i, planes in ((1, 3), (2, 4)):
        image = rng.integers(0, 256, SIZE + (planes,), dtype=np.uint8)
        write_png(folder / f"im{i}.png", image)
        disp = (rng.uniform(1, 80, SIZE) * 256).astype(np.uint16)
        disp[rng.random(SIZE) > 0.05] = 0  # ~5% LiDAR points
        write_png(folder / f"disp{i}.png", disp)
        paths[f"image{i}"], paths[f"disp{i}"] = folder / f"im{i}.png", folder / f"disp{i}.png"
    return paths


def _args(pngs, out, *extra):
    return [f"--{k}={v}" for k, v in pngs.items()] + [f"--output_dir={out}", *extra]


def _by_hand(pngs, dataset="KITTI"):
    from deepliflow_jax.data.io import read_png

    frames = []
    for i in (1, 2):
        rgb = read_png(pngs[f"image{i}"])[..., :3] / 255.0 - np.asarray(RGB_MEAN[dataset])
        disp = read_png(pngs[f"disp{i}"]) / 256.0
        mean, std = DISP_MEAN_STD[dataset]
        frames.append(np.concatenate([rgb, ((disp - mean) / std * (disp > 0))[..., None]], -1))
    return np.stack(frames).astype(np.float32)


def test_preprocessing_matches_the_original_formulas(pngs):
    frames = load_inputs(*(pngs[k] for k in ("image1", "image2", "disp1", "disp2")), "kitti")
    assert frames.shape == (2,) + SIZE + (4,) and frames.dtype == np.float32
    np.testing.assert_allclose(frames, _by_hand(pngs), rtol=1e-5, atol=2e-6)
    assert 0.03 < np.mean(frames[..., 3] != 0) < 0.07  # every given point is used


def test_ft3d_is_center_cropped(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (516, 966, 3), dtype=np.uint8)
    disp = np.zeros((516, 966), np.uint16)
    disp[1, 3] = disp[300, 500] = 40 * 256  # row 1 falls outside the crop (offset 2, 3)
    write_png(tmp_path / "im.png", image)
    write_png(tmp_path / "d.png", disp)
    frames = load_inputs(tmp_path / "im.png", tmp_path / "im.png", tmp_path / "d.png",
                         tmp_path / "d.png", "ft3d")
    assert frames.shape == (2, 512, 960, 4)
    np.testing.assert_allclose(frames[0, 0, 0, :3],
                               image[2, 3] / 255.0 - np.asarray(RGB_MEAN["FT3D"]), atol=1e-6)
    assert np.count_nonzero(frames[0, ..., 3]) == 1 and frames[0, 298, 497, 3] != 0


def test_infer_with_checkpoint_matches_torch_reference(pngs, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from deepliflow_jax.model.build import init_params
    from weights_convert.convert import flax_to_torch_state_dict
    from weights_convert.torch_model import DeepLiDARFlow, frames_to_nchw

    variables = init_params(seed=3, bias_std=0.1)
    ckpt = save_checkpoint(tmp_path / "ckpt", variables, {"source": "test"})
    out = tmp_path / "out"
    assert main(_args(pngs, out, f"--checkpoint={ckpt}", "--dataset=kitti",
                      f"--interp_size={INTERP}")) == 0
    assert "RANDOM" not in capsys.readouterr().err
    sf = np.load(out / "sceneflow.npy")
    assert sf.shape == SIZE + (4,) and sf.dtype == np.float32
    for name in ("optical_flow", "disparity1", "disparity2"):
        from deepliflow_jax.data.io import read_png

        img = read_png(out / f"{name}.png")
        assert img.shape == SIZE + (3,) and img.dtype == np.uint8 and img.std() > 0, name
    info = json.loads((out / "run_info.json").read_text())
    assert info["random_init"] is False and info["checkpoint_source"] == "test"

    net = DeepLiDARFlow().eval()
    net.load_state_dict({k: torch.from_numpy(v)
                         for k, v in flax_to_torch_state_dict(variables).items()})
    with torch.no_grad():
        ref, _ = net(frames_to_nchw(_by_hand(pngs)[None]), interp_size=(128, 192))
    ref = ref[0].numpy().transpose(1, 2, 0)
    err = np.linalg.norm(sf - ref) / np.linalg.norm(ref)
    print(f"infer (Flax) vs PyTorch reference on hand-preprocessed frames: {err:.2e}")
    assert err < 1e-5


def test_random_init_says_so_loudly(pngs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(pngs, out, "--random_init", "--dataset=kitti",
                      f"--interp_size={INTERP}")) == 0
    err = capsys.readouterr().err
    assert err.count(RANDOM_WARNING) == 2  # before and after the run
    assert json.loads((out / "run_info.json").read_text())["random_init"] is True


def test_input_errors(pngs, tmp_path, capsys):
    out = tmp_path / "out"
    bad = dict(pngs, image1=tmp_path / "missing.png")
    assert main(_args(bad, out, "--random_init", "--dataset=kitti")) == 1
    assert "missing.png" in capsys.readouterr().err
    # a disparity given as the image, and an image as disparity
    assert main(_args(dict(pngs, image1=pngs["disp1"]), out, "--random_init",
                      "--dataset=kitti")) == 1
    assert "expected an 8-bit RGB or RGBA image" in capsys.readouterr().err
    assert main(_args(dict(pngs, disp2=pngs["image1"]), out, "--random_init",
                      "--dataset=kitti")) == 1
    assert "expected a single-channel 16-bit disparity PNG" in capsys.readouterr().err
    small = tmp_path / "small.png"
    write_png(small, np.zeros((60, 100), np.uint16))
    assert main(_args(dict(pngs, disp1=small), out, "--random_init", "--dataset=kitti")) == 1
    assert "must have one size" in capsys.readouterr().err
    # FT3D frames smaller than the 512x960 crop
    assert main(_args(pngs, out, "--random_init", "--dataset=ft3d")) == 1
    assert "larger than the image" in capsys.readouterr().err
    assert main(_args(pngs, out, f"--checkpoint={tmp_path / 'nockpt'}", "--dataset=kitti")) == 1
    assert "checkpoint directory not found" in capsys.readouterr().err
    assert not out.exists()
    for argv in (_args(pngs, out, "--dataset=kitti"),  # neither weights option
                 _args(pngs, out, "--random_init", "--checkpoint=x", "--dataset=kitti"),
                 _args(pngs, out, "--random_init", "--dataset=sintel"),
                 _args(pngs, out, "--random_init", "--dataset=kitti", "--interp_size=12")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
