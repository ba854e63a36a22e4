"""Scoring: `dlma_ray.logprobs.score_texts` (length-sorted, padded batches) vs one sequence at a time.

The workload is the score stage's: for every (prompt, chosen, rejected) pair, six sequences -- y+ and
y- under the positive, the negative and the plain context, each response followed by end-of-turn.
The naive baseline forwards each sequence alone (batch of one, no padding). Both give summed
response log-probs; the max abs difference between them is printed as a correctness check.

    python bench/bench_score.py [--pairs 12] [--batch-sizes 8,32] [--repeats 3] [--data FILE.jsonl.gz]
"""

import argparse
import statistics

import common


def build_sequences(tokenizer, pairs):
    r = common.renderer(tokenizer)
    contexts, responses = [], []
    for p in pairs:
        chat = p.prompt.as_chat()
        for ctx in (r.positive(chat), r.negative(chat), r.plain(chat)):
            for resp in (p.chosen, p.rejected):
                contexts.append(ctx)
                responses.append(resp + r.end_of_turn)
    return contexts, responses


def naive_scores(model, tokenizer, contexts, responses, max_length):
    import torch

    from dlma_ray.logprobs import collate, encode_pair, sequence_logprobs

    out = []
    with torch.no_grad():
        for c, r in zip(contexts, responses):
            batch = collate([encode_pair(tokenizer, c, r, "", max_length)], tokenizer.pad_token_id or 0)
            batch = batch.to(model.device)
            out.append(sequence_logprobs(model, batch).item())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--batch-sizes", default="8,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=None, help="preference pairs file (default: the shipped demo pairs)")
    args = ap.parse_args()
    common.setup()
    import torch

    from dlma_ray.logprobs import score_texts
    from dlma_ray.models import load_causal_lm, load_tokenizer

    common.header("bench_score: batched score_texts vs one sequence at a time")
    tok = load_tokenizer(common.model_dir())
    model = load_causal_lm(common.model_dir(), "float32").to(common.device())
    max_length = common.bench_config().train.max_length
    contexts, responses = build_sequences(tok, common.preference_pairs(args.pairs, args.data))
    lengths = [len(tok(c + r, add_special_tokens=False)["input_ids"]) for c, r in zip(contexts, responses)]
    n_tokens = sum(lengths)
    common.say(f"{len(contexts)} sequences from {len(contexts) // 6} pairs, {n_tokens} tokens "
          f"(min {min(lengths)}, max {max(lengths)} per sequence), float32")

    naive_scores(model, tok, contexts[:8], responses[:8], max_length)  # warm-up
    score_texts(model, tok, contexts[:8], responses[:8], "", batch_size=8, max_length=max_length)
    methods = {"naive": lambda: naive_scores(model, tok, contexts, responses, max_length)}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        methods[bs] = lambda bs=bs: score_texts(model, tok, contexts, responses, "", batch_size=bs,
                                                max_length=max_length)
    wall, cpu, out = common.interleaved(methods, args.repeats)
    med = {m: statistics.median(t) for m, t in wall.items()}
    naive = torch.tensor(out["naive"][-1], dtype=torch.float64)
    rows = []
    for m in methods:
        diff = float((torch.tensor(out[m][-1], dtype=torch.float64) - naive).abs().max())
        name = "naive loop (1 sequence, no padding)" if m == "naive" else "score_texts (length-sorted, padded)"
        rows.append([name, 1 if m == "naive" else m, med[m], common.runs(wall[m]), statistics.median(cpu[m]),
                     n_tokens / med[m], med["naive"] / med[m], diff])
    common.say(f"median of {args.repeats} interleaved runs; speed-up = naive wall s / wall s; "
               "CPU s = process CPU time (all threads)")
    common.table(["method", "batch", "wall s", "all runs", "CPU s", "tokens/s", "speed-up vs naive",
                  "max abs diff (nats)"], rows)
    common.footer()


if __name__ == "__main__":
    main()
