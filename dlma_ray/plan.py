"""`dlma-ray plan`: each stage's actors on a cluster, their memory and the time of a round, before any work.

`make_plan(cfg, cluster, shape)` sizes each stage's pool as the pipeline will (`stages.pools.fitting_pool_size`),
estimates every actor's device and host memory (dlma_ray.model.sizing) and a round's time, and lists each problem that
would stop the run (a pool that cannot place one actor, memory over a GPU or a node), naming the stage and the
number. `Cluster` comes from the running Ray cluster (`cluster_from_ray`) or from the command line.

The command's side (`round_times`, `render`, `plan_command`): the time of a round, the plan as text, the command's arguments.

On CPU the throughputs are measured ones (bench/RESULTS.md, on the embedded 135M model, scaled by parameter
count); on GPUs none is measured yet, so the times are docs/scale.md's roofline: decoding reads the weights
once a step at the HBM bandwidth, scoring and training run at 40% of the bf16 peak, ZeRO's collectives at an
assumed link speed. Each time is printed with what it rests on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from dlma_ray.model import sizing
from dlma_ray.config.tree import Config
from dlma_ray.model.sizing import CPU_MEASURED, GIB, GPU_ASSUMED, SMOL_PARAMS, ModelShape

# Ray's `accelerator_type:<name>` resource -> memory of one device in GB (data sheets), when none is given.
ACCELERATOR_GB = {"H100": 80, "H200": 141, "B200": 180, "A100-80G": 80, "A100-40G": 40, "A100": 40, "L40S": 48,
                  "L4": 24, "A10G": 24, "V100": 16}
RUNTIME_HOST_GIB = {"engine": 3.0, "scorer": 2.0, "train": 3.0}  # Python, torch, CUDA context on the host
SAVING = "policy saved (rank 0 only)"  # what rank 0 builds to write the policy: once a node, not once a rank


@dataclass(frozen=True)
class Cluster:
    gpus: float
    gpu_memory_gb: float  # one device, GB (1e9 bytes: what data sheets and nvidia-smi's headline give)
    nodes: int
    cpus: float
    host_memory_gb: float | None = None  # per node; None: not checked
    custom: dict = field(default_factory=dict)
    source: str = "given by hand"

    @property
    def gpus_per_node(self) -> float:
        return self.gpus / self.nodes

    @property
    def device_bytes(self) -> float:
        return self.gpu_memory_gb * 1e9


def cluster_from_ray(gpu_memory_gb: float | None = None, host_memory_gb: float | None = None,
                     address: str = "auto") -> Cluster:
    """The running Ray cluster (this process's, else ``address``): totals, alive nodes, each node's memory."""
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address or "auto", logging_level="ERROR", log_to_driver=False)
        except ConnectionError as exc:
            raise ValueError(f"no running Ray cluster at {address or 'auto'!r} ({exc}); start one, or give the "
                             "cluster by hand: --gpus N --gpu-memory GB [--nodes M --cpus C --host-memory GB]"
                             ) from None
    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = total.get("GPU", 0.0)
    if gpus and gpu_memory_gb is None:
        kinds = [k.split(":", 1)[1] for k in total if k.startswith("accelerator_type:")]
        gpu_memory_gb = next((ACCELERATOR_GB[k] for k in kinds if k in ACCELERATOR_GB), None)
        if gpu_memory_gb is None:
            raise ValueError(f"the Ray cluster has {gpus:g} GPUs of unknown memory (accelerator types: "
                             f"{', '.join(kinds) or 'none'}); give --gpu-memory GB")
    if host_memory_gb is None and nodes:
        host_memory_gb = min(n["Resources"].get("memory", 0.0) for n in nodes) / 1e9 or None
    custom = {k: v for k, v in total.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")
              and not k.startswith(("node:", "accelerator_type:"))}
    return Cluster(gpus, gpu_memory_gb or 0.0, max(1, len(nodes)), total.get("CPU", 0.0), host_memory_gb, custom,
                   "the running Ray cluster (ray.cluster_resources)")


@dataclass
class Actors:
    """One kind of actor of a stage: how many, what each reserves, its memory by component (bytes)."""

    stage: str
    role: str
    count: int
    requested: int
    cpus: float
    gpus: float
    device: dict = field(default_factory=dict)  # per GPU it spans
    host: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class Plan:
    cluster: Cluster
    shape: ModelShape
    actors: list[Actors] = field(default_factory=list)
    times: list[tuple[str, float, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    prompts: int = 0


def _pool(plan: Plan, stage: str, requested: int, cpus: float, gpus: float, custom: dict) -> int:
    from dlma_ray.stages.pools import fitting_pool_size

    c = plan.cluster
    try:
        size = fitting_pool_size(requested, cpus, gpus, c.cpus, c.gpus, custom=custom, cluster_custom=c.custom)
    except RuntimeError as exc:
        plan.problems.append(f"{stage}: {exc}")
        return 0
    if size < requested:
        plan.notes.append(f"{stage}: {requested} actors requested, {size} fit the cluster")
    return size


def _check_device(plan: Plan, a: Actors, share: float) -> None:
    """A GPU actor's memory against the part of a device it may use (its fraction of the GPU, or vLLM's)."""
    if a.gpus <= 0 or not a.count:
        return
    need, have = sum(a.device.values()), share * plan.cluster.device_bytes
    if need > have:
        plan.problems.append(f"{a.stage}: a {a.role} needs {need / GIB:.1f} GiB per GPU, more than the "
                             f"{have / GIB:.1f} GiB it may use ({share:g} x {plan.cluster.gpu_memory_gb:g} GB)")


def sequences_per_call(cfg: Config) -> tuple[int, int]:
    """Answers one engine call samples, and per prompt, as the method sizes its calls (`Method.engine_call`): a
    contrastive pair per prompt (y+, y-), Self-Contrast's N samples, SPIN's one, Self-Rewarding's N answers."""
    from dlma_ray import methods

    prompts, per_prompt = methods.get(cfg.train.method).engine_call(cfg)
    return prompts * per_prompt, per_prompt


def _call_text(cfg: Config) -> str:
    per_call, per_prompt = sequences_per_call(cfg)
    return (f"{per_call // per_prompt} prompts x {per_prompt} samples a call, from generation.batch_size "
            f"{cfg.generation.batch_size}")


def _batch_size_filling(cfg: Config, fits: int) -> int:
    per_call, _ = sequences_per_call(cfg)  # grows with generation.batch_size in the method's proportion
    return max(1, math.ceil(fits * cfg.generation.batch_size / per_call))


def _engines(plan: Plan, cfg: Config) -> None:
    r, g, sh, c = cfg.resources, cfg.generation, plan.shape, plan.cluster
    n = _pool(plan, "generate", r.num_engines, r.cpus_per_engine, r.gpus_per_engine, dict(r.engine_resources))
    w = sizing.DTYPE_BYTES[g.dtype]
    seq = cfg.data.max_prompt_tokens + g.max_new_tokens
    per_call = sequences_per_call(cfg)[0]
    a = Actors("generate", "vLLM engine", n, r.num_engines, r.cpus_per_engine, r.gpus_per_engine)
    if r.gpus_per_engine > 0:
        tp = r.tensor_parallel_size
        if tp > c.gpus_per_node:
            plan.problems.append(f"generate: an engine shards over {tp} GPUs (resources.tensor_parallel_size), a "
                                 f"node has {c.gpus_per_node:g}")
        big = c.gpu_memory_gb >= 70
        batched, max_seqs = (16384, 1024) if big else (8192, 256)  # vLLM's offline defaults by device size
        m = sizing.engine_memory(sh, w, tp, c.device_bytes, g.gpu_memory_utilization, batched, max_seqs,
                                 not g.enforce_eager)
        a.device = {"weights": m.weights, "activations": m.activations, "overhead": m.overhead,
                    "KV cache": max(m.kv_cache, 0.0)}
        a.host = {"runtime": RUNTIME_HOST_GIB["engine"] * GIB}
        fits = min(max_seqs, m.kv_tokens // seq)
        a.note = (f"KV cache {m.kv_tokens:,} tokens: {fits} sequences of {seq} tokens at once; a call brings "
                  f"{per_call} ({_call_text(cfg)})")
        if m.kv_tokens < g.max_model_len:
            plan.problems.append(f"generate: an engine's KV cache holds {m.kv_tokens:,} tokens, less than one "
                                 f"sequence of generation.max_model_len {g.max_model_len} (weights "
                                 f"{m.weights / GIB:.1f} GiB per GPU of {m.device_total / GIB:.1f} GiB at "
                                 f"gpu_memory_utilization {g.gpu_memory_utilization:g})")
        elif per_call < fits:
            plan.notes.append(f"generate: a call brings {per_call} sequences, the KV cache holds {fits}: raise "
                              f"generation.batch_size to about {_batch_size_filling(cfg, fits)} to fill it")
    else:
        kv = g.cpu_kvcache_gb * GIB
        a.host = {"weights": sh.params * w, "KV cache": kv, "runtime": RUNTIME_HOST_GIB["engine"] * GIB}
        a.note = f"CPU KV cache {int(kv // sh.kv_bytes_per_token(w)):,} tokens"
    plan.actors.append(a)


def _scorer_memory(cfg: Config, sh: ModelShape, models: int) -> tuple[dict, dict]:
    s, w = cfg.scoring, sizing.DTYPE_BYTES[cfg.scoring.dtype]
    tokens = s.pack_tokens or s.batch_size * (cfg.data.max_prompt_tokens + cfg.generation.max_new_tokens)
    weights = models * sh.params * w
    act = sizing.inference_activation_bytes(sh, tokens, w, tokens)
    if cfg.resources.gpus_per_scorer > 0:
        return ({"weights": weights, "activations": act, "overhead": 1.0 * GIB},
                {"load": sh.params * w, "runtime": RUNTIME_HOST_GIB["scorer"] * GIB})
    return {}, {"weights": weights, "activations": act, "runtime": RUNTIME_HOST_GIB["scorer"] * GIB}


def _scorers(plan: Plan, cfg: Config) -> None:
    res = cfg.resources
    n = _pool(plan, "score", res.num_scorers, res.cpus_per_scorer, res.gpus_per_scorer, dict(res.scorer_resources))
    models = 2 if cfg.rounds.reference == "initial" else 1  # pi_k and pi_0 after round 0
    device, host = _scorer_memory(cfg, plan.shape, models)
    a = Actors("score", "scorer", n, res.num_scorers, res.cpus_per_scorer, res.gpus_per_scorer, device, host,
               f"{models} model(s); scoring.pack_tokens {cfg.scoring.pack_tokens} tokens a forward")
    plan.actors.append(a)
    _check_device(plan, a, min(1.0, res.gpus_per_scorer))


def _lora_params(cfg: Config, sh: ModelShape) -> int:
    out = {"q_proj": sh.heads * sh.dim, "o_proj": sh.hidden, "k_proj": sh.kv_heads * sh.dim,
           "v_proj": sh.kv_heads * sh.dim, "gate_proj": sh.intermediate, "up_proj": sh.intermediate,
           "down_proj": sh.hidden}
    inp = {"o_proj": sh.heads * sh.dim, "down_proj": sh.intermediate}
    mods = [m.strip() for m in cfg.train.lora_target_modules.split(",") if m.strip() in out]
    return sh.layers * cfg.train.lora_rank * sum(inp.get(m, sh.hidden) + out[m] for m in mods)


def _trainers(plan: Plan, cfg: Config) -> None:
    r, t, sh, c = cfg.resources, cfg.train, plan.shape, plan.cluster
    gpu = r.use_gpu_for_training
    n = r.num_train_workers
    need = {"CPU": n * r.cpus_per_train_worker, "GPU": n if gpu else 0,
            **{k: n * v for k, v in r.train_worker_resources.items()}}
    have = {"CPU": c.cpus, "GPU": c.gpus, **c.custom}
    for name, amount in need.items():
        if amount > have.get(name, 0.0):
            plan.problems.append(f"train: {n} workers (resources.num_train_workers) need {amount:g} {name}, the "
                                 f"cluster has {have.get(name, 0.0):g}; Ray Train would wait for them forever")
    w = sizing.DTYPE_BYTES[t.precision]
    trainable = _lora_params(cfg, sh) if t.lora_rank else sh.params
    states = sizing.train_state_bytes(trainable, t.precision, t.optimizer, t.zero_stage, n)
    if t.lora_rank:  # frozen base weights, split by ZeRO-3 like any weight
        states["weights"] += sh.params * w / (n if t.zero_stage == 3 else 1)
    if t.zero_stage == 3:
        states["gathered layer"] = 4 * sh.largest_layer  # DeepSpeed's estimator's term
    seqs = t.micro_batch_size * (cfg.self_contrast.num_negatives + 1 if t.method == "self_contrast" else 2)
    act = sizing.train_activation_bytes(sh, seqs, t.max_length, w, t.gradient_checkpointing)
    load = sh.params * w / (n if t.zero_stage == 3 else 1)
    # the 16-bit state dict; with LoRA a float32 merge onto the stored start (model.lora: a bf16 merge drops updates)
    saving = (4 if t.lora_rank else 2) * sh.params
    host = {"load": load, SAVING: saving, "runtime": RUNTIME_HOST_GIB["train"] * GIB}
    a = Actors("train", "DeepSpeed rank", n, n, r.cpus_per_train_worker, 1.0 if gpu else 0.0,
               note=f"ZeRO-{t.zero_stage}, {t.precision}, {t.optimizer}, micro-batch {seqs} sequences of "
                    f"{t.max_length} tokens{', gradient checkpointing' if t.gradient_checkpointing else ''}"
                    f"{f', LoRA r={t.lora_rank}: {trainable / 1e6:.1f}M trainable' if t.lora_rank else ''}")
    if gpu:
        a.device = {**states, **act, "overhead": 2.0 * GIB}
        a.host = host
    else:
        a.host = {**states, **act, **host}
    plan.actors.append(a)
    _check_device(plan, a, 1.0)


def _check_host(plan: Plan) -> None:
    """Each stage's actors on one node (GPU actors: as many as its GPUs hold) against the node's memory."""
    c = plan.cluster
    if not c.host_memory_gb:
        return
    for a in plan.actors:
        if not a.count or not a.host:
            continue
        per_node = math.ceil(a.count / c.nodes)
        if a.gpus > 0:
            per_node = min(per_node, int(c.gpus_per_node // a.gpus) or 1)
        need = per_node * sum(a.host.values()) - (per_node - 1) * a.host.get(SAVING, 0.0)
        if need > c.host_memory_gb * 1e9:
            plan.problems.append(f"{a.stage}: {per_node} {a.role}(s) on a node need {need / GIB:.1f} GiB of host "
                                 f"memory, a node has {c.host_memory_gb * 1e9 / GIB:.1f} GiB")


def make_plan(cfg: Config, cluster: Cluster, shape: ModelShape, prompts: int | None = None) -> Plan:
    """Every stage's actors, their memory and the problems that stop the run (`round_times` adds the
    time of a round)."""
    plan = Plan(cluster, shape)
    _engines(plan, cfg)
    _scorers(plan, cfg)
    _trainers(plan, cfg)
    if cfg.eval.enabled:
        eng, sco = plan.actors[0], plan.actors[1]
        plan.actors.append(Actors("evaluate", "answer engine (policy, pi_0)", min(2, max(eng.count, 1)), 2,
                                  eng.cpus, eng.gpus, eng.device, eng.host, "as generate's engine"))
        plan.actors.append(Actors("evaluate", "scorer task (policy, pi_0)", min(2, max(sco.count, 1)), 2,
                                  sco.cpus, sco.gpus, *_scorer_memory(cfg, shape, 1), "as score's scorer"))
    _check_host(plan)
    plan.prompts = prompts or cfg.data.max_prompts or 1000
    if not (prompts or cfg.data.max_prompts):
        plan.notes.append("data.max_prompts is 0 (all): times are for 1,000 prompts; give --prompts N")
    return plan


# ---------------------------------------------------------------- the command: times, text, arguments
NVLINK_GBPS, NETWORK_GBPS = 200.0, 25.0  # GB/s per GPU: NVLink in a node, 200 Gb/s InfiniBand/RoCE between nodes


def _cpu_rate(stage: str, params: int, actors: int) -> float:
    return CPU_MEASURED[stage][0] * SMOL_PARAMS / params * max(1, actors)


def _generate(cfg: Config, plan) -> tuple[float, str]:
    g, sh, eng = cfg.generation, plan.shape, plan.actors[0]
    from dlma_ray import methods

    _, per_prompt = sequences_per_call(cfg)
    # A judge that is the policy (rlaif, self_rewarding) generates on the same engines: its tokens, counted as
    # answers of max_new_tokens.
    judged, judge_tokens = methods.get(cfg.train.method).judge_work(cfg)
    seqs = math.ceil(plan.prompts * (per_prompt + judged * judge_tokens / g.max_new_tokens))
    n = max(1, eng.count)
    if eng.gpus > 0:
        w, tp = sizing.DTYPE_BYTES[g.dtype], cfg.resources.tensor_parallel_size
        seq = cfg.data.max_prompt_tokens + g.max_new_tokens
        kv_tokens = eng.device.get("KV cache", 0) // max(1, sh.kv_bytes_per_token(w) / tp)
        conc = max(1, min(int(kv_tokens // seq), g.batch_size * 2, 1024))
        s = sizing.decode_seconds(sh, w, tp, math.ceil(seqs / n), g.max_new_tokens, conc, GPU_ASSUMED["hbm_tbps"])
        return s + GPU_ASSUMED["engine_start_s"], (
            f"{seqs:,} sequences x {g.max_new_tokens} new tokens on {n} engine(s), {conc} at once, each step reading "
            f"the weights at {GPU_ASSUMED['hbm_tbps']} TB/s (assumed), + {GPU_ASSUMED['engine_start_s']:.0f} s "
            "engine start (assumed)")
    s = seqs * g.max_new_tokens / _cpu_rate("generate", sh.params, n) + CPU_MEASURED["engine start"][0]
    return s, f"measured {CPU_MEASURED['generate'][0]:g} {CPU_MEASURED['generate'][1]}, per engine, scaled"


def _score(cfg: Config, plan) -> tuple[float, str]:
    sco, sh = plan.actors[1], plan.shape
    tokens = plan.prompts * 6 * (cfg.data.max_prompt_tokens + cfg.generation.max_new_tokens)
    if sco.gpus > 0:
        devices = min(max(1, sco.count) * sco.gpus, plan.cluster.gpus)
        return sizing.compute_seconds(sh.params, tokens, 2, devices, GPU_ASSUMED["tflops"], GPU_ASSUMED["mfu"]), (
            f"up to {tokens:,.0f} tokens x 2 FLOPs/param on {devices:g} GPU(s) at {GPU_ASSUMED['mfu']:.0%} of "
            f"{GPU_ASSUMED['tflops']:g} TFLOP/s (assumed)")
    return tokens / _cpu_rate("score", sh.params, sco.count), (
        f"measured {CPU_MEASURED['score'][0]:g} {CPU_MEASURED['score'][1]}, per scorer, scaled")


def _train(cfg: Config, plan) -> tuple[float, str, int]:
    t, r, sh, tr = cfg.train, cfg.resources, plan.shape, plan.actors[2]
    pairs = int(plan.prompts * (1 - cfg.data.heldout_fraction)) * t.epochs
    steps = pairs // t.global_batch_size
    tokens = pairs * 2 * t.max_length
    n = r.num_train_workers
    if tr.gpus <= 0:
        return tokens / _cpu_rate("train", sh.params, n), (
            f"{steps} steps; measured {CPU_MEASURED['train'][0]:.0f} {CPU_MEASURED['train'][1]}, scaled"), steps
    flops = 8 if t.gradient_checkpointing else 6
    compute = sizing.compute_seconds(sh.params, tokens, flops, n, GPU_ASSUMED["tflops"], GPU_ASSUMED["mfu"])
    w = sizing.DTYPE_BYTES[t.precision] * sh.params
    accum = max(1, t.global_batch_size // (t.micro_batch_size * n))
    per_step = {3: accum * 3 * w, 2: accum * w + w}.get(t.zero_stage, 2 * w) * (n - 1) / max(1, n)
    link = NETWORK_GBPS if plan.cluster.nodes > 1 else NVLINK_GBPS
    comm = steps * per_step / (link * 1e9) if n > 1 and not t.lora_rank else 0.0
    return compute + comm, (f"{steps} steps of up to {t.global_batch_size * 2} x {t.max_length} tokens: compute "
                            f"{compute:.0f} s at {GPU_ASSUMED['mfu']:.0%} of {GPU_ASSUMED['tflops']:g} TFLOP/s + "
                            f"ZeRO-{t.zero_stage} traffic {per_step / 1e9:.0f} GB/step/rank at {link:g} GB/s "
                            f"{comm:.0f} s (assumed links, not overlapped: an upper bound)"), steps


def _checkpoints(cfg: Config, plan, steps: int) -> tuple[float, str]:
    t = cfg.train
    per_param = sizing.DTYPE_BYTES[t.precision] + sizing.OPTIMIZER_STATE_BYTES[t.optimizer] \
        + (4 if t.precision != "fp32" else 0)  # weights, moments, fp32 master
    states = per_param * plan.shape.params
    count = steps // t.checkpoint_every if t.checkpoint_every else 0
    policy = 2 * plan.shape.params
    gbps = GPU_ASSUMED["write_gbps"]
    return (count * states + policy) / (gbps * 1e9), (
        f"{count} resumable checkpoint(s) of {states / 1e9:.1f} GB (weights + optimizer states; every "
        f"{t.checkpoint_every} steps) + the policy {policy / 1e9:.1f} GB at {gbps:g} GB/s (assumed storage)")


def _evaluate(cfg: Config, plan) -> tuple[float, str]:
    e = cfg.eval
    answers = e.max_prompts or 64
    sh, eng, sco = plan.shape, plan.actors[0], plan.actors[1]
    seq = cfg.data.max_prompt_tokens + e.max_new_tokens
    tokens = (answers * 4 + (e.max_pairs or 64) * 4) * seq
    if eng.gpus > 0:
        w = sizing.DTYPE_BYTES[cfg.generation.dtype]
        gen = sizing.decode_seconds(sh, w, cfg.resources.tensor_parallel_size, answers, e.max_new_tokens, answers,
                                    GPU_ASSUMED["hbm_tbps"]) + GPU_ASSUMED["engine_start_s"]
    else:
        gen = answers * e.max_new_tokens / _cpu_rate("generate", sh.params, 1) + CPU_MEASURED["engine start"][0]
    if sco.gpus > 0:
        score = sizing.compute_seconds(sh.params, tokens, 2, 1, GPU_ASSUMED["tflops"], GPU_ASSUMED["mfu"])
    else:
        score = tokens / _cpu_rate("score", sh.params, 1)
    return gen + score, f"{answers} answers, ~{tokens:,} tokens scored; as generate and score"


def round_times(cfg: Config, plan) -> list[tuple[str, float, str]]:
    """(stage, seconds, what the number rests on) for one round of ``plan.prompts`` prompts."""
    train_s, train_basis, steps = _train(cfg, plan)
    out = [("generate", *_generate(cfg, plan)), ("score", *_score(cfg, plan)), ("train", train_s, train_basis),
           ("checkpoints", *_checkpoints(cfg, plan, steps))]
    if cfg.eval.enabled:
        out.append(("evaluate", *_evaluate(cfg, plan)))
    return out


def _gib(parts: dict) -> str:
    return " + ".join(f"{k} {v / GIB:.1f}" for k, v in parts.items())


def render(plan, title: str = "") -> str:
    c, sh = plan.cluster, plan.shape
    lines = [f"dlma-ray plan{f': {title}' if title else ''}",
             f"model: {sh.params / 1e9:.2f}B parameters (hidden {sh.hidden}, {sh.layers} layers, {sh.heads} heads / "
             f"{sh.kv_heads} KV heads, intermediate {sh.intermediate}, vocab {sh.vocab}); shape from {sh.source}",
             f"cluster: {c.gpus:g} GPU{'s' if c.gpus != 1 else ''}"
             + (f" x {c.gpu_memory_gb:g} GB" if c.gpus else "") + f", {c.cpus:g} CPUs, {c.nodes} node(s)"
             + (f", {c.host_memory_gb:g} GB host memory per node" if c.host_memory_gb else "") + f" ({c.source})", ""]
    for a in plan.actors:
        lines.append(f"{a.stage}: {a.count} x {a.role}" + (f" ({a.requested} requested)" if a.count != a.requested
                                                          else "") + f", each {a.gpus:g} GPU, {a.cpus:g} CPU")
        if a.device:
            lines.append(f"  device per GPU: {sum(a.device.values()) / GIB:.1f} GiB = {_gib(a.device)}")
        if a.host:
            lines.append(f"  host each: {sum(a.host.values()) / GIB:.1f} GiB = {_gib(a.host)}")
        if a.note:
            lines.append(f"  {a.note}")
    total = sum(s for _, s, _ in plan.times)
    lines += ["", f"time of a round ({plan.prompts:,} prompts): ~{total / 60:.1f} min"]
    lines += [f"  {stage:<12}{s / 60:7.1f} min  {basis}" for stage, s, basis in plan.times]
    lines += [f"note: {n}" for n in plan.notes]
    if plan.problems:
        lines += ["", "DOES NOT FIT:"] + [f"  {p}" for p in plan.problems]
    else:
        lines += ["", "fits: every stage's actors can be placed and their estimated memory fits"]
    return "\n".join(lines) + "\n"


def plan_for(cfg: Config, cluster: Cluster, shape: sizing.ModelShape, prompts: int | None = None) -> Plan:
    """``make_plan`` with the time of a round."""
    plan = make_plan(cfg, cluster, shape, prompts)
    plan.times = round_times(cfg, plan)
    return plan


def add_arguments(p) -> None:
    """The cluster and the model, when not the running Ray cluster and the config's model folder."""
    p.add_argument("--gpus", type=float, help="GPUs in all (instead of the running Ray cluster)")
    p.add_argument("--gpu-memory", type=float, metavar="GB", help="memory of one GPU in GB (e.g. 80)")
    p.add_argument("--nodes", type=int, default=1, help="nodes the GPUs and CPUs are spread over (default 1)")
    p.add_argument("--cpus", type=float, help="CPUs in all (default with --gpus: 16 per GPU)")
    p.add_argument("--resources", type=json.loads, default={}, metavar="JSON",
                   help='custom Ray resources of the whole cluster, e.g. \'{"engine_node": 1, "train_slot": 2}\'')
    p.add_argument("--host-memory", type=float, metavar="GB", help="host memory of one node in GB (checked if given)")
    p.add_argument("--model-config", metavar="FILE", help="the model's config.json, for a hub model not downloaded")
    p.add_argument("--params", type=float, metavar="BILLIONS",
                   help="parameters in billions, for a model whose config.json is not at hand (Llama-like shape)")
    p.add_argument("--prompts", type=int, help="prompts a round (default data.max_prompts, or 1,000 when that is 0)")


def plan_command(cfg: Config, args, title: str = "") -> int:
    """`dlma-ray plan`: print the plan; 1 when it cannot fit, 2 when the model's shape or the cluster is unknown."""
    import sys

    try:
        shape = sizing.find_shape(cfg.model.path, args.model_config, args.params and args.params * 1e9,
                                  cfg.model.revision)
        if args.gpus is not None or args.cpus is not None:
            gpus = args.gpus or 0.0
            if gpus and not args.gpu_memory:
                raise ValueError("--gpus needs --gpu-memory GB (one device's memory)")
            cpus = args.cpus if args.cpus is not None else 16.0 * gpus or 8.0 * args.nodes
            cluster = Cluster(gpus, args.gpu_memory or 0.0, args.nodes, cpus, args.host_memory, args.resources,
                              source="given by hand" + ("" if args.cpus is not None else
                                                        f"; {cpus:g} CPUs assumed, --cpus to say"))
        else:
            cluster = cluster_from_ray(args.gpu_memory, args.host_memory, cfg.resources.ray_address)
    except (ValueError, KeyError, OSError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = plan_for(cfg, cluster, shape, args.prompts)
    sys.stdout.write(render(plan, title))
    return 1 if plan.problems else 0
