"""A driver sent SIGTERM stops as on Ctrl-C (dlma_ray.stages.ray_session.stop_on_sigterm): its `finally` blocks run
(the run lock's release), it does not abort, and the local Ray cluster it started leaves no process behind.
Before, Ray's own SIGTERM handler logged a stack trace and aborted, and the cluster's agents ran on orphaned."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
DRIVER = """
import time
import ray
from dlma_ray.config.tree import Config
from dlma_ray.stages.ray_session import init_ray
init_ray(Config())
try:
    print("ready", flush=True)
    time.sleep(120)
finally:
    print("cleanup ran", flush=True)
"""


def test_sigterm_stops_the_driver_cleanly():
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "ready":
            break
    assert proc.poll() is None, "".join(lines)[-3000:]
    cluster = psutil.Process(proc.pid).children(recursive=True)  # raylet, GCS, dashboard and its agents, workers
    assert cluster, "the driver started a local Ray cluster"
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.stdout.read()
    proc.wait(timeout=120)
    assert "cleanup ran" in out, out[-3000:]
    assert proc.returncode != -signal.SIGABRT and "SIGTERM received" not in out, out[-3000:]
    deadline = time.time() + 30
    left = cluster
    while time.time() < deadline:
        left = [p for p in cluster if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(0.5)
    names = [f"{p.pid} {p.name()}" for p in left]
    for p in left:
        p.kill()
    assert not names, f"processes of the driver's Ray cluster left running: {names}"
