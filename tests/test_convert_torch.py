"""PyTorch reference model vs the Flax model, and the PyTorch <-> Flax converters.

Parity uses random weights with non-zero biases everywhere
(``init_params(seed, bias_std=0.1)``), converted Flax -> PyTorch, at two sizes:
64x128 run as is, and a KITTI-style 120x200 frame resized inside the network to
128x192 (legacy nearest) and back (legacy bilinear). Every pyramid level, the
unrefined level 2, the depth confidences and the output must agree to a relative
L2 error of 1e-5 in float32.
"""

import datetime
import io
import pickle
import zipfile
from pathlib import Path

import flax
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deepliflow_jax.checkpoint import load_checkpoint  # noqa: E402
from deepliflow_jax.model.build import forward, init_params, param_shapes  # noqa: E402
from weights_convert.__main__ import main as cli  # noqa: E402
from weights_convert.convert import (  # noqa: E402
    ConversionError,
    flax_to_torch_state_dict,
    load_torch_file,
    numpy_safe_globals,
    save_torch_file,
    torch_expected_shapes,
    torch_state_dict_to_flax,
    torch_to_flax,
)
from weights_convert.torch_model import (  # noqa: E402
    DeepLiDARFlow,
    frames_to_nchw,
    tf_same_padding,
)
from weights_convert.torch_names import torch_name_table  # noqa: E402

LEVELS = (6, 5, 4, 3, 2)
NAMING = Path(__file__).resolve().parents[1] / "weights_convert" / "NAMING.md"
# (frame size, network size): as is, and KITTI-style resize inside the network
SIZES = [((64, 128), None), ((120, 200), (128, 192))]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def make_frames(size, seed=0):
    """Two frames: RGB-like values and ~10% LiDAR points (0 elsewhere)."""
    rng = np.random.default_rng(seed)
    frames = rng.normal(0.0, 0.3, (1, 2) + tuple(size) + (4,)).astype(np.float32)
    frames[..., 3] *= rng.random((1, 2) + tuple(size)) < 0.1
    return frames


@pytest.fixture(scope="module")
def flax_vars():
    return init_params(seed=3, bias_std=0.1)


@pytest.fixture(scope="module")
def torch_net(flax_vars):
    torch.set_num_threads(2)
    net = DeepLiDARFlow().eval()
    state = flax_to_torch_state_dict(flax_vars)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return net


def test_name_table_matches_torch_model_and_flax():
    state = DeepLiDARFlow().state_dict()
    expected = torch_expected_shapes()
    assert sorted(state) == sorted(expected)
    for key, tensor in state.items():
        assert tuple(tensor.shape) == expected[key][1], key
    flax_paths = flax.traverse_util.flatten_dict(param_shapes()["params"], sep="/")
    assert sorted(e.path for e in torch_name_table().values()) == sorted(flax_paths)


def test_naming_doc_lists_the_table():
    rows = [line for line in NAMING.read_text().splitlines() if line.startswith("| `")]
    doc = {}
    for row in rows:
        cells = [c.strip().strip("`") for c in row.strip("|").split("|")]
        if cells[0] in torch_name_table():
            doc[cells[0]] = (cells[1], cells[2], cells[3])
    table = torch_name_table()
    expected = torch_expected_shapes()
    assert sorted(doc) == sorted(table)
    for key, (shape, kind, path) in doc.items():
        assert (shape, kind, path) == (str(list(expected[key][1])), table[key].kind,
                                       table[key].path), key


def test_tf_same_padding_is_asymmetric_for_stride_2():
    assert tf_same_padding(64, 3, 2) == (0, 1)  # PyTorch's padding=1 would be (1, 1)
    assert tf_same_padding(7, 3, 2) == (1, 1)
    assert tf_same_padding(10, 3, 1, dilation=4) == (4, 4)
    conv = DeepLiDARFlow().guidance_network.rgb_encoder.conv1a
    x = torch.randn(1, 3, 8, 10)
    with torch.no_grad():
        got = conv(x)
        ref = torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2), 0.1)
    assert got.shape == (1, 16, 4, 5)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("size,interp", SIZES, ids=["64x128", "120x200-to-128x192"])
def test_torch_reference_matches_flax(flax_vars, torch_net, size, interp):
    frames = make_frames(size)
    sf, aux = forward(flax_vars, frames, interp_size=interp)
    with torch.no_grad():
        tsf, taux = torch_net(frames_to_nchw(frames), interp_size=interp)
    assert tsf.shape == (1, 4) + tuple(size)
    errors = {f"level{lv}": _rel(_nhwc(t), f) for lv, t, f in zip(LEVELS, taux["flows"],
                                                                    aux["flows"])}
    errors["level2_unrefined"] = _rel(_nhwc(taux["levels"]["flow_level2_unrefined"]),
                                      aux["levels"]["flow_level2_unrefined"])
    for lv, t, f in zip(LEVELS, taux["confidences"], aux["confidences"]):
        errors[f"conf{lv}"] = _rel(_nhwc(t), f)
    errors["sceneflow"] = _rel(_nhwc(tsf), sf)
    print(f"torch vs flax {size} interp={interp}, relative L2:",
          {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) <= 1e-5, errors
    # a test that can fail: the flows are far from zero and differ between levels
    assert np.linalg.norm(np.asarray(aux["flows"][-1])) > 1e-2


def test_round_trip_flax_torch_flax_is_bit_exact(flax_vars, tmp_path):
    state = flax_to_torch_state_dict(flax_vars)
    for name in ("w.safetensors", "w.pt"):
        path = save_torch_file(state, tmp_path / name)
        back, report = torch_to_flax(path)
        assert report.parameter_count == 8296404 and not report.skipped
        same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                            flax_vars, back)
        assert all(jax.tree.leaves(same)), name
    # and through the CLI into an Orbax checkpoint and out again
    out = tmp_path / "ckpt"
    assert cli(["--format=torch", f"--input={tmp_path / 'w.pt'}", f"--output={out}"]) == 0
    assert cli(["--format=orbax", f"--input={out}", f"--output={tmp_path / 'again.pt'}"]) == 0
    again, _ = load_torch_file(tmp_path / "again.pt")
    assert sorted(again) == sorted(state)
    assert all(np.array_equal(again[k], state[k]) for k in state)
    restored = load_checkpoint(out)
    assert all(jax.tree.leaves(jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), flax_vars, restored)))


def test_wrapped_and_prefixed_state_dicts(flax_vars, tmp_path):
    state = {k: torch.from_numpy(v) for k, v in flax_to_torch_state_dict(flax_vars).items()}
    path = tmp_path / "train.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7,
                "optimizer": {"lr": 1e-4}}, path)
    variables, report = torch_to_flax(path)
    assert report.skipped == {"epoch": "training checkpoint item",
                              "optimizer": "training checkpoint item"}
    half = {k: v.to(torch.bfloat16) for k, v in state.items()}
    variables, _ = torch_state_dict_to_flax(half)  # exact upcast
    flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    assert flat["context_network/conv7/bias"].dtype == np.float32


def _bad_state(flax_vars):
    state = flax_to_torch_state_dict(flax_vars)
    del state["context_network.conv3.weight"]
    state["guidance_network.depth_encoder.nconv2b.bias1"] = np.zeros(65, np.float32)
    state["guidance_network.depth_encoder.nconv2b.bias2"] = np.zeros(64, np.float32)
    return state


def test_bad_state_dict_lists_all_problems_and_writes_nothing(flax_vars, tmp_path, capsys):
    with pytest.raises(ConversionError) as info:
        torch_state_dict_to_flax(_bad_state(flax_vars))
    text = str(info.value)
    assert len(info.value.problems) == 3, text
    assert "missing: context_network.conv3.weight [128, 128, 3, 3]" in text
    assert ("mis-shaped: guidance_network.depth_encoder.nconv2b.bias1 is [65], expected [64]"
            in text)
    assert "unexpected: guidance_network.depth_encoder.nconv2b.bias2" in text
    path = save_torch_file(_bad_state(flax_vars), tmp_path / "bad.safetensors")
    out = tmp_path / "out"
    assert cli(["--format=torch", f"--input={path}", f"--output={out}"]) == 1
    assert "3 problems (nothing written)" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_corrupted_torch_files_give_clear_errors(flax_vars, tmp_path):
    state = flax_to_torch_state_dict(flax_vars)
    small = {k: v for k, v in list(state.items())[:4]}
    st = save_torch_file(small, tmp_path / "w.safetensors")
    pt = save_torch_file(small, tmp_path / "w.pt")
    for path in (st, pt):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=f"unreadable .*{path.name}"):
            load_torch_file(path)
    # a pickle that is not weights only is refused, not executed, and not called corrupted
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"x": Path("/")}, f, protocol=2)
    with pytest.raises(ValueError, match="evil.pt holds objects that are not allowed in a "
                                         "weights-only load: pathlib.PosixPath") as info:
        load_torch_file(evil)
    assert "corrupted" not in str(info.value).replace(str(evil), "")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_torch_file(tmp_path / "missing.pt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown PyTorch weights suffix"):
        load_torch_file(tmp_path / "w.npz")
    with pytest.raises(FileExistsError, match="w.pt"):
        save_torch_file(small, pt)


# how training frameworks prefix the keys -> the note the report carries
PREFIXES = {
    "module._orig_mod.": "removed wrapper prefix 'module._orig_mod.' from every key",
    "_orig_mod.module.": "removed wrapper prefix '_orig_mod.module.' from every key",
    "module.module.": "removed wrapper prefix 'module.module.' from every key",
    "model.": "removed model name 'model.' from every key (the rest is exactly the name table)",
    "net.": "removed model name 'net.' from every key (the rest is exactly the name table)",
    "model.module.": "removed model name 'model.module.' from every key (the rest is exactly "
                     "the name table)",
}


@pytest.fixture(scope="module")
def torch_state(flax_vars):
    return {k: torch.from_numpy(v) for k, v in flax_to_torch_state_dict(flax_vars).items()}


def _same(a, b):
    return all(jax.tree.leaves(jax.tree.map(
        lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


@pytest.mark.parametrize("prefix", list(PREFIXES))
def test_stacked_wrappers_and_model_names_are_removed(prefix, torch_state, flax_vars):
    variables, report = torch_state_dict_to_flax({prefix + k: v for k, v in torch_state.items()})
    assert report.notes == [PREFIXES[prefix]] and not report.skipped
    assert _same(variables, flax_vars)


def test_wrapper_then_model_name(torch_state, flax_vars):
    variables, report = torch_state_dict_to_flax(
        {f"_orig_mod.model.{k}": v for k, v in torch_state.items()})
    assert report.notes == ["removed wrapper prefix '_orig_mod.' from every key",
                            "removed model name 'model.' from every key (the rest is exactly "
                            "the name table)"]
    assert _same(variables, flax_vars)


def test_model_name_is_kept_unless_the_rest_is_exactly_the_table(torch_state):
    table = torch_name_table()
    # one more module under the same name: nothing is stripped, every key is refused
    extra = {f"model.{k}": v for k, v in torch_state.items()}
    extra["model.criterion.weight"] = torch.ones(3)
    with pytest.raises(ConversionError) as info:
        torch_state_dict_to_flax(extra)
    text = str(info.value)
    assert "unexpected: model.criterion.weight" in text
    assert "missing: context_network.conv1.weight" in text
    assert len(info.value.problems) == 2 * len(table) + 1
    # one key short under the name: refused by name, no stripping
    short = {f"net.{k}": v for k, v in torch_state.items() if k != "context_network.conv7.bias"}
    with pytest.raises(ConversionError, match="unexpected: net.context_network.conv1.weight"):
        torch_state_dict_to_flax(short)
    # two different names (a model and its EMA copy): refused
    two = {f"model.{k}": v for k, v in torch_state.items()}
    two.update({f"ema.{k}": v for k, v in torch_state.items()})
    with pytest.raises(ConversionError) as info:
        torch_state_dict_to_flax(two)
    assert len(info.value.problems) == 3 * len(table)


def _training_checkpoint(torch_state, path):
    """A Lightning-style training checkpoint with numpy scalars beside the state dict."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in torch_state.items()}, "epoch": 3,
                "best_epe": np.float64(2.1), "lr": np.float32(1e-4), "step": np.int64(7000),
                "improved": np.bool_(True), "samples": np.array([100, 500, 1000]),
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}]}, path)
    return path


def test_training_checkpoint_with_numpy_scalars(torch_state, flax_vars, tmp_path, capsys):
    path = _training_checkpoint(torch_state, tmp_path / "last.ckpt.pth")
    before = set(torch.serialization.get_safe_globals())
    variables, report = torch_to_flax(path)
    assert _same(variables, flax_vars)
    assert report.skipped == {k: "training checkpoint item" for k in (
        "epoch", "best_epe", "lr", "step", "improved", "samples", "optimizer_states")}
    # the numpy allow-list is scoped to the load, never added globally (torch may hand the
    # list back in another order)
    assert set(torch.serialization.get_safe_globals()) == before
    out = tmp_path / "ckpt"
    assert cli(["--format=torch", f"--input={path}", f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    assert "removed model name 'model.' from every key" in printed
    assert "skipped 7 x training checkpoint item" in printed
    assert _same(load_checkpoint(out), flax_vars)


def _rewrite_pickle(path: Path, edit) -> None:
    """Edits the ``data.pkl`` of a ``torch.save`` zip in place (other members unchanged)."""
    with zipfile.ZipFile(path) as zin:
        members = [(info, zin.read(info.filename)) for info in zin.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        for info, data in members:
            zout.writestr(info, edit(data) if info.filename.endswith("/data.pkl") else data)
    path.write_bytes(buf.getvalue())


def test_numpy_1_scalar_names_are_allowed(tmp_path):
    path = tmp_path / "np1.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "best_epe": np.float64(2.5),
                "curve": np.arange(3.0)}, path)

    def numpy1(data):
        assert b"numpy._core.multiarray" in data
        return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")

    _rewrite_pickle(path, numpy1)
    state, skipped = load_torch_file(path)
    assert sorted(state) == ["w"] and sorted(skipped) == ["best_epe", "curve"]
    assert any(isinstance(g, tuple) and g[1] == "numpy.core.multiarray.scalar"
               for g in numpy_safe_globals())


def test_objects_outside_the_allow_list_are_named(torch_state, tmp_path):
    state = dict(list(torch_state.items())[:2])
    cases = {"path.pt": ({"state_dict": state, "log_dir": Path("/tmp"), "best": np.float64(1.0),
                          "date": datetime.date(2020, 1, 1)},
                         "datetime.date, pathlib.PosixPath"),  # every one, not only the first
             "objects.pt": ({"state_dict": state, "names": np.array(["a", 1], dtype=object)},
                            "numpy.dtypes.ObjectDType")}
    for name, (obj, culprit) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ValueError) as info:
            load_torch_file(tmp_path / name)
        text = str(info.value).replace(str(tmp_path), "")
        assert text.startswith(f"/{name} holds objects that are not allowed in a "
                               f"weights-only load: {culprit}"), text
        assert "corrupted" not in text and "numpy._core.multiarray.scalar" not in text
    # a truncated training checkpoint with numpy scalars is still called truncated
    path = _training_checkpoint(torch_state, tmp_path / "cut.pth")
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match="unreadable PyTorch file .*cut.pth .*corrupted, "
                                         "truncated"):
        load_torch_file(path)


@pytest.mark.parametrize("case", ["i", "ii"])
def test_torch_reference_matches_tf_golden(case):
    """TF-named weights -> Flax -> PyTorch, against real TF kernels (no jit: cheap)."""
    import json

    from tests.tf_golden.weights import make_weights
    from weights_convert.convert import tf_tensors_to_flax

    fix = Path(__file__).parent / "fixtures"
    golden = np.load(fix / "tf_net_golden.npz")
    shapes = {k: tuple(v) for k, v in json.loads((fix / "tf_variables.json").read_text()).items()}
    variables, _ = tf_tensors_to_flax(make_weights(shapes))
    net = DeepLiDARFlow().eval()
    net.load_state_dict({k: torch.from_numpy(v)
                         for k, v in flax_to_torch_state_dict(variables).items()})
    interp = tuple(golden["ii_interp_shape"]) if case == "ii" else None
    with torch.no_grad():
        sf, aux = net(frames_to_nchw(golden[f"{case}_input"]), interp_size=interp,
                      out_size=tuple(golden[f"{case}_gt_shape"]))
    errors = {f"level{lv}": _rel(_nhwc(f), golden[f"{case}_flow{lv}"])
              for lv, f in zip(LEVELS, aux["flows"])}
    errors["sceneflow"] = _rel(_nhwc(sf), golden[f"{case}_out_sf"])
    print(f"torch vs TF golden case {case}, relative L2:",
          {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) <= 1e-5, errors
