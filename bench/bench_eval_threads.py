"""The evaluate stage's two scorer tasks (pi_0's and pi_k's) on one node: threads per task.

The stage starts both tasks at once; each sets torch's threads (resources.torch_threads, 2 by default). On a
2-CPU node that is 4 threads on 2 cores. This runs the same packed workload (the evaluate stage's sequences of
the demo's human pairs: y+ and y- under the positive, negative and plain contexts, `score_ids` as the tasks call
it) in two processes, three ways, and times the scoring (model load excluded; each process loads before a barrier):

    concurrent, T threads each   both processes at once (the stage today with T = 2)
    concurrent, 1 thread each    both at once, threads = the CPU each task reserves
    sequential, T threads        one process after the other

    python bench/bench_eval_threads.py [--pairs 32] [--threads 2] [--repeats 2]
"""

import argparse
import multiprocessing as mp
import statistics
import time

import common


def workload(tok, pairs):
    from dlma_ray.model.logprobs import response_ids

    r = common.renderer(tok)
    contexts, ids = [], []
    for p in pairs:
        chat = p.prompt.as_chat()
        for ctx in (r.positive(chat), r.negative(chat), r.plain(chat)):
            for resp in (p.chosen, p.rejected):
                contexts.append(ctx)
                ids.append(response_ids(tok, resp, None, True, r.end_of_turn))
    return contexts, ids


def worker(threads: int, pairs: int, barrier, queue) -> None:
    common.setup()
    import torch

    from dlma_ray.model.loading import load_causal_lm, load_tokenizer
    from dlma_ray.model.logprobs import score_ids

    torch.set_num_threads(threads)
    tok = load_tokenizer(common.model_dir())
    model = load_causal_lm(common.model_dir(), "float32")
    contexts, ids = workload(tok, common.preference_pairs(pairs))
    score_ids(model, tok, contexts[:6], ids[:6])  # warm-up
    if barrier is not None:
        barrier.wait()
    start = time.time()
    out = score_ids(model, tok, contexts, ids)
    queue.put((start, time.time(), out))


def run(ctx, threads: int, pairs: int, concurrent: bool) -> tuple[float, list[float]]:
    """Wall seconds from the first process's scoring start to the last one's end; one process's scores."""
    queue = ctx.Queue()
    barrier = ctx.Barrier(2) if concurrent else None
    results = []
    if concurrent:
        procs = [ctx.Process(target=worker, args=(threads, pairs, barrier, queue)) for _ in range(2)]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
    else:
        for _ in range(2):
            p = ctx.Process(target=worker, args=(threads, pairs, None, queue))
            p.start()
            results.append(queue.get())
            p.join()
    if concurrent:
        wall = max(e for _, e, _ in results) - min(s for s, _, _ in results)
    else:
        wall = sum(e - s for s, e, _ in results)
    return wall, results[0][2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per task today (resources.torch_threads)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    common.setup()
    common.header(f"bench_eval_threads: two scorer tasks' packed workload ({args.pairs} pairs x 6 sequences each)")
    ctx = mp.get_context("spawn")
    modes = {f"concurrent, {args.threads} threads each": (args.threads, True),
             "concurrent, 1 thread each": (1, True),
             f"sequential, {args.threads} threads": (args.threads, False)}
    wall = {m: [] for m in modes}
    scores = {}
    for _ in range(args.repeats):  # interleaved, so load changes hit every mode alike
        for m, (threads, concurrent) in modes.items():
            w, scores[m] = run(ctx, threads, args.pairs, concurrent)
            wall[m].append(w)
    first = next(iter(modes))
    rows = []
    for m in modes:
        med = statistics.median(wall[m])
        diff = max(abs(a - b) for a, b in zip(scores[m], scores[first]))
        rows.append([m, med, common.runs(wall[m]), med / statistics.median(wall[first]), diff])
    common.say(f"median of {args.repeats} runs; seconds of scoring both workloads (model load excluded)")
    common.table(["mode", "wall s", "all runs", "vs today", "max abs diff vs today (nats)"], rows)
    common.footer()


if __name__ == "__main__":
    main()
