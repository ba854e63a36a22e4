"""One training step: DeepSpeed (ZeRO-2, torch AdamW, one gloo process) vs a plain torch step; and the same
batch on two DeepSpeed workers vs one process.

Both sides start from the same weights and take identical steps on one batch of pairs built the
way the train stage builds it (`dlma_ray.methods.base.preference_batch`, `dlma_ray.core.losses.dlma_loss`, the pair's
reference log-probs and R from `dlma_ray.workers.scoring.PairScorer`). A step is forward, loss, backward,
gradient clipping (train.grad_clip) and the optimizer update. Steps alternate between the two sides
so a change in machine load hits both; the losses of both sides are printed as a check that they
compute the same thing.

Two workers: two spawned ranks (gloo, 1 torch thread, half the batch each) against one process on the whole
batch (2 and 1 torch threads). Their time is rank 0's, between barriers; the mean of the ranks' losses must
equal the one-process loss (a mean over pairs; DeepSpeed averages the gradients). Where the time goes: each
phase of the step, and gloo's all-reduce / all-gather of model-sized tensors alone.

    python bench/bench_train_step.py [--pairs 4] [--steps 3] [--zero-stage 2] [--workers 1|2 (default both)]
"""

import argparse
import gc
import queue
import statistics
import time

import common


def pair_rows(n_pairs: int, model_path: str) -> dict:
    """A pairs-table batch (the columns the train loop reads), scored like the score stage does."""
    import numpy as np

    from dlma_ray.model.loading import load_tokenizer
    from dlma_ray.workers.scoring import PairScorer

    r = common.renderer(load_tokenizer(model_path))
    pairs = common.preference_pairs(n_pairs)
    chats = [p.prompt.as_chat() for p in pairs]
    batch = {"pos_context": [r.positive(c) for c in chats], "neg_context": [r.negative(c) for c in chats],
             "plain_context": [r.plain(c) for c in chats], "end_of_turn": [r.end_of_turn] * len(pairs),
             "chosen": [p.chosen for p in pairs], "rejected": [p.rejected for p in pairs],
             "round": [0] * len(pairs)}
    batch = {k: np.array(v, dtype=object if k != "round" else np.int32) for k, v in batch.items()}
    return PairScorer(model_path, model_path, torch_threads=common.THREADS)(batch)


def batch_loss(rows: dict, t: dict, path: str, dev: str):
    """(loss_of(model), batch): the train stage's padded batch of ``rows`` and its DLMA loss under a model."""
    import torch

    from dlma_ray.model.logprobs import sequence_logprobs
    from dlma_ray.core.losses import dlma_loss
    from dlma_ray.methods.base import preference_batch
    from dlma_ray.model.loading import load_tokenizer

    batch = preference_batch(load_tokenizer(path), rows, t["max_length"]).to(dev)
    n = len(rows["chosen"])
    ref_c, ref_r, reward = (torch.as_tensor(rows[k], dtype=torch.float32, device=dev)
                            for k in ("ref_logp_chosen", "ref_logp_rejected", "self_reward"))

    def loss_of(model):
        logp = sequence_logprobs(model, batch)
        return dlma_loss(logp[:n], logp[n:], ref_c, ref_r, reward, beta=t["beta"], gamma=t["gamma"],
                         clip_low=t["clip_low"], clip_high=t["clip_high"])[0]
    return loss_of, batch


def make_engine(path: str, t: dict, world: int):
    """(DeepSpeed engine over a fresh float32 copy of the model, seconds deepspeed.initialize took)."""
    import deepspeed

    from dlma_ray.model.loading import load_causal_lm
    from dlma_ray.workers.training import deepspeed_config, make_optimizer

    model = load_causal_lm(path, "float32").train()
    start = time.perf_counter()
    engine, *_ = deepspeed.initialize(model=model, optimizer=make_optimizer(model.parameters(), t),
                                      config=deepspeed_config(t, world), dist_init_required=False)
    return engine, time.perf_counter() - start


def ds_step(engine, loss_of, phases: list | None = None) -> float:
    """One DeepSpeed step; appends its (forward + loss, backward, optimizer step) seconds to ``phases``."""
    t0 = time.perf_counter()
    loss = loss_of(engine)
    t1 = time.perf_counter()
    engine.backward(loss)
    t2 = time.perf_counter()
    engine.step()
    if phases is not None:
        phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    return loss.item()


def one_process(args, path: str, rows: dict) -> None:
    """The plain torch step against DeepSpeed on one process (both with common.THREADS torch threads)."""
    import torch

    from dlma_ray.model.loading import load_causal_lm
    from dlma_ray.workers.training import make_optimizer

    t = vars(common.bench_config(f"train.micro_batch_size={args.pairs}", f"train.global_batch_size={args.pairs}",
                                 f"train.zero_stage={args.zero_stage}", f"train.precision={args.precision}").train)
    dev = common.device()
    loss_of, batch = batch_loss(rows, t, path, dev)
    n = args.pairs
    common.say(f"batch: {n} pairs = {2 * n} sequences padded to {batch.input_ids.shape[1]} tokens "
               f"({int(batch.attention_mask.sum())} real, {int(batch.response_mask.sum())} response); "
               f"optimizer {t['optimizer']}, lr {t['lr']}, grad_clip {t['grad_clip']}, ZeRO stage {t['zero_stage']}, "
               f"{t['precision']} on {dev}")
    torch.manual_seed(t["seed"])
    plain = load_causal_lm(path, "bfloat16" if t["precision"] == "bf16" else "float32").to(dev).train()
    opt = make_optimizer(plain.parameters(), t)

    def torch_step():
        return common.torch_step(plain, opt, lambda: loss_of(plain), t["grad_clip"])

    engine, init_s = make_engine(path, t, 1)
    wall, cpu, losses = common.interleaved({"torch": torch_step, "deepspeed": lambda: ds_step(engine, loss_of)},
                                           args.steps, warmup=1)
    med = {k: statistics.median(v) for k, v in wall.items()}
    common.say(f"deepspeed.initialize: {init_s:.2f} s (once); median of {args.steps} interleaved steps after 1 "
               "warm-up; CPU s = process CPU time (all threads)")
    common.table(["step", "wall s", "all steps", "CPU s", "pairs/s", "loss per step (warm-up first)",
                  "wall ratio vs torch", "CPU ratio vs torch"],
                 [[k, med[k], common.runs(wall[k]), statistics.median(cpu[k]), n / med[k],
                   "/".join(f"{x:.4f}" for x in losses[k]), med[k] / med["torch"],
                   statistics.median(cpu[k]) / statistics.median(cpu["torch"])] for k in wall])
    diff = max(abs(a - b) for a, b in zip(losses["torch"], losses["deepspeed"]))
    common.say(f"max |loss_torch - loss_deepspeed| over steps: {diff:.2e}")


def worker(rank: int, port: int, path: str, rows: dict, t: dict, cmds, results) -> None:
    """A spawned DeepSpeed rank on its half of the batch, 1 torch thread; answers the parent's commands."""
    common.setup()
    import torch
    import torch.distributed as dist

    def timed(fn) -> float:  # seconds from a barrier to the end of fn on this rank
        dist.barrier()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    torch.set_num_threads(1)
    common.init_group(rank, 2, port)
    h = len(rows["chosen"]) // 2
    loss_of, batch = batch_loss({k: v[rank * h:(rank + 1) * h] for k, v in rows.items()}, t, path, "cpu")
    engine, init_s = make_engine(path, t, 2)
    results.put((rank, {"init_s": init_s, "tokens": batch.input_ids.shape[1]}))
    while (cmd := cmds.get()) != "stop":
        if cmd == "step":  # from a barrier before the step to one after it
            phases = []
            dist.barrier()
            w, c = time.perf_counter(), time.process_time()
            loss = ds_step(engine, loss_of, phases)
            dist.barrier()
            results.put((rank, {"loss": loss, "wall": time.perf_counter() - w, "cpu": time.process_time() - c,
                                "phases": phases[0]}))
        else:  # "comm": gloo alone, as ZeRO-2 uses it: all-reduce the gradients, all-gather the updated parameters
            numel = sum(p.numel() for p in engine.module.parameters())
            grads, part, whole = torch.ones(numel), torch.ones(numel // 2), torch.empty(numel // 2 * 2)
            results.put((rank, {"numel": numel,
                                "all_reduce": statistics.median(timed(lambda: dist.all_reduce(grads))
                                                                for _ in range(3)),
                                "all_gather": statistics.median(timed(lambda: dist.all_gather_into_tensor(whole, part))
                                                                for _ in range(3))}))
    dist.destroy_process_group()


def collect(results, procs) -> list[dict]:
    """One message from every worker, by rank; raises when a worker died instead of answering."""
    got = {}
    while len(got) < len(procs):
        try:
            rank, msg = results.get(timeout=10)
            got[rank] = msg
        except queue.Empty:
            if not all(p.is_alive() for p in procs):
                raise RuntimeError("a train worker died (its traceback is above)") from None
    return [got[r] for r in sorted(got)]


def two_workers(args, path: str, rows: dict) -> None:
    """Two spawned DeepSpeed workers on halves of the batch against one process on all of it."""
    import torch

    n, threads = args.pairs, args.one_process_threads
    t = vars(common.bench_config(f"train.micro_batch_size={n}", f"train.global_batch_size={n}",
                                 f"train.zero_stage={args.zero_stage}").train)
    ctx = torch.multiprocessing.get_context("spawn")
    cmds, results, port = [ctx.Queue() for _ in range(2)], ctx.Queue(), common.free_port()
    procs = [ctx.Process(target=worker, args=(r, port, path, rows, dict(t, micro_batch_size=n // 2), cmds[r],
                                              results), daemon=True) for r in range(2)]
    for p in procs:
        p.start()

    def tell(cmd: str) -> list[dict]:
        for q in cmds:
            q.put(cmd)
        return collect(results, procs) if cmd != "stop" else []

    loss_of, batch = batch_loss(rows, t, path, "cpu")
    engines = {k: make_engine(path, t, 1) for k in threads}  # one per thread count: each its own trajectory
    ready = collect(results, procs)
    common.say(f"batch: {n} pairs; one process: all {2 * n} sequences padded to {batch.input_ids.shape[1]} tokens; "
               f"two workers: {n // 2} pair{'s' * (n > 3)} each, padded to "
               f"{'/'.join(str(r['tokens']) for r in ready)} tokens")
    one = {k: f"1 process, {k} thread{'s' * (k > 1)}" for k in threads}
    two = "2 workers x 1 thread"
    phases, steps = {one[k]: [] for k in threads}, []

    def one_step(k):
        def step():
            torch.set_num_threads(k)
            return ds_step(engines[k][0], loss_of, phases[one[k]])
        return step

    def two_step():
        steps.append(tell("step"))
        return statistics.fmean(r["loss"] for r in steps[-1])

    wall, cpu, losses = common.interleaved({**{one[k]: one_step(k) for k in threads}, two: two_step},
                                           args.steps, warmup=1)
    torch.set_num_threads(common.THREADS)
    wall[two] = [s[0]["wall"] for s in steps[1:]]  # rank 0, barrier to barrier
    cpu[two] = [sum(r["cpu"] for r in s) for s in steps[1:]]
    phases[two] = [s[0]["phases"] for s in steps]
    comm = tell("comm")[0]
    tell("stop")
    for p in procs:
        p.join(timeout=60)
    base = one[threads[0]]
    med = {k: statistics.median(v) for k, v in wall.items()}
    common.say(f"deepspeed.initialize: one process {statistics.fmean(e[1] for e in engines.values()):.2f} s, "
               f"workers {'/'.join(format(r['init_s'], '.2f') for r in ready)} s (once); median of {args.steps} "
               f"interleaved steps after 1 warm-up; workers: rank 0's wall time between barriers before and after "
               f"the step, CPU s = both ranks' process CPU time; loss of the workers = mean of the two ranks")
    common.table(["step", "wall s", "all steps", "CPU s", "pairs/s", "loss per step (warm-up first)",
                  f"wall ratio vs {base}", f"CPU ratio vs {base}"],
                 [[k, med[k], common.runs(wall[k]), statistics.median(cpu[k]), n / med[k],
                   "/".join(f"{x:.4f}" for x in losses[k]), med[k] / med[base],
                   statistics.median(cpu[k]) / statistics.median(cpu[base])] for k in wall])
    for k in threads:
        rel = max(abs(a - b) / abs(b) for a, b in zip(losses[two], losses[one[k]]))
        common.say(f"two workers / {one[k]}: {med[two] / med[one[k]]:.3f}x wall; max relative |mean of the ranks' "
                   f"losses - one-process loss| over steps: {rel:.2e}")
    common.table(["where the time goes (median s)", "forward + loss", "backward (+ ZeRO-2 gradient all-reduce)",
                  "optimizer step (+ parameter all-gather)"],
                 [[k + (" (rank 0)" if k == two else ""),
                   *(statistics.median(p[i] for p in v[1:]) for i in range(3))] for k, v in phases.items()])
    common.say(f"gloo alone, 2 processes (rank 0, median of 3): all_reduce of {comm['numel'] / 1e6:.1f}M float32 "
               f"(the model's gradients) {comm['all_reduce']:.2f} s; all_gather of 2 x {comm['numel'] / 2e6:.1f}M "
               f"(the updated parameters) {comm['all_gather']:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=4, help="pairs per step (= micro = global batch)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side, after one warm-up step")
    ap.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="train.precision: bf16 = DeepSpeed's bf16 mixed precision, the torch side in bfloat16")
    ap.add_argument("--workers", type=int, choices=(1, 2), default=None,
                    help="1: DeepSpeed vs torch on one process only; 2: two workers vs one process only "
                         "(default: both)")
    ap.add_argument("--one-process-threads", type=int, nargs="+", default=[2, 1],
                    help="torch threads of the one-process step(s) the two workers are compared with; the first "
                         "is the ratios' base")
    args = ap.parse_args()
    if args.workers != 1 and args.pairs % 2:
        ap.error("two workers need an even --pairs (each takes half the batch)")
    common.setup()
    import torch.distributed as dist

    path = common.model_dir()
    rows = None
    common.init_group(0, 1, common.free_port(), "nccl" if common.device() == "cuda" else "gloo")
    if args.workers in (None, 1):
        common.header(f"bench_train_step: DeepSpeed ZeRO-{args.zero_stage} step vs plain torch step")
        rows = pair_rows(args.pairs, path)
        one_process(args, path, rows)
        common.footer()
        gc.collect()  # its models and engine, before the two-worker case loads four more
    if args.workers in (None, 2):
        common.header(f"bench_train_step: two DeepSpeed ZeRO-{args.zero_stage} workers (gloo, 1 torch thread "
                      "each, half the batch each) vs one process on the whole batch")
        if common.device() == "cuda":
            common.say("skipped: the two-worker comparison runs on the CPU (gloo) only")
        else:
            two_workers(args, path, rows if rows is not None else pair_rows(args.pairs, path))
        common.footer()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
