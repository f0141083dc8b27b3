"""Preprocessing, simulated LiDAR and the photometric augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.data import augment, lidar, preprocess


def test_make_frames_matches_the_original_formula():
    rng = np.random.default_rng(0)
    image0, image1 = rng.uniform(size=(2, 3, 5, 3))
    disp0, disp1 = rng.uniform(1, 90, (2, 3, 5))
    mask0 = rng.uniform(size=(3, 5)) < 0.5
    mask1 = rng.uniform(size=(3, 5)) < 0.5
    frames = preprocess.make_frames(image0, image1, disp0, disp1, mask0, mask1, "KITTI")
    assert frames.shape == (2, 3, 5, 4) and frames.dtype == np.float32
    mean = np.array([0.3791041, 0.39846687, 0.38367166])
    np.testing.assert_allclose(frames[0, ..., :3], image0 - mean, atol=1e-6)
    np.testing.assert_allclose(frames[1, ..., 3], (disp1 - 28.1591) / 19.9899 * mask1,
                               rtol=1e-5, atol=1e-6)
    assert (frames[0, ..., 3][~mask0] == 0).all()
    ft3d = preprocess.make_frame(image0, disp0, mask0, "FT3D")
    np.testing.assert_allclose(ft3d[..., 3], (disp0 - 41.232) / 35.423 * mask0, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="dataset_type"):
        preprocess.make_frame(image0, disp0, mask0, "kitti")


def test_center_crop_like_get_cropped():
    x = np.arange(540 * 960).reshape(540, 960)
    crop = preprocess.center_crop(x, (512, 960))
    assert crop.shape == (512, 960) and crop[0, 0] == x[14, 0]
    y = np.arange(2 * 375 * 1242).reshape(2, 375, 1242)
    crop = preprocess.center_crop(y, (370, 1220), axes=(1, 2))
    assert crop.shape == (2, 370, 1220) and crop[1, 0, 0] == y[1, 2, 11]
    with pytest.raises(ValueError, match="crop_shape"):
        preprocess.center_crop(x, (600, 960))
    assert preprocess.default_crop_shape("FT3D", 1) == (512, 960)
    assert preprocess.default_crop_shape("KITTI", 1) is None
    assert preprocess.default_crop_shape("KITTI", 2) == (370, 1220)


def test_lidar_sampling_is_reproducible_and_has_about_n_points():
    valid = np.random.default_rng(1).uniform(size=(200, 300)) < 0.4
    a = lidar.sample_lidar_mask(valid, 4096, lidar.frame_rng(3, 7))
    b = lidar.sample_lidar_mask(valid, 4096, lidar.frame_rng(3, 7))
    c = lidar.sample_lidar_mask(valid, 4096, lidar.frame_rng(3, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a[~valid] == 0).all()
    # Bernoulli(N / n_valid): the count is N within a few standard deviations.
    assert abs(a.sum() - 4096) < 5 * np.sqrt(4096)
    exact = lidar.sample_lidar_mask(valid, 2048, lidar.frame_rng(0, 0), "exact")
    assert exact.sum() == 2048 and (exact[~valid] == 0).all()
    few = np.zeros((10, 10), bool)
    few[0, :5] = True
    assert lidar.sample_lidar_mask(few, 16384, lidar.frame_rng(0, 0)).sum() == 5
    assert lidar.sample_lidar_mask(few, 100, lidar.frame_rng(0, 0), "exact").sum() == 5
    assert lidar.sample_lidar_mask(np.zeros((3, 3), bool), 5, lidar.frame_rng(0, 0)).sum() == 0
    with pytest.raises(ValueError, match="method"):
        lidar.sample_lidar_mask(valid, 10, lidar.frame_rng(0, 0), "uniform")
    with pytest.raises(ValueError, match="num_samples"):
        lidar.sample_lidar_mask(valid, 0, lidar.frame_rng(0, 0))
    assert lidar.LIDAR_SWEEP == (2048, 4096, 5000, 8192, 16384)


def _reference_augment(rgb, noise, p):
    # The TF1 ops of data_generator.augment_images written out in NumPy.
    rgb = rgb + float(p.noise_sigma) * noise
    mean = rgb.mean(axis=(-3, -2), keepdims=True)
    rgb = (rgb - mean) * float(p.contrast) + mean
    rgb = np.clip(rgb * np.asarray(p.colour), 0.0, 1.0)
    rgb = rgb ** float(p.gamma)
    return np.clip(rgb + float(p.brightness), 0.0, 1.0)


def test_augmentation_matches_the_tf_chain_and_keeps_disparity():
    frames = np.random.default_rng(2).uniform(-0.4, 0.6, (2, 2, 6, 8, 4)).astype(np.float32)
    key = jax.random.PRNGKey(5)
    aug = augment.augment_frames  # eager: its primitives compile once for all calls here
    out = np.asarray(aug(key, jnp.asarray(frames)))
    k_params, k_noise = jax.random.split(key)
    params = augment.sample_params(k_params)
    noise = np.asarray(jax.random.normal(k_noise, frames[..., :3].shape))
    expected = _reference_augment(frames[..., :3].astype(np.float64), noise, params)
    np.testing.assert_allclose(out[..., :3], expected, atol=1e-5)
    np.testing.assert_array_equal(out[..., 3], frames[..., 3])
    np.testing.assert_array_equal(out, np.asarray(aug(key, frames)))
    assert not np.allclose(out, np.asarray(aug(jax.random.PRNGKey(6), frames)))
    # With the mean given, the colours are augmented before mean subtraction.
    mean = preprocess.rgb_mean("KITTI")
    shifted = np.asarray(aug(key, frames, mean))
    np.testing.assert_allclose(shifted[..., :3] + mean,
                               _reference_augment(frames[..., :3] + mean, noise, params),
                               atol=1e-5)
    with pytest.raises(ValueError, match="4 channels"):
        augment.augment_frames(key, frames[..., :3])


def test_augmentation_parameter_ranges():
    keys = jax.random.split(jax.random.PRNGKey(0), 256)
    p = jax.jit(jax.vmap(augment.sample_params))(keys)
    for value, lo, hi in ((p.noise_sigma, 0, 0.04), (p.contrast, 0.2, 1.4), (p.colour, 0.5, 2),
                          (p.gamma, 0.7, 1.5), (p.brightness, -0.4, 0.4)):
        value = np.asarray(value)
        assert value.min() >= lo and value.max() <= hi
        assert value.max() - value.min() > 0.5 * (hi - lo)  # spread over the range
    assert abs(float(np.std(p.brightness)) - 0.2 * 0.88) < 0.03  # 2-sigma truncated normal
