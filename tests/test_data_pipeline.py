"""Batching, seeding and background prefetch of the data pipeline."""

import threading
import time

import jax
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
    batches = list(pipeline.iterate_batches(ds, 2, num_samples=10, seed=3, crop_shape=None))
    assert len(batches) == 2  # the last, incomplete batch is dropped
    b = batches[1]
    assert b["frames"].shape == (2, 2, 6, 8, 4) and b["gt"].shape == (2, 6, 8, 4)
    np.testing.assert_array_equal(b["index"], [2, 3])
    rng = lidar.frame_rng(3, 3, 0)
    frames, gt = pipeline.preprocess_sample(ds[3], "KITTI", 10, rng)
    np.testing.assert_array_equal(b["frames"][1], frames)
    np.testing.assert_array_equal(b["gt"][1], ds[3].gt)
    again = list(pipeline.iterate_batches(ds, 2, num_samples=10, seed=3, crop_shape=None))
    np.testing.assert_array_equal(again[0]["frames"], batches[0]["frames"])
    # A new epoch draws new LiDAR points.
    two = list(pipeline.iterate_batches(ds, 5, num_samples=10, seed=3, num_epochs=2,
                                        crop_shape=None))
    assert [t["epoch"] for t in two] == [0, 1]
    assert not np.array_equal(two[0]["frames"][..., 3], two[1]["frames"][..., 3])
    np.testing.assert_array_equal(two[0]["frames"][..., :3], two[1]["frames"][..., :3])
    last = list(pipeline.iterate_batches(ds, 2, crop_shape=None, drop_remainder=False))
    assert [len(t["index"]) for t in last] == [2, 2, 1]


def test_shuffle_crop_and_mixed_sizes():
    ds = ListDataset([_sample(i, 380, 1230) for i in range(3)])
    seen = [int(i) for b in pipeline.iterate_batches(ds, 1, seed=1, shuffle=True,
                                                     num_epochs=2, num_samples=[5, 50])
            for i in b["index"]]
    assert sorted(seen[:3]) == [0, 1, 2] and sorted(seen[3:]) == [0, 1, 2]
    order = pipeline.epoch_order(3, 1, 0, True)
    assert seen[:3] == list(order)
    cropped = next(pipeline.iterate_batches(ds, 2, num_samples=100))
    assert cropped["frames"].shape == (2, 2, 370, 1220, 4)
    np.testing.assert_array_equal(cropped["gt"][0], preprocess.center_crop(ds[0].gt,
                                                                           (370, 1220)))
    mixed = ListDataset([_sample(0), _sample(1, 7, 8)])
    with pytest.raises(ValueError, match="Frame 1"):
        list(pipeline.iterate_batches(mixed, 2, crop_shape=None))


def test_prefetch_keeps_order_propagates_errors_and_stops():
    assert list(pipeline.prefetch(iter(range(20)), size=3)) == list(range(20))

    def failing():
        yield 1
        raise RuntimeError("decode failed")

    it = pipeline.prefetch(failing(), size=2)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="decode failed"):
        next(it)

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = pipeline.prefetch(endless(), size=2)
    assert next(it) == 0
    it.close()
    time.sleep(0.3)
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count  # the producer thread has stopped
    assert not any(t.name == "deepliflow-prefetch" and t.is_alive()
                   for t in threading.enumerate())


def test_batches_on_device_with_prefetch():
    ds = ListDataset([_sample(i) for i in range(4)])
    out = list(pipeline.batches(ds, 2, num_samples=10, crop_shape=None, prefetch_size=2))
    assert len(out) == 2 and isinstance(out[0]["frames"], jax.Array)
    ref = list(pipeline.iterate_batches(ds, 2, num_samples=10, crop_shape=None))
    np.testing.assert_array_equal(np.asarray(out[1]["frames"]), ref[1]["frames"])
    cached = pipeline.CachedDataset(ds)
    assert cached[1] is cached[1] and cached.dataset_type == "KITTI"


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
