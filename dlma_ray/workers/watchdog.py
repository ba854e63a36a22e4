"""A watchdog that ends a vLLM engine's processes once the process that started the engine is gone.

Why: every process that holds an engine runs with `engines.ENGINE_RUNTIME_ENV`, which turns Ray's killing of a
worker's child processes off (`RAY_kill_child_processes_on_worker_exit=false`: left on, Ray killed the engine
core in the middle of vLLM's own shutdown and the log filled with tracebacks). But vLLM's engine core, a child
process of the actor or task that created `vllm.LLM`, does not watch its parent (its own workers watch the core
through a death pipe, vllm/v1/executor/multiproc_executor.py; vllm/v1/engine/core.py has no such watch). When
that actor process dies without stopping its engine (SIGKILLed by Ray, its driver stopped, a raylet gone), the
core and its workers ran on with nobody to stop them: a driver stopped with SIGTERM in round 1's generate stage
left the kept engine's core and worker (3.7 GB, busy at times) running until killed by hand (bench/RESULTS.md).

`start()`, called before the engine starts (a driver stopped during the engine's start left its core running
too), starts `python -m dlma_ray.workers.watchdog` (this module: the standard library and psutil, a few MB).
It polls: it records every process that appears below its owner (pid and create time, so that a reused pid is
never taken for one), and when the owner is gone it sends them SIGTERM, SIGKILL to those left after a grace
period, and exits. `stop()`, once the engine has stopped (`engines.stop_engine`), ends the watchdog.
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


def descendants(pid: int | None = None) -> set[int]:
    """Pids of the descendants of process ``pid`` (this one by default) now."""
    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


def start() -> subprocess.Popen:
    """Watch what this process starts from now on: the engine's core and workers (started next)."""
    # Processes already below this one are not the engine's (a Ray worker's own helpers, an earlier watchdog).
    ignore = ",".join(str(pid) for pid in descendants())
    # A session of its own: a signal sent to this process's group (a terminal's Ctrl-C) is not meant for it.
    return subprocess.Popen([sys.executable, "-m", "dlma_ray.workers.watchdog", str(os.getpid()), ignore],
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop(watchdog: subprocess.Popen | None) -> None:
    """End the watchdog once the engine has stopped (its processes are gone: nothing is left to watch)."""
    if watchdog is not None and watchdog.poll() is None:
        watchdog.terminate()
        try:
            watchdog.wait(timeout=5)
        except subprocess.TimeoutExpired:
            watchdog.kill()


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


def engine_processes(owner: int, ignore: set[int]) -> dict[int, float]:
    """pid -> create time of the processes below ``owner`` that are not ignored, this watchdog, or Python's
    multiprocessing resource tracker (it exits by itself once no process holds its pipe, cleaning up the shared
    memory it tracks, which a SIGKILL would leak; it ignores SIGTERM)."""
    out = {}
    try:
        for p in psutil.Process(owner).children(recursive=True):
            if p.pid in ignore or p.pid == os.getpid():
                continue
            try:
                if "resource_tracker" not in " ".join(p.cmdline()):
                    out[p.pid] = p.create_time()
            except psutil.Error:  # gone meanwhile
                pass
    except psutil.Error:  # the owner is gone
        pass
    return out


def watch(owner: int, ignore: set[int], poll_s: float = POLL_S) -> None:
    """Record what appears below ``owner`` (this process's parent) until it is gone, then end it all."""
    seen: dict[int, float] = {}
    # Once the owner dies this process is reparented, and its old parent's pid never comes back as its parent.
    while os.getppid() == owner:
        for pid, created in engine_processes(owner, ignore).items():
            seen.setdefault(pid, created)
        time.sleep(poll_s)
    procs = list(seen.items())
    left = [p.pid for p in alive(procs)]
    if left:
        print(f"dlma-ray watchdog: process {owner}, which started a vLLM engine, is gone; ending the engine's "
              f"processes {left}", file=sys.stderr, flush=True)
        end(procs)


def main(argv: list[str]) -> None:
    owner, ignore = argv
    watch(int(owner), {int(pid) for pid in ignore.split(",") if pid})


if __name__ == "__main__":
    main(sys.argv[1:])
