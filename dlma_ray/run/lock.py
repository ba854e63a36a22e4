"""One writer per run directory: `<run>/.lock` names its holder (host, pid, start time).

A second job on the same directory is refused with the holder's name; a lock whose holder is gone is taken
over, said in the log. Locally the holder is gone when its process no longer runs (same host) or the lock
file is unreadable. On S3 (and S3-compatible stores) the lock is a lease: the object is created with a
conditional put (If-None-Match: *), renewed every third of `DLMA_LOCK_LEASE_S` seconds (default 120) with
If-Match on its own ETag, and deleted on release; a lease not renewed for a whole period, judged by the
store's own clock, belongs to a job that is gone, and is taken over with If-Match on the ETag read, so two
jobs taking it over at once cannot both win. Other object stores get no lock: the job warns.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager

from dlma_ray.core import storage

log = logging.getLogger("dlma_ray")
LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    """Another job holds the run directory."""


def _this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


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


def _holder_text(run_dir: str, holder: dict, where: str) -> str:
    return (f"{run_dir} is held by another job: host {holder.get('host')}, pid {holder.get('pid')}, since "
            f"{holder.get('started')}. Wait for it or stop it, or use another run.dir; if that job is gone (e.g. its "
            f"machine died), {where}.")


@contextmanager
def run_lock(run_dir: str):
    """Hold ``run_dir`` for this process while the block runs."""
    if run_dir.startswith("s3://"):
        from dlma_ray.run.objectlock import ObjectLease

        lease = ObjectLease(run_dir, _this_process())
        holder = lease.acquire()
        if holder is not None:
            raise RunLocked(_holder_text(run_dir, holder, f"delete {lease.uri} or wait {lease.seconds:.0f} s for "
                                                          "its lease to lapse"))
        try:
            yield
        finally:
            lease.release()
        return
    if storage.is_uri(run_dir):
        log.warning("%s is on an object store without conditional writes here: no run lock is taken; run one job "
                    "per run directory", run_dir)
        yield
        return
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    me = _this_process()
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is not None and _holder_alive(holder):
                raise RunLocked(_holder_text(run_dir, holder, f"delete {path}")) from None
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
