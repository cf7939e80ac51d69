"""Atomic file writes: write to a temporary name in the same folder, then rename, so a crash never
leaves a half-written artifact behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imtext.errors import ImtextError


def _proc_umask() -> int | None:
    """The process's umask as Linux reports it (/proc/self/status, kernel 4.7+), read without changing it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    mask = _proc_umask()
    if mask is None:  # no /proc: read it the only portable way, once, while the module is imported
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()


def _umask() -> int:
    """The current umask where the system tells it without a change (Linux); else the one at import. Never
    os.umask(): setting it, even for a moment, changes it for every thread of the process."""
    mask = _proc_umask()
    return _UMASK_AT_IMPORT if mask is None else mask


def _publish_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the result the mode a plain open()/mkdir() would, so a Serve
    replica or a cluster worker running as another user can read the artifact."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _fsync(path: Path) -> None:
    """Flush a file or a folder's entries to disk, so a rename is never visible before the data is."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_foreign(path: str | os.PathLike, is_ours: bool, what: str, flag: str = "--out") -> None:
    """Writers replace their output whole: refuse a `path` that exists and is not `what` (`is_ours` says
    whether it is), unless it is an empty folder. Nothing imtext did not write is ever replaced."""
    p = Path(path).expanduser()
    if not p.exists() or is_ours or (p.is_dir() and not any(p.iterdir())):
        return
    raise ImtextError(f"{p} exists and is not {what}; refusing to replace it: pick an empty or new {flag}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is synced and renamed onto `path`, on error
    removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _publish_mode(tmp_path, directory=False)
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _old_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_interrupted_swap(path: str | os.PathLike) -> bool:
    """A process killed between atomic_dir's two renames leaves `path` missing and its previous version
    under `.NAME.old`: put it back. True when something was restored."""
    path = Path(path)
    old = _old_name(path)
    if old.is_dir() and not path.exists():
        os.replace(old, path)
        return True
    return False


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it is synced and replaces `path` as a whole.

    The previous version is renamed to `.NAME.old` for the moment of the swap; if the second rename fails
    it is put back at once, and a process killed in between is recovered by the next atomic_dir (or
    `recover_interrupted_swap`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_swap(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _publish_mode(tmp, directory=True)
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                _fsync(Path(root) / name)
            _fsync(Path(root))
        if path.exists():
            old = _old_name(path)
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # the previous version comes back
                raise
            _fsync(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
            _fsync(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
