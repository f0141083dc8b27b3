"""Orbax checkpoints of DeepLiDARFlow: round trip, metadata, atomic writes, clear errors."""

import gc
import json
import os
import shutil
import time

import flax
import jax
import numpy as np
import pytest

from deepliflow_jax import checkpoint as ckpt
from deepliflow_jax.checkpoint import load_checkpoint, load_metadata, save_checkpoint
from tests.interrupts import sigkill_after_ready


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()
                  if any(f".{role}-" in p.name for role in ("tmp", "new", "old", "trash")))


def _equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(
        lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def test_round_trip_and_metadata(variables, tmp_path):
    out = save_checkpoint(tmp_path / "ck", variables, {"source": "unit test", "format": "flax"})
    assert out == (tmp_path / "ck").absolute()
    restored = load_checkpoint(out)
    assert _equal(variables, restored)
    leaf = restored["params"]["context_network"]["conv7"]["kernel"]
    assert isinstance(leaf, jax.Array) and leaf.dtype == np.float32
    meta = load_metadata(out)
    assert meta["architecture"] == "DeepLiDARFlow" and meta["source"] == "unit test"
    assert meta["parameter_count"] == 8296404 and meta["num_tensors"] == 257
    assert meta["date"].startswith("20")
    assert meta["kind"] == "float" and meta["kind_version"] == 1
    assert ckpt.checkpoint_kind(out) == "float"
    assert json.loads((out / ckpt.METADATA_FILE).read_text()) == meta
    assert _leftovers(tmp_path) == []


def test_never_clobbers_unless_overwrite(variables, tmp_path):
    out = tmp_path / "ck"
    save_checkpoint(out, variables)
    other = jax.tree.map(lambda x: x + 1, variables)
    with pytest.raises(FileExistsError, match="already exists"):
        save_checkpoint(out, other)
    assert _equal(variables, load_checkpoint(out))
    save_checkpoint(out, other, overwrite=True)  # a checkpoint may be replaced
    assert _equal(other, load_checkpoint(out))
    empty = tmp_path / "empty"
    empty.mkdir()
    save_checkpoint(empty, variables, overwrite=True)  # so may an empty folder
    assert _leftovers(tmp_path) == []


def test_overwrite_refuses_a_folder_that_is_not_a_checkpoint(variables, tmp_path):
    out = tmp_path / "ck"
    (out / "sub").mkdir(parents=True)
    (out / "important.txt").write_text("keep me")
    (out / "sub" / "more.txt").write_text("me too")
    message = (f"refusing to overwrite {out}: it is not a deepliflow_jax checkpoint (holds "
               "important.txt, sub/); remove it or choose another path")
    with pytest.raises(FileExistsError, match="already exists"):
        save_checkpoint(out, variables)
    with pytest.raises(FileExistsError) as err:
        save_checkpoint(out, variables, overwrite=True)
    assert str(err.value) == message
    assert (out / "important.txt").read_text() == "keep me"
    assert (out / "sub" / "more.txt").read_text() == "me too"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    with pytest.raises(FileExistsError, match=r"notes.txt: it is not a deepliflow_jax "
                       r"checkpoint \(it is a file\)"):
        save_checkpoint(a_file, variables, overwrite=True)
    assert a_file.read_text() == "keep"
    bare = tmp_path / "bare"  # an Orbax tree without our metadata loads, but is not ours
    with ckpt._checkpointer() as ckptr:
        ckptr.save(bare, {"params": {"w": np.zeros(2, np.float32)}})
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_checkpoint(bare, variables, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["bare", "ck", "notes.txt"]


@pytest.mark.slow  # ~25 interrupted saves and loads (of the whole tree, 8 channels a layer)
def test_interrupted_overwrite_leaves_the_old_or_the_new_checkpoint(small_variables, tmp_path):
    from tests.interrupts import each_interruption

    variables = small_variables
    new = jax.tree.map(lambda x: x + 1, variables)
    pristine = tmp_path / "pristine"
    save_checkpoint(pristine, variables)
    out = tmp_path / "work" / "ck"
    seen = set()

    def reset():
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir()
        shutil.copytree(pristine, out)

    def check(k):
        loaded = load_checkpoint(out)  # settles what the interruption left
        assert _equal(new, loaded) or _equal(variables, loaded), f"call {k}"
        seen.add("new" if _equal(new, loaded) else "old")
        assert _leftovers(out.parent) == [], f"call {k}"

    n = each_interruption(lambda: save_checkpoint(out, new, overwrite=True), reset, check)
    assert n > 8 and seen == {"old", "new"}
    save_checkpoint(out, variables, overwrite=True)  # and the next save works
    assert _equal(variables, load_checkpoint(out)) and _leftovers(out.parent) == []


@pytest.mark.slow  # ~16 interrupted saves and loads of a small model per kind
@pytest.mark.parametrize("kind", ["packed", "int8"])
def test_interrupted_overwrite_of_a_compressed_kind(small_variables, tmp_path, kind):
    """The packed and int8 kinds go through the same atomic folder writer as float ones:
    the same filesystem steps as a float overwrite (which the test above interrupts at
    each call), and the old or the new model when interrupted at the start of each."""
    from deepliflow_jax.compress import int8
    from deepliflow_jax.compress.prune import prune
    from deepliflow_jax.compress.quantize import QuantConfig
    from tests.interrupts import each_interruption, filesystem_steps

    pruned, masks = prune(small_variables, 50)
    ranges = {p: 1.0 for p in int8._conv_layers(int8.Int8Config())}

    def save(path, version, overwrite=False):
        scaled = jax.tree.map(lambda x: x * (1 + version), pruned)
        if kind == "int8":
            return save_checkpoint(path, int8.quantize_int8(scaled, ranges), overwrite=overwrite)
        return save_checkpoint(path, scaled, quant=QuantConfig(bits=4), masks=masks,
                               overwrite=overwrite)

    versions = [load_checkpoint(save(tmp_path / f"v{v}", v), kind=kind) for v in (0, 1)]
    assert not _equal(*versions)
    out = tmp_path / "work" / "ck"
    seen = set()

    def reset():
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir()
        shutil.copytree(tmp_path / "v0", out)

    def check(k):
        loaded = load_checkpoint(out, kind=kind)  # settles what the interruption left
        assert any(_equal(v, loaded) for v in versions), f"call {k}"
        seen.add("new" if _equal(versions[1], loaded) else "old")
        assert _leftovers(out.parent) == [], f"call {k}"

    float_ck = save_checkpoint(tmp_path / "float", small_variables)
    reset()
    assert filesystem_steps(lambda: save(out, 1, overwrite=True)) == filesystem_steps(
        lambda: save_checkpoint(float_ck, small_variables, overwrite=True))
    n = each_interruption(lambda: save(out, 1, overwrite=True), reset, check, per_run=1)
    assert n > 8 and seen == {"old", "new"}


def test_a_save_left_between_its_two_renames_is_recovered(variables, tmp_path):
    """What an older version, or a SIGKILL, leaves: no ``ck``, only hidden siblings."""
    new = jax.tree.map(lambda x: x + 1, variables)
    save_checkpoint(tmp_path / "ck", variables)
    os.rename(tmp_path / "ck", tmp_path / ".ck.old-1a2b3c4d")  # the old code's name
    assert ckpt.checkpoint_exists(tmp_path / "ck")
    assert _equal(variables, load_checkpoint(tmp_path / "ck")) and _leftovers(tmp_path) == []
    # a complete staged copy (its metadata file is there) wins over the old one
    save_checkpoint(tmp_path / "staged", new)
    os.rename(tmp_path / "ck", tmp_path / ".ck.old-1a2b3c4d")
    os.rename(tmp_path / "staged", tmp_path / ".ck.new-999999999-00ff00ff")
    assert _equal(new, load_checkpoint(tmp_path / "ck")) and _leftovers(tmp_path) == []
    # an incomplete staged copy (no metadata file) is dropped, the old one restored
    save_checkpoint(tmp_path / "staged", variables)
    (tmp_path / "staged" / ckpt.METADATA_FILE).unlink()
    os.rename(tmp_path / "staged", tmp_path / ".ck.new-999999999-00ff00ff")
    os.rename(tmp_path / "ck", tmp_path / ".ck.old-999999999-00ff00ff")
    assert _equal(new, load_checkpoint(tmp_path / "ck")) and _leftovers(tmp_path) == []


SAVE_LOOP = """
import os, sys, time
import jax
from deepliflow_jax.checkpoint import save_checkpoint
from deepliflow_jax.model.build import init_params

rename = os.rename
def slow_rename(*args, **kwargs):  # widens the windows between the filesystem steps
    time.sleep(0.05)
    return rename(*args, **kwargs)
os.rename = slow_rename
old = init_params(seed=0, bias_std=0.1)
new = jax.tree.map(lambda x: x + 1, old)
print("ready", flush=True)
while True:
    save_checkpoint(sys.argv[1], new, overwrite=True)
    save_checkpoint(sys.argv[1], old, overwrite=True)
"""


@pytest.mark.slow  # three subprocesses
def test_sigkill_in_the_middle_of_saves_leaves_a_whole_checkpoint(variables, tmp_path):
    new = jax.tree.map(lambda x: x + 1, variables)
    out = tmp_path / "ck"
    save_checkpoint(out, variables)
    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(3):
        sigkill_after_ready(script, [out], env, root, rng.uniform(0.2, 2.0))
        seen.append(sorted(p.name.split("-")[0] for p in tmp_path.iterdir()))
        loaded = load_checkpoint(out)
        assert _equal(variables, loaded) or _equal(new, loaded)
        assert _leftovers(tmp_path) == []
    assert any(".ck.new" in names for names in seen)  # killed mid-save at least once


def test_failed_write_leaves_nothing(variables, tmp_path, monkeypatch):
    class Full:  # an Orbax checkpointer on a full disk
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def save(self, *args, **kwargs):
            raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_checkpointer", Full)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ck", variables)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_checkpoint(tmp_path / "ck", variables, {"bad": object()})
    assert os.listdir(tmp_path) == []


def _other_architecture(variables):
    flat = flax.traverse_util.flatten_dict(variables, sep="/")
    flat["params/context_network/conv7/kernel"] = np.zeros((3, 3, 32, 2), np.float32)
    del flat["params/context_network/conv6/bias"]
    flat["params/context_network/conv8/kernel"] = np.zeros((3, 3, 2, 2), np.float32)
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def test_refuses_other_architectures(variables, tmp_path):
    other = _other_architecture(variables)
    with pytest.raises(ValueError, match="3 problems") as info:
        save_checkpoint(tmp_path / "ck", other)
    assert not (tmp_path / "ck").exists()
    # such a tree written with Orbax directly does not load either
    import orbax.checkpoint as ocp

    host = jax.tree.map(np.asarray, other)
    with ocp.StandardCheckpointer() as c:
        c.save((tmp_path / "other" / ckpt.PARAMS_DIR).absolute(), host)
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "other")
    text = str(info.value)
    assert "not a DeepLiDARFlow checkpoint of this architecture (3 problems)" in text
    assert "mis-shaped: params/context_network/conv7/kernel is [3, 3, 32, 2]" in text
    assert "missing: params/context_network/conv6/bias" in text
    assert "unexpected: params/context_network/conv8/kernel" in text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax teardown
def test_missing_and_corrupted_checkpoints(variables, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a DeepLiDARFlow checkpoint"):
        load_checkpoint(tmp_path / "empty")
    out = save_checkpoint(tmp_path / "ck", variables)
    (out / ckpt.METADATA_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable checkpoint metadata"):
        load_metadata(out)
    # truncate the largest tensor-store file: metadata reads, the tensors do not
    files = [p for p in (out / ckpt.PARAMS_DIR).rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"could not read the checkpoint tensors.*ck/params"):
        load_checkpoint(out)
    # garbage everywhere in the store: the tree metadata itself is unreadable
    for path in files:
        if path.parent.name == "d":
            path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"(unreadable|could not read).*ck/params.*corrupted"):
        load_checkpoint(out)
    # orbax's failed reads leave callbacks that complain once collected: collect them here
    time.sleep(0.2)
    gc.collect()


def _one_of_each_kind(small_variables, tmp_path):
    from deepliflow_jax.compress import int8
    from deepliflow_jax.compress.prune import prune
    from deepliflow_jax.compress.quantize import QuantConfig

    pruned, masks = prune(small_variables, 50)
    q = int8.quantize_int8(small_variables,
                           {p: 1.0 for p in int8._conv_layers(int8.Int8Config())})
    return {"float": save_checkpoint(tmp_path / "float", small_variables),
            "packed": save_checkpoint(tmp_path / "packed", pruned, quant=QuantConfig(bits=6),
                                      masks=masks),
            "int8": save_checkpoint(tmp_path / "int8", q, {"kind": "float"})}  # not a note


def test_a_checkpoint_of_another_kind_is_refused_naming_both(small_variables, tmp_path):
    paths = _one_of_each_kind(small_variables, tmp_path)
    for kind, path in paths.items():
        assert ckpt.checkpoint_kind(path) == kind == load_metadata(path)["kind"]
        load_checkpoint(path, kind=kind)  # its own kind loads
    for path in (paths["float"], paths["packed"]):  # float parameters: either kind
        assert _equal(load_checkpoint(path), load_checkpoint(path, kind=ckpt.checkpoint_kind(path)))
    expected = {
        ("float", "int8"): "holds kind 'float' (float32 parameters), not the requested kind "
                           "'int8'; make an int8 model of its parameters with "
                           "compress.int8.calibrate and quantize_int8",
        ("float", "packed"): "holds kind 'float' (float32 parameters), not the requested kind "
                             "'packed'; pass kind='float' or kind=None (both give float32 "
                             "parameters)",
        ("packed", "float"): "holds kind 'packed' (pruned/quantized parameters stored as "
                             "integer codes, decoded to float32 on load), not the requested "
                             "kind 'float'; pass kind='packed' or kind=None",
        ("packed", "int8"): "holds kind 'packed' (pruned/quantized parameters stored as "
                            "integer codes, decoded to float32 on load), not the requested "
                            "kind 'int8'; make an int8 model",
        ("int8", None): "holds kind 'int8' (an int8 model: integer kernels and activation "
                        "scales for compress.int8), not the requested float parameters (kind "
                        "'float' or 'packed'); load it with load_checkpoint(..., kind='int8') "
                        "and run it with compress.int8.int8_apply",
        ("int8", "float"): "holds kind 'int8' (an int8 model: integer kernels and activation "
                           "scales for compress.int8), not the requested kind 'float'",
        ("int8", "packed"): "holds kind 'int8' (an int8 model: integer kernels and activation "
                            "scales for compress.int8), not the requested kind 'packed'",
    }
    for (stored, requested), message in expected.items():
        with pytest.raises(ValueError) as err:
            load_checkpoint(paths[stored], kind=requested)
        assert str(err.value).startswith(f"checkpoint {paths[stored]} {message}"), err.value
    with pytest.raises(ValueError, match=r"kind must be None \(float parameters\) or one of "
                       r"'float', 'packed', 'int8', got 'bf16'"):
        load_checkpoint(paths["float"], kind="bf16")


def test_kind_metadata_is_checked(small_variables, tmp_path):
    paths = _one_of_each_kind(small_variables, tmp_path)
    meta_file = paths["float"] / ckpt.METADATA_FILE
    meta = json.loads(meta_file.read_text())
    for key in ("kind", "kind_version"):  # written before kinds existed: float
        del meta[key]
    meta_file.write_text(json.dumps(meta))
    assert ckpt.checkpoint_kind(paths["float"]) == "float"
    assert _equal(small_variables, load_checkpoint(paths["float"]))
    meta_file.write_text(json.dumps({**meta, "kind": "fp8"}))
    with pytest.raises(ValueError, match="holds an unknown kind 'fp8' \\(this version of "
                       "deepliflow_jax reads 'float', 'packed', 'int8'\\)"):
        load_checkpoint(paths["float"])
    meta_file.write_text(json.dumps({**meta, "kind": "float", "kind_version": 2}))
    with pytest.raises(ValueError, match="kind 'float' version 2 is not the one this version "
                       "of deepliflow_jax reads \\(1\\)"):
        load_checkpoint(paths["float"])
    meta_file.write_text(json.dumps({**meta, "kind": "packed", "packing": {}}))
    with pytest.raises(ValueError, match=r"its metadata says kind 'packed', but its tensor "
                       r"tree holds \['params'\] \(expected \['packed'\]\)"):
        load_checkpoint(paths["float"])


def test_optimizer_state_item_round_trip_and_refusals(small_variables, tmp_path):
    """``save_checkpoint(..., optimizer=)`` keeps an Adam state beside the model
    (``DIR/optimizer``); other kinds, other shapes and missing entries are refused."""
    mu = jax.tree.map(lambda x: np.full(np.shape(x), 0.5, np.float32), small_variables)
    nu = jax.tree.map(lambda x: np.full(np.shape(x), 0.25, np.float32), small_variables)
    state = {"mu": mu, "nu": nu, "beta1_power": 0.9 ** 3, "beta2_power": 0.999 ** 3,
             "count": 2}
    path = save_checkpoint(tmp_path / "c", small_variables, {"optimizer": {"kind": "tf1_adam"}},
                           optimizer=state)
    got = ckpt.load_optimizer_state(path)
    assert int(got["count"]) == 2 and got["beta1_power"] == np.float32(0.9 ** 3)
    for a, b in zip(jax.tree.leaves(got["nu"]), jax.tree.leaves(nu), strict=True):
        np.testing.assert_array_equal(a, b)
    assert load_metadata(path)["optimizer"] == {"kind": "tf1_adam"}
    assert sorted(p.name for p in path.iterdir()) == ["deepliflow_checkpoint.json", "optimizer",
                                                      "params"]
    with pytest.raises(ValueError, match="an optimizer state is kept with float parameters "
                                         "only"):
        save_checkpoint(tmp_path / "d", small_variables, optimizer=state, bits=8)
    with pytest.raises(ValueError, match="optimizer must be a dict with mu, nu"):
        save_checkpoint(tmp_path / "d", small_variables, optimizer={"mu": mu})
    wrong = dict(state, nu={"params": {"context_network": {}}})
    with pytest.raises(ValueError, match="the optimizer's nu do not match the DeepLiDARFlow "
                                         "parameters"):
        save_checkpoint(tmp_path / "d", small_variables, optimizer=wrong)
    assert not (tmp_path / "d").exists()
