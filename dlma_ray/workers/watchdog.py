"""A watchdog that ends a vLLM engine's processes once the process that started the engine is gone.

Why: every process that holds an engine runs with `engines.ENGINE_RUNTIME_ENV`, which turns Ray's killing of a
worker's child processes off (`RAY_kill_child_processes_on_worker_exit=false`: left on, Ray killed the engine
core in the middle of vLLM's own shutdown and the log filled with tracebacks). But vLLM's engine core, a child
process of the actor or task that created `vllm.LLM`, does not watch its parent (its own workers watch the core
through a death pipe, vllm/v1/executor/multiproc_executor.py; vllm/v1/engine/core.py has no such watch). When
that actor process dies without stopping its engine (SIGKILLed by Ray, its driver stopped, a raylet gone), the
core and its workers ran on with nobody to stop them: a driver stopped with SIGTERM in round 1's generate stage
left the kept engine's core and worker (3.7 GB, busy at times) running until killed by hand (bench/RESULTS.md).

`start(before)`, called right after the engine started, records the processes the start added below this one
(pid and create time, so that a reused pid is never taken for them) and starts `python -m
dlma_ray.workers.watchdog` (this module: the standard library and psutil, a few MB), which polls: when the
process that started it is gone, it sends the recorded processes SIGTERM, SIGKILL to those left after a
grace period, and exits; it also exits once they are all gone (`engines.stop_engine`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5  # how often the watchdog looks; `stop_engine` waits up to a few polls for it to exit
GRACE_S = 5.0  # between SIGTERM and SIGKILL: vLLM's core stops its workers itself on SIGTERM


def descendants() -> set[int]:
    """Pids of this process's descendants now."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def recorded(before: set[int]) -> list[tuple[int, float]]:
    """(pid, create time) of this process's descendants not in ``before``: the engine's core and its workers.

    Python's multiprocessing resource tracker is left out: it exits by itself once no process holds its pipe,
    cleaning up the shared memory it tracks, which a SIGKILL would leak (it ignores SIGTERM)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in before:
            continue
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                out.append((p.pid, p.create_time()))
        except psutil.Error:  # already gone
            pass
    return out


def start(before: set[int]) -> subprocess.Popen | None:
    """Watch the processes started since ``before`` (`descendants()` taken before the engine started)."""
    procs = recorded(before)
    if not procs:  # an engine running inside this process (none on the CPU build; a GPU build may)
        return None
    args = [f"{pid}:{created!r}" for pid, created in procs]
    # A session of its own: a signal sent to this process's group (a terminal's Ctrl-C) is not meant for it.
    return subprocess.Popen([sys.executable, "-m", "dlma_ray.workers.watchdog", str(os.getpid()), *args],
                            stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for(watchdog: subprocess.Popen | None) -> None:
    """Reap the watchdog once the engine has stopped (it exits within a poll); leave it running if it has not."""
    if watchdog is not None:
        try:
            watchdog.wait(timeout=4 * POLL_S)
        except subprocess.TimeoutExpired:
            pass


def same_process(pid: int, created: float) -> psutil.Process | None:
    """The running process ``pid`` if it is still the one created at ``created`` (not a reused pid)."""
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - created) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE:
            return p
    except psutil.Error:
        pass
    return None


def alive(procs: list[tuple[int, float]]) -> list[psutil.Process]:
    return [p for p in (same_process(pid, created) for pid, created in procs) if p is not None]


def end(procs: list[tuple[int, float]], grace_s: float = GRACE_S) -> None:
    """SIGTERM each recorded process still running, then SIGKILL those left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        for p in alive(procs):
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        deadline = time.monotonic() + wait_s
        while alive(procs) and time.monotonic() < deadline:
            time.sleep(0.1)


def watch(owner: int, procs: list[tuple[int, float]], poll_s: float = POLL_S) -> None:
    """Until ``procs`` are gone: once ``owner`` (this process's parent) is, end them."""
    while alive(procs):
        # Once the owner dies this process is reparented, and its old parent's pid never comes back as its parent.
        if os.getppid() != owner:
            left = [p.pid for p in alive(procs)]
            print(f"dlma-ray watchdog: process {owner}, which started a vLLM engine, is gone; ending the engine's "
                  f"processes {left}", file=sys.stderr, flush=True)
            end(procs)
            return
        time.sleep(poll_s)


def main(argv: list[str]) -> None:
    owner, *specs = argv
    procs = [(int(pid), float(created)) for pid, created in (s.split(":") for s in specs)]
    watch(int(owner), procs)


if __name__ == "__main__":
    main(sys.argv[1:])
