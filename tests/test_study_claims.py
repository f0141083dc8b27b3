"""Claim files of study workers sharing a results folder (pure file logic, no JAX)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from deepliflow_jax.fileio import create_exclusive
from deepliflow_jax.study.claims import ClaimBoard, run_claimed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(board: ClaimBoard, key: str, **fields) -> None:
    info = {"key": key, "token": "planted", "owner": "someone", "pid": 1,
            "host": "elsewhere", "started": time.time(), "heartbeat": time.time(), **fields}
    board.path(key).write_text(json.dumps(info))


def test_create_exclusive_creates_once(tmp_path):
    path = tmp_path / "sub" / "x.claim"
    assert create_exclusive(path, "first")
    assert not create_exclusive(path, "second")
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.claim"]  # no temporary left


def test_a_claim_is_exclusive_until_released(tmp_path):
    a = ClaimBoard(tmp_path, owner="a")
    b = ClaimBoard(tmp_path, owner="b")
    token, stale = a.acquire("post_prune_10")
    assert stale is None
    info = b.read("post_prune_10")
    assert {info[k] for k in ("owner", "token", "pid", "host")} == {
        "a", token, os.getpid(), socket.gethostname()}
    assert b.acquire("post_prune_10") is None  # held by a live worker (this process)
    b.release("post_prune_10", "not-b's-token")  # only the holder's token releases it
    assert a.read("post_prune_10")["token"] == token
    a.release("post_prune_10", token)
    assert b.read("post_prune_10") is None
    assert b.acquire("post_prune_10") is not None


def test_stale_claims_are_taken_over(tmp_path):
    board = ClaimBoard(tmp_path, timeout_s=60)
    # another host, heartbeat fresh: held, whatever its pid
    _plant(board, "fresh")
    assert board.acquire("fresh") is None
    # another host, heartbeat older than the timeout: taken over, and says from whom
    _plant(board, "old", heartbeat=time.time() - 61)
    token, stale = board.acquire("old")
    assert stale["owner"] == "someone" and board.read("old")["token"] == token
    # this host, heartbeat fresh, process gone: taken over at once
    _plant(board, "dead", host=socket.gethostname(), pid=_dead_pid())
    assert board.acquire("dead") is not None
    # this host, process alive: held
    _plant(board, "alive", host=socket.gethostname(), pid=os.getppid())
    assert board.acquire("alive") is None
    # a file that is not a claim counts by its age
    board.path("junk").write_text("{not json")
    assert board.acquire("junk") is None
    old = time.time() - 120
    os.utime(board.path("junk"), (old, old))
    assert board.acquire("junk") is not None


def test_the_heartbeat_refreshes_and_stops_when_the_claim_is_lost(tmp_path):
    board = ClaimBoard(tmp_path, timeout_s=1.0, heartbeat_s=0.05)
    with board.hold("k") as held:
        first = board.read("k")["heartbeat"]
        time.sleep(0.3)
        assert board.read("k")["heartbeat"] > first
        assert not ClaimBoard(tmp_path, timeout_s=1.0).is_stale(board.read("k"))
        _plant(board, "k", token="thief")  # taken over by someone else
        time.sleep(0.2)
        assert board.read("k")["token"] == "thief"  # not overwritten by our heartbeat
    assert held is not None
    assert board.read("k")["token"] == "thief"  # and not released by us either


RACE = textwrap.dedent("""
    import importlib.util, json, os, sys, time
    # the claims module alone (the study package would import JAX: slow to start)
    spec = importlib.util.spec_from_file_location("claims", sys.argv[1])
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    board = claims.ClaimBoard(sys.argv[2], timeout_s=30)
    go = float(sys.argv[3])
    ready = time.time()
    while time.time() < go:
        pass
    won = [k for k in ["stale"] + [f"k{i}" for i in range(30)] if board.acquire(k)]
    # stay alive until every racer is done: a dead owner's claim may rightly be taken over
    done = os.path.join(sys.argv[4], str(os.getpid()))
    open(done, "w").close()
    while len(os.listdir(sys.argv[4])) < int(sys.argv[5]) and time.time() < go + 60:
        time.sleep(0.05)
    print(json.dumps({"won": won, "ready": ready}))
""")


def test_racing_processes_never_claim_the_same_configuration(tmp_path):
    script = tmp_path / "race.py"
    script.write_text(RACE)
    folder = tmp_path / "claims"
    _plant(ClaimBoard(folder), "stale", heartbeat=time.time() - 3600)  # both may take it
    done = tmp_path / "done"
    done.mkdir()
    go = time.time() + 8.0  # time for all three to start, even on a loaded machine
    procs = [subprocess.Popen([sys.executable, str(script),
                               os.path.join(ROOT, "deepliflow_jax", "study", "claims.py"),
                               str(folder), str(go), str(done), "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    runs = [json.loads(o[0]) for o in outs]
    assert all(r["ready"] < go for r in runs)  # they raced: all waiting before the go time
    flat = sorted(k for r in runs for k in r["won"])
    assert flat == sorted([f"k{i}" for i in range(30)] + ["stale"])  # each exactly once


def test_run_claimed_runs_each_item_once_and_takes_over_a_dead_worker(tmp_path):
    board = ClaimBoard(tmp_path / "claims", timeout_s=60)
    done: set[str] = set()
    ran: list[str] = []

    def work(key):
        def run():
            ran.append(key)
            done.add(key)
        return key, run

    said: list[str] = []
    # "b" is held by a live worker that finishes it a moment later, "c" by a dead one
    _plant(board, "b", host=socket.gethostname(), pid=os.getppid())
    _plant(board, "c", host=socket.gethostname(), pid=_dead_pid(), owner="worker-7")
    finisher = threading.Timer(0.3, lambda: (done.add("b"), board.path("b").unlink()))
    finisher.start()
    run_claimed([work("a"), work("b"), work("c")], board, done.__contains__, poll_s=0.05,
                say=said.append)
    assert ran == ["a", "c"] and done == {"a", "b", "c"}
    assert any("c: taking over from worker-7" in s for s in said), said
    assert any(s.startswith("b: running in someone") for s in said), said
    assert sorted(p.name for p in board.dir.iterdir()) == []  # claims released
    run_claimed([work("a")], board, done.__contains__)  # all done: nothing runs
    assert ran == ["a", "c"]
    with pytest.raises(RuntimeError, match="'d' finished without its result"):
        run_claimed([("d", lambda: None)], board, done.__contains__)
    assert board.read("d") is None  # released on the error too


def test_bad_timeouts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        ClaimBoard(tmp_path, timeout_s=0)
    with pytest.raises(ValueError, match="heartbeat_s must be in"):
        ClaimBoard(tmp_path, timeout_s=10, heartbeat_s=10)
