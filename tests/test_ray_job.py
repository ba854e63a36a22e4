"""`ray job submit` against a local Ray cluster started by the test, with token authentication on,
while a scraper reads the head node's Prometheus endpoint and finds the pipeline's own metrics."""

import contextlib
import json
import os
import re
import socket
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_cluster(temp_dir: str, gcs_port: int) -> None:
    """Stop this test's cluster only (`ray stop` would stop every Ray instance on the machine)."""
    import psutil

    mine = [p for p in psutil.process_iter(["cmdline"])
            if any(temp_dir in a or f":{gcs_port}" in a for a in (p.info["cmdline"] or []))]
    for p in mine:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(mine, timeout=20)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)


def scrape(port: int) -> dict[tuple[str, str], float]:
    """Current value of every dlma series: (name, labels) -> value."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        m = re.match(r"^(ray_dlma_\w+?)(\{[^}]*\})?\s+([-+0-9.eEnaNinf]+)$", line)
        if m:
            labels = ",".join(sorted(p for p in (m.group(2) or "").strip("{}").split(",")
                                     if p and not p.startswith(("WorkerId", "Component", "SessionName",
                                                                "NodeAddress", "Version", "JobId"))))
            values[(m.group(1), labels)] = float(m.group(3))
    return values


def test_job_submit_with_token_auth_and_dashboard_metrics(tiny_model_dir, tmp_path):
    gcs, dash, prom = free_port(), free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")  # short: Ray's socket paths have a length limit
    subprocess.run([RAY, "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}",
                    "--dashboard-host=127.0.0.1", f"--metrics-export-port={prom}", "--num-cpus=2",
                    "--disable-usage-stats", f"--temp-dir={temp_dir}"], env=env, check=True, capture_output=True,
                   timeout=180)
    try:
        address = ["--address", f"http://127.0.0.1:{dash}"]
        for _ in range(60):  # the job agent comes up a few seconds after `ray start` returns
            if subprocess.run([RAY, "job", "list", *address], env=env, capture_output=True, timeout=120).returncode == 0:
                break
            time.sleep(2)
        no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        refused = subprocess.run([RAY, "job", "list", *address], env={**no_token, "HOME": str(tmp_path)},
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0, "the cluster must refuse clients without the token"
        assert "auth" in (refused.stdout + refused.stderr).lower() or "401" in refused.stdout + refused.stderr

        run_dir = tmp_path / "run"
        # From the DLMA paper's hh-rlhf helpful preset (the helpful pair scores it), made tiny by the embedded
        # overlay; relative paths: the job runs in the uploaded working dir.
        args = ["--config", "jobs/configs/dlma-paper-hh-helpful-7b.yaml",
                "--config", "jobs/configs/embedded-overlay.yaml",
                f"model.path={tiny_model_dir}", f"run.dir={run_dir}", "data.max_prompts=16", "rounds.count=1",
                "generation.max_new_tokens=8", "train.micro_batch_size=4", "train.global_batch_size=4",
                "eval.enabled=false"]
        excludes = json.dumps({"excludes": [".git", ".venv", "runs", "__pycache__", ".pytest_cache"]})
        # The job's log goes to a file, not a pipe: this loop does not read while it waits, and a full pipe
        # (64 KiB: the job streams its whole log, progress bars included) blocks `ray job submit` for good.
        log = tmp_path / "job.log"
        with open(log, "w") as fh:
            job = subprocess.Popen([RAY, "job", "submit", *address, "--working-dir", str(REPO), "--runtime-env-json",
                                    excludes, "--", "python", "jobs/iterate.py", *args],
                                   env=env, stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        seen: dict[tuple[str, str], float] = {}
        deadline = time.time() + 900
        while job.poll() is None and time.time() < deadline:
            for k, v in scrape(prom).items():
                seen[k] = max(seen.get(k, float("-inf")), v)
            time.sleep(2)
        for _ in range(8):  # the metrics agent exports on an interval: look a little longer
            for k, v in scrape(prom).items():
                seen[k] = max(seen.get(k, float("-inf")), v)
            time.sleep(2)
        job.wait(timeout=60)
        out = log.read_text()
        assert job.returncode == 0, out[-5000:]
        assert "succeeded" in out
        assert json.loads((run_dir / "state.json").read_text())["stages"][-1]["stage"] == "train"
        assert (run_dir / "round_0/policy/model.safetensors").exists()
        assert env["RAY_AUTH_TOKEN"] not in out and env["RAY_AUTH_TOKEN"] not in (run_dir / "state.json").read_text()

        def metric(name, combine=sum):
            hits = [v for (n, _), v in seen.items() if n == name]
            assert hits, f"{name} not exported; saw {sorted({n for n, _ in seen})}"
            return combine(hits)

        assert metric("ray_dlma_prompts_generated_total") == 16
        assert metric("ray_dlma_tokens_generated_total") >= 16
        assert metric("ray_dlma_generation_tokens_per_second", max) > 0
        assert metric("ray_dlma_pairs_scored_total") == 16
        assert metric("ray_dlma_self_reward_abs_count") == 16  # summed over the sign tag
        assert 0.0 < metric("ray_dlma_train_loss", max) < 5.0
        assert metric("ray_dlma_train_steps_total") >= 1
        assert metric("ray_dlma_stage_seconds", max) > 0
    finally:
        stop_cluster(temp_dir, gcs)
