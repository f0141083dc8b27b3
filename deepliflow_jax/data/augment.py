"""The original's photometric training augmentation as pure JAX functions of a PRNG key.

``data_generator.augment_images`` draws ONE set of random values per batch (a noise
sigma, a contrast factor, three colour multipliers, a gamma and a brightness delta) and
applies them to the RGB channels of every frame in the batch; the disparity channel is
left alone. Note that the original applies it to the mean-subtracted RGB (the generator
subtracts the mean first), so its clips to [0, 1] zero every value below the dataset
mean. ``augment_frames`` reproduces that by default; pass ``rgb_mean`` to augment the
un-normalised colours instead (mean added back before, subtracted after).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class AugmentParams(NamedTuple):
    """Random values of one augmentation draw (all shared by the whole batch)."""

    noise_sigma: jax.Array  # U(0, 0.04)
    contrast: jax.Array  # U(0.2, 1.4)
    colour: jax.Array  # [3], U(0.5, 2)
    gamma: jax.Array  # U(0.7, 1.5)
    brightness: jax.Array  # N(0, 0.2) truncated at 2 sigma


def sample_params(key: jax.Array) -> AugmentParams:
    """Draws the augmentation values with the original's distributions.

    Args:
      key: JAX PRNG key.

    Returns:
      ``AugmentParams``.
    """
    k_sigma, k_contrast, k_colour, k_gamma, k_bright = jax.random.split(key, 5)
    return AugmentParams(
        noise_sigma=jax.random.uniform(k_sigma, (), minval=0.0, maxval=0.04),
        contrast=jax.random.uniform(k_contrast, (), minval=0.2, maxval=1.4),
        colour=jax.random.uniform(k_colour, (3,), minval=0.5, maxval=2.0),
        gamma=jax.random.uniform(k_gamma, (), minval=0.7, maxval=1.5),
        # tf.truncated_normal re-draws beyond two standard deviations.
        brightness=0.2 * jax.random.truncated_normal(k_bright, -2.0, 2.0, ()),
    )


def adjust_contrast(rgb: jax.Array, factor: jax.Array) -> jax.Array:
    """``tf.image.adjust_contrast``: ``(x - mean) * factor + mean``, mean per image/channel.

    Args:
      rgb: ``[..., H, W, C]``.
      factor: scalar.
    """
    mean = jnp.mean(rgb, axis=(-3, -2), keepdims=True)
    return (rgb - mean) * factor + mean


def apply_augmentation(rgb: jax.Array, noise: jax.Array, params: AugmentParams) -> jax.Array:
    """Applies the original's chain to RGB values given the noise and the parameters.

    Args:
      rgb: ``[..., H, W, 3]``.
      noise: standard normal noise of the same shape (scaled by ``params.noise_sigma``).
      params: ``AugmentParams``.

    Returns:
      Augmented RGB, clipped to [0, 1].
    """
    rgb = rgb + params.noise_sigma * noise
    rgb = adjust_contrast(rgb, params.contrast)
    rgb = jnp.clip(rgb * params.colour, 0.0, 1.0)
    rgb = rgb ** params.gamma  # tf.image.adjust_gamma with gain 1
    rgb = rgb + params.brightness  # tf.image.adjust_brightness
    return jnp.clip(rgb, 0.0, 1.0)


def augment_frames(key: jax.Array, frames: jax.Array, rgb_mean: jax.Array | None = None
                   ) -> jax.Array:
    """Augments network input frames as the original training pipeline.

    Args:
      key: JAX PRNG key (one draw for the whole batch, as the original).
      frames: ``[..., H, W, 4]`` (e.g. ``[B, 2, H, W, 4]``); channels 0-2 RGB, 3 LiDAR.
      rgb_mean: ``None`` to act on the channels as given, as the original does on the
        mean-subtracted RGB; or the ``[3]`` mean to add back before and subtract after.

    Returns:
      Frames of the same shape and dtype; channel 3 unchanged.

    Raises:
      ValueError: the last axis is not 4.
    """
    if frames.shape[-1] != 4:
        raise ValueError(f"frames must end in 4 channels, got shape {frames.shape}")
    k_params, k_noise = jax.random.split(key)
    params = sample_params(k_params)
    rgb = frames[..., :3]
    if rgb_mean is not None:
        rgb = rgb + jnp.asarray(rgb_mean, frames.dtype)
    noise = jax.random.normal(k_noise, rgb.shape, frames.dtype)
    rgb = apply_augmentation(rgb, noise, params).astype(frames.dtype)
    if rgb_mean is not None:
        rgb = rgb - jnp.asarray(rgb_mean, frames.dtype)
    return jnp.concatenate([rgb, frames[..., 3:]], axis=-1)
