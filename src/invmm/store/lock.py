"""One writer per run folder: an exclusive, non-blocking flock on RUN/.lock.

The kernel drops the lock when the process dies (kill -9 included), so a crashed audit never leaves a
stale lock behind; a second live run on the same folder is refused.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from invmm.errors import InvMMInputError

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InvMMInputError(
                f"{self.path.parent} is in use by another audit or measure run (pid {holder}); wait for it to "
                "finish or give another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
