"""Can vLLM's `prompt_logprobs` replace the transformers scorer? Same sequences as bench_score.py.

For the score stage's six sequences per pair, summed response log-probs from
  (a) transformers, one sequence at a time (bench_score's naive loop, the reference),
  (b) vLLM `prompt_logprobs=0` (the prompt is context + response; max_tokens=1), as vLLM does it by
      default: a request with prompt logprobs skips the prefix cache,
  (c) the same with `skip_reading_prefix_cache=False` and prefix caching on (shared contexts reused),
and the max abs difference of (b), (c) from (a) per sequence and per token, with the wall time of each.

    python bench/score_vllm.py [--pairs 12]
"""

import argparse
import time

import common


def vllm_scores(llm, encoded, skip_cache):
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, skip_reading_prefix_cache=skip_cache,
                            detokenize=False)  # decoding prompt logprobs of cached positions crashes vLLM 0.32
    t = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": c + r} for c, r in encoded], params, use_tqdm=False)
    wall = time.perf_counter() - t
    per_token = []
    for (c, r), o in zip(encoded, outs):
        lp = o.prompt_logprobs  # [None, {token: Logprob}, ...]: entry t is log p(token t | tokens < t)
        per_token.append([lp[len(c) + j][tok].logprob if lp[len(c) + j] and tok in lp[len(c) + j] else float("nan")
                          for j, tok in enumerate(r)])
    return per_token, wall


def hf_per_token(model, encoded):
    import torch

    out = []
    t = time.perf_counter()
    with torch.no_grad():
        for c, r in encoded:
            logp = torch.log_softmax(model(input_ids=torch.tensor([c + r])).logits[0].float(), -1)
            out.append([logp[len(c) + j - 1, tok].item() for j, tok in enumerate(r)])
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=12)
    args = ap.parse_args()
    common.setup()
    from bench_score import build_sequences

    from dlma_ray.workers.engines import engine_kwargs
    from dlma_ray.model.logprobs import encode_text_response
    from dlma_ray.model.loading import load_causal_lm, load_tokenizer

    common.header("score_vllm: vLLM prompt_logprobs vs transformers, summed response log-probs")
    tok = load_tokenizer(common.model_dir())
    contexts, responses = build_sequences(tok, common.preference_pairs(args.pairs))
    encoded = [encode_text_response(tok, c, r, "") for c, r in zip(contexts, responses)]
    model = load_causal_lm(common.model_dir(), "float32")
    ref, hf_wall = hf_per_token(model, encoded)
    del model
    from vllm import LLM

    g = common.bench_config("generation.dtype=float32").generation.__dict__
    llm = LLM(**engine_kwargs(common.model_dir(), g, 1, False), enable_prefix_caching=True)
    vllm_scores(llm, encoded[:2], True)  # warm-up
    rows = [["(a) transformers, one sequence at a time", hf_wall, 0.0, 0.0]]
    for name, skip in (("(b) vLLM prompt_logprobs (default: prefix cache skipped)", True),
                       ("(c) vLLM prompt_logprobs, prefix cache read", False)):
        try:
            got, wall = vllm_scores(llm, encoded, skip)
        except Exception as exc:  # noqa: BLE001 (reported in the table: the check is whether it works)
            rows.append([name, f"failed: {type(exc).__name__}: {exc}"[:120], "", ""])
            continue
        seq = max(abs(sum(a) - sum(b)) for a, b in zip(got, ref))  # NaN if a token's log-prob is missing
        token = max(abs(x - y) for a, b in zip(got, ref) for x, y in zip(a, b))
        rows.append([name, wall, seq, token])
        common.say(f"{name}: {wall:.2f} s, max abs diff per sequence {seq:.3g}, per token {token:.3g}")
    common.say(f"{len(encoded)} sequences, {sum(len(c) + len(r) for c, r in encoded)} tokens, float32; vLLM "
               f"max_num_batched_tokens {llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens}")
    common.table(["method", "wall s", "max abs diff per sequence (nats)", "max abs diff per token (nats)"], rows)
    llm.llm_engine.engine_core.shutdown()
    common.footer()


if __name__ == "__main__":
    main()
