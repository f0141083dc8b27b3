"""Every writer leaves the complete old or the complete new content at the path users name.

Each writer is interrupted (``KeyboardInterrupt``) at each of its filesystem steps
(``tests/interrupts.py``); afterwards the path reads back as the old or the new
content, bit for bit, and the next call leaves no leftovers. Folder writers refuse
a folder that is not of their kind. The checkpoint writers have their own tests
(``test_checkpoint.py``, ``test_train_resume.py``).
"""

import json
import os
import shutil
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from deepliflow_jax import fileio
from tests.interrupts import each_interruption

ROLES = (".tmp-", ".new-", ".old-", ".trash-")


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if any(r in p.name for r in ROLES))


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb))


def check_file_writer(folder: Path, write, read, files: int = 0) -> int:
    """``write(version)`` writes version 0 or 1; ``read()`` reads it back.

    ``files > 0``: ``read()`` returns that many files' contents, each of which must be
    old or new (a writer of several files replaces each one atomically, not the set).
    """
    folder.mkdir(parents=True, exist_ok=True)
    write(1)
    new = read()
    write(0)
    old = read()
    assert not _same(old, new), "the two versions must differ"
    seen = set()

    def reset():
        shutil.rmtree(folder)
        folder.mkdir()
        write(0)

    def check(step):
        got = read()
        for i in range(files) if files else [None]:
            g, o, n = (got, old, new) if i is None else (got[i], old[i], new[i])
            assert _same(g, o) or _same(g, n), f"interrupted at {step}: neither old nor new {i}"
            seen.add("new" if _same(g, n) else "old")
        write(1)  # the next write cleans what the interruption left
        assert _same(read(), new) and _hidden_leftovers(folder) == [], step

    n = each_interruption(lambda: write(1), reset, check)
    assert seen == {"old", "new"}, seen
    return n


# ----------------------------------------------------------------------------- primitives


def test_atomic_write_keeps_old_or_new_and_cleans_up(tmp_path):
    path = tmp_path / "f" / "a.txt"
    check_file_writer(tmp_path / "f", lambda v: fileio.write_text_atomic(path, f"version {v}" * v),
                      lambda: path.read_text())


def test_replace_dir_keeps_old_or_new_and_recovers(tmp_path):
    path = tmp_path / "w" / "out"
    marker = "kind.json"

    def fill(version):
        def write(staged):
            (staged / "sub").mkdir()
            for i in range(3):
                (staged / "sub" / f"{i}.bin").write_bytes(bytes([version]) * (i + 1))
        return write

    def write(version):
        fileio.replace_dir(path, fill(version), marker=marker, marker_text=f"{version}",
                           kind="a test folder", overwrite=True)

    def read():
        fileio.recover_dir(path, marker)
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
                if p.is_file()}

    n = check_file_writer(tmp_path / "w", write, read)
    assert n >= 10


def test_leftovers_of_a_live_process_are_left_alone(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    live = tmp_path / f".out.new-{os.getppid()}-0123abcd"  # the parent process is alive
    dead = tmp_path / ".out.new-999999999-0123abcd"
    live.mkdir()
    dead.mkdir()
    assert fileio.recover_dir(path, "m.json")
    assert live.exists() and not dead.exists()


def test_refusal_messages(tmp_path):
    folder = tmp_path / "x"
    (folder / "sub").mkdir(parents=True)
    (folder / "important.txt").write_text("keep")
    with pytest.raises(FileExistsError) as err:
        fileio.check_replaceable(folder, "m.json", "a thing")
    assert str(err.value) == (f"refusing to overwrite {folder}: it is not a thing (holds "
                               "important.txt, sub/); remove it or choose another path")
    with pytest.raises(FileExistsError) as err:
        fileio.claim_dir(folder, "m.json", "a thing")
    assert str(err.value) == (f"refusing to write into {folder}: it is not a thing (holds "
                              "important.txt, sub/); remove it or choose another path")
    for i in range(8):
        (folder / f"f{i}").write_text("")
    with pytest.raises(FileExistsError, match=r"holds f0, f1, f2, f3, f4, f5, \.\.\. 4 more\)"):
        fileio.check_replaceable(folder, "m.json", "a thing")
    with pytest.raises(FileExistsError, match="already exists"):
        fileio.replace_dir(folder, lambda d: None, marker="m.json", marker_text="",
                           kind="a thing")
    assert (folder / "important.txt").read_text() == "keep"


# ----------------------------------------------------------------------------- file writers


def test_png_and_pfm_writers(tmp_path):
    from deepliflow_jax.data import io

    path = tmp_path / "w" / "a.png"
    img = np.arange(4 * 6 * 3, dtype=np.uint16).reshape(4, 6, 3) * 300
    check_file_writer(tmp_path / "w", lambda v: io.write_png(path, img + v),
                      lambda: io.read_png(path))
    path = tmp_path / "p" / "a.pfm"
    check_file_writer(tmp_path / "p", lambda v: io.write_pfm(path, img.astype(np.float32) + v),
                      lambda: io.read_pfm(path)[0])


def test_vis_writers(tmp_path):
    from deepliflow_jax import vis
    from deepliflow_jax.data.io import read_png

    path = tmp_path / "v" / "a.png"
    check_file_writer(tmp_path / "v", lambda v: vis.save_png(path, np.full((4, 5), v / 2)),
                      lambda: read_png(path))
    image = np.zeros((16, 32, 3), np.float32)
    sf = np.ones((16, 32, 4), np.float32)
    path = tmp_path / "f" / "fig5.png"
    check_file_writer(tmp_path / "f",
                      lambda v: vis.save_fig5_matplotlib(path, image, image + v / 2,
                                                         [("a", sf * (1 + v))]),
                      lambda: read_png(path))


def test_study_record_log_and_split_writers(tmp_path):
    from deepliflow_jax.data.dataset import write_nine_to_one_split
    from deepliflow_jax.data.synthetic import write_split_file
    from deepliflow_jax.study.records import RecordStore, RunLog

    root = tmp_path / "r"
    check_file_writer(root, lambda v: RecordStore(root).put("k", {"v": v}),
                      lambda: json.loads((root / "records" / "k.json").read_text()))

    def log(v):
        run = RunLog(root, "curve")
        run.log(0, {"loss": float(v)})
        run.close()

    check_file_writer(root, log, lambda: (root / "curve.csv").read_text())
    path = root / "split.txt"
    check_file_writer(root, lambda v: write_split_file(path, 3 + v), path.read_text)
    check_file_writer(root, lambda v: write_nine_to_one_split(path, 10 + v), path.read_text)


def test_study_results_writer(tmp_path, monkeypatch):
    """results.json/csv, tables.md and a plot: each file old or new at each step."""
    from deepliflow_jax.data.io import read_png
    from deepliflow_jax.study import plots, report
    from deepliflow_jax.study.config import make_config

    root = tmp_path / "s"
    cfg = make_config("tiny")
    names = ["results.json", "results.csv", "tables.md", "fig1_epe_quant_prune.png"]
    # one plot of the four (each is the same savefig_atomic call): keeps the test short
    monkeypatch.setattr(plots, "write_plots", lambda out, records, cfg, intervals=None: [
        plots.fig1(out, records, cfg)])

    def read():
        return [json.loads((root / names[0]).read_text()), (root / names[1]).read_text(),
                (root / names[2]).read_text(), read_png(root / names[3])]

    def records(v):
        return {"baseline": {"kind": "post", "metrics": {"epe": 1.0 + v, "sf": 10.0}}}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty legends
        check_file_writer(root, lambda v: report.write_all(root, records(v), cfg),
                          read, files=len(names))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_converter_file_outputs(tmp_path, suffix):
    from weights_convert.convert import load_torch_file, save_torch_file

    path = tmp_path / "t" / f"w{suffix}"
    state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    check_file_writer(tmp_path / "t",
                      lambda v: save_torch_file({k: x + v for k, x in state.items()}, path,
                                                overwrite=True),
                      lambda: load_torch_file(path)[0])


def test_tf_bundle_writer_is_whole_or_absent(tmp_path):
    from weights_convert import tf_bundle

    prefix = tmp_path / "b" / "ck"
    tensors = {"w": np.arange(5, dtype=np.float32), "v": np.ones((2, 2), np.int32)}
    index = prefix.with_name("ck.index")

    def reset():
        shutil.rmtree(prefix.parent, ignore_errors=True)
        prefix.parent.mkdir()

    def check(step):
        if index.exists():  # a bundle is found by its index: then it must be whole
            assert _same(tf_bundle.read_tensors(tf_bundle.read_index(prefix)), tensors), step
        else:
            tf_bundle.write_bundle(prefix, tensors)  # the next write completes it
        assert _same(tf_bundle.read_tensors(tf_bundle.read_index(prefix)), tensors)
        assert _hidden_leftovers(prefix.parent) == [], step

    each_interruption(lambda: tf_bundle.write_bundle(prefix, tensors), reset, check)
    with pytest.raises(FileExistsError, match="never overwrites"):
        tf_bundle.write_bundle(prefix, tensors)


def test_timing_and_trade_off_result_writers(tmp_path):
    from deepliflow_jax.data.io import read_png
    from deepliflow_jax.profile.report import write_results
    from deepliflow_jax.search.report import tradeoff_plot

    path = tmp_path / "t" / "result.json"
    check_file_writer(tmp_path / "t", lambda v: write_results({"v": v}, str(path), None),
                      lambda: json.loads(path.read_text()))

    def result(v):
        rows = [{"name": "dense", "ratio": 0.0, "int8": False, "latency_ms": 10.0, "epe": 1.0},
                {"name": "pruned_0.5", "ratio": 0.5, "int8": False, "latency_ms": 6.0 + v,
                 "epe": 1.2}]
        return {"rows": rows, "environment": {"platform": "cpu"}}

    path = tmp_path / "p" / "tradeoff.png"
    check_file_writer(tmp_path / "p", lambda v: tradeoff_plot(result(v), path),
                      lambda: read_png(path))


def test_infer_outputs(tmp_path):
    from experiments.infer import write_outputs

    out = tmp_path / "o"
    sf = np.linspace(-3, 3, 8 * 16 * 4, dtype=np.float32).reshape(8, 16, 4)
    check_file_writer(out, lambda v: write_outputs(out, sf + v),
                      lambda: np.load(out / "sceneflow.npy"))


# ----------------------------------------------------------------------------- folder writers


def test_synthetic_data_set_survives_interruptions_and_refuses_other_folders(tmp_path):
    from deepliflow_jax.data import synthetic

    def generate(root):
        return synthetic.generate_dataset(root, 2, 32, 96, seed=1, progress=False)

    generate(tmp_path / "reference")
    reference = {str(p.relative_to(tmp_path / "reference")): p.read_bytes()
                 for p in sorted((tmp_path / "reference").rglob("*")) if p.is_file()}
    root = tmp_path / "world"

    def reset():
        shutil.rmtree(root, ignore_errors=True)

    def check(step):
        summary = generate(root)  # resumes: the result is the uninterrupted one, bit for bit
        got = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
               if p.is_file()}
        assert got == reference, (step, summary)

    assert each_interruption(lambda: generate(root), reset, check) > 20

    other = tmp_path / "kitti"
    (other / "training").mkdir(parents=True)
    (other / "important.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError) as err:
            synthetic.generate_dataset(other, 1, 32, 96, progress=False, overwrite=overwrite)
        assert str(err.value) == (
            f"refusing to write into {other}: it is not a deepliflow_jax synthetic data set "
            "(holds important.txt, training/); remove it or choose another path")
    assert sorted(p.name for p in other.rglob("*")) == ["important.txt", "training"]


def test_study_results_folder_is_claimed_by_its_config(tmp_path):
    from deepliflow_jax.study.config import make_config
    from deepliflow_jax.study.runner import Study

    cfg = make_config("tiny")
    other = tmp_path / "home"
    (other / "sub").mkdir(parents=True)
    (other / "important.txt").write_text("keep")
    with pytest.raises(FileExistsError) as err:
        Study(cfg, other)
    assert str(err.value) == (
        f"refusing to write into {other}: it is not a deepliflow_jax study results folder "
        "(holds important.txt, sub/); remove it or choose another path")
    assert sorted(p.name for p in other.iterdir()) == ["important.txt", "sub"]

    root = tmp_path / "results"

    def reset():
        shutil.rmtree(root, ignore_errors=True)

    def check(step):
        Study(cfg, root)  # an interrupted start is taken up again
        assert json.loads((root / "config.json").read_text()) == json.loads(json.dumps(
            cfg.to_dict()))

    each_interruption(lambda: Study(cfg, root), reset, check)


@pytest.mark.slow  # about 30 saves of a small structured model
def test_trade_off_size_probe_survives_interruptions(small_variables, tmp_path):
    from deepliflow_jax.search import size as tradeoff

    # 8 channels per group: 432 kB of tensors. Orbax's OCDBT layout adds a varying number
    # of data files (tens of kB, more under load), which a 1-channel model's 27 kB drowned in
    params = small_variables["params"]
    work = tmp_path / "scratch"
    work.mkdir()
    size = tradeoff.disk_bytes({"params": params}, work)
    assert size > 0 and list(work.iterdir()) == []

    def check(step):
        again = tradeoff.disk_bytes({"params": params}, work)  # Orbax's file layout varies a little
        assert 0.8 * size < again < 1.25 * size, step
        assert list(work.iterdir()) == [], step

    each_interruption(lambda: tradeoff.disk_bytes({"params": params}, work), lambda: None, check)
    (work / tradeoff.SIZE_PROBE).mkdir()
    (work / tradeoff.SIZE_PROBE / "important.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="refusing to overwrite .*size_probe_checkpoint: "
                       "it is not a deepliflow_jax checkpoint"):
        tradeoff.disk_bytes({"params": params}, work)


def test_converter_refuses_a_folder_before_reading_its_input(tmp_path):
    from weights_convert.convert import convert_checkpoint

    out = tmp_path / "out"
    out.mkdir()
    (out / "important.txt").write_text("keep")
    with pytest.raises(FileExistsError) as err:  # the input does not even exist
        convert_checkpoint("tf", tmp_path / "missing", out, overwrite=True)
    assert str(err.value) == (f"refusing to overwrite {out}: it is not a deepliflow_jax "
                              "checkpoint (holds important.txt); remove it or choose another "
                              "path")
    assert (out / "important.txt").read_text() == "keep"


def _record_renames_and_fsyncs(monkeypatch):
    """Records ``(op, path)`` of every rename/replace/link (its destination) and fsync
    (the opened path, or None for a file's own descriptor) that fileio makes."""
    events, opened = [], {}
    real = {n: getattr(os, n) for n in ("open", "close", "fsync", "replace", "rename", "link")}

    def open_(path, *args, **kwargs):
        fd = real["open"](path, *args, **kwargs)
        opened[fd] = Path(path).absolute()
        return fd

    def close(fd):
        opened.pop(fd, None)
        return real["close"](fd)

    def fsync(fd):
        events.append(("fsync", opened.get(fd)))
        return real["fsync"](fd)

    def move(name):
        def call(src, dst, *args, **kwargs):
            result = real[name](src, dst, *args, **kwargs)
            events.append((name, Path(dst).absolute()))
            return result
        return call

    for name, fn in [("open", open_), ("close", close), ("fsync", fsync),
                     *((n, move(n)) for n in ("replace", "rename", "link"))]:
        monkeypatch.setattr(os, name, fn)
    return events


def _assert_parent_synced_after_each_move_into(events, target: Path):
    moves = [i for i, (op, path) in enumerate(events) if op != "fsync" and path == target]
    assert moves, events
    for i in moves:
        # the next fsync after the rename is the parent folder's, before any other move
        after = events[i + 1:]
        nxt = next((e for e in after if e[0] == "fsync" or e[1] == target), None)
        assert nxt == ("fsync", target.parent), (events[i], events)


def test_the_folder_is_fsynced_after_every_rename_into_place(tmp_path, monkeypatch):
    """Every branch that renames into place (file write over nothing or an old file,
    folder replace of nothing or an old folder, recovery of a staged copy, exclusive
    creation) syncs the parent folder, so the rename itself survives a power cut."""
    events = _record_renames_and_fsyncs(monkeypatch)
    target = (tmp_path / "file.json").absolute()
    for content in ("old", "new"):  # a new file, then a replaced one
        events.clear()
        fileio.write_text_atomic(target, content)
        _assert_parent_synced_after_each_move_into(events, target)
    folder = (tmp_path / "folder").absolute()

    def fill(d):
        (d / "x").write_text("x")

    for _ in range(2):  # a new folder, then a replaced one
        events.clear()
        fileio.replace_dir(folder, fill, marker="m.json", marker_text="{}", kind="test",
                           overwrite=True)
        _assert_parent_synced_after_each_move_into(events, folder)
    # an interrupted replace: the folder gone, a complete staged copy of a dead process
    staged = folder.with_name(f".{folder.name}.new-999999999-0badc0de")
    os.rename(folder, staged)
    events.clear()
    assert fileio.recover_dir(folder, "m.json")
    _assert_parent_synced_after_each_move_into(events, folder)
    events.clear()
    assert fileio.create_exclusive(tmp_path / "claim", "me")
    _assert_parent_synced_after_each_move_into(events, (tmp_path / "claim").absolute())
