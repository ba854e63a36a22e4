"""The engine watchdog (dlma_ray.workers.watchdog) on plain processes standing in for an engine's core: it ends
them once the process that started them is SIGKILLed, exits on its own once they end, and never signals a
process that only reuses a recorded pid. The real engine in a Ray actor: tests/test_engine_handover.py."""

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
    # The owner starts a "core" that ignores SIGTERM (SIGKILL must follow) and its watchdog, then is SIGKILLed.
    owner = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from dlma_ray.workers import watchdog\n"
        "before = watchdog.descendants()\n"
        "core = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, "
        "signal.SIG_IGN); print(1, flush=True); time.sleep(120)'], stdout=subprocess.PIPE)\n"
        "core.stdout.readline()\n"
        "dog = watchdog.start(before)\n"
        "print(core.pid, dog.pid, flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    core, dog = map(int, owner.stdout.readline().split())
    try:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        assert gone(core, 5 + 2 * watchdog.GRACE_S), "the orphaned core still runs"
        assert gone(dog, 5), "the watchdog outlived its work"
    finally:
        for pid in (core, dog):
            if not gone(pid, 0):
                os.kill(pid, signal.SIGKILL)


def test_the_watchdog_exits_once_the_engine_has_stopped():
    before = watchdog.descendants()
    core = subprocess.Popen(SLEEPER)
    dog = watchdog.start(before)
    assert dog is not None
    core.kill()
    core.wait()
    watchdog.wait_for(dog)
    assert dog.returncode == 0, "the watchdog still runs after the engine stopped"


def test_a_reused_pid_is_never_signalled():
    other = subprocess.Popen(SLEEPER)
    try:
        created = psutil.Process(other.pid).create_time()
        watchdog.end([(other.pid, created - 1.0)], grace_s=0.2)  # the recorded process was another one
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
