"""The synthetic world: determinism, exact geometry of its ground truth, KITTI layout."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deepliflow_jax.data import kitti, synthetic

REPO = Path(__file__).resolve().parents[1]


def _bilinear(image, x, y):
    h, w = image.shape[:2]
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def test_deterministic_by_seed():
    a = synthetic.make_frame(5, 2, 48, 160)
    b = synthetic.make_frame(5, 2, 48, 160)
    c = synthetic.make_frame(6, 2, 48, 160)
    np.testing.assert_array_equal(a.image0, b.image0)
    np.testing.assert_array_equal(a.flow, b.flow)
    assert not np.array_equal(a.image0, c.image0)


def test_static_forward_motion_follows_from_depth():
    camera = synthetic.kitti_camera(64, 212)
    scene = synthetic.sample_scene(synthetic.scene_rng(0, 1))
    scene.centers1, scene.yaw1 = scene.centers0.copy(), scene.yaw0.copy()
    scene.ego_rot, scene.ego_t = np.eye(3), np.array([0.0, 0.0, 1.2])
    r0 = synthetic.render_geometry(scene, camera, 0)
    r1 = synthetic.render_geometry(scene, camera, 1)
    gt = synthetic.scene_flow_ground_truth(scene, camera, r0, r1)
    valid = gt["valid"]
    assert valid.mean() > 0.3
    z0 = camera.fb / gt["d0"][valid]
    # Pure translation along z: the same point is 1.2 m closer at t+1.
    np.testing.assert_allclose(camera.fb / gt["d1"][valid], z0 - 1.2, rtol=1e-4, atol=1e-3)
    ys, xs = np.nonzero(valid)
    x1 = camera.cx + (xs - camera.cx) * z0 / (z0 - 1.2)
    y1 = camera.cy + (ys - camera.cy) * z0 / (z0 - 1.2)
    np.testing.assert_allclose(gt["flow"][valid][:, 0], x1 - xs, atol=2e-3)
    np.testing.assert_allclose(gt["flow"][valid][:, 1], y1 - ys, atol=2e-3)


def _back_project(camera, x, y, disparity):
    z = camera.fb / disparity
    return np.stack([(x - camera.cx) / camera.fx * z, (y - camera.cy) / camera.fy * z, z], -1)


def test_flow_and_d1_follow_from_the_3d_motion_of_each_object():
    checked = 0
    for index in range(6):
        frame = synthetic.make_frame(1, index, 94, 310)
        scene, camera = frame.scene, frame.camera
        surface = synthetic.render_geometry(scene, camera, 0).surface
        rots, trans = scene.box_motion()
        for k in range(scene.num_boxes):
            pix = frame.valid & (surface >= 2 + 6 * k) & (surface < 8 + 6 * k)
            if pix.sum() < 5:
                continue
            ys, xs = np.nonzero(pix)
            p0 = _back_project(camera, xs, ys, frame.d0[pix])  # world = camera at t
            u, v = frame.flow[pix].T
            p1_cam = _back_project(camera, xs + u, ys + v, frame.d1[pix])
            p1 = p1_cam @ scene.ego_rot.T + scene.ego_t
            err = np.linalg.norm(p1 - (p0 @ rots[k].T + trans[k]), axis=-1)
            assert (err <= 1e-5 * p0[:, 2]).all(), (index, k, err.max())
            # And the points lie on the box's surface at t.
            local = (p0 - scene.centers0[k]) @ synthetic.rot_y(scene.yaw0[k])
            on_face = np.abs(np.abs(local) - scene.half[k]).min(axis=1)
            assert on_face.max() < 1e-3 * p0[:, 2].max()
            checked += int(not np.allclose(rots[k], np.eye(3)) or np.any(trans[k] != 0))
    assert checked >= 3  # several independently moving objects were verified


def test_warping_the_second_frame_by_the_flow_reproduces_the_first():
    for index in range(3):
        frame = synthetic.make_frame(2, index, 188, 621)
        noc = frame.noc
        assert noc.sum() > 0.25 * noc.size
        ys, xs = np.nonzero(noc)
        u, v = frame.flow[noc].T
        im0 = frame.image0.astype(np.float32) / 255
        im1 = frame.image1.astype(np.float32) / 255
        warped = _bilinear(im1, xs + u, ys + v)
        err = np.abs(warped - im0[noc]).mean()
        zero = np.abs(im1[noc] - im0[noc]).mean()
        assert err < 0.012, (index, err)
        assert err < 0.15 * zero, (index, err, zero)
        # Occluded / out-of-view pixels are valid ground truth but not in noc.
        assert (noc <= frame.valid).all()


def test_statistics_are_kitti_like():
    frame = synthetic.make_frame(0, 0)
    d0 = frame.d0[frame.valid]
    assert 0.3 < frame.valid.mean() < 0.85
    assert 1.0 < d0.min() and d0.max() < 255.0 and 10.0 < d0.mean() < 50.0
    assert np.abs(frame.flow[frame.valid]).max() < 512.0
    assert (frame.valid[:20] == 0).all()  # above the LiDAR's field of view
    assert frame.valid1.sum() > 0.3 * frame.valid1.size


def test_written_dataset_is_read_by_the_kitti_reader(tmp_path):
    summary = synthetic.generate_dataset(tmp_path, 2, 40, 128, seed=3, progress=False)
    assert summary["written"] == 2
    ds = kitti.KittiSceneFlow(tmp_path, "all")
    assert ds.frames == ["000000", "000001"]
    frame = synthetic.make_frame(3, 1, 40, 128)
    sample = ds[1]
    np.testing.assert_array_equal(sample.image0, frame.image0 / np.float32(255))
    np.testing.assert_array_equal(sample.valid0, frame.valid)
    np.testing.assert_array_equal(sample.flow_valid, frame.valid)
    np.testing.assert_allclose(sample.gt[..., :2], frame.flow, atol=1 / 128 + 1e-4)
    np.testing.assert_allclose(sample.gt[..., 2], frame.d0, atol=1 / 512 + 1e-4)
    np.testing.assert_allclose(sample.gt[..., 3], frame.d1, atol=1 / 512 + 1e-4)
    np.testing.assert_allclose(sample.disp1, frame.disp1_second_view, atol=1 / 512 + 1e-4)
    noc, noc_valid = kitti.read_flow(tmp_path / "training" / "flow_noc" / "000001_10.png")
    np.testing.assert_array_equal(noc_valid, frame.noc)
    assert kitti.read_split_file(tmp_path / "split.txt") == kitti.read_split_file()[:2]
    meta = json.loads((tmp_path / "synthetic.json").read_text())
    assert meta["seed"] == 3 and meta["height"] == 40
    again = synthetic.generate_dataset(tmp_path, 2, 40, 128, seed=3, progress=False)
    assert again["skipped"] == 2 and again["written"] == 0
    with pytest.raises(ValueError, match="seed"):
        synthetic.generate_dataset(tmp_path, 2, 40, 128, seed=4, progress=False)


def test_make_synthetic_command(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.make_synthetic", f"--output_dir={tmp_path}",
         "--num_scenes=1", "--height=32", "--width=96", "--seed=1"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert kitti.list_frames(tmp_path, "all") == ["000000"]
    assert json.loads(out.stdout[out.stdout.index("{"):])["written"] == 1


def test_parallel_generation_writes_the_same_files(tmp_path):
    synthetic.generate_dataset(tmp_path / "a", 3, 32, 96, seed=2, progress=False)
    summary = synthetic.generate_dataset(tmp_path / "b", 3, 32, 96, seed=2, progress=False,
                                         num_workers=2)
    assert summary["written"] == 3
    for name in ("000000", "000002"):
        for key, path in kitti.frame_paths(tmp_path / "a", name).items():
            other = kitti.frame_paths(tmp_path / "b", name)[key]
            assert path.read_bytes() == other.read_bytes(), (name, key)


def _block_matching(im0, im1, radius, half=3):
    # Brute-force SAD block matching: the flow a texture-based method can recover.
    h, w = im0.shape[:2]
    best = np.full((h, w), np.inf)
    flow = np.zeros((h, w, 2))
    pad = radius + half
    p1 = np.pad(im1, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = p1[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
            cost = np.abs(shifted - im0).sum(-1)
            cost = np.apply_along_axis(np.convolve, 0, cost, kernel, "same")
            cost = np.apply_along_axis(np.convolve, 1, cost, kernel, "same")
            better = cost < best
            best[better] = cost[better]
            flow[better] = (dx, dy)
    return flow


def test_textures_make_the_flow_recoverable():
    # A proxy for learnability: plain block matching already beats zero flow by far.
    frame = synthetic.make_frame(4, 1, 64, 212)
    flow = _block_matching(frame.image0 / 255.0, frame.image1 / 255.0, radius=6)
    gt = frame.flow
    pick = frame.noc & (np.abs(gt).max(-1) <= 5.5) & (np.linalg.norm(gt, axis=-1) > 1.0)
    assert pick.sum() > 500
    epe = np.linalg.norm(flow - gt, axis=-1)[pick].mean()
    zero = np.linalg.norm(gt, axis=-1)[pick].mean()
    assert epe < 0.5 * zero, (epe, zero)


@pytest.mark.slow
def test_generator_speed_at_kitti_resolution(tmp_path):
    synthetic.make_frame(0, 0)  # warm the texture cache
    start = time.perf_counter()
    summary = synthetic.generate_dataset(tmp_path, 4, seed=0, progress=False)
    rate = summary["written"] / (time.perf_counter() - start)
    print(f"synthetic generator: {rate:.2f} scenes/s at 375x1242 (with PNG writing)")
    assert rate > 0.5
