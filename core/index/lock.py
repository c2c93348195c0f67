"""One writer per index folder: an advisory lock on IDX/.lock held by every writer (CLI, QGIS task, Processing).

The operating system drops the lock when its process dies, however it dies, so a lock is never stale; the file's
text (who holds it) is only read to name the holder in the refusal.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import time

from ..errors import RsirError
from . import layout

_WINDOWS = sys.platform.startswith("win")
_LOCK_OFFSET = 1 << 20  # Windows locks a byte range: one far past the holder's text, which stays readable


def _try_lock(fd: int) -> bool:
    if _WINDOWS:
        import msvcrt

        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if _WINDOWS:
        import msvcrt

        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def describe_holder(path: str) -> str:
    """'pid 123 on host, since 2026-12-07T10:00:00+00:00: rsir index ...' from a lock file's text, or ''."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.loads(f.read(4096).strip() or "{}")
        return (f"pid {info['pid']} on {info['host']}, since {info['since']}"
                + (f": {info['what']}" if info.get("what") else ""))
    except (OSError, ValueError, KeyError, TypeError):
        return ""


class IndexLock:
    """`with IndexLock(idx, what):` creates `idx` if needed and holds its write lock, or raises RsirError naming
    the holder. `what` (e.g. the command line) is shown to a second writer."""

    def __init__(self, index_dir: str, what: str = ""):
        self.dir = os.path.abspath(index_dir)
        self.path = layout.path(self.dir, layout.LOCK)
        self.what = what
        self.fd: int | None = None

    def __enter__(self) -> IndexLock:
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as exc:
            raise RsirError(f"{self.dir}: cannot create the index folder ({exc.strerror})") from None
        for _ in range(5):  # retry while another writer swaps the lock file under us (see below)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RsirError(f"{self.dir}: cannot write to the index folder ({exc.strerror})") from None
            if not _try_lock(fd):
                os.close(fd)
                holder = ""
                for _ in range(20):  # the holder writes its name just after taking the lock
                    holder = describe_holder(self.path)
                    if holder:
                        break
                    time.sleep(0.025)
                raise RsirError(f"{self.dir}: another rsir run is writing this index"
                                + (f" ({holder})" if holder else "") + "; wait for it to finish, or stop it")
            # the file we locked must still be the one at the path (not unlinked by a writer that just finished)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                self._write_holder()
                return self
            _unlock(fd)
            os.close(fd)
        raise RsirError(f"{self.path}: could not take the index's write lock")

    def _write_holder(self) -> None:
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "what": self.what})
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, (text + "\n").encode())

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            _unlock(self.fd)
        finally:
            os.close(self.fd)
            self.fd = None

    def __exit__(self, *exc) -> None:
        self.release()
