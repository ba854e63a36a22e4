"""The runs of the methods whose policy labels or opposes its own answers (RLAIF, Self-Rewarding, SPIN), end to end
through jobs/iterate.py, each started from its paper preset with jobs/configs/embedded-overlay.yaml (the tiny model
in place of the embedded one; the tests' overrides come last): a method's run, once per test file as a module
fixture (a subprocess with a private Ray instance), and its resume, a round redone from a copy of it
(`--restart-from`, stopped after the score stage with `--stop-after`): a killed round, resumed, gives the same
pairs. The test files: tests/e2e/test_rlaif.py, test_self_rewarding.py, test_spin.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
OVERLAY = REPO / "jobs/configs/embedded-overlay.yaml"
PROMPTS = 8


def preset(name: str) -> list[str]:
    return ["--config", str(REPO / "jobs/configs" / name), "--config", str(OVERLAY)]


def job(tiny_model_dir: str, run_dir: Path, *extra: str, configs: list[str] = ()) -> list[str]:
    return [*configs, f"model.path={tiny_model_dir}", f"run.dir={run_dir}", "eval.enabled=false",
            f"data.max_prompts={PROMPTS}", "data.heldout_fraction=0.2", "generation.max_new_tokens=8",
            "generation.cpu_kvcache_gb=1", "train.micro_batch_size=2", "train.global_batch_size=4", "train.lr=1e-3",
            *extra]


def run_job(args: list[str]) -> str:
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(REPO / "jobs/iterate.py"), *args], cwd=REPO,
                            env=dict(os.environ, RAY_ADDRESS="local"), capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    lines = log.splitlines()
    tracebacks = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    assert not tracebacks, "\n".join(lines[tracebacks[0]:tracebacks[0] + 30]) if tracebacks else ""
    return log


def stages(run_dir: Path) -> dict[tuple[int, str], dict]:
    return {(s["round"], s["stage"]): s for s in json.loads((run_dir / "state.json").read_text())["stages"]}


def table(run_dir: Path, k: int, name: str, schema) -> list[dict]:
    t = pq.read_table(run_dir / f"round_{k}/{name}")
    assert t.schema.names == schema.names and [f.type for f in t.schema] == [f.type for f in schema]
    return t.to_pylist()


def same_rows(a: list[dict], b: list[dict], columns) -> bool:
    """The same rows, matched by (round, prompt id), in ``columns`` (NaN equals NaN: a column the row leaves unset)."""
    key = lambda r: (r["round"], r["prompt_id"])  # noqa: E731
    value = lambda v: "NaN" if isinstance(v, float) and v != v else v  # noqa: E731
    return ([[value(r[c]) for c in columns] for r in sorted(a, key=key)]
            == [[value(r[c]) for c in columns] for r in sorted(b, key=key)])


def finished(args: list[str]) -> Path:
    """The run dir of ``args`` after running it to the end."""
    run_job(args)
    return Path(next(a for a in args if a.startswith("run.dir=")).split("=", 1)[1])


def resumed_copy(run_dir: Path, tmp_path: Path, restart_from: str, args: list[str]) -> Path:
    """The finished run copied and redone from ``restart_from`` (as a run killed there would be resumed) up to
    that round's score stage (`--stop-after`: the pairs are what is compared; training them is tested above)."""
    copy = tmp_path / "resumed"
    shutil.copytree(run_dir, copy)
    k = restart_from.split("/")[0]
    run_job([*[a if not a.startswith("run.dir=") else f"run.dir={copy}" for a in args],
             "--restart-from", restart_from, "--stop-after", f"{k}/score"])
    assert list(stages(copy))[-1] == (int(k.removeprefix("round_")), "score"), "--stop-after stops after that stage"
    return copy
