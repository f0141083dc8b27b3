"""Colour coding, error maps and the Fig. 5-like figure."""

from pathlib import Path

import numpy as np
import pytest

from deepliflow_jax import vis
from deepliflow_jax.data.io import read_png

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "deeplidarflow_examples"


def test_color_wheel_segments():
    wheel = vis.make_color_wheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_array_equal(wheel[0], [255, 0, 0])  # red
    np.testing.assert_array_equal(wheel[15], [255, 255, 0])  # yellow
    np.testing.assert_array_equal(wheel[21], [0, 255, 0])  # green
    np.testing.assert_array_equal(wheel[25], [0, 255, 255])  # cyan
    np.testing.assert_array_equal(wheel[36], [0, 0, 255])  # blue
    np.testing.assert_array_equal(wheel[49], [255, 0, 255])  # magenta
    np.testing.assert_array_equal(wheel[54], [255, 0, 255 - np.floor(255 * 5 / 6)])


def test_flow_colors_hand_values():
    flow = np.zeros((1, 5, 2))
    flow[0, 1] = (-1.0, 0.0)  # angle 0: wheel entry 27 (cyan-blue), full radius
    flow[0, 2] = (-0.5, 0.0)  # half radius: halfway to white
    flow[0, 3] = (2.0, 0.0)  # beyond max_flow: darkened by 0.75
    flow[0, 4] = (1e8, 0.0)  # unknown
    img = vis.flow_to_color(flow, max_flow=1.0)
    np.testing.assert_array_equal(img[0, 0], [255, 255, 255])  # zero flow is white
    np.testing.assert_allclose(img[0, 1], [0, 209, 255], atol=1)
    np.testing.assert_allclose(img[0, 2], [127, 232, 255], atol=1)
    # arctan2(-0.0, -2) = -pi: wheel entry 0 (red), as in the original.
    np.testing.assert_allclose(img[0, 3], [191, 0, 0], atol=1)
    np.testing.assert_array_equal(img[0, 4], [0, 0, 0])
    masked = vis.flow_to_color(flow, 1.0, mask=np.array([[1, 0, 1, 1, 1]]))
    np.testing.assert_array_equal(masked[0, 1], [0, 0, 0])
    # Default scale: the largest flow has full radius.
    auto = vis.flow_to_color(flow[:, :2] * 7.0)
    np.testing.assert_allclose(auto[0, 1], [0, 209, 255], atol=1)


def test_jet_matches_the_colours_of_the_original_outputs():
    lut = {tuple(c) for c in np.uint8(vis.jet_lut() * 255)} | {(255, 0, 0), (0, 0, 0)}
    for name in ("out_1_disparity1.png", "out_2_disparity2.png"):
        image = read_png(EXAMPLES / name)[..., :3].reshape(-1, 3)
        colours = {tuple(c) for c in np.unique(image, axis=0)}
        assert len(colours) > 100  # a real gradient, not a handful of colours
        assert colours <= lut, name
    np.testing.assert_array_equal(vis.jet_lut()[[0, -1]], [[0, 0, 0.5], [0.5, 0, 0]])


def test_jet_against_matplotlib_when_installed():
    cm = pytest.importorskip("matplotlib.cm")
    values = np.linspace(-0.1, 1.0, 1000)
    np.testing.assert_allclose(vis.apply_jet(values), cm.jet(values)[:, :3], atol=1e-12)


def test_disparity_colors():
    disp = np.array([[0.0, 10.0, 20.0, 30.0]])
    img = vis.disparity_to_color(disp, max_disp=20.0, mask=np.array([[1, 1, 1, 0]]))
    np.testing.assert_array_equal(img[0, 0], [0, 0, 127])
    np.testing.assert_array_equal(img[0, 2], [127, 0, 0])
    np.testing.assert_array_equal(img[0, 3], [0, 0, 0])
    assert tuple(vis.disparity_to_color(disp, 20.0)[0, 3]) == (255, 0, 0)  # over the max


def test_error_and_outlier_maps():
    gt = np.zeros((3, 3, 4))
    gt[..., 2:] = 50.0
    gt[2, 2] = 0.0  # invalid
    pred = gt.copy()
    pred[0, 0, 2] += 0.1  # n_err = min(0.1 / 3, 20 * 0.1 / 50) = 0.033: first bin
    pred[0, 1, 3] += 30.0  # n_err = min(10, 12) = 10: bin [8, 16)
    pred[2, 2] = 99.0  # ignored
    img = vis.error_map(pred, gt, dilate=False)
    np.testing.assert_array_equal(img[0, 0], [49, 54, 149])
    np.testing.assert_array_equal(img[0, 1], [215, 48, 39])
    np.testing.assert_array_equal(img[2, 2], [0, 0, 0])
    dilated = vis.error_map(pred, gt)
    assert dilated[2, 2].any()  # filled from a coloured neighbour
    dark = vis.error_map(pred, gt, noc=np.zeros((3, 3)), dilate=False)
    np.testing.assert_array_equal(dark[0, 0], [24, 27, 74])
    maps = vis.outlier_map(pred, gt)
    np.testing.assert_array_equal(maps["d1"][0, 1], [255, 0, 255])
    np.testing.assert_array_equal(maps["d0"][0, 0], [0, 255, 0])
    np.testing.assert_array_equal(maps["fl"][2, 2], [0, 0, 0])


def test_fig5_png(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 6, 10
    image0, image1 = rng.uniform(size=(2, h, w, 3))
    gt = rng.uniform(1, 20, (h, w, 4))
    results = [("original", gt + 1.0), ("pruned 5%", gt - 1.0)]
    path = vis.save_fig5(tmp_path / "fig5.png", image0, image1, results, gt=gt, pad=2)
    out = read_png(path)
    assert out.shape == (4 * (h + 2) - 2, 3 * (w + 2) - 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:h, :w], np.uint8(image0 * 255 + 0.5))
    flow_tile = out[h + 2:2 * h + 2, :w]
    np.testing.assert_array_equal(flow_tile, vis.sceneflow_panels(
        gt, np.ones((h, w)), float(np.max(np.linalg.norm(gt[..., :2], axis=-1))),
        float(gt[..., 2:].max()))[0])
    with pytest.raises(ValueError, match="at least one"):
        vis.fig5_image(image0, image1, [])


def test_fig5_with_labels_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(1)
    gt = rng.uniform(1, 20, (8, 12, 4))
    path = vis.save_fig5_matplotlib(tmp_path / "fig5.png", *rng.uniform(size=(2, 8, 12, 3)),
                                    [("original", gt)], gt=gt)
    assert read_png(path).shape[0] > 0
