"""One writer per run directory: `<run>/.lock` names its holder (host, pid, start time).

A second job on the same directory is refused with the holder's name; a lock whose holder is gone (same
host, process no longer running, or an unreadable lock file) is taken over, said in the log. On object
stores (s3://...) no lock is taken yet: the job warns that it relies on the user to run one writer.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager

from dlma_ray import storage

log = logging.getLogger("dlma_ray")
LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    """Another job holds the run directory."""


def _holder_alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here: assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: str) -> dict | None:
    try:
        with open(path) as fh:
            holder = json.load(fh)
        return holder if isinstance(holder, dict) and "pid" in holder else None
    except (OSError, ValueError):
        return None


@contextmanager
def run_lock(run_dir: str):
    """Hold ``run_dir`` for this process while the block runs."""
    if storage.is_uri(run_dir):
        log.warning("%s is on an object store: no run lock is taken; run one job per run directory", run_dir)
        yield
        return
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is not None and _holder_alive(holder):
                raise RunLocked(f"{run_dir} is held by another job: host {holder.get('host')}, pid {holder['pid']}, "
                                f"since {holder.get('started')}. Wait for it or stop it, or use another run.dir; "
                                f"if that job is gone (e.g. its machine died), delete {path}.") from None
            log.warning("%s: taking over the lock of a job that is gone (%s)", run_dir, holder or "unreadable lock")
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield
    finally:
        if _read(path) == me:
            os.remove(path)
