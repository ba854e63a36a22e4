"""vLLM engines: how one starts and stops, and engines that outlive a stage.

`start_engine` / `stop_engine` serve every process that holds an engine (the generate stage's actors, the
evaluation's answer tasks, the benchmarks), run with `ENGINE_RUNTIME_ENV`.

Engines kept across stages: evaluate(k)'s engines, which load pi_{k+1}, serve round k+1's generate. Without them a round starts its engines twice on the same weights: once to answer the evaluation prompts
with pi_{k+1}, once more to generate round k+1's pairs. `KeptEngines` starts `EngineHost` actors once; the
evaluation calls them from the driver and the generate stage's Ray Data actors call them through a
`HostedEngine`, which answers `generate` and `get_tokenizer` as a `vllm.LLM` does, so `GenerationEngine`
runs unchanged on either.

Resources: a host holds its GPUs and custom resources for its whole life but no CPU. The CPU its work uses is
reserved by whoever drives it in that stage (the generate stage's actors reserve `cpus_per_engine` each, as
engines of their own would); between the two stages it sits idle through evaluation's scoring. On GPUs it
would hold the GPUs it sits on through that scoring, so `room_beside_scorers` checks the cluster has room for
a scorer (or evaluation's pi_0 engine) beside the hosts; the pipeline keeps no engines when it has not.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from dlma_ray.workers import phases, watchdog

log = logging.getLogger("dlma_ray")

# Ray options of every process that holds an engine. Ray kills a worker's child processes when it ends it, which
# killed the engine core (and Python's resource tracker) in the middle of vLLM's own shutdown: the log then
# showed "engine core exited unexpectedly" and resource-tracker KeyError tracebacks. Left alive, vLLM stops
# its core itself at exit; a core whose parent dies without stopping it runs on, so `watchdog` ends it.
# Ray starts workers at niceness 15, and the engine's core and worker processes inherit it: every Ray process
# at niceness 0 (driver, raylet, dashboard) then came first, and the engine started 1.1-1.5x slower than a
# standalone one (bench/RESULTS.md). Ray's job supervisor starts its driver at 0 the same way.
ENGINE_RUNTIME_ENV = {"env_vars": {"RAY_kill_child_processes_on_worker_exit": "false", "RAY_worker_niceness": "0"}}


def engine_kwargs(model_path: str, gen: dict, tensor_parallel_size: int, trust_remote_code: bool) -> dict:
    """Arguments of `vllm.LLM` for one engine (CPU build or CUDA build: same call)."""
    from dlma_ray.workers.devices import ray_device

    kwargs = dict(model=model_path, dtype=gen["dtype"], enforce_eager=gen["enforce_eager"], load_format="safetensors",
                  max_model_len=gen["max_model_len"], seed=gen["seed"], trust_remote_code=trust_remote_code,
                  tensor_parallel_size=tensor_parallel_size)
    if ray_device() != "cpu":  # an engine Ray gave GPUs (a CPU engine on a GPU node must not claim one)
        kwargs["gpu_memory_utilization"] = gen["gpu_memory_utilization"]
    else:
        # vLLM's CPU build crashes ("CPU Generator does not use offset") when a request with its own
        # seed has its prefill chunked; whole prefills keep per-request seeds working.
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, gen["max_model_len"]))
    return kwargs


def start_engine(model_ref: str, gen: dict, tensor_parallel_size: int = 1, trust_remote_code: bool = False,
                 torch_threads: int = 1):
    """A `vllm.LLM` for ``model_ref`` (its engine core runs in a process of its own: `stop_engine` ends it).

    The core cannot run in this process on vLLM's CPU build: its attention kernels then see two thread
    counts (the actor's torch threads and the engine's OpenMP binding) and abort."""
    import torch

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(gen["cpu_kvcache_gb"]))
    with phases.phase("import"):
        from vllm import LLM

    from dlma_ray.model.loading import resolve_model_path

    torch.set_num_threads(torch_threads)
    # Started first: it ends the engine's processes should this process die before stopping them, also during
    # the start (after a failed start it stays, to end what the start may have left, when this process ends).
    dog = watchdog.start()
    with phases.phase("engine_start"):
        llm = LLM(**engine_kwargs(resolve_model_path(model_ref), gen, tensor_parallel_size, trust_remote_code))
    llm.dlma_watchdog = dog
    return llm


def stop_engine(llm) -> None:
    """Shut the engine's core (and its processes, if any) down now, not at interpreter exit. Idempotent."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown") and not getattr(llm, "dlma_stopped", False):
        llm.dlma_stopped = True
        core.shutdown()
        watchdog.stop(getattr(llm, "dlma_watchdog", None))



class EngineHost:
    """The Ray actor that owns one `vllm.LLM` between stages (created by `KeptEngines.start`)."""

    def __init__(self, model_ref: str, gen: dict, tensor_parallel_size: int, trust_remote_code: bool,
                 torch_threads: int):
        phases.process_started()
        t0 = time.perf_counter()
        # Timed apart from the engine's start, as bench/bench_generate.py reports both. `vllm.LLM` is imported
        # lazily: `import vllm` alone leaves about 4 s of the import inside the start.
        from vllm import LLM  # noqa: F401

        t1 = time.perf_counter()
        self.llm = start_engine(model_ref, gen, tensor_parallel_size, trust_remote_code, torch_threads)
        self.start_seconds = {"import": t1 - t0, "engine": time.perf_counter() - t1}
        self.claimed = False
        self.requests = 0  # requests served, for the log and the tests

    def served(self) -> int:
        return self.requests

    def started_in(self) -> dict[str, float]:
        """Seconds this host took to import vLLM and to start its engine."""
        return self.start_seconds

    def claim(self) -> bool:
        """True to the first generate-stage actor that asks: it then sends this host all its batches. Its prefix
        cache is emptied, so the stage samples exactly what a fresh engine would."""
        first, self.claimed = not self.claimed, True
        if first:
            self.llm.reset_prefix_cache()
        return first

    def reset_prefix_cache(self) -> None:
        """Empty the prefix cache before a new set of requests, so they sample exactly what a fresh engine would."""
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list, params: list) -> list[tuple[str, list[int], str | None, list | None]]:
        """(text, token ids, finish reason, log-probs) of each prompt's first completion; prompts as
        `vllm.LLM.generate` takes them (the stages send token ids: `prompts.engine_prompt`)."""
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        self.requests += len(prompts)
        return [(o.outputs[0].text, list(o.outputs[0].token_ids), o.outputs[0].finish_reason,
                 plain_logprobs(o.outputs[0].logprobs)) for o in outs]

    def stop(self) -> None:
        stop_engine(self.llm)


def plain_logprobs(logprobs) -> list[dict[int, float]] | None:
    """A completion's per-token log-probs (vLLM's `Logprob` objects, or numbers) as {token id: log-prob} dicts that
    pickle anywhere; None when none were asked for."""
    if logprobs is None:
        return None
    return [{int(k): float(getattr(v, "logprob", v)) for k, v in step.items()} for step in logprobs]


@dataclass(frozen=True)
class Completion:
    """The fields of a vLLM `CompletionOutput` that the stages read."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[dict[int, float]] | None = None  # per generated token, when the request asked for log-probs


@dataclass(frozen=True)
class RequestResult:
    outputs: list[Completion]


class HostedEngine:
    """An `EngineHost` seen as a `vllm.LLM`: `generate(prompts, params)` and `get_tokenizer()`."""

    def __init__(self, host, model_ref: str, trust_remote_code: bool = False):
        from dlma_ray.model.loading import load_tokenizer

        self.host = host
        self.tokenizer = load_tokenizer(model_ref, trust_remote_code)

    @classmethod
    def claim(cls, hosts: list, model_ref: str, trust_remote_code: bool = False) -> "HostedEngine":
        """The first host no other actor has claimed; a restarted actor, finding every host claimed, shares
        the host its id picks (a host serves its calls one at a time, so sharing is only slower)."""
        import ray

        free = next((h for h in hosts if ray.get(h.claim.remote())), None)
        if free is None:
            free = hosts[hash(ray.get_runtime_context().get_actor_id()) % len(hosts)]
        return cls(free, model_ref, trust_remote_code)

    def generate(self, prompts: list, params: list, use_tqdm: bool = False) -> list[RequestResult]:
        import ray

        return [RequestResult([Completion(*fields)]) for fields in ray.get(self.host.generate.remote(prompts, params))]

    def get_tokenizer(self):
        return self.tokenizer


def room_beside_scorers(res, n: int, cluster: dict[str, float]) -> bool:
    """Can evaluation's scorer tasks and its pi_0 engine run (one at a time) while ``n`` hosts hold their GPUs and
    custom resources? ``res`` is `cfg.resources`, ``cluster`` Ray's resource totals."""
    held = {"GPU": n * res.gpus_per_engine, **{k: n * v for k, v in res.engine_resources.items()}}
    engine = {"GPU": res.gpus_per_engine, **res.engine_resources}
    scorer = {"GPU": res.gpus_per_scorer, **res.scorer_resources}
    for name in set(held) | set(scorer):
        need = max(engine.get(name, 0.0), scorer.get(name, 0.0))
        if held.get(name, 0.0) > 0 and need > 0 and cluster.get(name, 0.0) < held[name] + need:
            return False
    return True


@dataclass
class KeptEngines:
    """``hosts``: `EngineHost` actors, each with its own engine loaded from ``model_ref``."""

    model_ref: str
    hosts: list = field(default_factory=list)
    trust_remote_code: bool = False

    @classmethod
    def start(cls, cfg: Any, model_ref: str, n: int) -> "KeptEngines":
        """``n`` hosts for ``model_ref`` (their engines start in the background; calls wait for them)."""
        import ray

        res = cfg.resources
        actor = ray.remote(EngineHost).options(
            num_cpus=0, num_gpus=res.gpus_per_engine, runtime_env=ENGINE_RUNTIME_ENV,
            max_restarts=res.max_actor_restarts, max_task_retries=res.max_actor_restarts,
            **({"resources": dict(res.engine_resources)} if res.engine_resources else {}))
        hosts = [actor.remote(model_ref, vars(cfg.generation), res.tensor_parallel_size, cfg.model.trust_remote_code,
                              res.threads_for(res.cpus_per_engine)) for _ in range(n)]
        log.info("keeping %d vLLM engine(s) on %s across stages (an evaluation and a generate stage)", n, model_ref)
        return cls(model_ref, hosts, cfg.model.trust_remote_code)

    def serves(self, model_ref: str) -> bool:
        return bool(self.hosts) and model_ref == self.model_ref

    def engine(self, i: int = 0, fresh: bool = False) -> HostedEngine:
        """Host ``i`` as a `vllm.LLM`-like engine for the driver (evaluation's answers); ``fresh``: its prefix cache
        emptied first (after a stage has used it)."""
        import ray

        if fresh:
            ray.get(self.hosts[i].reset_prefix_cache.remote())
        return HostedEngine(self.hosts[i], self.model_ref, self.trust_remote_code)

    def release(self) -> None:
        """Stop every engine and end the hosts. Idempotent."""
        import ray

        hosts, self.hosts = self.hosts, []
        for h in hosts:
            try:
                started = ray.get(h.started_in.remote(), timeout=120)
                log.info("kept vLLM engine (started in %.1f s, vLLM import %.1f s apart) served %d requests; "
                         "stopping it", started["engine"], started["import"], ray.get(h.served.remote(), timeout=120))
                ray.get(h.stop.remote(), timeout=120)
            except Exception as exc:  # noqa: BLE001 - a dead host has nothing left to stop
                log.warning("a kept vLLM engine did not stop cleanly: %s", exc)
            ray.kill(h, no_restart=True)
