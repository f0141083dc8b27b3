"""Crash-safe writes: the path a user names holds the complete old or the complete new content.

The lowest layer of the package (it imports nothing from it); every writer of the
project goes through these primitives.

Files (``atomic_write``, ``write_text_atomic``, ``write_json_atomic``): the content
goes to a hidden temporary sibling ``.NAME.tmp-PID-XXXXXXXX``, is flushed and
``fsync``-ed, then ``os.replace``-d over ``NAME`` (atomic on POSIX and Windows), and
the folder is ``fsync``-ed. An interruption at any point leaves the old file (or
none) plus at most a temporary sibling, which the next write of ``NAME`` removes.

Folders (``replace_dir``), in this order, each step atomic:

1. write the new content into ``.NAME.new-PID-XXXXXXXX``, ``fsync`` it, and write its
   *marker* file last (the kind's metadata file, e.g. ``deepliflow_checkpoint.json``):
   a staged copy is complete exactly when its marker is there;
2. rename the old ``NAME`` to ``.NAME.old-PID-XXXXXXXX`` (always complete: it is the
   old folder, moved whole);
3. rename the staged copy to ``NAME``;
4. rename the old copy to ``.NAME.trash-PID-XXXXXXXX`` and delete it (a half-deleted
   copy is only ever called ``trash``, never ``old``).

``recover_dir`` (run by the next save and by every loader) settles what an
interruption left: if ``NAME`` is missing it renames a complete staged copy (the
save had finished writing) or else the old copy back to ``NAME``; then it deletes
the other leftovers. Leftovers of a live process (the PID in their name) are left
alone, so a load never disturbs a save running elsewhere; one process must not
write the same path from two threads at once.

Folders are replaced only when they are recognisably of the writer's own kind
(their marker file is there) or empty; anything else is refused
(``check_replaceable``), as are non-empty foreign folders that a writer fills
incrementally (``claim_dir``: study results, synthetic data sets).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

PathLike = str | os.PathLike

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<role>tmp|new|old|trash)-"
                       r"(?:(?P<pid>\d+)-)?[0-9A-Za-z_]+$")


def _sibling(path: Path, role: str) -> Path:
    return path.with_name(f".{path.name}.{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened; renames are durable there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _alive(pid: int | None) -> bool:
    """Whether a leftover's writer may still be running (None: a name without PID)."""
    if pid is None or pid == os.getpid():  # our own: an earlier, interrupted call
        return False
    return process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (True when it cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def leftovers(path: PathLike) -> list[tuple[str, Path]]:
    """``(role, path)`` of the hidden siblings an interrupted write of ``path`` left.

    Roles: ``tmp`` (a temporary file, or a staged folder of an older version),
    ``new`` (a staged folder), ``old`` (the replaced folder), ``trash``. Leftovers of
    a live process are not listed.
    """
    path = Path(path).absolute()
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        m = _LEFTOVER.match(name)
        if m and m["name"] == path.name:
            pid = int(m["pid"]) if m["pid"] else None
            if not _alive(pid):
                out.append((m["role"], path.parent / name))
    return out


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _trash(target: Path, path: Path) -> None:
    """Deletes ``path``; a folder is first renamed (atomic) to a ``trash`` sibling of ``target``.

    So a half-deleted folder is only ever a ``trash`` leftover, which nothing restores.
    """
    if path.is_dir() and not path.is_symlink():
        trash = _sibling(target, "trash")
        os.rename(path, trash)
        shutil.rmtree(trash)
    else:
        path.unlink(missing_ok=True)


def discard(path: PathLike) -> None:
    """Deletes a file or folder so that an interruption leaves ``path`` whole or gone.

    A folder is first renamed to a hidden ``trash`` sibling, then deleted; the next
    ``recover_dir`` / ``clean_leftovers`` of ``path`` removes a trash copy an
    interruption left.
    """
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        _trash(path, path)


def clean_leftovers(path: PathLike) -> None:
    """Deletes every leftover of an interrupted write of ``path`` (see ``leftovers``)."""
    path = Path(path).absolute()
    for role, p in leftovers(path):
        if role == "trash":
            _delete(p)
        else:
            _trash(path, p)


def recover_dir(path: PathLike, marker: str, strict: bool = True) -> bool:
    """Settles an interrupted ``replace_dir`` of ``path``; returns whether ``path`` exists.

    If ``path`` is missing, the newest complete staged copy (it holds ``marker``) or
    else the old copy is renamed back to ``path``; every other leftover is deleted.

    Args:
      path: the folder a writer replaces.
      marker: the file whose presence makes a staged copy complete.
      strict: raise ``OSError`` when a leftover cannot be renamed or deleted (False:
        leave it, e.g. for a reader in a read-only folder).

    Returns:
      Whether ``path`` exists afterwards.
    """
    path = Path(path).absolute()
    try:
        if not (path.exists() or path.is_symlink()):
            found = leftovers(path)
            staged = [p for role, p in found if role in ("new", "tmp") and p.is_dir()
                      and (p / marker).is_file()]
            old = [p for role, p in found if role == "old"]
            for candidates, stamp in ((staged, lambda p: (p / marker).stat().st_mtime_ns),
                                      (old, lambda p: p.lstat().st_mtime_ns)):
                if candidates:
                    os.rename(max(candidates, key=stamp), path)
                    _fsync_dir(path.parent)
                    break
        clean_leftovers(path)
    except OSError:
        if strict:
            raise
    return path.exists() or path.is_symlink()


def _listing(path: Path, limit: int = 6) -> str:
    if not path.is_dir():
        return "it is a file" if path.exists() else "a dangling link"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if len(names) > limit:
        names = names[:limit] + [f"... {len(names) - limit} more"]
    return "holds " + ", ".join(names)


def is_kind(path: PathLike, marker: str) -> bool:
    """Whether ``path`` is a folder holding the kind's ``marker`` file."""
    return (Path(path) / marker).is_file()


def check_replaceable(path: PathLike, marker: str, kind: str) -> None:
    """Raises unless the existing ``path`` may be replaced: an empty folder or one of ``kind``.

    Raises:
      FileExistsError: ``refusing to overwrite PATH: it is not KIND (holds a.txt, sub/);
        remove it or choose another path``.
    """
    path = Path(path).absolute()
    if path.is_dir() and (is_kind(path, marker) or not any(path.iterdir())):
        return
    raise FileExistsError(f"refusing to overwrite {path}: it is not {kind} ({_listing(path)}); "
                          "remove it or choose another path")


def claim_dir(path: PathLike, marker: str, kind: str) -> Path:
    """Creates ``path``, or checks that it is empty or of ``kind`` (for incremental writers).

    Returns:
      The absolute path (existing or created).

    Raises:
      FileExistsError: ``refusing to write into PATH: it is not KIND (holds ...); remove
        it or choose another path``.
    """
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        if not (path.is_dir() and (is_kind(path, marker) or not any(path.iterdir()))):
            raise FileExistsError(f"refusing to write into {path}: it is not {kind} "
                                  f"({_listing(path)}); remove it or choose another path")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: PathLike, write: Callable[[IO], Any], mode: str = "wb") -> Path:
    """Writes a file through ``write(f)`` so that ``path`` is never half-written.

    Args:
      path: the file (parent folders are created).
      write: fills the open temporary file ``f``.
      mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    Returns:
      ``path`` as an absolute ``Path``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")

    def write_to_path(name: str) -> None:
        with open(name, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            write(f)

    return write_with(path, write_to_path)


def write_with(path: PathLike, write_to_path: Callable[[str], Any]) -> Path:
    """Like ``atomic_write`` for a library that writes to a file name (``save_file(x, name)``)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = _sibling(path, "tmp")
    try:
        write_to_path(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def create_exclusive(path: PathLike, text: str) -> bool:
    """Creates the file ``path`` with ``text`` unless it exists; atomic across processes.

    The text goes to a temporary sibling (``fsync``-ed) that is then hard-linked to
    ``path``: the link fails if ``path`` exists (also on NFS), so of several processes
    creating the same path exactly one succeeds, and a reader never sees a partial
    file. Where the file system has no hard links, ``O_EXCL`` creation is used.

    Returns:
      Whether this call created ``path``.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(path.parent)
    return True


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """``atomic_write`` of bytes."""
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: PathLike, text: str) -> Path:
    """``atomic_write`` of UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text), "w")


def write_json_atomic(path: PathLike, data: Any, **dump_kwargs: Any) -> Path:
    """``atomic_write`` of JSON (``indent=2, sort_keys=True`` unless given)."""
    kwargs = {"indent": 2, "sort_keys": True, **dump_kwargs}
    text = json.dumps(data, **kwargs)  # serialise first: a TypeError writes nothing
    return write_text_atomic(path, text)


def savefig_atomic(fig: Any, path: PathLike, **kwargs: Any) -> Path:
    """``fig.savefig`` (matplotlib) through ``atomic_write``; the format is the suffix's."""
    path = Path(path)
    fmt = kwargs.pop("format", None) or path.suffix.lstrip(".") or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


def check_output(path: PathLike, *, marker: str, kind: str, overwrite: bool,
                 noun: str = "output") -> Path:
    """What ``replace_dir`` checks first (recovery, then existence and kind), on its own.

    For writers that fail before reading a large input.

    Returns:
      ``path`` as an absolute ``Path``.

    Raises:
      FileExistsError: see ``replace_dir``.
    """
    path = Path(path).absolute()
    recover_dir(path, marker)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{noun} {path} already exists; pass overwrite=True "
                                  "(--overwrite) to replace it")
        check_replaceable(path, marker, kind)
    return path


def replace_dir(path: PathLike, fill: Callable[[Path], Any], *, marker: str, marker_text: str,
                kind: str, overwrite: bool = False, noun: str = "output") -> Path:
    """Writes a folder so that ``path`` holds the complete old or the complete new one.

    Args:
      path: the folder to create or replace.
      fill: writes the content into the (empty, staged) folder it is given; it must
        not write ``marker``.
      marker: the file written last (the kind's metadata file): it makes a staged
        copy complete, and an existing folder replaceable.
      marker_text: the marker's content.
      kind: how to name the kind in errors, e.g. ``"a deepliflow_jax checkpoint"``.
      overwrite: replace an existing ``path`` (only an empty folder or one holding
        ``marker``).
      noun: how to name ``path`` in the "already exists" error.

    Returns:
      ``path`` as an absolute ``Path``.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False ("NOUN PATH already
        exists; pass overwrite=True (--overwrite) to replace it"), or it is not of
        ``kind`` (see ``check_replaceable``).
    """
    path = check_output(path, marker=marker, kind=kind, overwrite=overwrite, noun=noun)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = _sibling(path, "new")
    staged.mkdir()
    try:
        fill(staged)
        if (staged / marker).exists():
            raise ValueError(f"replace_dir: the writer must leave {marker} to replace_dir")
        _fsync_tree(staged)
        write_text_atomic(staged / marker, marker_text)  # last: the copy is complete
    except BaseException:
        with contextlib.suppress(OSError):
            _trash(path, staged)
        raise
    try:
        if path.exists() or path.is_symlink():
            old = _sibling(path, "old")
            os.rename(path, old)
            os.rename(staged, path)
            _fsync_dir(path.parent)
            _trash(path, old)
        else:
            os.rename(staged, path)
            _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(BaseException):  # settle now; the next call would too
            recover_dir(path, marker)
        raise
    return path
