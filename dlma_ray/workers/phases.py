"""Where a stage's time goes: start-up phases recorded by the processes that do the work.

    process       from the process's creation to the first line of the actor/task (spawn, Ray, imports)
    import        a library imported apart (vLLM, DeepSpeed)
    engine_start  a vLLM engine started (its core and worker processes, the weights, the KV cache)
    model_load    a transformers model loaded for scoring or training
    train_setup   `deepspeed.initialize` (optimizer state, ZeRO partitions)
    save          the trained policy written (every phase that is not start-up counts as writes or work)

A process records each span as one small JSON file under $DLMA_PHASES_DIR. The pipeline sets it to
<run>/.phases before it starts a local Ray, whose workers inherit it; a process without it records nothing (a
cluster joined through `resources.ray_address`). After each stage the driver reads the spans that overlap the
stage (`collect`) into the stage's state.json entry; the report's Stages table shows the wall seconds during
which some process was starting up, beside the stage's seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid

ENV = "DLMA_PHASES_DIR"
STARTUP = ("process", "import", "engine_start", "model_load", "train_setup")


def record(name: str, start: float, end: float) -> None:
    """One span of this process (epoch seconds); a no-op without $DLMA_PHASES_DIR. Never fails its caller."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    try:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump({"phase": name, "start": start, "end": end, "pid": os.getpid()}, fh)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


@contextlib.contextmanager
def phase(name: str):
    start = time.time()
    try:
        yield
    finally:
        record(name, start, time.time())


def process_started() -> None:
    """The span from this process's creation to now: called first thing in an actor's or task's body."""
    import psutil  # Ray's own dependency

    record("process", psutil.Process().create_time(), time.time())


def read(folder: str) -> list[dict]:
    spans = []
    if not os.path.isdir(folder):
        return spans
    for name in os.listdir(folder):
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as fh:
                    spans.append(json.load(fh))
            except (OSError, ValueError):
                continue
    return spans


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: wall time during which at least one was running."""
    total, reach = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e > reach:
            total += e - max(s, reach)
            reach = e
    return total


def summarize(spans: list[dict], start: float, end: float) -> dict:
    """The spans that overlap [start, end), clipped to it: seconds per phase summed over processes, the number
    of processes, and `startup_wall`: wall seconds during which some process was starting up."""
    clipped = [(s["phase"], max(s["start"], start), min(s["end"], end), s["pid"]) for s in spans
               if s["start"] < end and s["end"] > start]
    per_phase: dict[str, float] = {}
    for name, s, e, _ in clipped:
        per_phase[name] = round(per_phase.get(name, 0.0) + (e - s), 2)
    startup = [(s, e) for name, s, e, _ in clipped if name in STARTUP]
    return {"seconds": per_phase, "processes": len({pid for *_, pid in clipped}),
            "startup_wall": round(union_seconds(startup), 2)}


def collect(folder: str, start: float, end: float) -> dict:
    return summarize(read(folder), start, end)
