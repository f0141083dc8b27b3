"""TF tensor-bundle reader/writer and the TF -> Flax conversion (no TensorFlow needed).

* ``tests/fixtures/ckpt_tf_small`` was written by real TensorFlow
  (``tests/fixtures/ckpt_tf_small_make.py``): the reader must return its values
  and the writer must reproduce its ``.index`` and ``.data`` byte for byte.
* A full-size checkpoint with the original's 257 variable names, Adam slots and
  step counters is written at test time with the writer, converted by the CLI
  and run on golden case 'i' of ``tf_net_golden.npz`` (outputs of real TF kernels
  for the same weights).
* The original release's naming (``tests/fixtures/tf_release.py``: Adam slots and
  counters under the training script's ``train/`` scope) is written with the
  writer from ``init_params`` weights; the CLI converts it, reports the slots as
  skipped and the report keeps them. Other slot kinds, outer scopes and the
  refusals are checked in memory (no network is compiled).
* Partitioned variables: the writer stores them as TF's ``BundleWriter::AddSlice``
  (slice keys in TF's OrderedCode, checked against ``ordered_code.cc``'s own
  examples); the release checkpoint with kernels, biases and their Adam slots
  partitioned converts like the unpartitioned one; slices that overlap, leave a
  gap or exceed the shape, and undecodable keys, are ``ConversionError``s.
"""

import json
import os
from pathlib import Path

import flax
import numpy as np
import pytest

from deepliflow_jax.checkpoint import load_checkpoint, load_metadata
from deepliflow_jax.model.build import forward, param_shapes
from tests.fixtures.ckpt_tf_small_make import PREFIX as SMALL_PREFIX
from tests.fixtures.ckpt_tf_small_make import fixture_values
from tests.fixtures.tf_release import release_checkpoint_tensors, release_slots
from tests.tf_golden.weights import make_weights
from weights_convert import tf_bundle
from weights_convert.__main__ import main as cli
from weights_convert.convert import (
    ConversionError,
    flax_to_tf_tensors,
    parse_tf_slot,
    tf_tensors_to_flax,
    tf_to_flax,
)
from weights_convert.tf_names import tf_name_table

FIX = Path(__file__).parent / "fixtures"
SMALL = FIX / "ckpt_tf_small" / SMALL_PREFIX
LEVELS = (6, 5, 4, 3, 2)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir()
                  if any(f".{role}-" in p.name for role in ("tmp", "new", "old", "trash")))


@pytest.fixture(scope="module")
def tf_vars():
    return {k: tuple(v) for k, v in json.loads((FIX / "tf_variables.json").read_text()).items()}


@pytest.fixture(scope="module")
def tf_weights(tf_vars):
    return make_weights(tf_vars)


@pytest.fixture(scope="module")
def full_ckpt(tmp_path_factory, tf_weights):
    """Original-named full-size bundle: weights, Adam slots as the original's training
    (``Adam_optimizer``, ``Adam_optimizer_1``), ``beta{1,2}_power`` and ``global_step``."""
    tensors = dict(tf_weights)
    for name, w in tf_weights.items():
        tensors[f"{name}/Adam_optimizer"] = np.zeros_like(w)
        tensors[f"{name}/Adam_optimizer_1"] = np.zeros_like(w)
    tensors["beta1_power"] = np.float32(0.9 ** 10)
    tensors["beta2_power"] = np.float32(0.999 ** 10)
    tensors["global_step"] = np.int64(10)
    folder = tmp_path_factory.mktemp("tf_full")
    return tf_bundle.write_bundle(folder / "DeepLiDARFlow-KITTI", tensors)


# ----------------------------------------------------------------------------- format

def test_crc32c():
    assert tf_bundle.crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert tf_bundle.crc32c(b"") == 0
    data = np.random.default_rng(0).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    # the lane-parallel path against the plain table loop
    assert tf_bundle.crc32c(data) == tf_bundle._crc_update(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    for crc in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert tf_bundle.unmask_crc(tf_bundle.mask_crc(crc)) == crc


def test_reads_tf_written_fixture():
    bundle = tf_bundle.read_index(SMALL)
    assert bundle.num_shards == 1 and not bundle.big_endian
    got = tf_bundle.read_tensors(bundle)
    want = fixture_values()
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert got["global_step"].dtype == np.int64 and int(got["global_step"]) == 1234
    # folder, .index and .meta spellings resolve to the same prefix
    for spelling in (SMALL.parent, SMALL.with_name(SMALL.name + ".index"),
                     SMALL.with_name(SMALL.name + ".meta")):
        assert tf_bundle.resolve_prefix(spelling) == SMALL


def test_writer_reproduces_tf_bytes(tmp_path):
    prefix = tf_bundle.write_bundle(tmp_path / SMALL_PREFIX, fixture_values())
    for suffix in (".index", ".data-00000-of-00001"):
        mine = prefix.with_name(prefix.name + suffix).read_bytes()
        assert mine == SMALL.with_name(SMALL.name + suffix).read_bytes(), suffix


def test_writer_round_trip_dtypes_and_blocks(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    tensors = {"global_step": np.int64(-3), "scalar": np.float32(2.5),
               "empty": np.zeros((0, 3), np.float32), "int32": np.arange(6, dtype=np.int32),
               "f16": rng.standard_normal(5).astype(np.float16), "flag": np.array([True, False]),
               "u8": np.arange(7, dtype=np.uint8), "f64": rng.standard_normal((2, 2))}
    # small blocks: several data blocks, index separators and restarts in a small file
    monkeypatch.setattr(tf_bundle, "BLOCK_SIZE", 2048)
    for i in range(300):
        tensors[f"model/a_fairly_long_scope_name_{i % 7}/layer_{i}/kernel/Adam_optimizer_1"] = (
            rng.standard_normal(i % 3 + 1).astype(np.float32))
    prefix = tf_bundle.write_bundle(tmp_path / "ck", tensors)
    assert prefix.with_name("ck.index").stat().st_size > 5 * tf_bundle.BLOCK_SIZE
    got = tf_bundle.read_bundle(prefix)
    assert sorted(got) == sorted(tensors)
    for name, value in tensors.items():
        value = np.asarray(value)
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def _copy_small(tmp_path):
    dst = tmp_path / SMALL_PREFIX
    for suffix in (".index", ".data-00000-of-00001"):
        dst.with_name(dst.name + suffix).write_bytes(SMALL.with_name(SMALL.name + suffix)
                                                     .read_bytes())
    return dst


def test_corrupted_and_truncated_bundles(tmp_path):
    prefix = _copy_small(tmp_path)
    index = prefix.with_name(prefix.name + ".index")
    data = prefix.with_name(prefix.name + ".data-00000-of-00001")
    good_index, good_data = index.read_bytes(), data.read_bytes()

    index.write_bytes(good_index[:-10])
    with pytest.raises(ValueError, match=r"ckpt-1234\.index.*(magic|truncated)"):
        tf_bundle.read_index(prefix)
    index.write_bytes(good_index[:30])
    with pytest.raises(ValueError, match="too short"):
        tf_bundle.read_index(prefix)
    flipped = bytearray(good_index)
    flipped[40] ^= 0x01  # inside the data block
    index.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum mismatch in block"):
        tf_bundle.read_index(prefix)
    index.write_bytes(b"not a checkpoint at all, but long enough to have a footer" * 2)
    with pytest.raises(ValueError, match="bad table magic"):
        tf_bundle.read_index(prefix)
    index.write_bytes(good_index)

    data.write_bytes(good_data[:-100])
    with pytest.raises(ValueError, match="runs past the end.*truncated"):
        tf_bundle.read_bundle(prefix)
    flipped = bytearray(good_data)
    flipped[-3] ^= 0x10
    data.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum mismatch for tensor"):
        tf_bundle.read_bundle(prefix)
    assert tf_bundle.read_bundle(prefix, verify_crc=False)  # the check is what failed
    data.unlink()
    with pytest.raises(FileNotFoundError, match="data-00000-of-00001"):
        tf_bundle.read_bundle(prefix)
    with pytest.raises(FileNotFoundError, match="nothing.index"):
        tf_bundle.read_index(tmp_path / "nothing")


# ----------------------------------------------------------------------------- conversion

def test_small_fixture_is_not_the_whole_model():
    with pytest.raises(ConversionError) as info:
        tf_to_flax(SMALL)
    problems = info.value.problems
    # every absent variable is listed; slots and counters are not "unexpected"
    assert len(problems) == len(tf_name_table()) - 15
    assert all(p.startswith("missing: model/") for p in problems), problems[:3]
    assert "scene_flow_estimator_2/conv1/kernel" in str(info.value)


def test_converted_tf_names_are_exact(tf_weights):
    variables, report = tf_tensors_to_flax(tf_weights)
    flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    for name, entry in tf_name_table().items():
        want = tf_weights[name].reshape(-1) if entry.squeeze_bias else tf_weights[name]
        np.testing.assert_array_equal(flat[entry.path], want, err_msg=name)
    assert report.parameter_count == 8296404 and not report.skipped
    back = flax_to_tf_tensors(variables)  # and the reverse, bit for bit
    assert sorted(back) == sorted(tf_weights)
    assert all(back[k].shape == tf_weights[k].shape and np.array_equal(back[k], tf_weights[k])
               for k in tf_weights)


def test_full_tf_checkpoint_via_cli_matches_tf_golden(full_ckpt, tmp_path, tf_weights, capsys):
    out = tmp_path / "converted"
    assert cli(["--format=tf", f"--input={full_ckpt}", f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    assert "converted 257 tensors (8,296,404 parameters)" in printed
    for line in ("skipped 257 x optimizer slot (Adam_optimizer)",
                 "skipped 257 x optimizer slot (Adam_optimizer_1)",
                 "skipped 3 x optimizer/step counter"):
        assert line in printed, printed
    meta = load_metadata(out)
    assert meta["format"] == "tf" and meta["source"] == str(full_ckpt)
    assert meta["parameter_count"] == 8296404 and len(meta["skipped"]) == 2 * 257 + 3
    assert meta["skipped"]["global_step"] == "optimizer/step counter"
    variables = load_checkpoint(out)

    golden = np.load(FIX / "tf_net_golden.npz")
    sf, aux = forward(variables, golden["i_input"], out_size=tuple(golden["i_gt_shape"]))
    errors = {f"level{lv}": _rel(f, golden[f"i_flow{lv}"]) for lv, f in zip(LEVELS, aux["flows"])}
    errors["level2_unrefined"] = _rel(aux["levels"]["flow_level2_unrefined"],
                                      golden["i_flow2_unrefined"])
    errors["sceneflow"] = _rel(sf, golden["i_out_sf"])
    print("TF bundle -> Flax vs TF golden, relative L2:",
          {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-5, errors


def _write_variant(folder: Path, tf_weights, edit) -> Path:
    tensors = dict(tf_weights)
    edit(tensors)
    return tf_bundle.write_bundle(folder / "variant", tensors)


def test_bad_tf_checkpoints_list_all_problems_and_write_nothing(tmp_path, tf_weights):
    drop = "model/context_network/conv3/kernel"
    reshape = "model/guidance_network/rgb_guidance_connections/biases2b"
    extra = "model/context_network/conv8/kernel"

    def edit(t):
        del t[drop]
        t[reshape] = t[reshape].reshape(-1)
        t[extra] = np.zeros((3, 3, 4, 4), np.float32)
        t[f"{extra}/Adam"] = np.zeros((3, 3, 4, 4), np.float32)  # slot of a non-model var
        t["model/scene_flow_estimator_6/conv1/bias"] = np.zeros(128, np.int32)

    prefix = _write_variant(tmp_path, tf_weights, edit)
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as info:
        tf_to_flax(prefix)
    text = str(info.value)
    for needle in (f"missing: {drop}", f"mis-shaped: {reshape} is [64], expected [1, 1, 1, 64]",
                   f"unexpected: {extra}", f"unexpected: {extra}/Adam",
                   "wrong dtype: model/scene_flow_estimator_6/conv1/bias is int32"):
        assert needle in text, (needle, text)
    assert len(info.value.problems) == 5
    assert cli(["--format=tf", f"--input={prefix}", f"--output={out}"]) == 1
    assert not out.exists() and _leftovers(tmp_path) == []


def test_cli_format_and_output_errors(tmp_path, full_ckpt, capsys):
    out = tmp_path / "out"
    # a TF checkpoint given as torch, and a torch file given as tf
    assert cli(["--format=torch", f"--input={full_ckpt}", f"--output={out}"]) == 1
    assert "looks like a TF checkpoint; use --format=tf" in capsys.readouterr().err
    fake = tmp_path / "weights.safetensors"
    fake.write_bytes(b"\0" * 16)
    assert cli(["--format=tf", f"--input={fake}", f"--output={out}"]) == 1
    assert "looks like a PyTorch file; use --format=torch" in capsys.readouterr().err
    assert cli(["--format=tf", f"--input={tmp_path / 'missing'}", f"--output={out}"]) == 1
    assert "index not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli(["--format=caffe", f"--input={full_ckpt}", f"--output={out}"])
    assert info.value.code == 2
    assert not out.exists()
    # an existing output is kept unless --overwrite
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert cli(["--format=tf", f"--input={full_ckpt}", f"--output={out}"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    # --overwrite replaces a checkpoint only, never a folder of something else
    assert cli(["--format=tf", f"--input={full_ckpt}", f"--output={out}", "--overwrite"]) == 1
    assert (f"refusing to overwrite {out}: it is not a deepliflow_jax checkpoint (holds "
            "keep.txt)") in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    assert cli(["--format=tf", f"--input={full_ckpt}", f"--output={out}", "--overwrite"]) == 0
    assert cli(["--format=tf", f"--input={full_ckpt}", f"--output={out}", "--overwrite"]) == 0
    assert load_metadata(out)["format"] == "tf"
    assert _leftovers(tmp_path) == []
    assert os.listdir(out)  # complete checkpoint in place


def test_cli_usage_errors_exit_2_naming_the_flag(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        cli(["--format=tf", f"--input={tmp_path / 'x'}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage error" in err and "Flag --output must have a value" in err, err
    assert "Flag --input" not in err and "Flag --format" not in err, err
    with pytest.raises(SystemExit) as info:
        cli(["--format=onnx", f"--input={tmp_path / 'x'}", f"--output={out}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--format=onnx" in err and "<tf|torch|orbax>" in err, err
    with pytest.raises(SystemExit) as info:
        cli(["--format=tf", "--input=x", f"--output={out}", "--verify"])
    assert info.value.code == 2 and "'verify'" in capsys.readouterr().err
    assert not out.exists()


def test_cli_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as info:
        cli(["--help"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    for flag in ("--format: <tf|torch|orbax>", "--input", "--output", "--[no]overwrite",
                 "--[no]no_verify_crc"):
        assert flag in printed, printed


def test_cli_no_verify_crc_reaches_the_reader(tmp_path, monkeypatch, capsys):
    seen = []

    def fake_tf_to_flax(prefix, verify_crc=True):
        seen.append((str(prefix), verify_crc))
        raise ValueError("stop here")

    monkeypatch.setattr("weights_convert.convert.tf_to_flax", fake_tf_to_flax)
    args = ["--format=tf", f"--input={tmp_path / 'ckpt'}", f"--output={tmp_path / 'out'}"]
    assert cli([*args, "--no_verify_crc"]) == 1
    assert cli(args) == 1  # flags start from their defaults on every call
    assert cli([*args, "--nono_verify_crc"]) == 1
    assert seen == [(str(tmp_path / "ckpt"), False), (str(tmp_path / "ckpt"), True),
                    (str(tmp_path / "ckpt"), True)]
    assert capsys.readouterr().err.count("error: stop here") == 3


# ----------------------------------------------------------------------------- release naming

@pytest.fixture(scope="module")
def release_model(variables):
    """The 257 TF-named tensors of ``init_params(seed=0, bias_std=0.1)``."""
    return flax_to_tf_tensors(variables)


@pytest.fixture(scope="module")
def release_ckpt(tmp_path_factory, release_model):
    """A bundle named exactly as the original release's (see ``tf_release.py``)."""
    folder = tmp_path_factory.mktemp("tf_release")
    return tf_bundle.write_bundle(folder / "DeepLiDARFlow-KITTI-epoch-40-step-41",
                                  release_checkpoint_tensors(release_model, global_step=41))


def _same_tree(a, b):
    flat_a = flax.traverse_util.flatten_dict(a["params"], sep="/")
    flat_b = flax.traverse_util.flatten_dict(b["params"], sep="/")
    return sorted(flat_a) == sorted(flat_b) and all(
        np.array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k])) for k in flat_a)


@pytest.fixture(scope="module")
def release_converted(tmp_path_factory, release_ckpt):
    """``release_ckpt`` converted by the CLI with ``--with_optimizer_state``: (dir, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("release_converted") / "converted"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli(["--format=tf", f"--input={release_ckpt}", f"--output={out}",
                    "--with_optimizer_state"]) == 0
    return out, printed.getvalue()


def test_release_named_bundle_via_cli(release_converted, variables):
    out, printed = release_converted
    for line in ("converted 257 tensors (8,296,404 parameters)",
                 "skipped 257 x optimizer slot (Adam_optimizer)\n",
                 "skipped 257 x optimizer slot (Adam_optimizer_1)\n",
                 "skipped 3 x optimizer/step counter\n", "global_step 41\n"):
        assert line in printed, printed
    meta = load_metadata(out)
    assert len(meta["skipped"]) == 2 * 257 + 3 and meta["global_step"] == 41
    slot = "train/model/guidance_network/rgb_features_encoder_decoder/conv1a/kernel/Adam_optimizer"
    assert meta["skipped"][slot] == "optimizer slot (Adam_optimizer)"
    assert meta["skipped"][slot + "_1"] == "optimizer slot (Adam_optimizer_1)"
    assert meta["skipped"]["train/global_step"] == "optimizer/step counter"
    assert _same_tree(load_checkpoint(out), variables)


def test_release_slots_are_kept_in_the_report(release_ckpt, release_model):
    _, report = tf_to_flax(release_ckpt)
    want = release_slots(release_model)
    shapes = flax.traverse_util.flatten_dict(param_shapes()["params"], sep="/")
    assert len(report.slots) == 2 * 257
    for name, entry in tf_name_table().items():
        for slot in ("Adam_optimizer", "Adam_optimizer_1"):
            got = report.slots[(entry.path, slot)]
            assert got.dtype == np.float32 and got.shape == shapes[entry.path].shape, name
            np.testing.assert_array_equal(got.reshape(want[f"train/{name}/{slot}"].shape),
                                          want[f"train/{name}/{slot}"], err_msg=name)
    assert report.global_step == 41 and isinstance(report.global_step, int)
    assert report.optimizer_scalars["train/beta1_power"] == pytest.approx(0.9 ** 301, rel=1e-6)
    assert report.optimizer_scalars["train/beta2_power"] == pytest.approx(0.999 ** 301, rel=1e-6)
    assert "slots" not in report.metadata()  # arrays never go into the JSON metadata


SLOT_FORMS = {  # extra entry (``{v}``: each of two model variables) -> its skip reason
    "default Adam, no scope": {"{v}/Adam": "optimizer slot (Adam)",
                               "{v}/Adam_1": "optimizer slot (Adam_1)"},
    "two outer scopes": {"tower_0/train/{v}/Momentum": "optimizer slot (Momentum)"},
    "RMSProp": {"train/{v}/RMSProp": "optimizer slot (RMSProp)",
                "train/{v}/RMSProp_1": "optimizer slot (RMSProp_1)"},
    "moving average": {"{v}/ExponentialMovingAverage": "moving average (ExponentialMovingAverage)"},
    "uniquified second optimizer": {
        "train/{v}/Adam_optimizer_2": "optimizer slot (Adam_optimizer_2)",
        "train/{v}/Adam_optimizer_3": "optimizer slot (Adam_optimizer_3)"},
    "counters": {"beta1_power": "optimizer/step counter", "a/b/beta2_power_1":
                 "optimizer/step counter", "eval/global_step": "optimizer/step counter"},
}
SLOT_VARIABLES = ("model/context_network/conv1/kernel",  # a conv kernel
                  "model/guidance_network/rgb_guidance_connections_1/biases3b")  # [1, 1, 1, C]


@pytest.mark.parametrize("form", list(SLOT_FORMS))
def test_slot_and_counter_forms_are_skipped_and_kept(form, release_model):
    table = tf_name_table()
    tensors, reasons, slots = dict(release_model), {}, {}
    for pattern, reason in SLOT_FORMS[form].items():
        if "{v}" not in pattern:
            tensors[pattern] = np.asarray(7 if "step" in pattern else 0.5,
                                          np.int64 if "step" in pattern else np.float32)
            reasons[pattern] = reason
        for var in SLOT_VARIABLES if "{v}" in pattern else ():
            name = pattern.format(v=var)
            rng = np.random.default_rng(len(name))
            tensors[name] = rng.standard_normal(release_model[var].shape).astype(np.float32)
            reasons[name] = reason
            slots[(table[var].path, name.rpartition("/")[2])] = tensors[name].reshape(-1) \
                if table[var].squeeze_bias else tensors[name]
    _, report = tf_tensors_to_flax(tensors)
    assert report.skipped == reasons and report.parameter_count == 8296404
    assert sorted(report.slots) == sorted(slots)
    for key, want in slots.items():
        np.testing.assert_array_equal(report.slots[key], want, err_msg=str(key))
    if form == "counters":
        assert report.global_step == 7 and report.optimizer_scalars["beta1_power"] == 0.5


def test_parse_tf_slot_needs_a_model_variable_at_a_scope_boundary():
    var = "model/context_network/conv1/kernel"
    assert parse_tf_slot(f"train/{var}/Adam_optimizer_1") == (var, "Adam_optimizer_1", "train/")
    assert parse_tf_slot(f"{var}/Adam") == (var, "Adam", "")
    for name in (f"x{var}/Adam", f"{var}/Adagrad", f"{var}/Adam_optimizerX", var,
                 f"train/{var}", "train/model/context_network/conv8/kernel/Adam", "Adam"):
        assert parse_tf_slot(name) is None, name


def test_entries_not_tied_to_a_model_variable_are_refused(release_model, tmp_path):
    kernel = "model/context_network/conv1/kernel"
    bias = "model/guidance_network/rgb_guidance_connections/biases0b"  # [1, 1, 1, 16]
    bad = {
        "train/model/context_network/conv8/kernel/Adam_optimizer": np.zeros(3, np.float32),
        f"train/{kernel}/Adagrad": np.zeros(release_model[kernel].shape, np.float32),
        f"train/{kernel}": release_model[kernel],  # a model variable under another scope
        f"x{kernel}/Adam": release_model[kernel],
        f"train/{bias}/Adam_optimizer": np.zeros(16, np.float32),  # slot of the wrong shape
        "train/model/context_network/conv2/bias/Adam_optimizer_1": np.zeros(128, np.int32),
        "train/global_step": np.zeros(2, np.int32),
    }
    with pytest.raises(ConversionError) as info:
        tf_tensors_to_flax({**release_model, **bad})
    text = str(info.value)
    for needle in ("unexpected: train/model/context_network/conv8/kernel/Adam_optimizer ",
                   f"unexpected: train/{kernel}/Adagrad ", f"unexpected: train/{kernel} ",
                   f"unexpected: x{kernel}/Adam ",
                   f"mis-shaped slot: train/{bias}/Adam_optimizer is [16], but its variable "
                   f"{bias} is [1, 1, 1, 16]",
                   "wrong dtype: train/model/context_network/conv2/bias/Adam_optimizer_1 is "
                   "int32, expected float32",
                   "mis-shaped: train/global_step is [2], expected a scalar"):
        assert needle in text, (needle, text)
    assert len(info.value.problems) == len(bad)
    # the same slot of one variable under two scopes cannot both be kept
    twice = {**release_model, f"{kernel}/Adam": release_model[kernel],
             f"train/{kernel}/Adam": release_model[kernel]}
    with pytest.raises(ConversionError, match=f"two Adam slots for {kernel}: {kernel}/Adam and "
                                              f"train/{kernel}/Adam"):
        tf_tensors_to_flax(twice)
    # and from a file, through the CLI: nothing written
    prefix = tf_bundle.write_bundle(tmp_path / "bad", {**release_model, **bad})
    out = tmp_path / "out"
    assert cli(["--format=tf", f"--input={prefix}", f"--output={out}"]) == 1
    assert not out.exists() and _leftovers(tmp_path) == []


def test_convert_checkpoint_docstring_example_runs():
    import doctest

    from weights_convert import convert

    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(convert.convert_checkpoint, globs=vars(convert).copy())
    assert tests and tests[0].examples
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_release_optimizer_state_is_kept_on_request(release_converted, release_model):
    """``--with_optimizer_state``: the slots become TF1 Adam's mu/nu, the beta powers its
    powers (300 updates), and one step from the restored state is TF's ``ApplyAdam`` step."""
    import jax.numpy as jnp

    from deepliflow_jax.checkpoint import load_optimizer_state
    from deepliflow_jax.train.tf_adam import state_from_checkpoint, tf1_adam

    out, printed = release_converted
    assert ("kept the Adam state: m and v (Adam_optimizer, Adam_optimizer_1) of 257 tensors, "
            "300 Adam steps") in printed
    info = load_metadata(out)["optimizer"]
    assert info["kind"] == "tf1_adam" and info["global_step"] == 41
    assert (info["beta1"], info["beta2"], info["epsilon"]) == (0.9, 0.999, 1e-8)
    params = load_checkpoint(out)["params"]
    state = state_from_checkpoint(params, load_optimizer_state(out))
    slots = release_slots(release_model)
    table = tf_name_table()
    flat_mu = flax.traverse_util.flatten_dict(state.mu, sep="/")
    flat_nu = flax.traverse_util.flatten_dict(state.nu, sep="/")
    for name, entry in table.items():
        for moments, slot in ((flat_mu, "Adam_optimizer"), (flat_nu, "Adam_optimizer_1")):
            want = slots[f"train/{name}/{slot}"]
            np.testing.assert_array_equal(np.asarray(moments[entry.path]).reshape(want.shape),
                                          want, err_msg=f"{name} {slot}")
    assert int(state.count) == 300
    assert float(state.beta1_power) == np.float32(0.9 ** 301)
    assert float(state.beta2_power) == np.float32(0.999 ** 301)
    # one TF1 Adam step from it = ApplyAdam by hand, on two of its tensors (a step on all
    # 257 compiles for long; the trainer seeds its state with it: tests/test_tf_adam.py)
    paths = ("context_network/conv1/kernel", "guidance_network/depth_encoder/nconv0b/biases")
    flat_p = flax.traverse_util.flatten_dict(params, sep="/")
    part = state._replace(mu={k: flat_mu[k] for k in paths}, nu={k: flat_nu[k] for k in paths})
    rng = np.random.default_rng(0)
    grads = {k: jnp.asarray(rng.normal(size=flat_p[k].shape), jnp.float32) for k in paths}
    updates, after = tf1_adam(1e-4).update(grads, part)
    assert int(after.count) == 301
    b1p, b2p = float(np.float32(0.9 ** 301)), float(np.float32(0.999 ** 301))
    c1, c2 = float(np.float32(1) - np.float32(0.9)), float(np.float32(1) - np.float32(0.999))
    alpha = float(np.float32(1e-4)) * np.sqrt(1 - b2p) / (1 - b1p)
    for path in paths:
        p, g = np.asarray(flat_p[path], np.float64), np.asarray(grads[path], np.float64)
        m = np.asarray(flat_mu[path], np.float64) + (g - flat_mu[path]) * c1
        v = np.asarray(flat_nu[path], np.float64) + (g * g - flat_nu[path]) * c2
        want = p - m * alpha / (np.sqrt(v) + float(np.float32(1e-8)))
        got = p + np.asarray(updates[path], np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, err_msg=path)


def test_optimizer_state_refusals(release_model, small_variables, tmp_path):
    from deepliflow_jax.checkpoint import load_optimizer_state, save_checkpoint
    from weights_convert.convert import convert_checkpoint, tf_optimizer_state

    _, weights_only = tf_tensors_to_flax(release_model)
    with pytest.raises(ConversionError, match="need the Adam slots .* found slots none"):
        tf_optimizer_state(weights_only)
    tensors = release_checkpoint_tensors(release_model)
    first = next(iter(tf_name_table()))
    del tensors[f"train/{first}/Adam_optimizer_1"], tensors["train/beta2_power"]
    with pytest.raises(ConversionError) as info:
        tf_optimizer_state(tf_tensors_to_flax(tensors)[1])
    assert f"missing slot Adam_optimizer_1 of {tf_name_table()[first].path}" in info.value.problems
    assert "need exactly one beta2_power for the optimizer state, found none" in \
        info.value.problems
    with pytest.raises(ValueError, match="--with_optimizer_state keeps a TF training "
                                         "checkpoint's Adam slots; a torch weights file"):
        convert_checkpoint("torch", tmp_path / "x.pt", tmp_path / "out",
                           with_optimizer_state=True)
    assert not (tmp_path / "out").exists()
    # a checkpoint without one says how to get it
    save_checkpoint(tmp_path / "plain", small_variables)
    with pytest.raises(FileNotFoundError, match="holds no optimizer state: convert the TF "
                                                "training checkpoint with .*--with_optimizer"):
        load_optimizer_state(tmp_path / "plain")


# ----------------------------------------------------------------------------- partitioned

def test_slice_keys_are_tfs_ordered_code():
    # ordered_code.cc's own examples of WriteSignedNumIncreasing
    assert tf_bundle._oc_signed(0x424242) == bytes.fromhex("f0424242")
    assert tf_bundle._oc_signed(-0x800) == bytes.fromhex("3800")
    for value in (0, 1, -1, 63, 64, -64, -65, 8191, 8192, -8193, 2 ** 62, 2 ** 63 - 1, -2 ** 63):
        code = tf_bundle._oc_signed(value)
        assert tf_bundle._oc_read_signed(code + b"\x80", 0) == (value, len(code)), value
    # EncodeTensorNameSlice("a", "-:2,3"): NumIncreasing 0, "a" + separator, rank 2, then
    # start/length per dimension (0, -1 for a whole one)
    assert tf_bundle.encode_slice_key("a", ((0, -1), (2, 3))) == \
        b"\x00" + b"a\x00\x01" + b"\x01\x02" + b"\x80\x7f" + b"\x82\x83"
    key = tf_bundle.encode_slice_key("x/\x00\xff", ((100, 2 ** 40), (0, -1)))
    assert key.startswith(b"\x00x/\x00\xff\xc3\xbf\x00\x01\x01\x02\xc0\x64\xfd\x00\x00")
    assert tf_bundle.decode_slice_key(key) == ("x/\x00\xff", ((100, 2 ** 40), (0, -1)))
    for bad, why in ((key[:-1], "ends at byte 20 where a signed number"),
                     (key[:16], "bad signed number at byte 13"), (key + b"\x80", "1 bytes after"),
                     (b"\x00abc", "no terminator"), (b"\x00a\x00\x02", r"bad escape .* at byte 2"),
                     (b"\x00a\x00\x01\x00", "rank 0"), (b"\x01\x05a\x00\x01", "leading number"),
                     (b"\x00a\x00\x01\x01\x01\x80\x7e", "start 0, length -2")):
        with pytest.raises(ValueError, match=why):
            tf_bundle.decode_slice_key(bad)


def test_partitioned_tensors_read_back_whole(tmp_path):
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((3, 3, 5, 7)).astype(np.float32)
    counts = np.arange(10, dtype=np.int32).reshape(2, 5)
    # TF's other spelling: whole dimensions as empty extents (0, -1)
    whole = tf_bundle.PartitionedTensor((2, 5), tuple(
        (((0, -1), (a, n)), counts[:, a:a + n]) for a, n in ((0, 2), (2, 3))))
    prefix = tf_bundle.write_bundle(tmp_path / "ck", {
        "k0": tf_bundle.partition(kernel, 0, 2), "k3": tf_bundle.partition(kernel, 3, 3),
        "counts": whole, "plain": kernel})
    bundle = tf_bundle.read_index(prefix)
    assert sorted(bundle.entries) == ["counts", "k0", "k3", "plain"]
    assert bundle.entries["k3"].slices == (((0, 3), (0, 3), (0, 5), (0, 3)),
                                           ((0, 3), (0, 3), (0, 5), (3, 2)),
                                           ((0, 3), (0, 3), (0, 5), (5, 2)))
    assert bundle.entries["counts"].slices == (((0, -1), (0, 2)), ((0, -1), (2, 3)))
    got = tf_bundle.read_tensors(bundle)
    for name, want in (("k0", kernel), ("k3", kernel), ("plain", kernel), ("counts", counts)):
        assert got[name].dtype == want.dtype, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    # each slice's checksum is verified, and a mismatch names the slice
    part = bundle.slice_data["k3"][bundle.entries["k3"].slices[1]]
    data = tf_bundle.data_path(prefix, 0, 1)
    raw = bytearray(data.read_bytes())
    raw[part.offset + 1] ^= 0x04
    data.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"checksum mismatch for tensor "
                                         r"'k3\[0:3, 0:3, 0:5, 3:5\]'"):
        tf_bundle.read_bundle(prefix, ["k3"])


PARTITIONED = {  # TF variable -> (axis, slices); each with its two Adam slots
    "model/context_network/conv1/kernel": (0, 3),  # [3, 3, 36, 128]
    "model/guidance_network/final_scene_flow_tensors/deconv_upsample2to1/kernel": (3, 2),
    "model/context_network/conv2/bias": (0, 3),  # [128]
    "model/guidance_network/rgb_guidance_connections/biases0b": (3, 2),  # [1, 1, 1, 16]
}


def test_partitioned_variables_convert_like_unpartitioned(release_model, release_converted,
                                                         tmp_path):
    """The release checkpoint with kernels and biases (and their Adam slots) saved as
    partitioned variables converts to the same weights, Adam state and report."""
    from deepliflow_jax.checkpoint import load_optimizer_state
    from weights_convert.convert import convert_checkpoint

    tensors = release_checkpoint_tensors(release_model, global_step=41)
    for var, (axis, num) in PARTITIONED.items():
        for name in (var, f"train/{var}/Adam_optimizer", f"train/{var}/Adam_optimizer_1"):
            tensors[name] = tf_bundle.partition(tensors[name], axis, num)
    prefix = tf_bundle.write_bundle(tmp_path / "partitioned", tensors)
    bundle = tf_bundle.read_index(prefix)
    assert len(bundle.slice_data) == 3 * len(PARTITIONED)
    assert {len(parts) for parts in bundle.slice_data.values()} == {2, 3}

    out = tmp_path / "converted"
    report = convert_checkpoint("tf", prefix, out, with_optimizer_state=True)
    want_dir, _ = release_converted
    assert _same_tree(load_checkpoint(out), load_checkpoint(want_dir))
    got_state, want_state = load_optimizer_state(out), load_optimizer_state(want_dir)
    for moment in ("mu", "nu"):
        assert _same_tree(got_state[moment], want_state[moment]), moment
    assert report.skipped == load_metadata(want_dir)["skipped"]
    assert load_metadata(out)["optimizer"]["adam_steps"] == 300


def _bad_partition(shape, specs):
    return tf_bundle.PartitionedTensor(shape, tuple(
        (spec, np.ones([n for _, n in spec], np.float32)) for spec in specs))


BAD_PARTITIONS = {  # [4, 3] tensor 'w': slices -> the problem named
    "overlap": ([((0, 3), (0, 3)), ((2, 2), (0, 3))],
                "w: slice [2:4, 0:3] overlaps slice [0:3, 0:3]"),
    "overlap along axis 1": ([((0, 4), (0, 2)), ((0, 4), (1, 2))],
                             "w: slice [0:4, 1:3] overlaps slice [0:4, 0:2]"),
    "gap": ([((0, 1), (0, 3)), ((2, 2), (0, 3))],
            "w: its 2 slices cover 9 of the 12 elements of [4, 3]: a gap"),
    "gap along axis 1": ([((0, 4), (0, 1)), ((0, 4), (1, 1))],
                         "w: its 2 slices cover 8 of the 12 elements of [4, 3]: a gap"),
    "exceeds the shape": ([((0, 2), (0, 3)), ((2, 3), (0, 3))],
                          "w: slice [2:5, 0:3] exceeds the shape [4, 3] (dimension 0)"),
    "another rank": ([((0, 2), (0, 3), (0, 1)), ((2, 2), (0, 3), (0, 1))],
                     "w: slice [0:2, 0:3, 0:1] has rank 3, the tensor [4, 3] has rank 2"),
}


@pytest.mark.parametrize("case", list(BAD_PARTITIONS))
def test_partitions_that_do_not_tile_are_refused(case, tmp_path):
    from weights_convert.convert import convert_checkpoint

    specs, problem = BAD_PARTITIONS[case]
    prefix = tf_bundle.write_bundle(tmp_path / "bad", {"w": _bad_partition((4, 3), specs),
                                                      "global_step": np.int64(1)})
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as info:
        convert_checkpoint("tf", prefix, out)
    assert info.value.source == str(prefix) and str(prefix) in str(info.value)
    assert problem in info.value.problems, info.value.problems
    assert not out.exists()


@pytest.mark.parametrize("corrupt, problem", [
    (lambda key: key[:-1], "where a signed number was expected"),
    (lambda key: key[:-2] + b"\xc0\x00" + key[-1:], "bad signed number at byte 8"),  # 0, 2 bytes
    (lambda key: key + b"\x00", "1 bytes after the slice of 'w'"),
    (lambda key: key[:3], "the tensor name has no terminator"),
    (lambda key: b"\x00w\x00\x07" + key[4:], "bad escape b'\\x00\\x07' in the name"),
    (lambda key: b"w\x80" + key[-1:], "is neither UTF-8 text"),
])
def test_undecodable_keys_are_refused_naming_checkpoint_and_key(corrupt, problem, tmp_path,
                                                                monkeypatch, capsys):
    """A corrupt slice key (or a key that is no text) is a ConversionError naming the
    checkpoint, the key's bytes and what in it is unexpected, never a UnicodeDecodeError."""
    encode = tf_bundle.encode_slice_key
    monkeypatch.setattr(tf_bundle, "encode_slice_key",
                        lambda name, spec: corrupt(encode(name, spec)) if spec[0][0] else
                        encode(name, spec))  # the second slice's key only
    prefix = tf_bundle.write_bundle(tmp_path / "bad", {"w": tf_bundle.partition(
        np.zeros((4, 3), np.float32), 0, 2)})
    monkeypatch.undo()
    bad_key = corrupt(encode("w", ((2, 2), (0, 3))))
    with pytest.raises(ConversionError) as info:
        tf_to_flax(prefix)
    assert info.value.source == str(prefix)
    text = [p for p in info.value.problems if problem in p]
    assert text and repr(bad_key) in text[0], info.value.problems
    # the slice whose key is unreadable counts as missing
    assert "w: slice [2:4, 0:3] is listed, but its data entry (key " in str(info.value)
    out = tmp_path / "out"
    assert cli(["--format=tf", f"--input={prefix}", f"--output={out}"]) == 1
    err = capsys.readouterr().err
    assert f"cannot convert {prefix}" in err and problem in err, err
    assert not out.exists()
