"""The paper preset's path: frames of one size, the network at another (``interp_size``).

KITTI frames are 375x1242 and the network runs at 384x1216 (legacy nearest in, legacy
bilinear out). Here the same path at a small size: 60x190 frames, a 64x192 network.
Evaluation must be the prediction at the frame size scored against the ground truth,
and a fine-tuning step on that path must be finite.
"""

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import deepliflow_jax as dl
from deepliflow_jax.predict import predict

FRAME = (60, 190)
NET = (64, 192)


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    root = dl.make_synthetic_dataset(tmp_path_factory.mktemp("odd") / "world", num_scenes=10,
                                     height=FRAME[0], width=FRAME[1])
    return dl.load_dataset(root, interp_size=NET)


def _by_hand(sf, gt):
    """EPE and outlier rates of one frame as the original's ``get_eval`` (numpy)."""
    valid = gt[..., 2] > 0
    g, err = gt[valid].astype(np.float64), np.abs(sf[valid] - gt[valid]).astype(np.float64)
    flow_epe = np.linalg.norm(err[:, :2], axis=-1)
    d0 = (err[:, 2] > 3) & (err[:, 2] / g[:, 2] > 0.05)
    d1 = (err[:, 3] > 3) & (err[:, 3] / g[:, 3] > 0.05)
    fl = (flow_epe > 3) & (flow_epe / np.linalg.norm(g[:, :2], axis=-1) > 0.05)
    return {"epe": np.linalg.norm(err, axis=-1).mean(), "d0": 100 * d0.mean(),
            "d1": 100 * d1.mean(), "fl": 100 * fl.mean(), "sf": 100 * (d0 | d1 | fl).mean()}, \
        int(valid.sum())


@pytest.mark.slow
def test_evaluate_and_finetune_with_interp_size(small_variables, odd_data):
    variables = small_variables  # the path is the point; a structured model runs it faster
    assert odd_data.interp_size == NET and len(odd_data.val) == 1
    with pytest.raises(ValueError, match="multiple"):
        dl.predict_sceneflow(variables, dl.validation_pair(odd_data)["frames"])
    got = dl.evaluate(variables, odd_data, interp_size=NET)
    pair = dl.validation_pair(odd_data, 0)  # the frame and LiDAR draw evaluate scores
    sf, _ = predict(variables, pair["frames"], interp_size=NET, out_size=FRAME)
    sf = np.asarray(sf)[0]
    assert sf.shape == (*FRAME, 4)
    want, n_valid = _by_hand(sf, pair["gt"])
    assert n_valid > 100 and got["frames"] == 1
    assert got["epe"] == pytest.approx(want["epe"], rel=1e-5)
    for key in ("d0", "d1", "fl", "sf"):  # a borderline pixel may flip: at most one
        assert abs(got[key] - want[key]) <= 100.0 / n_valid + 1e-9, key
    # one fine-tuning step on that path: finite, and every tensor moves
    tuned, history = dl.finetune(variables, odd_data, 1, interp_size=NET, l2=False)
    assert np.isfinite(history[0]["loss"]) and history[0]["loss"] > 0
    # every tensor moves but a structured model's conf_mass (one of its constants)
    before = flatten_dict(variables["params"], sep="/")
    after = flatten_dict(tuned["params"], sep="/")
    assert after.keys() == before.keys()
    assert all(np.isfinite(np.asarray(a)).all() for a in after.values())
    moved = {k for k in before if np.any(np.asarray(after[k]) != np.asarray(before[k]))}
    assert moved == {k for k in before if not k.endswith("conf_mass")}
