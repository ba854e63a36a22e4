"""One writer per run directory: `<run>/.lock` names its holder (host, pid, start time).

A second job on the same directory is refused with the holder's name; a lock whose holder is gone is taken
over, said in the log. Locally the holder is gone when its process no longer runs (same host) or the lock
file is unreadable. On S3 (and S3-compatible stores) the lock is a lease: the object is created with a
conditional put (If-None-Match: *), renewed every third of `DLMA_LOCK_LEASE_S` seconds (default 120) with
If-Match on its own ETag, and deleted on release; a lease not renewed for a whole period, judged by the
store's own clock, belongs to a job that is gone, and is taken over with If-Match on the ETag read, so two
jobs taking it over at once cannot both win. Other object stores get no lock: the job warns.

The lease on S3:

    acquire   PUT <run>/.lock  If-None-Match: *           only one job can create it
              (412) GET it: renewed within the lease?    -> refused, the holder named
                    not renewed for a whole lease         -> PUT If-Match: <ETag read> (one taker wins)
    hold      a thread PUTs If-Match: <own ETag> every third of the lease (a 412 means it was taken over)
    release   DELETE If-Match: <own ETag>

A lease's age is the store's own clock (the response's Date against the object's Last-Modified), so the
jobs' clocks never need to agree. Endpoint and credentials come from the AWS SDK's standard chain
(`AWS_ENDPOINT_URL` for an S3-compatible store); every call retries with backoff.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from email.utils import parsedate_to_datetime

from dlma_ray.core import storage
from dlma_ray.core.storage import REMOTE_ATTEMPTS

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


# ---------------------------------------------------------------- the lease on an object store
LEASE_SECONDS = float(os.environ.get("DLMA_LOCK_LEASE_S", "120"))
_TAKEN = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def _code(exc) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class ObjectLease:
    """One job's lease on ``run_dir`` (an `s3://bucket/prefix` URI); ``me`` names the holder (host, pid, start)."""

    def __init__(self, run_dir: str, me: dict, seconds: float | None = None):
        import boto3
        from botocore.config import Config

        self.bucket, _, prefix = run_dir[len("s3://"):].partition("/")
        self.key = f"{prefix.rstrip('/')}/.lock" if prefix.strip("/") else ".lock"
        self.uri = f"s3://{self.bucket}/{self.key}"
        self.seconds = LEASE_SECONDS if seconds is None else seconds
        self.me = {**me, "lease_seconds": self.seconds}
        self.client = boto3.client("s3", config=Config(retries={"max_attempts": REMOTE_ATTEMPTS, "mode": "standard"}))
        self.etag: str | None = None
        self.lost = threading.Event()  # set when another job took the lease over while this one held it
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _put(self, **condition) -> str:
        body = json.dumps(self.me).encode()
        return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]

    def acquire(self) -> dict | None:
        """Take the lease (None), or return the holder whose lease is live (the lock is refused)."""
        from botocore.exceptions import ClientError

        while True:
            try:
                self.etag = self._put(IfNoneMatch="*")
                break
            except ClientError as exc:
                if _code(exc) not in _TAKEN:
                    raise
            try:
                got = self.client.get_object(Bucket=self.bucket, Key=self.key)
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    continue  # released between the two calls: try again
                raise
            try:
                holder = json.loads(got["Body"].read())
            except ValueError:
                holder = None
            now = parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"])
            age = (now - got["LastModified"]).total_seconds()
            lease = float((holder or {}).get("lease_seconds", self.seconds))
            if isinstance(holder, dict) and age < lease:
                return holder
            log.warning("%s: taking over the lock of a job that is gone (%s; its lease was not renewed for %.0f s)",
                        self.uri, holder or "unreadable lock", age)
            try:
                self.etag = self._put(IfMatch=got["ETag"])
                break
            except ClientError as exc:
                if _code(exc) not in _TAKEN:
                    raise  # another job took it over first: read it again
        self._renewer = threading.Thread(target=self._renew, name="dlma-run-lease", daemon=True)
        self._renewer.start()
        return None

    def _renew(self) -> None:
        from botocore.exceptions import ClientError

        while not self._stop.wait(self.seconds / 3):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except ClientError as exc:
                if _code(exc) in _TAKEN + ("NoSuchKey", "404"):
                    log.error("%s: another job took the run's lock over (this job's lease lapsed): two jobs may "
                              "now write the run directory; stop one", self.uri)
                    self.lost.set()
                    return
                log.warning("%s: could not renew the lease (%s); retrying", self.uri, _code(exc))

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.lost.is_set() or self.etag is None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as exc:
            if _code(exc) not in _TAKEN + ("NoSuchKey", "404"):
                log.warning("%s: could not delete the lock (%s); the next job takes it over once its lease lapses",
                            self.uri, _code(exc))
