"""Reading a finished (or partial) run for the views: report, comparison, figures.

    load_run(run_dir)   state, rounds, R per round, train metrics, eval.json, answers, baseline answers
    get / fmt_* / md_table   small formatting helpers shared by the Markdown views
"""

from __future__ import annotations

import json
import math

from dlma_ray.core import storage
from dlma_ray.run.layout import RunLayout


def read_json(path: str):
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def read_jsonl(path: str):
    if not storage.exists(path):
        return None
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def _rewards(run: RunLayout, k: int) -> list[float] | None:
    import pyarrow.parquet as pq

    path = run.round(k).pairs
    if not storage.exists(path):
        return None
    rows = pq.read_table(path, columns=["self_reward"]).column("self_reward").to_pylist()
    return [r for r in rows if r is not None and math.isfinite(r)]


def load_run(run_dir: str) -> dict:
    run = RunLayout(run_dir)
    state = read_json(run.state) or {}
    rounds = run.rounds((state.get("config") or {}).get("rounds", {}).get("count", 0))
    return {
        "state": state, "rounds": rounds,
        "rewards": {k: _rewards(run, k) for k in rounds},
        "metrics": {k: read_jsonl(run.round(k).train_metrics) for k in rounds},
        "evals": {k: read_json(run.round(k).eval_json) for k in rounds},
        "answers": {k: read_jsonl(run.round(k).answers) for k in rounds},
        "baseline": read_jsonl(run.baseline_answers),
    }


def nested(d, *keys):
    for key in keys:
        if not isinstance(d, dict) or d.get(key) is None:
            return None
        d = d[key]
    return d


def fmt_pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def fmt_num(x, digits=2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


# ---------------------------------------------------------------- markdown

def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
