"""Helpers shared by the benchmarks: environment, model, data, timing and printing.

Every benchmark runs its baseline in the same process run as the thing it measures, with the same
thread settings (`dlma_ray.cli.setup_environment()`, then torch threads = BENCH_THREADS, by default
what the pipeline gives its scorer and train workers), and prints ratios rather than absolute claims.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

MODEL = os.environ.get("BENCH_MODEL", "builtin:smollm2-135m-instruct")
THREADS = int(os.environ.get("BENCH_THREADS", "0"))  # 0: the pipeline's scorer/train worker threads (setup())
DEMO_PAIRS = REPO / "dlma_ray" / "assets" / "demo_pairs.jsonl"


def setup() -> None:
    """The pipeline's process environment, plus what a standalone vLLM engine needs; sets THREADS."""
    global THREADS
    from dlma_ray.cli import setup_environment

    setup_environment()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(bench_config().generation.cpu_kvcache_gb))
    os.environ.setdefault("RAY_ADDRESS", "local")  # a private Ray instance, never someone else's
    import torch

    r = bench_config().resources
    THREADS = THREADS or r.threads_for(r.cpus_per_scorer)  # what the pipeline's scorer and trainer use
    torch.set_num_threads(THREADS)


def device() -> str:
    """Where the in-process models run: the first GPU if torch sees one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_dir() -> str:
    from dlma_ray.model.loading import resolve_model_path

    return resolve_model_path(MODEL)


def bench_config(*overrides: str):
    from dlma_ray.config.tree import load_config

    return load_config(None, [f"model.path={MODEL}", *overrides])


def renderer(tokenizer, cfg=None):
    from dlma_ray.core.prompts import ContrastiveRenderer, pair_from_config

    cfg = cfg or bench_config()
    return ContrastiveRenderer(tokenizer, pair_from_config(cfg.pair.name, cfg.pair.positive, cfg.pair.negative),
                               cfg.pair.style)


def preference_pairs(limit: int = 0, path: str | None = None):
    """hh-rlhf style (prompt chat, chosen, rejected) pairs; the demo pairs shipped with the repo by default."""
    from dlma_ray.data.records import load_preference_pairs

    pairs, _ = load_preference_pairs(str(path or DEMO_PAIRS), limit=limit, seed=0)
    return pairs


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(rank: int = 0, world: int = 1, port: int | None = None, backend: str | None = None) -> None:
    """Our own process group (gloo on CPU, NCCL on GPU); on CPU no shared-memory comm op, as dlma_ray/workers/training.py."""
    import deepspeed
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port or free_port()), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group(backend or ("nccl" if device() == "cuda" else "gloo"), rank=rank, world_size=world)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def torch_step(model, optimizer, loss_fn, grad_clip: float) -> float:
    """One plain torch training step (the baseline of the step benchmarks): loss, backward, clip, update."""
    import torch

    loss = loss_fn()
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


@contextlib.contextmanager
def timed(store: dict, key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = time.perf_counter() - start


def interleaved(fns: dict, repeats: int, warmup: int = 0) -> tuple[dict, dict, dict]:
    """Call every fn in turn (a, b, a, b, ...): ``warmup`` untimed rounds, then ``repeats`` timed ones.

    Interleaving spreads a change in machine load over every side alike. Returns per name the wall
    seconds, the process CPU seconds (all threads; less sensitive to other processes than wall time)
    and the return values of every call, warm-up included.
    """
    wall, cpu, out = ({k: [] for k in fns} for _ in range(3))
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            out[name].append(fn())
            if i >= warmup:
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
    return wall, cpu, out


def runs(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


def say(text: str = "") -> None:
    """Print a result line; also append it to $BENCH_RESULTS (run_all.py collects them there)."""
    print(text, flush=True)
    if os.environ.get("BENCH_RESULTS"):
        with open(os.environ["BENCH_RESULTS"], "a") as fh:
            fh.write(text + "\n")


def header(name: str) -> None:
    import torch

    say(f"\n=== {name}  [{time.strftime('%Y-%m-%d %H:%M:%S')}; {load()}; torch threads "
        f"{torch.get_num_threads()}; device {device()}; model {MODEL}]")


def table(columns: list[str], rows: list[list]) -> None:
    """Print a Markdown table (floats to 3 significant digits)."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    say("| " + " | ".join(columns) + " |")
    say("|" + "---|" * len(columns))
    for row in rows:
        say("| " + " | ".join(cell(v) for v in row) + " |")


def footer() -> None:
    say(f"[done; {load()}]")


def machine_info() -> str:
    """Machine, load and library versions, as Markdown list lines."""
    import importlib.metadata as md
    import platform
    import subprocess

    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))

    def version(dist: str) -> str:
        for name in (dist, f"{dist}-cpu"):  # vLLM's CPU build is the `vllm-cpu` distribution
            try:
                return f"{dist} {md.version(name)}" + (" (vllm-cpu)" if name != dist else "")
            except md.PackageNotFoundError:
                pass
        return f"{dist} not installed"

    versions = ", ".join(version(d) for d in ("torch", "vllm", "ray", "deepspeed", "transformers"))
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return "\n".join([f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
                      f"- machine: {os.cpu_count()} CPUs ({model}), {mem_kb / 2 ** 20:.1f} GiB RAM, "
                      f"{platform.system()} {platform.release()}, Python {platform.python_version()}, GPU: {gpu}",
                      f"- {load()}",
                      f"- versions: {versions}"])
