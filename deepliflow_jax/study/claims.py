"""Workers sharing one results folder: a claim file per configuration.

Several study processes (one per GPU, one per machine, any mix) run in the same
results folder. Before a worker runs a configuration it *claims* it: it creates
``claims/<key>.claim`` atomically (``fileio.create_exclusive``: of several workers
exactly one succeeds) holding its owner name, pid, host, a token and a heartbeat
time that a background thread refreshes every ``heartbeat_s``. The others skip
the configuration and come back to it only if the claim goes stale:

* its heartbeat is older than ``timeout_s`` (a worker on another machine died,
  or hangs), or
* its owner runs on this host and its pid is gone (a killed worker on this
  machine: taken over at once).

A stale claim is taken over by exactly one worker: the taker first creates
``claims/<key>.takeover-<token>`` (exclusive again, named after the stale claim's
token), re-reads the claim and replaces it only if it still holds that token. A
finished configuration is a record (``records.py``); the claim is then deleted.
Records are deterministic and written atomically, so even a worker that lost its
claim without knowing it (a heartbeat that stalled past the timeout) only repeats
work: it never mixes results.

Clocks: the heartbeat is compared with this host's ``time.time()``, so hosts must
agree on the time to well under ``timeout_s`` (NTP does).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from deepliflow_jax.fileio import create_exclusive, process_alive, write_json_atomic

CLAIMS_DIR = "claims"
DEFAULT_TIMEOUT_S = 180.0


class ClaimBoard:
    """The claim files of one results folder, seen from one worker.

    Args:
      folder: where the claim files live (created), e.g. ``results/claims``.
      timeout_s: a claim whose heartbeat is older than this is stale (seconds > 0).
      heartbeat_s: how often a held claim's heartbeat is refreshed (default
        ``min(60, timeout_s / 4)``; must be below ``timeout_s``).
      owner: a name for this worker in the claim files (default ``host:pid``).

    Raises:
      ValueError: a timeout <= 0, or a heartbeat not below it.
    """

    def __init__(self, folder: str | os.PathLike, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 heartbeat_s: float | None = None, owner: str | None = None):
        if not timeout_s > 0:
            raise ValueError(f"claim timeout_s must be > 0 seconds, got {timeout_s}")
        heartbeat_s = min(60.0, timeout_s / 4) if heartbeat_s is None else heartbeat_s
        if not 0 < heartbeat_s < timeout_s:
            raise ValueError(f"claim heartbeat_s must be in (0, timeout_s={timeout_s}), got "
                             f"{heartbeat_s}")
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timeout_s, self.heartbeat_s = float(timeout_s), float(heartbeat_s)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = owner or f"{self.host}:{self.pid}"

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.claim"

    def read(self, key: str) -> dict | None:
        """The claim on ``key`` (None: unclaimed)."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
            if not isinstance(info, dict):
                raise ValueError("not an object")
        except ValueError:  # not written by this module: judged by its age alone
            return {"token": f"unreadable-{mtime}", "heartbeat": mtime}
        return info

    def is_stale(self, info: dict, now: float | None = None) -> bool:
        """Whether the claim ``info`` (from :meth:`read`) may be taken over."""
        now = time.time() if now is None else now
        if now - float(info.get("heartbeat", 0.0)) > self.timeout_s:
            return True
        pid = info.get("pid")
        return (info.get("host") == self.host and isinstance(pid, int) and pid != self.pid
                and not process_alive(pid))

    def _content(self, key: str, token: str, started: float) -> dict:
        return {"key": key, "token": token, "owner": self.owner, "pid": self.pid,
                "host": self.host, "started": started, "heartbeat": time.time()}

    def acquire(self, key: str) -> tuple[str, dict | None] | None:
        """Claims ``key``: ``(token, the stale claim taken over or None)``, or None if held.

        Exactly one of several workers calling this at once gets a free or a stale
        claim.
        """
        token = uuid.uuid4().hex
        info = self._content(key, token, time.time())
        for _ in range(3):  # a claim released between our create and read: try again
            if create_exclusive(self.path(key), json.dumps(info, sort_keys=True)):
                return token, None
            current = self.read(key)
            if current is not None:
                break
        else:
            return None
        if not self.is_stale(current):
            return None
        lock = self.dir / f"{key}.takeover-{current.get('token')}"
        if not create_exclusive(lock, json.dumps({"owner": self.owner})):
            with contextlib.suppress(OSError):  # a taker that died holding the lock
                if time.time() - lock.stat().st_mtime > self.timeout_s:
                    lock.unlink()
            return None
        try:
            again = self.read(key)
            if again is None or again.get("token") != current.get("token"):
                return None  # released or taken over meanwhile
            write_json_atomic(self.path(key), info)
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()
        return token, current

    def beat(self, key: str, token: str) -> bool:
        """Refreshes the heartbeat of our claim; False if it is no longer ours."""
        current = self.read(key)
        if current is None or current.get("token") != token:
            return False
        write_json_atomic(self.path(key), {**current, "heartbeat": time.time()})
        return True

    def release(self, key: str, token: str) -> None:
        """Deletes our claim on ``key`` (a claim someone took over is left alone)."""
        current = self.read(key)
        if current is not None and current.get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                self.path(key).unlink()

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[dict | None]:
        """Claims ``key`` for the ``with`` block, heartbeat included.

        Yields:
          None when another live worker holds the claim (skip the work); else a dict
          ``{"token", "took_over"}`` (``took_over``: the stale claim replaced, or None).
        """
        got = self.acquire(key)
        if got is None:
            yield None
            return
        token, stale = got
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(self.heartbeat_s):
                try:
                    if not self.beat(key, token):
                        return
                except OSError:  # e.g. a full or briefly unreachable disk: try again
                    continue

        thread = threading.Thread(target=heartbeat, name=f"claim-{key}", daemon=True)
        thread.start()
        try:
            yield {"token": token, "took_over": stale}
        finally:
            stop.set()
            thread.join()
            self.release(key, token)


def run_claimed(items: Sequence[tuple[str, Callable[[], Any]]], board: ClaimBoard,
                done: Callable[[str], bool], *, poll_s: float = 2.0,
                say: Callable[[str], None] | None = None) -> None:
    """Runs the ``items`` that are not ``done``, each by the worker that claims it.

    Returns when every item is done: this worker ran it, or another did (then this
    one waits, polling every ``poll_s`` seconds, and takes over a claim that goes
    stale). With a single worker this runs the items in order.

    Args:
      items: ``(key, work)``; ``work()`` must make ``done(key)`` true (e.g. write the
        key's record).
      board: the shared claims.
      done: whether an item is finished (checked again after claiming it).
      poll_s: seconds between looks at what other workers hold.
      say: progress messages (a takeover, waiting).

    Raises:
      RuntimeError: ``work()`` returned without making ``done(key)`` true.
    """
    waiting: set[str] = set()
    while True:
        pending = [(k, w) for k, w in items if not done(k)]
        if not pending:
            return
        ran = False
        for key, work in pending:
            with board.hold(key) as held:
                if held is None:
                    if say is not None and key not in waiting:
                        info = board.read(key) or {}
                        say(f"{key}: running in {info.get('owner', 'another worker')}")
                    waiting.add(key)
                    continue
                if done(key):  # finished between our look and our claim
                    continue
                stale = held["took_over"]
                if say is not None and stale is not None:
                    say(f"{key}: taking over from {stale.get('owner', 'a stale claim')} "
                        f"(heartbeat {time.time() - float(stale.get('heartbeat', 0)):.0f} s "
                        "ago or its process is gone)")
                work()
                if not done(key):
                    raise RuntimeError(f"work on {key!r} finished without its result")
                ran = True
        if not ran:
            time.sleep(poll_s)
