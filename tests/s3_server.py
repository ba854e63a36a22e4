"""A real S3-compatible server (moto's, over HTTP) on loopback with a `runs` bucket, as the module-scoped `s3_env`
fixture (the AWS_* variables that reach it): for tests/unit/core/test_storage.py, tests/unit/run/test_tracking.py
and tests/e2e/test_multinode.py."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def s3_env():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        for _ in range(50):
            try:
                boto3.client("s3").create_bucket(Bucket="runs")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                time.sleep(0.2)
        yield env
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        server.terminate()
        server.wait(timeout=30)
