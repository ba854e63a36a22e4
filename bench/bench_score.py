"""Scoring: `dlma_ray.model.logprobs.score_texts` (prefix-tree packing; length-sorted padded batches) vs one
sequence at a time.

The workload is the score stage's: for every (prompt, chosen, rejected) pair, six sequences -- y+ and
y- under the positive, the negative and the plain context, each response followed by end-of-turn.
The naive baseline forwards each sequence alone (batch of one, no padding). Against it, in the same run
(interleaved): the packed path the score stage uses (`dlma_ray.model.packing`: shared prefixes computed once,
logits only where a response token is predicted; one row of --pack-tokens tokens per forward)
and the padded path (`pack_tokens=0`: one sequence per row, --batch-sizes rows, length-sorted). All give
summed response log-probs; the max abs difference to the naive loop is printed as a correctness check.

    python bench/bench_score.py [--pairs 12] [--pack-tokens 512,2048] [--batch-sizes 8]
                                [--repeats 3] [--data FILE.jsonl.gz]
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

    from dlma_ray.model.logprobs import collate, encode_text_response, sequence_logprobs

    out = []
    with torch.no_grad():
        for c, r in zip(contexts, responses):
            batch = collate([encode_text_response(tokenizer, c, r, "", max_length)], tokenizer.pad_token_id or 0)
            batch = batch.to(model.device)
            out.append(sequence_logprobs(model, batch).item())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--pack-tokens", default="512,2048", help="packed path: tree tokens per row (= per forward)")
    ap.add_argument("--batch-sizes", default="8", help="padded path: sequences per forward")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=None, help="preference pairs file (default: the shipped demo pairs)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="the scorer's dtype (scoring.dtype; bfloat16 on a GPU, as the GPU configs score)")
    args = ap.parse_args()
    common.setup()
    import torch

    from dlma_ray.model.logprobs import score_texts
    from dlma_ray.model.loading import load_causal_lm, load_tokenizer

    common.header("bench_score: score_texts (packed; padded) vs one sequence at a time")
    tok = load_tokenizer(common.model_dir())
    model = load_causal_lm(common.model_dir(), args.dtype).to(common.device())
    max_length = common.bench_config().train.max_length
    contexts, responses = build_sequences(tok, common.preference_pairs(args.pairs, args.data))
    lengths = [len(tok(c + r, add_special_tokens=False)["input_ids"]) for c, r in zip(contexts, responses)]
    n_tokens = sum(lengths)
    common.say(f"{len(contexts)} sequences from {len(contexts) // 6} pairs, {n_tokens} tokens "
          f"(min {min(lengths)}, max {max(lengths)} per sequence), {args.dtype} on {common.device()}")

    naive_scores(model, tok, contexts[:8], responses[:8], max_length)  # warm-up
    score_texts(model, tok, contexts[:8], responses[:8], "", batch_size=8, max_length=max_length)
    score_texts(model, tok, contexts[:8], responses[:8], "", batch_size=8, max_length=max_length, pack_tokens=0)
    methods = {("naive loop (1 sequence, no padding)", 1): lambda: naive_scores(model, tok, contexts, responses,
                                                                               max_length)}
    for pack in [int(p) for p in args.pack_tokens.split(",")]:
        methods[f"score_texts packed, rows of {pack} tokens", 1] = lambda p=pack: score_texts(
            model, tok, contexts, responses, "", max_length=max_length, pack_tokens=p)
    for bs in [int(b) for b in args.batch_sizes.split(",") if b]:
        methods["score_texts padded (length-sorted)", bs] = lambda bs=bs: score_texts(
            model, tok, contexts, responses, "", batch_size=bs, max_length=max_length, pack_tokens=0)
    wall, cpu, out = common.interleaved(methods, args.repeats)
    med = {m: statistics.median(t) for m, t in wall.items()}
    naive_key = next(iter(methods))
    naive = torch.tensor(out[naive_key][-1], dtype=torch.float64)
    rows = []
    for m in methods:
        diff = float((torch.tensor(out[m][-1], dtype=torch.float64) - naive).abs().max())
        rows.append([m[0], m[1], med[m], common.runs(wall[m]), statistics.median(cpu[m]), n_tokens / med[m],
                     med[naive_key] / med[m], statistics.median(cpu[naive_key]) / statistics.median(cpu[m]), diff])
    common.say(f"median of {args.repeats} interleaved runs; speed-up = naive s / s; CPU s = process CPU time "
               "(all threads); batch = rows per forward; tokens/s counts every sequence's tokens")
    common.table(["method", "batch", "wall s", "all runs", "CPU s", "tokens/s", "speed-up vs naive (wall)",
                  "speed-up vs naive (CPU)", "max abs diff (nats)"], rows)
    common.footer()


if __name__ == "__main__":
    main()
