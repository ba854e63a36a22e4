"""`dlma-ray plan` as a command: the time of a round, the plan as text, the command's arguments.

On CPU the throughputs are measured ones (bench/RESULTS.md, on the embedded 135M model, scaled by parameter
count); on GPUs none is measured yet, so the times are docs/SCALING.md's roofline: decoding reads the weights
once a step at the HBM bandwidth, scoring and training run at 40% of the bf16 peak, ZeRO's collectives at an
assumed link speed. Each time is printed with what it rests on.
"""

from __future__ import annotations

import json
import math

from dlma_ray.model import sizing
from dlma_ray.config.tree import Config
from dlma_ray.plan import Cluster, Plan, cluster_from_ray, make_plan
from dlma_ray.model.sizing import CPU_MEASURED, GIB, GPU_ASSUMED, SMOL_PARAMS

NVLINK_GBPS, NETWORK_GBPS = 200.0, 25.0  # GB/s per GPU: NVLink in a node, 200 Gb/s InfiniBand/RoCE between nodes


def _cpu_rate(stage: str, params: int, actors: int) -> float:
    return CPU_MEASURED[stage][0] * SMOL_PARAMS / params * max(1, actors)


def _generate(cfg: Config, plan) -> tuple[float, str]:
    g, sh, eng = cfg.generation, plan.shape, plan.actors[0]
    from dlma_ray import methods
    from dlma_ray.plan import sequences_per_call

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
