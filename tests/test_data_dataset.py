"""The one data set type (``data/dataset.py``): the loader's defaults, split, LiDAR density,
network size and errors, and the single validation batch the search uses. No network is
compiled here."""

import shutil

import numpy as np
import pytest

from deepliflow_jax.data.dataset import (
    DEFAULT_SAMPLES,
    NINE_TO_ONE_SPLIT_FILE,
    Dataset,
    load_dataset,
)
from deepliflow_jax.data.synthetic import KITTI_SIZE, META_FILE, generate_dataset
from deepliflow_jax.study import make_config
from deepliflow_jax.study.data import study_dataset


@pytest.fixture(scope="module")
def odd_world(tmp_path_factory):
    """A synthetic world whose frames are no multiple of 64 (40x100, 10 scenes)."""
    root = tmp_path_factory.mktemp("odd40") / "world"
    generate_dataset(root, 10, 40, 100, progress=False)
    return root


def _names(samples):
    return [s.name for s in samples]


def test_the_folders_defaults_are_the_studys_explicit_arguments(tiny_world):
    """load_dataset(folder) reads split, frame count and size from synthetic.json; the study
    passes them from its config: the same frames, LiDAR count and batches."""
    study = study_dataset(make_config("tiny"), tiny_world)
    plain = load_dataset(tiny_world)
    assert _names(plain.train) == _names(study.train) == [f"{i:06d}" for i in range(9)]
    assert _names(plain.val) == _names(study.val) == ["000009"]  # every tenth frame
    assert (tiny_world / NINE_TO_ONE_SPLIT_FILE).read_text() == "\n" * 9 + "1\n"
    # the KITTI density at 64x192: round(4096 * 64 * 192 / (375 * 1242))
    assert plain.frame_size == study.frame_size == (64, 192)
    assert plain.num_samples == study.num_samples == 108
    assert plain.samples_for((100, 5000)) == (3, 132)
    for position in (0, 9 + 4):  # the first epoch, and one frame of the second
        a, b = plain.train_batch(position, (100, 5000)), study.train_batch(position, (100, 5000))
        np.testing.assert_array_equal(a["frames"], b["frames"])
        np.testing.assert_array_equal(a["gt"], b["gt"])
    (a,), (b,) = plain.val_batches(108), study.val_batches(108)
    for key in ("frames", "gt", "valid"):
        np.testing.assert_array_equal(a[key], b[key])
    # the caller's settings reach the batches
    tuned = load_dataset(tiny_world, batch_size=2, crop=(64, 128), seed=5, num_samples=50)
    batch = tuned.train_batch(0, tuned.num_samples)
    assert batch["frames"].shape == (2, 2, 64, 128, 4) and tuned.steps_per_epoch() == 4
    assert tuned.num_samples == 50 and tuned.seed == 5


def test_a_kitti_root_keeps_the_counts_and_gets_the_originals_network_size(tiny_world,
                                                                          odd_world, tmp_path):
    """Without synthetic.json a folder is read as KITTI: counts unscaled, and frames that
    are no multiple of 64 run at 384x1216 (the original's KITTI size)."""
    assert load_dataset(odd_world).interp_size is None  # a synthetic world: the caller's say
    for world, want in ((tiny_world, None), (odd_world, (384, 1216))):
        kitti = tmp_path / world.parent.name
        shutil.copytree(world / "training", kitti / "training")
        with pytest.raises(ValueError, match=rf"nine_to_one split of {kitti} needs num_frames "
                                             rf"\(the folder has no {META_FILE}"):
            load_dataset(kitti, split="nine_to_one")
        data = load_dataset(kitti, split="nine_to_one", num_frames=10)
        assert data.frame_size == KITTI_SIZE and data.num_samples == DEFAULT_SAMPLES == 4096
        assert data.samples_for(2048) == 2048 and data.interp_size == want
        assert _names(data.val) == ["000009"] and data.root == str(kitti)


def test_bad_arguments_and_empty_splits_name_the_argument_or_the_folder(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no data set at {tmp_path}: expected "
                                                f"{tmp_path / 'training'}"):
        load_dataset(tmp_path)
    # the original 180/20 split has no validation frame among the first 10
    with pytest.raises(ValueError, match=rf"{tiny_world}: need frames in both splits "
                                         r"\(original\), got 10 train and 0 test frames"):
        load_dataset(tiny_world, split="original")
    for kwargs, message in (({"validity": "kitti"}, "validity must be one of"),
                            ({"split": "9:1"}, "split must be one of"),
                            ({"augment": "heavy"}, "augment must be one of"),
                            ({"max_val_frames": 0}, "max_val_frames must be an integer >= 1"),
                            ({"batch_size": 1.5}, "batch_size must be an integer"),
                            ({"crop": (64,)}, r"crop must be \(height, width\)"),
                            ({"num_samples": 0}, "num_samples must be an integer >= 1")):
        with pytest.raises(ValueError, match=message):
            load_dataset(tiny_world, **kwargs)


def test_the_single_validation_batch_is_kept_and_refuses_two_sizes(tiny_data, odd_world):
    """``val_batch``: the search's one batch of every validation frame, made once."""
    batch = tiny_data.val_batch()
    assert tiny_data.val_batch() is batch
    (want,) = tiny_data.val_batches(tiny_data.num_samples)
    np.testing.assert_array_equal(batch["frames"], want["frames"])
    odd = load_dataset(odd_world)
    mixed = Dataset(train=[], val=[*tiny_data.val, *odd.val], root="/some/world")
    with pytest.raises(ValueError, match="validation frames of one size, but those of "
                                         "/some/world have 2 sizes"):
        mixed.val_batch()
    assert mixed.frame_sizes() == [(40, 100), (64, 192)]
    assert tiny_data.description == (f"data set ({tiny_data.root}): 9 training / 1 validation "
                                      "frames at 64x192, 108 LiDAR points per frame")
