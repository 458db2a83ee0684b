"""One writer per results folder: an advisory lock held for the whole run.

Two runs appending to one ``results.jsonl`` would each compute and write every row (the report
would then count items twice). The lock file names its holder, so the second run can say who
holds it; ``wait=True`` queues behind the holder instead of refusing. The lock is released
when the process ends, however it ends (the kernel drops ``flock`` locks with the file).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import InterventionError
from .store import writable_dir

LOCK_FILE = ".lock"


class ResultsLockedError(InterventionError):
    """Another run holds the results folder."""


def _holder(path: Path) -> str:
    """The holder's line; it writes it just after taking the lock, so an empty file gets a moment."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if text or time.monotonic() > deadline:
            return text or "another process"
        time.sleep(0.02)


@contextmanager
def results_lock(out_dir: Path, wait: bool = False):
    """Hold ``out_dir``'s lock for the block; refuse at once (naming the holder) unless ``wait``."""
    out_dir = writable_dir(out_dir)
    path = out_dir / LOCK_FILE
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise ResultsLockedError(
                    f"{out_dir} is being written by {holder}; let it finish, pass --wait to run after "
                    "it, or choose another --out") from None
            print(f"[interventions] waiting for {holder} to release {out_dir}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield out_dir
    finally:
        handle.close()  # closing drops the lock
