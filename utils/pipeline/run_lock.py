"""One writer per run folder: ``<run_dir>/.lock``, held by the runner or a training script while it works.

Two processes writing the same stage folders would delete each other's temporary folders and mix their
files. The lock is an advisory ``flock`` on the file, so the operating system releases it when its holder
dies, however it dies: a lock left by a dead process is simply taken over. The file says who holds it
(pid, host, command), for the one-line refusal the second process prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunFolderInUse(RuntimeError):
    """Another live process holds the run folder: the message is the one line the user sees."""


def _describe(info: dict) -> str:
    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    extra = [f"since {info['since']}"] if info.get("since") else []
    if info.get("command"):
        extra.append(info["command"])
    return who + (f" ({', '.join(extra)})" if extra else "")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def lock_holder(run_dir: str | Path) -> str | None:
    """Who holds ``run_dir`` now (pid, host, command), or None when nobody does."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        if _try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _describe(_read(path))
    finally:
        os.close(fd)


class RunLock:
    """``with RunLock(run_dir):`` - or :class:`RunFolderInUse` at once if a live process holds it.

    Creates ``run_dir``. ``took_over`` describes the dead holder whose lock this one replaced, if any.
    """

    def __init__(self, run_dir: str | Path, command: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command or " ".join(["python", *sys.argv])[:200]
        self.took_over: str | None = None
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise RunFolderInUse(f"{self.run_dir} is in use by {_describe(_read(self.path))}: wait for it to finish, "
                                 f"or give another --run-dir")
        previous = _read(self.path)
        if previous.get("pid"):  # its holder died without releasing it (killed, or the machine went down)
            self.took_over = _describe(previous)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Emptied, never deleted: a process that opened the file a moment ago must lock the same file as the next one.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
