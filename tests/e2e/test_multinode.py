"""A real two-node Ray cluster on this machine (`ray start --head`, then a second `ray start --address` with its
own temp dir and custom resources), token authentication on, the run directory on an S3-compatible server
(moto's), and the job submitted with `ray job submit`: the DLMA paper's hh-rlhf helpful preset, made tiny by the
embedded overlay, placed by jobs/configs/multinode-example.yaml (one train worker on each node, the engine on
the node labelled `engine_node`, by Ray resources only). Ray's state API then says where each actor ran; every
output is on the store, nothing temporary is left there, a client without the token is refused, each node's
Prometheus endpoint carries the pipeline's own metrics, and a second submission finds the run finished."""

import contextlib
import re
import shutil
import socket
import urllib.request

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from s3_server import s3_env  # noqa: F401 - the moto server fixture

from dlma_ray.core import storage

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
# The paper preset (its pair, loss and filters), made tiny by the overlay, placed by the multinode example.
CONFIGS = ("jobs/configs/dlma-paper-hh-helpful-7b.yaml", "jobs/configs/embedded-overlay.yaml",
           "jobs/configs/multinode-example.yaml")


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


def ray_cli(args: list[str], env: dict, timeout: int = 180, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0 or not check, f"ray {' '.join(args)}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


def start_second_node(cluster: dict) -> None:
    ray_cli(["start", f"--address=127.0.0.1:{cluster['gcs']}", "--num-cpus=2", "--disable-usage-stats",
             "--resources", json.dumps({"train_slot": 1, "engine_node": 1}), f"--temp-dir={cluster['temp2']}",
             f"--metrics-export-port={cluster['prom'][1]}", f"--dashboard-agent-listen-port={free_port()}"],
            cluster["env"])


@pytest.fixture(scope="module")
def cluster(s3_env, tmp_path_factory):  # noqa: F811
    gcs, dash, prom1, prom2 = free_port(), free_port(), free_port(), free_port()
    # Each node's environment holds the storage credentials, as an instance role would give them.
    env = {**os.environ, **s3_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    # Short paths: Ray's socket paths have a length limit. One temp dir per node.
    temp1, temp2 = tempfile.mkdtemp(prefix="rh-", dir="/tmp"), tempfile.mkdtemp(prefix="rn-", dir="/tmp")
    info = {"gcs": gcs, "dash": dash, "env": env, "temp1": temp1, "temp2": temp2, "prom": (prom1, prom2)}
    try:
        ray_cli(["start", "--head", f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                 "--num-cpus=2", "--disable-usage-stats", "--resources", json.dumps({"train_slot": 1}),
                 f"--temp-dir={temp1}", f"--metrics-export-port={prom1}",
                 # Not Ray's fixed 52365: a Ray of another test lane may hold it, and a head whose job agent
                 # cannot bind refuses every submission ("No available agent to submit job").
                 f"--dashboard-agent-listen-port={free_port()}"], env)
        start_second_node(info)
        for _ in range(60):  # the job agent comes up a few seconds after `ray start` returns
            if ray_cli(["job", "list", "--address", f"http://127.0.0.1:{dash}"], env, check=False).returncode == 0:
                break
            time.sleep(2)
        yield info
    finally:
        stop_cluster(temp2, gcs)
        stop_cluster(temp1, gcs)


def submit(cluster: dict, run_dir: str, model_dir: str, *extra: str) -> subprocess.Popen:
    args = [f"model.path={model_dir}", f"run.dir={run_dir}", "data.max_prompts=16", "generation.max_new_tokens=8",
            *extra]
    excludes = json.dumps({"excludes": [".git", ".venv", "runs", "__pycache__", ".pytest_cache"]})
    # The job's log goes to a file, not a pipe: an unread pipe fills while a test watches, and stalls the job.
    for _ in range(30):
        log = tempfile.NamedTemporaryFile("w+", prefix="dlma-job-", suffix=".log", delete=False)  # noqa: SIM115
        job = subprocess.Popen([RAY, "job", "submit", "--address", f"http://127.0.0.1:{cluster['dash']}",
                                "--working-dir", str(REPO), "--runtime-env-json", excludes, "--",
                                "python", "jobs/iterate.py", *(a for c in CONFIGS for a in ("--config", c)), *args],
                               env=cluster["env"], stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        job.log_path = log.name
        # A loaded machine starts the nodes' job agents late: the head then refuses the submission at once, and
        # nothing was submitted. Anything else (accepted, or another failure) is the test's to judge.
        while job.poll() is None and "submitted successfully" not in Path(log.name).read_text(errors="replace"):
            time.sleep(0.5)
        if job.returncode is None or "No available agent to submit job" not in Path(log.name).read_text():
            return job
        time.sleep(3)
    return job


def finish(job: subprocess.Popen, timeout: float) -> str:
    job.wait(timeout=timeout)
    return Path(job.log_path).read_text()


def listing(cluster: dict, kind: str) -> list[dict]:
    out = ray_cli(["list", kind, "--address", f"http://127.0.0.1:{cluster['dash']}", "--detail", "--format", "json",
                   "--limit", "10000"], cluster["env"]).stdout
    return json.loads(out[out.index("["):])


@pytest.fixture(scope="module")
def two_node_job(cluster, tiny_model_dir) -> tuple[str, dict[tuple[str, str], float]]:
    """The two-node job, once, and the largest value of each dlma series both nodes' Prometheus endpoints
    exported while it ran: the first test checks them, the second starts its own run from its scored pairs."""
    start = time.time()
    job = submit(cluster, "s3://runs/multinode", tiny_model_dir)
    seen: dict[tuple[str, str], float] = {}

    def look() -> None:
        for port in cluster["prom"]:
            for k, v in scrape(port).items():
                seen[k] = max(seen.get(k, float("-inf")), v)

    deadline = time.time() + 1200
    while job.poll() is None and time.time() < deadline:
        look()
        time.sleep(2)
    for _ in range(8):  # the metrics agents export on an interval: look a little longer
        look()
        time.sleep(2)
    out = finish(job, 60)
    print(f"\nwall time of the two-node job: {time.time() - start:.0f}s")
    assert job.returncode == 0, out[-6000:]
    return out, seen


def scored_copy(src: str, dest: str, tmp: Path) -> None:
    """``dest`` as the run ``src`` was after its score stage: state.json's first two stages and their outputs.
    A job on ``dest`` then starts at the train stage (run.dir is a setting a run may resume with)."""
    state = json.loads(storage.read_text(f"{src}/state.json"))
    state["stages"] = [s for s in state["stages"] if s["stage"] in ("generate", "score")]
    assert len(state["stages"]) == 2, state["stages"]
    for part in ("round_0/generations", "round_0/pairs"):
        storage.download_dir(f"{src}/{part}", str(tmp / part))
        storage.upload_dir(str(tmp / part), f"{dest}/{part}")
    text = json.dumps(state, indent=2).replace(f"{src}/", f"{dest}/").replace(f'"{src}"', f'"{dest}"')
    storage.write_text_atomic(f"{dest}/state.json", text)


def test_job_on_two_nodes_with_run_dir_on_s3(cluster, tiny_model_dir, two_node_job):
    out, _ = two_node_job
    assert "succeeded" in out and "FATAL" not in out
    token = cluster["env"]["RAY_AUTH_TOKEN"]
    assert token not in out and token not in storage.read_text("s3://runs/multinode/state.json")

    state = json.loads(storage.read_text("s3://runs/multinode/state.json"))
    assert [s["stage"] for s in state["stages"]] == ["generate", "score", "train"]
    assert state["stages"][1]["rows"] == 16
    # Every output is on the store, whole, and nothing temporary is left there.
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri("s3://runs/multinode")
    names = {i.path for i in fs.get_file_info(pafs.FileSelector("runs/multinode", recursive=True))}
    assert {"runs/multinode/round_0/policy/model.safetensors", "runs/multinode/report.md"} <= names
    assert any(n.startswith("runs/multinode/round_0/pairs/") and n.endswith(".parquet") for n in names)
    assert not any("/.ray_train" in n or ".tmp-" in n for n in names), "temporary outputs left on S3"

    nodes = {n["node_id"]: n for n in listing(cluster, "nodes") if n["state"] == "ALIVE"}
    assert len(nodes) == 2
    labelled = {i for i, n in nodes.items() if "engine_node" in (n.get("resources_total") or {})}
    assert len(labelled) == 1
    actors = listing(cluster, "actors")
    where = {}
    for a in actors:  # Ray Data's actors are `_MapWorker`s; their repr names the callable class
        where.setdefault(f"{a.get('class_name')} {a.get('repr_name') or ''}", set()).add(a["node_id"])
    trainers = set().union(*(v for k, v in where.items() if k.startswith("RayTrainWorker")))
    engines = set().union(*(v for k, v in where.items() if "GenerationEngine" in k))
    scorers = set().union(*(v for k, v in where.items() if "PairScorer" in k))
    assert trainers == set(nodes), f"the two train workers must run one on each node: {where}"
    assert engines == labelled, f"engines must run only where engine_node is offered: {where}"
    assert scorers, where

    again = submit(cluster, "s3://runs/multinode", tiny_model_dir)  # resumed from the store's state.json
    out = finish(again, 600)
    assert again.returncode == 0 and "already finished" in out, out[-3000:]


def retries_available() -> bool:
    from dlma_ray.config.tree import Config

    cfg = Config()
    return any("failures" in name for name in vars(cfg.train))


@pytest.mark.skipif(not retries_available(), reason="train retries (Ray Train FailureConfig from the config) are "
                    "not in yet: the train stage runs with max_failures=0, so a lost node fails the job")
def test_losing_the_second_node_mid_train_is_retried(cluster, tiny_model_dir, two_node_job, tmp_path):
    """Kill every process of the second node once training has started; a replacement node joins (as an
    autoscaler would start one) and the job finishes after Ray Train restarts the worker group. The run starts
    from a copy of the first job's scored pairs (generate and score are that test's): the job begins at train."""
    import psutil

    from dlma_ray.config.tree import Config

    name = next(n for n in vars(Config().train) if "failures" in n)
    run_dir = "s3://runs/multinode-kill"
    scored_copy("s3://runs/multinode", run_dir, tmp_path)
    job = submit(cluster, run_dir, tiny_model_dir, f"train.{name}=2")
    deadline = time.time() + 900
    while "round 0: train" not in Path(job.log_path).read_text(errors="replace"):
        assert job.poll() is None and time.time() < deadline, "the job ended before its train stage"
        time.sleep(2)
    assert "resuming s3://runs/multinode-kill at round 0, stage train" in Path(job.log_path).read_text()
    time.sleep(20)  # the worker group is up and stepping
    victims = [p for p in psutil.process_iter(["cmdline"]) if any(cluster["temp2"] in a for a in p.info["cmdline"] or [])]
    for p in victims:
        p.kill()
    time.sleep(10)
    start_second_node(cluster)
    out = finish(job, 900)
    assert job.returncode == 0, out[-6000:]
    state = json.loads(storage.read_text(f"{run_dir}/state.json"))
    assert [s["stage"] for s in state["stages"]] == ["generate", "score", "train"]


def test_clients_without_the_token_are_refused(cluster, tmp_path):
    no_token = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_TOKEN"}
    refused = ray_cli(["job", "list", "--address", f"http://127.0.0.1:{cluster['dash']}"],
                      {**no_token, "HOME": str(tmp_path)}, timeout=120, check=False)
    assert refused.returncode != 0, "the cluster must refuse clients without the token"
    assert "auth" in (refused.stdout + refused.stderr).lower() or "401" in refused.stdout + refused.stderr


def test_each_node_exports_the_pipeline_metrics(two_node_job):
    """The dashboard's Metrics tab reads these series from each node's endpoint (the engine ran on the second
    node, the scorers and train workers on both): summed over nodes and tags, they count the job's work."""
    _, seen = two_node_job

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
