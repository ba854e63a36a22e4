"""One DeepSpeed training step with and without LoRA (train.lora_rank): step time and memory.

Each side runs in its own process (peak RSS is per process): the model loaded as the train worker loads it,
wrapped with LoRA when the rank is > 0 (dlma_ray.model.lora.wrap), the optimizer over the trainable parameters,
deepspeed.initialize with the pipeline's config (dlma_ray.workers.training.deepspeed_config), then 1 warm-up and
--steps timed steps of the DLMA loss on one batch of scored pairs (bench_train_step.pair_rows). Reported:
trainable parameters, optimizer state (bytes of every tensor it holds), peak RSS of the process (CPU) or
peak torch-allocated memory (GPU), and the median step time. Sides run full, LoRA, full, LoRA, ... (--repeats).

    python bench/bench_lora_step.py [--lora-rank 16] [--pairs 4] [--steps 3] [--zero-stage 2] [--repeats 1]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import common


def one_side(args) -> dict:
    common.setup()
    import deepspeed
    import torch
    import torch.distributed as dist

    from bench_train_step import pair_rows
    from dlma_ray.model import lora
    from dlma_ray.model.logprobs import sequence_logprobs
    from dlma_ray.core.losses import dlma_loss
    from dlma_ray.methods.base import preference_batch
    from dlma_ray.model.loading import load_for_training, load_tokenizer
    from dlma_ray.workers.training import deepspeed_config, make_optimizer

    path = common.model_dir()
    t = vars(common.bench_config(f"train.micro_batch_size={args.pairs}", f"train.global_batch_size={args.pairs}",
                                 f"train.zero_stage={args.zero_stage}", f"train.lora_rank={args.lora_rank}").train)
    rows = pair_rows(args.pairs, path)
    dev = common.device()
    batch = preference_batch(load_tokenizer(path), rows, t["max_length"]).to(dev)
    n = args.pairs
    ref_c, ref_r, reward = (torch.as_tensor(rows[k], dtype=torch.float32, device=dev)
                            for k in ("ref_logp_chosen", "ref_logp_rejected", "self_reward"))
    common.init_group()
    torch.manual_seed(t["seed"])
    model = load_for_training(path, t["precision"], deepspeed_config(t, 1))  # as the train worker loads it
    if lora.enabled(t):
        model = lora.wrap(model, t)
    params = lora.trainable(model)
    engine, *_ = deepspeed.initialize(model=model, optimizer=make_optimizer(params, t),
                                      config=deepspeed_config(t, 1), dist_init_required=False)

    def step():
        logp = sequence_logprobs(engine, batch)
        loss = dlma_loss(logp[:n], logp[n:], ref_c, ref_r, reward, beta=t["beta"], gamma=t["gamma"],
                         clip_low=t["clip_low"], clip_high=t["clip_high"])[0]
        engine.backward(loss)
        engine.step()
        return loss.item()

    times, losses = [], []
    for i in range(1 + args.steps):
        start = time.perf_counter()
        losses.append(step())
        if i:
            times.append(time.perf_counter() - start)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    opt_bytes = sum(v.numel() * v.element_size() for s in inner.state.values() for v in s.values()
                    if torch.is_tensor(v))
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if dev == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    dist.destroy_process_group()
    return {"lora_rank": args.lora_rank, "trainable": sum(p.numel() for p in params),
            "total": sum(p.numel() for p in model.parameters()), "optimizer_mib": opt_bytes / 2 ** 20,
            "peak_mib": peak, "memory": "peak torch allocated" if dev == "cuda" else "peak RSS",
            "step_s": statistics.median(times), "steps": times, "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lora-rank", type=int, default=16, help="rank of the LoRA side")
    ap.add_argument("--pairs", type=int, default=4, help="pairs per step (= micro = global batch)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side, after one warm-up step")
    ap.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    ap.add_argument("--repeats", type=int, default=1, help="processes per side, alternating")
    ap.add_argument("--side", action="store_true", help=argparse.SUPPRESS)  # one side, JSON to stdout
    args = ap.parse_args()
    if args.side:
        print("RESULT " + json.dumps(one_side(args)), flush=True)
        return
    common.setup()
    common.header(f"bench_lora_step: DeepSpeed ZeRO-{args.zero_stage} step, full weights vs LoRA r={args.lora_rank}")
    results = {0: [], args.lora_rank: []}
    for _ in range(args.repeats):
        for rank in results:
            cmd = [sys.executable, __file__, "--side", f"--lora-rank={rank}", f"--pairs={args.pairs}",
                   f"--steps={args.steps}", f"--zero-stage={args.zero_stage}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
            out = proc.stdout
            results[rank].append(json.loads(out.split("RESULT ", 1)[1].splitlines()[0]))
    rows = []
    for rank, rs in results.items():
        steps = [s for r in rs for s in r["steps"]]
        rows.append(["full weights" if rank == 0 else f"LoRA r={rank} (q,k,v,o)", rs[0]["trainable"],
                     rs[0]["trainable"] / rs[0]["total"], rs[0]["optimizer_mib"],
                     statistics.median(r["peak_mib"] for r in rs), statistics.median(steps), common.runs(steps),
                     "/".join(f"{x:.4f}" for x in rs[0]["losses"])])
    common.say(f"{args.pairs} pairs a step; memory = {results[0][0]['memory']} of the process (MiB); median of "
               f"{args.steps} steps after 1 warm-up, {args.repeats} process(es) per side, sides alternating")
    common.table(["side", "trainable params", "fraction", "optimizer state MiB", "peak MiB", "step s", "all steps",
                  "loss per step (warm-up first)"], rows)
    full, low = rows
    common.say(f"LoRA / full: step time {low[5] / full[5]:.2f}x, peak memory {low[4] / full[4]:.2f}x, "
               f"optimizer state {low[3] / max(full[3], 1e-9):.4f}x")
    common.footer()


if __name__ == "__main__":
    main()
