"""``python -m weights_convert --no_verify_crc``: a corrupted tensor is refused unless asked.

The reader's check itself is tested in ``test_convert_tf.py``; here the flag must reach
it: without the flag the CLI refuses the checkpoint and writes nothing, with it the
corrupted value is converted as stored.
"""

import json
from pathlib import Path

import flax
import numpy as np
import pytest

from deepliflow_jax.checkpoint import load_checkpoint
from tests.tf_golden.weights import make_weights
from weights_convert import tf_bundle
from weights_convert.__main__ import main as cli
from weights_convert.tf_names import tf_name_table

FIX = Path(__file__).parent / "fixtures"
VICTIM = "model/context_network/conv7/bias"


def test_no_verify_crc_flag_reaches_the_reader(tmp_path, capsys):
    tf_vars = json.loads((FIX / "tf_variables.json").read_text())
    weights = make_weights({k: tuple(v) for k, v in tf_vars.items()})
    prefix = tf_bundle.write_bundle(tmp_path / "DeepLiDARFlow-KITTI", weights)
    entry = tf_bundle.read_index(prefix).entries[VICTIM]
    data = tf_bundle.data_path(prefix, entry.shard_id, 1)
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 2] ^= 0x01  # a mantissa bit of the first value
    data.write_bytes(bytes(raw))
    corrupted = np.frombuffer(bytes(raw[entry.offset:entry.offset + entry.size]), np.float32)
    assert corrupted[0] != weights[VICTIM].reshape(-1)[0]

    with pytest.raises(ValueError, match=f"checksum mismatch for tensor '{VICTIM}'"):
        tf_bundle.read_bundle(prefix, [VICTIM])
    np.testing.assert_array_equal(tf_bundle.read_bundle(prefix, [VICTIM], verify_crc=False)
                                  [VICTIM].reshape(-1), corrupted)

    out = tmp_path / "converted"
    assert cli(["--format=tf", f"--input={prefix}", f"--output={out}"]) == 1
    assert f"checksum mismatch for tensor '{VICTIM}'" in capsys.readouterr().err
    assert not out.exists()
    assert cli(["--format=tf", f"--input={prefix}", f"--output={out}", "--no_verify_crc"]) == 0
    flat = flax.traverse_util.flatten_dict(load_checkpoint(out)["params"], sep="/")
    np.testing.assert_array_equal(np.asarray(flat[tf_name_table()[VICTIM].path]), corrupted)
