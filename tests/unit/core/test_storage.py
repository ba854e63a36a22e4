"""Run directories on object storage: a real S3-compatible server (moto's, over HTTP) on loopback."""

import json
import os
import time
from pathlib import Path

import pytest

from s3_server import s3_env  # noqa: F401 - the moto S3 server fixture
from dlma_ray.core import storage

REPO = Path(__file__).resolve().parents[3]


def test_text_files_and_folders_on_s3(s3_env, tmp_path):  # noqa: F811
    base = "s3://runs/unit"
    storage.write_text_atomic(storage.join(base, "state.json"), '{"a": 1}')
    assert storage.exists(storage.join(base, "state.json")) and not storage.exists(storage.join(base, "nope"))
    assert json.loads(storage.read_text(storage.join(base, "state.json"))) == {"a": 1}

    (tmp_path / "sub").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / "sub" / "x.txt").write_text("x")
    tmp = storage.temp_sibling(storage.join(base, "policy"))
    assert tmp.startswith("s3://runs/unit/.policy.tmp-")
    storage.upload_dir(str(tmp_path), tmp)
    storage.commit_dir(tmp, storage.join(base, "policy"))
    assert storage.exists(storage.join(base, "policy", "sub", "x.txt")) and not storage.exists(tmp)

    storage.upload_dir(str(tmp_path), storage.temp_sibling(storage.join(base, "pairs")))  # a killed stage
    storage.remove_stale_temps(base)
    out = tmp_path / "down"
    storage.download_dir(storage.join(base, "policy"), str(out))
    assert (out / "model.safetensors").stat().st_size == 1000


def test_run_state_resumes_from_s3(s3_env):  # noqa: F811
    from dlma_ray.config.tree import load_config
    from dlma_ray.run.state import ConfigMismatchError, RunState

    cfg = load_config().to_dict()
    state = RunState.open("s3://runs/state-test", cfg)
    state.record(0, "generate", "s3://runs/state-test/round_0/generations", 10, 1.5)
    again = RunState.open("s3://runs/state-test", cfg)
    assert again.done(0, "generate")["rows"] == 10 and again.done(0, "score") is None
    with pytest.raises(ConfigMismatchError, match="train.beta"):
        RunState.open("s3://runs/state-test", load_config(None, ["train.beta=0.5"]).to_dict())


def test_a_remote_policy_is_copied_once_verified_and_refreshed(s3_env, tmp_path, monkeypatch):  # noqa: F811
    """The local cache of a policy on an object store: reused while it matches the remote files, downloaded
    again when it is damaged or the remote folder changed (a policy redone under the same URI); a large
    file goes up and down whole (Arrow uploads it in parts)."""
    from dlma_ray.model.loading import resolve_model_path

    monkeypatch.setenv("DLMA_RAY_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "policy"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(os.urandom(12 * 1024 * 1024))  # over one 10 MiB upload part
    uri = "s3://runs/unit/remote-policy"
    storage.upload_dir(str(src), uri)
    assert storage.file_sizes(uri) == {"config.json": 2, "model.safetensors": 12 * 1024 * 1024}

    local = Path(resolve_model_path(uri))
    assert (local / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    stamp = (local / "config.json").stat().st_mtime_ns
    assert Path(resolve_model_path(uri)) == local and (local / "config.json").stat().st_mtime_ns == stamp  # reused

    (local / "model.safetensors").write_bytes(b"cut")  # a damaged copy
    assert (Path(resolve_model_path(uri)) / "model.safetensors").stat().st_size == 12 * 1024 * 1024

    (src / "config.json").write_text('{"redone": 1}')  # the remote policy changed
    storage.upload_dir(str(src), uri)
    assert json.loads((Path(resolve_model_path(uri)) / "config.json").read_text()) == {"redone": 1}


def test_one_writer_per_run_directory_on_s3(s3_env, caplog):  # noqa: F811
    """The lease: a second job is refused naming the holder while the lease is renewed; a lease not renewed
    for a whole period is taken over, said in the log; a lease taken over is noticed by its old holder."""
    import logging

    import boto3

    from dlma_ray.run.lock import ObjectLease
    from dlma_ray.run.lock import RunLocked, run_lock

    run_dir = "s3://runs/locked/run"
    first = ObjectLease(run_dir, {"host": "node-a", "pid": 11, "started": "then"}, seconds=1.5)
    assert first.acquire() is None and first.uri == "s3://runs/locked/run/.lock"
    time.sleep(2.5)  # longer than the lease: only the renewals (every 0.5 s) keep it
    holder = ObjectLease(run_dir, {"host": "node-b", "pid": 22, "started": "now"}).acquire()
    assert holder["host"] == "node-a" and holder["pid"] == 11
    with pytest.raises(RunLocked, match="host node-a, pid 11"):
        with run_lock(run_dir):
            pass
    first.release()
    assert not storage.exists(first.uri)
    with run_lock(run_dir):  # released: the next job takes it at once, and gives it back
        assert json.loads(storage.read_text(first.uri))["pid"] == os.getpid()
    assert not storage.exists(first.uri)

    # A job that died holding the lock (its lease is never renewed) is taken over once the lease lapsed.
    s3 = boto3.client("s3")
    dead = {"host": "node-c", "pid": 33, "started": "earlier", "lease_seconds": 1}
    s3.put_object(Bucket="runs", Key="locked/run/.lock", Body=json.dumps(dead).encode())
    time.sleep(2.2)
    with caplog.at_level(logging.WARNING, logger="dlma_ray"):
        with run_lock(run_dir):
            assert json.loads(storage.read_text(first.uri))["pid"] == os.getpid()
    assert "taking over the lock of a job that is gone" in caplog.text and "node-c" in caplog.text

    # A holder whose lease another job took over notices at its next renewal and leaves the new lock alone.
    slow = ObjectLease(run_dir, {"host": "node-d", "pid": 44, "started": "x"}, seconds=0.9)
    assert slow.acquire() is None
    s3.put_object(Bucket="runs", Key="locked/run/.lock", Body=json.dumps({**dead, "host": "node-e"}).encode())
    assert slow.lost.wait(5)
    slow.release()
    assert json.loads(storage.read_text(first.uri))["host"] == "node-e"
