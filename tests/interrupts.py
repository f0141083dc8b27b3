"""Interrupting a writer at each of its filesystem steps (tests of crash-safe writes).

``each_interruption(write, reset, check)`` records the filesystem calls ``write()``
makes on the main thread (``os.rename/replace/unlink/remove/rmdir/mkdir/fsync``,
``shutil.rmtree`` and the calls inside it), then for every step: ``reset()``, run
``write()`` with that call raising ``KeyboardInterrupt`` (as a Ctrl-C there would),
and ``check(step)``. Background threads (Orbax's writers) are not interrupted; the
SIGKILL tests cover them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading

CALLS = [(os, "rename"), (os, "replace"), (os, "unlink"), (os, "remove"), (os, "rmdir"),
         (os, "mkdir"), (os, "fsync"), (shutil, "rmtree")]


class _Counter:
    """Numbers main-thread calls as (group, position): a group is a run of calls to one function."""

    def __init__(self, fail_at: tuple[int, int] | None):
        self.fail_at = fail_at
        self.groups: list[tuple[str, int]] = []  # (function, calls in the group)
        self.log: list[str] = []

    def wrap(self, name, original):
        def call(*args, **kwargs):
            if threading.current_thread() is threading.main_thread():
                if self.groups and self.groups[-1][0] == name:
                    self.groups[-1] = (name, self.groups[-1][1] + 1)
                else:
                    self.groups.append((name, 1))
                point = (len(self.groups) - 1, self.groups[-1][1] - 1)
                self.log.append(f"{name}({args[0] if args else ''})")
                if point == self.fail_at:
                    raise KeyboardInterrupt(f"injected at {point}: {name}")
                if name == "fsync":  # counted, not run: power loss is not simulated here
                    return None
            return original(*args, **kwargs)

        return call


@contextlib.contextmanager
def _patched(fail_at: tuple[int, int] | None):
    counter = _Counter(fail_at)
    saved = [(mod, name, getattr(mod, name)) for mod, name in CALLS]
    try:
        for mod, name, original in saved:
            setattr(mod, name, counter.wrap(name, original))
        yield counter
    finally:
        for mod, name, original in saved:
            setattr(mod, name, original)


def _runs(write) -> list[tuple[str, int]]:
    """``(function, calls)`` of each run of same-function calls ``write()`` makes."""
    with _patched(None) as counter:
        write()
    return counter.groups


def filesystem_steps(write) -> list[str]:
    """The functions of the runs of same-function calls ``write()`` makes, in order."""
    return [name for name, _ in _runs(write)]


def interruption_points(write, per_run: int = 2) -> list[tuple[int, int]]:
    """``(group, position)`` of the first ``per_run`` calls of each run of same-function calls.

    Runs of one function (the ``unlink``s inside an ``rmtree``, the ``fsync``s of a
    folder's files) are interrupted at their start and, by default, after their first
    call only.
    """
    return [(g, i) for g, (_, n) in enumerate(_runs(write)) for i in range(min(n, per_run))]


def each_interruption(write, reset, check, min_calls: int = 2, per_run: int = 2) -> int:
    """Interrupts ``write()`` at each filesystem step in turn; returns the number of steps.

    Args:
      write: the save under test.
      reset: restores the state before the save (called before each run).
      check: ``check(point)`` after the save was interrupted at ``point``.
      min_calls: fewer steps than this means the harness saw no real writing.
      per_run: calls interrupted at the start of each run of same-function calls
        (``interruption_points``).
    """
    reset()
    points = interruption_points(write, per_run)
    assert len(points) >= min_calls, f"only {len(points)} filesystem steps seen"
    for point in points:
        reset()
        with _patched(point) as counter:
            try:
                write()
            except KeyboardInterrupt:
                pass
            else:
                raise AssertionError(f"step {point} was not reached: {counter.log}")
        check(point)
    return len(points)


def sigkill_after_ready(script, args, env: dict, cwd: str, delay_s: float) -> None:
    """Runs ``python script *args``, waits for its ``ready`` line, SIGKILLs it ``delay_s``
    seconds later (in the middle of whatever it writes then) and checks that it died."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay_s)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.stdout.close()
