"""Batching and seeding of the data pipeline."""


import numpy as np
import pytest

from deepliflow_jax.data import lidar, pipeline, preprocess
from deepliflow_jax.data.kitti import SceneFlowSample


class ListDataset:
    dataset_type = "KITTI"

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def _sample(seed, h=6, w=8):
    rng = np.random.default_rng(seed)
    d = rng.uniform(1, 50, (2, h, w)).astype(np.float32)
    valid = rng.uniform(size=(2, h, w)) < 0.7
    gt = rng.normal(size=(h, w, 4)).astype(np.float32)
    return SceneFlowSample(image0=rng.uniform(size=(h, w, 3)).astype(np.float32),
                           image1=rng.uniform(size=(h, w, 3)).astype(np.float32),
                           disp0=d[0], disp1=d[1], valid0=valid[0], valid1=valid[1], gt=gt,
                           flow_valid=np.ones((h, w), bool), name=str(seed))


def test_batches_are_the_preprocessed_samples_and_reproducible():
    ds = ListDataset([_sample(i) for i in range(5)])
    b = pipeline.load_batch(ds, [2, 3], 10, seed=3, epoch=0)
    assert b["frames"].shape == (2, 2, 6, 8, 4) and b["gt"].shape == (2, 6, 8, 4)
    np.testing.assert_array_equal(b["index"], [2, 3])
    np.testing.assert_array_equal(b["num_samples"], [10, 10])
    rng = lidar.frame_rng(3, 3, 0)
    frames, gt = pipeline.preprocess_sample(ds[3], "KITTI", 10, rng)
    np.testing.assert_array_equal(b["frames"][1], frames)
    np.testing.assert_array_equal(b["gt"][1], ds[3].gt)
    again = pipeline.load_batch(ds, [2, 3], 10, seed=3, epoch=0)
    np.testing.assert_array_equal(again["frames"], b["frames"])
    # A new epoch draws new LiDAR points on the same images.
    other = pipeline.load_batch(ds, [2, 3], 10, seed=3, epoch=1)
    assert not np.array_equal(other["frames"][..., 3], b["frames"][..., 3])
    np.testing.assert_array_equal(other["frames"][..., :3], b["frames"][..., :3])


def test_counts_crop_and_mixed_sizes():
    ds = ListDataset([_sample(i, 380, 1230) for i in range(3)])
    counts = {int(n) for e in range(8)
              for n in pipeline.load_batch(ds, [0, 1, 2], [5, 50], 1, e)["num_samples"]}
    assert counts == {5, 50}  # one of the counts per frame visit
    cropped = pipeline.load_batch(ds, [0, 1], 100, 0, 0, crop_shape=(370, 1220))
    assert cropped["frames"].shape == (2, 2, 370, 1220, 4)
    np.testing.assert_array_equal(cropped["gt"][0], preprocess.center_crop(ds[0].gt,
                                                                           (370, 1220)))
    mixed = ListDataset([_sample(0), _sample(1, 7, 8)])
    with pytest.raises(ValueError, match="Frame 1"):
        pipeline.load_batch(mixed, [0, 1], 10, 0, 0)


def test_inference_inputs_from_the_shared_examples():
    from pathlib import Path

    from deepliflow_jax.data.io import read_png

    examples = Path(__file__).resolve().parents[2] / "shared" / "data" / \
        "deeplidarflow_examples"
    frames, kind = pipeline.read_inference_example(examples, 1)
    assert kind == "KITTI" and frames.shape == (2, 375, 1242, 4)
    disp = read_png(examples / "ex_1_disp_11.png") / 256.0
    expected = (disp - 28.1591) / 19.9899 * (disp > 0)
    np.testing.assert_allclose(frames[1, ..., 3], expected, rtol=1e-5, atol=1e-5)
    image = read_png(examples / "ex_1_im_10.png") / 255.0
    np.testing.assert_allclose(frames[0, ..., :3], image - preprocess.rgb_mean("KITTI"),
                               atol=1e-6)
    frames, kind = pipeline.read_inference_example(examples, 2)
    assert kind == "FT3D" and frames.shape == (2, 512, 960, 4)
    image = read_png(examples / "ex_2_im_11.png")[14:526, :, :3] / 255.0
    np.testing.assert_allclose(frames[1, ..., :3], image - preprocess.rgb_mean("FT3D"),
                               atol=1e-6)
    with pytest.raises(FileNotFoundError, match="ex_3_im_10.png"):
        pipeline.read_inference_example(examples, 3)


def test_the_paper_crop_cuts_the_input_frames_at_the_centre():
    """The paper protocol's crop (370x1220 of a 375x1242 KITTI frame: rows 2..371, columns
    11..1230, ``(shape - crop) // 2`` as the original's ``get_cropped``) cuts the images
    and the LiDAR channel, not only the ground truth: content that varies over the frame
    tells any other window apart."""
    h, w = 375, 1242
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                         indexing="ij")
    image0 = np.stack([yy / h, xx / w, (yy + xx) / (h + w)], -1)
    image1 = image0[::-1, ::-1].copy()
    disp = (1.0 + yy / 10.0 + xx / 100.0).astype(np.float32)
    gt = np.stack([yy, xx, yy * 2, xx * 2], -1).astype(np.float32)
    sample = SceneFlowSample(image0=image0, image1=image1, disp0=disp, disp1=disp[::-1].copy(),
                             valid0=np.ones((h, w), bool), valid1=np.ones((h, w), bool), gt=gt,
                             flow_valid=np.ones((h, w), bool), name="ramp")
    batch = pipeline.load_batch(ListDataset([sample]), [0], 4096, 0, 0, crop_shape=(370, 1220))
    window = (slice(2, 372), slice(11, 1231))
    frames = batch["frames"][0]
    assert frames.shape == (2, 370, 1220, 4)
    mean = preprocess.rgb_mean("KITTI")
    np.testing.assert_allclose(frames[0, ..., :3] + mean, image0[window], atol=1e-6)
    np.testing.assert_allclose(frames[1, ..., :3] + mean, image1[window], atol=1e-6)
    # the LiDAR channel: the same draw on the whole frame, then the window
    whole, _ = pipeline.preprocess_sample(sample, "KITTI", 4096, lidar.frame_rng(0, 0, 0))
    assert np.count_nonzero(whole[..., 3][(slice(None), *window)]) > 1000
    np.testing.assert_array_equal(frames, whole[(slice(None), *window)])
    np.testing.assert_array_equal(batch["gt"][0], gt[window])
