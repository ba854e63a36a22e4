"""Checks of the processes' surroundings that fail early, with the cause, instead of deep inside torch.

Found while running two Ray nodes on one machine (issue 13): a process whose working directory has been
deleted dies at `import torch` with "Intel oneMKL FATAL ERROR: Cannot load .../torch/lib/libtorch_cpu.so"
and exit status 2 (MKL, linked into libtorch_cpu, cannot resolve its own library's path). Ray runs a job's
processes inside the job's unpacked `--working-dir`, under the node's session directory; two Ray nodes on
one host that share a temp dir (the second `ray start --address` given no `--temp-dir` of its own) share
that directory and each node's runtime-env agent manages (and deletes) the packages in it.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

log = logging.getLogger("dlma_ray")


def check_working_directory() -> None:
    """Stop with the cause when this process's working directory no longer exists."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise SystemExit("error: this process's working directory was deleted (torch would die at import with "
                         "'Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so', exit 2). Under Ray: another "
                         "Ray node on this host shares this node's temp dir and removed the job's working_dir; "
                         "start each node with its own `ray start --temp-dir=...`.") from None


def session_dir(node: dict) -> str:
    """The session directory of a `ray.nodes()` entry, from its object store socket path."""
    sock = str(node.get("ObjectStoreSocketName") or "")
    return sock.split("/sockets/")[0] if "/sockets/" in sock else ""


def shared_session_dirs(nodes: list[dict]) -> dict[str, list[str]]:
    """Session directories that several live nodes on one host share: {directory: [node ids]}."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for n in nodes:
        if n.get("Alive") and session_dir(n):
            groups[(str(n.get("NodeManagerAddress")), session_dir(n))].append(str(n.get("NodeID")))
    return {d: ids for (_, d), ids in groups.items() if len(ids) > 1}


def check_shared_session_dirs(nodes: list[dict], working_dir: str) -> None:
    """Refuse a job that carries a working_dir on a cluster where two live nodes on one host share a session
    directory: the second node's runtime-env agent removes and unpacks the package again as soon as a worker
    of the job starts there, deleting the directory the driver and the first node's workers run in (seen in
    `runtime_env_setup-*.log`: "Removing .../working_dir_files/_ray_pkg_..."), and they die at `import torch`.
    Without a working_dir only a warning: nothing of the job lives there."""
    for directory, ids in shared_session_dirs(nodes).items():
        msg = (f"{len(ids)} Ray nodes on one host share the session directory {directory} (the later ones were "
               "started without a --temp-dir of their own), so their runtime-env agents share the job's "
               "working_dir: the second node's agent deletes and unpacks it again under the running processes, "
               "which then die at `import torch` with 'Intel oneMKL FATAL ERROR: Cannot load "
               ".../libtorch_cpu.so' (exit 2). Start each node with its own `ray start --temp-dir=DIR`. Nodes: "
               + ", ".join(i[:12] for i in ids))
        if working_dir:
            raise RuntimeError(msg)
        log.warning("%s", msg)


def check_cluster() -> None:
    """``check_shared_session_dirs`` on the connected cluster (call after ray.init)."""
    import ray

    runtime_env = ray.get_runtime_context().runtime_env
    check_shared_session_dirs(ray.nodes(), str(runtime_env.get("working_dir") or ""))
