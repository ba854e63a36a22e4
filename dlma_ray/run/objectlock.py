"""The run lock on S3 and S3-compatible stores: a lease object written with conditional puts.

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
import threading
from email.utils import parsedate_to_datetime

from dlma_ray.core.storage import REMOTE_ATTEMPTS

log = logging.getLogger("dlma_ray")
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
