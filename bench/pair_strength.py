"""How strongly does the model follow a contrastive prompt pair? Measured before choosing the demo's pair.

For each candidate pair: y+ and y- sampled under the positive and the negative prompt (vLLM, the
pipeline's sampling settings and seeds), then R = C(y+) - C(y-) with C(y) = log p(y|pos) - log p(y|neg)
scored by the same model (transformers, token ids as sampled, end-of-turn only after finished answers).
A pair the model follows gives R > 0 on most prompts and a large R per token; a pair it ignores gives
R near 0, and training on its pairs teaches noise. Prints one table: mean R per response token with its
95% bootstrap interval, the fraction of R > 0 (Wilson interval), mean lengths of y+ / y-, the share of
responses that finished within max_new_tokens.

    python bench/pair_strength.py [--prompts 32] [--max-new-tokens 128] [--pairs harmless,concise,...]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dlma_ray.core.prompts import PromptPair  # noqa: E402

CANDIDATES = {
    "concise": PromptPair("concise", "You are an AI assistant. Your answers are short and precise: one or two sentences.",
                          "You are an AI assistant. Your answers are long-winded, rambling and vague."),
    "refusing": PromptPair("refusing", "You are an AI assistant. You politely refuse any request that could cause harm.",
                           "You are an AI assistant. You always comply with every request, whatever it is."),
    "polite": PromptPair("polite", "You are a warm, polite and respectful assistant.",
                         "You are a rude, insulting and dismissive assistant."),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--pairs", default="harmless,helpful,concise,refusing,polite")
    ap.add_argument("--source", default="builtin:demo")
    ap.add_argument("--out", default="", help="also write the table as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM

    from dlma_ray.config.tree import load_config
    from dlma_ray.core.stats import mean_summary, rate_summary
    from dlma_ray.workers.engines import engine_kwargs
    from dlma_ray.workers.generation import request_seed, sampled_ids, sampling_params, stop_token_ids
    from dlma_ray.model.logprobs import response_ids, score_ids
    from dlma_ray.model.loading import load_causal_lm, load_tokenizer, resolve_model_path
    from dlma_ray.stages.prompt_rows import prompt_rows
    from dlma_ray.core.prompts import BUILTIN_PAIRS, ContrastiveRenderer

    cfg = load_config(None, [f"data.source={args.source}", f"data.max_prompts={args.prompts}",
                             f"generation.max_new_tokens={args.max_new_tokens}"])
    rows = prompt_rows(cfg, 0)
    chats = [json.loads(r["messages_json"]) for r in rows]
    path = resolve_model_path(cfg.model.path)
    gen = vars(cfg.generation)
    llm = LLM(**engine_kwargs(path, gen, 1, False))
    tok = load_tokenizer(path)
    model = load_causal_lm(path, "float32")
    results = []
    for name in args.pairs.split(","):
        pair = BUILTIN_PAIRS.get(name) or CANDIDATES[name]
        r = ContrastiveRenderer(tok, pair, "chat")
        stop = stop_token_ids(tok, r.end_of_turn)
        pos, neg = [r.positive(c) for c in chats], [r.negative(c) for c in chats]
        params = [sampling_params(gen, args.max_new_tokens, request_seed(0, 0, row["prompt_id"], side), stop)
                  for side in ("pos", "neg") for row in rows]
        start = time.time()
        outs = [sampled_ids(o.outputs[0], stop) for o in llm.generate(pos + neg, params, use_tqdm=False)]
        n = len(rows)
        ids = [response_ids(tok, "", i, f, r.end_of_turn) for i, f in outs]
        yp, ym = ids[:n], ids[n:]
        lp = score_ids(model, tok, pos + pos + neg + neg, yp + ym + yp + ym, batch_size=8)
        rew = [(lp[i] - lp[2 * n + i]) - (lp[n + i] - lp[3 * n + i]) for i in range(n)]
        per_token = [x / (len(a) + len(b)) for x, a, b in zip(rew, yp, ym)]
        row = {"pair": name, "R_per_token": mean_summary(per_token), "R": mean_summary(rew),
               "R_positive": rate_summary(sum(x > 0 for x in rew), n),
               "tokens_pos": sum(len(a) for a in yp) / n, "tokens_neg": sum(len(b) for b in ym) / n,
               "finished": rate_summary(sum(f for _, f in outs), 2 * n), "seconds": round(time.time() - start, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\npair strength: {n} prompts from {args.source}, max_new_tokens {args.max_new_tokens}, "
          f"temperature {gen['temperature']}, top_k {gen['top_k']}, top_p {gen['top_p']}\n")
    print("| pair | R per token [95% CI] | R > 0 [95% CI] | tokens y+ / y- | finished |")
    print("| --- | --- | --- | --- | --- |")
    for row in results:
        t, p = row["R_per_token"], row["R_positive"]
        print(f"| {row['pair']} | {t['mean']:.3f} [{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}] | {p['rate']:.0%} "
              f"[{p['ci95'][0]:.0%}, {p['ci95'][1]:.0%}] | {row['tokens_pos']:.0f} / {row['tokens_neg']:.0f} | "
              f"{row['finished']['rate']:.0%} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
