"""The driver's Ray: joined (`ray job submit`, `resources.ray_address`) or started for this job alone, its dashboard
named to every process, SIGTERM turned into a clean stop."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from dlma_ray.config.tree import Config

log = logging.getLogger("dlma_ray")


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, a scheduler, `ray job stop`) stops the driver as Ctrl-C does, its lock released and Ray shut
    down at exit; Ray's handler (set by `ray.init`, so this comes after it) aborted, leaving a local cluster's agents."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # Python runs handlers on the main thread
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"stopped by signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)


@contextmanager
def own_dashboard(address: str):
    """ray.init options for a Ray this job starts itself: its dashboard on a free port (8265 while free), named to
    every process of it in RAY_API_SERVER_ADDRESS. Ray's state API finds the dashboard by scanning the machine
    otherwise: with a second local Ray running (two jobs on one laptop, two test lanes) Ray Train's placement-group
    cleaner died at start with "ConnectionError: Found multiple active Ray instances" (a traceback in a healthy
    run, and nobody left to free the workers' resources should the controller crash). The variable is set only
    while ray.init starts the raylet (which every worker inherits it from), so no later process of this one is
    sent to a dashboard that has stopped."""
    if address != "local" or os.environ.get("RAY_API_SERVER_ADDRESS"):
        yield {}  # joining a cluster, or the user named the API server
        return
    import socket

    def free(port: int) -> int:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return 0
            return s.getsockname()[1]

    import fcntl
    import tempfile

    # Held while ray.init starts the dashboard: two jobs starting at once would both find 8265 free, and the
    # second dashboard would die on the taken port (seen with two test lanes).
    with open(os.path.join(tempfile.gettempdir(), "dlma-ray-dashboard-port.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        port = free(8265) or free(0)  # Ray's usual port while it is free: what users open
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        try:
            yield {"dashboard_port": port}
        finally:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)


def init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    # `ray job submit` sets RAY_ADDRESS; without it the job starts its own Ray instead of joining
    # whatever cluster happens to run on the machine (`resources.ray_address=auto` joins one).
    address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    with own_dashboard(address) as options:
        info = ray.init(address=address, **options)
    stop_on_sigterm()
    from dlma_ray.workers.nodes import check_cluster

    check_cluster()  # two nodes on one host sharing a temp dir kill the job obscurely: say why, first
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = True
    # Ray 2.60's new Parquet reader lists files on a thread pool that can raise InterruptedError as a read
    # ends (a traceback in a healthy run); the established reader reads the same tables.
    context.use_datasource_v2 = False
    url = getattr(info, "dashboard_url", "") or ""
    url = f"http://{url}" if url and "://" not in url else url or "not running"
    log.info("Ray dashboard: %s (Jobs, Train and Data tabs show progress; the Metrics tab and each node's "
             "Prometheus endpoint carry the dlma_* metrics: generation tokens/s, pairs scored, R, loss, margin)",
             url)
