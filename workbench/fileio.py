"""Atomic file writes, full-disk errors and symbolic links: a reader sees the old file or the new
one, never half of one; a full disk is a message naming the folder and the space needed, not a raw
errno; and a symbolic link inside a run folder is never followed for a write, a truncation or a
deletion (:func:`refuse_symlink`, :func:`open_nofollow`, :func:`append_text`)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any


class DiskFullError(OSError):
    """Not enough free space in a folder for what the workbench is about to write."""


class SymlinkError(OSError):
    """A path the workbench would write, truncate or delete inside a run folder is a symbolic link."""


def _symlink_error(path: str | os.PathLike, what: str) -> SymlinkError:
    try:
        target = f" (to {os.readlink(os.fspath(path))})"
    except OSError:
        target = ""
    return SymlinkError(
        f"{what} {path} is a symbolic link{target}; the workbench never writes, truncates or deletes through a "
        "link inside a run folder. Remove the link (put the real file or folder there) or choose another output_dir"
    )


def refuse_symlink(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`SymlinkError` naming ``path`` (described as ``what``) when it is a symbolic link."""
    if os.path.islink(path):
        raise _symlink_error(path, what)


def open_nofollow(path: str | os.PathLike, flags: int, what: str, mode: int = 0o644) -> int:
    """``os.open`` with ``O_NOFOLLOW``: a symbolic link at ``path`` is a :class:`SymlinkError` naming it,
    never a write into (or a truncation of) the file it points to."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise _symlink_error(path, what) from None
        raise


def append_text(path: str | os.PathLike, text: str, what: str = "file") -> None:
    """Append ``text`` to ``path`` (created if missing), never through a symbolic link."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(text)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def disk_full(folder: str | os.PathLike, needed: int | None, what: str) -> DiskFullError:
    """The error for a write to ``folder`` that ran out of space."""
    folder = Path(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = -1
    need = f"about {_human(needed)}" if needed else "more space"
    have = f"{_human(free)} free" if free >= 0 else "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left in {folder} for {what}: it needs {need}, {have}. "
                                       "Free space there or choose another folder; nothing complete was replaced")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse before the work starts when ``folder`` has less than ``needed`` bytes free."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if shutil.disk_usage(probe).free < needed:
        raise disk_full(folder if folder.exists() else probe, needed, what)


def preallocate(fd: int, size: int, path: str | os.PathLike, what: str) -> None:
    """Reserve ``size`` bytes for an open file, so a memory-mapped write can never hit a full disk
    (that would be SIGBUS, not an error)."""
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(Path(path).parent, size, what) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full(path.parent, len(text.encode()), path.name) from None
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or malformed file is an error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


class LockHeld(RuntimeError):
    """Another process holds the lock; ``holder`` is what it wrote into the lock file."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by {holder}")
        self.holder = holder


def acquire_flock(lock_file: str | os.PathLike, what: str) -> int:
    """Take an exclusive OS lock (``flock``) on ``lock_file`` (created, never through a symbolic
    link) without waiting, and write the holder into it (pid, host, Slurm job when there is one,
    start time); returns the descriptor for :func:`release_flock`. Raises :class:`LockHeld` with
    the current holder's line when another process holds it. The OS drops the lock when its holder
    dies, however it dies, so a lock left by a killed process is simply taken over."""
    path = Path(lock_file)
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, what)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise LockHeld(path, holder) from None
    info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    if os.environ.get("SLURM_JOB_ID"):
        info["job"] = os.environ["SLURM_JOB_ID"]
    info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def release_flock(fd: int) -> None:
    """Empty the lock file, drop the lock and close ``fd`` (from :func:`acquire_flock`)."""
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
