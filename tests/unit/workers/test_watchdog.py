"""The engine watchdog (dlma_ray.workers.watchdog) on plain processes standing in for an engine's core: it ends
them once the process that started them is SIGKILLed (also processes started after the watchdog, as an engine's
are), is ended with the engine, and never signals a process that only reuses a recorded pid. The real engine in a
Ray actor: tests/e2e/test_engine_handover.py."""

import os
import signal
import subprocess
import sys
import time

import psutil

from dlma_ray.workers import watchdog

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def gone(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_killed_owner_takes_its_engine_processes_along():
    # The owner starts its watchdog, then a "core" that ignores SIGTERM (SIGKILL must follow) and its "worker",
    # and is SIGKILLed: as a driver stopped while its engine starts or runs. A process the owner had before the
    # watchdog started is not the engine's: it is left alone.
    owner = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from dlma_ray.workers import watchdog\n"
        "own = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "time.sleep(0.5)\n"
        "dog = watchdog.start()\n"
        "core = subprocess.Popen([sys.executable, '-c', 'import signal, subprocess, sys, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "w = subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(120)\"]); "
        "print(w.pid, flush=True); time.sleep(120)'], stdout=subprocess.PIPE)\n"
        "worker = core.stdout.readline().decode().strip()\n"
        "time.sleep(4 * watchdog.POLL_S)\n"
        "print(own.pid, core.pid, worker, dog.pid, flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    own, core, worker, dog = map(int, owner.stdout.readline().split())
    try:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        assert gone(core, 5 + 2 * watchdog.GRACE_S), "the orphaned core still runs"
        assert gone(worker, 5), "the orphaned core's worker still runs"
        assert gone(dog, 5), "the watchdog outlived its work"
        assert not gone(own, 0), "a process that was not the engine's was ended"
    finally:
        for pid in (own, core, worker, dog):
            if not gone(pid, 0):
                os.kill(pid, signal.SIGKILL)


def test_the_watchdog_ends_once_the_engine_has_stopped():
    dog = watchdog.start()
    core = subprocess.Popen(SLEEPER)
    time.sleep(2 * watchdog.POLL_S)
    assert dog.poll() is None, "the watchdog runs while the engine does"
    core.kill()
    core.wait()
    watchdog.stop(dog)
    assert dog.poll() is not None, "the watchdog still runs after the engine stopped"


def test_a_reused_pid_is_never_signalled():
    other = subprocess.Popen(SLEEPER)
    try:
        created = psutil.Process(other.pid).create_time()
        watchdog.end([(other.pid, created - 1.0)], grace_s=0.2)  # the recorded process was another one
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
