"""Evaluate stage: how good is a round's new policy? -> round_<k>/eval.json and round_<k>/answers.jsonl.

    run_evaluate(cfg, run_dir, k)          after round k's train stage: pi_{k+1} = round_k/policy
    evaluate_policy(cfg, policy, out_dir)  any policy folder alone (jobs/evaluate.py)

Model work runs in Ray tasks with max_calls=1: the worker process exits when the task returns, so
vLLM's and torch's memory and the task's CPUs/GPUs go back to the cluster for the next stage.
  answers  vLLM, resources.*_per_engine: the policy's answers to eval.prompts (plain chat format,
           seeded per prompt); round 0's answers once, cached in <run>/baseline_answers.jsonl
  pairs    transformers, resources.*_per_scorer: on eval.preference_pairs, the policy's self-reward
           accuracy, its accuracy as an RLAIF text judge, its implicit reward vs the reference;
           R of the round's held-out generated pairs under the policy
  answer   transformers, resources.*_per_scorer: perplexity under round 0's model, and the
           self_reward or reward_model judge of new vs round-0 answers (openai: from the driver)

eval.json, every number next to its sample count ``n``:
  round, policy, reference, round0_model, seconds, eval_config
  pairs_source     {source, summary, too_long, n}
  self_reward      evaluation.accuracy_by_range of R under the policy, + mean, model
  rlaif_judge      evaluation.rlaif_summary with the policy as judge, + model
  implicit_reward  evaluation.implicit_reward_summary against the reference, + reference
  heldout_pairs    {n, mean, frac_positive, model, at_scoring: the same for the stored R under pi_k}
  answers          {policy: A, baseline: A}, A = {n, mean_tokens, finished_fraction,
                    refusal: evaluation.refusal_rates, perplexity: evaluation.perplexity + model}
  win_rate         evaluation.win_summary of new vs round-0 answers, + judge, judge_model
The self_reward judge is R(q, new answer, round-0 answer) under the run's contrastive pair with the
ROUND-0 model: a fixed judge, the same for every round, that never grades its own answers.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import time
from pathlib import Path

from dlma_ray import storage
from dlma_ray.config import Config, DataConfig
from dlma_ray.evaluation import (
    accuracy_by_range, answer_nll, api_key, check_judge, implicit_reward_summary, openai_margins, perplexity,
    refusal_rates, reward_model_scores, reward_summary, rlaif_judge, win_summary,
)

log = logging.getLogger("dlma_ray.evaluate")
ASSETS = Path(__file__).resolve().parent / "assets"
BUILTIN_PAIR_SOURCES = {"builtin:demo-pairs": ASSETS / "demo_pairs.jsonl"}
BASELINE_FILE = "baseline_answers.jsonl"


# ---------------------------------------------------------------- inputs

def pairs_source_path(source: str) -> str:
    if source.startswith("builtin:"):
        if source not in BUILTIN_PAIR_SOURCES:
            raise ValueError(f"eval.preference_pairs={source!r} is not a built-in; built-ins: "
                             + ", ".join(BUILTIN_PAIR_SOURCES))
        return str(BUILTIN_PAIR_SOURCES[source])
    return source


def _renderer(tokenizer, cfg: Config):
    from dlma_ray.prompts import ContrastiveRenderer, pair_from_config

    return ContrastiveRenderer(tokenizer, pair_from_config(cfg.pair.name, cfg.pair.positive, cfg.pair.negative),
                               cfg.pair.style)


def _sample(items: list, k: int, seed: int) -> list:
    if k <= 0 or k >= len(items):
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), k))]


def load_eval_pairs(cfg: Config, tokenizer) -> tuple[list[dict], dict]:
    """Human-labelled pairs whose plain context fits data.max_prompt_tokens, then a seeded sample."""
    from dlma_ray.data import load_preference_pairs

    pairs, report = load_preference_pairs(pairs_source_path(cfg.eval.preference_pairs))
    renderer = _renderer(tokenizer, cfg)
    fit = [p for p in pairs if len(tokenizer(renderer.plain(p.prompt.as_chat()), add_special_tokens=False)
                                   ["input_ids"]) <= cfg.data.max_prompt_tokens]
    rows = [{"prompt_id": p.prompt.prompt_id, "messages": p.prompt.as_chat(), "chosen": p.chosen,
             "rejected": p.rejected} for p in _sample(fit, cfg.eval.max_pairs, cfg.eval.seed)]
    return rows, {"source": cfg.eval.preference_pairs, "summary": report.summary(), "too_long": len(pairs) - len(fit),
                  "n": len(rows)}


def load_eval_prompts(cfg: Config, tokenizer) -> list[dict]:
    from dlma_ray.data import load_prompts

    src = cfg.eval.prompts
    # Built-in files use `prompt`; an hf: source is read from its test split (never the training one).
    dc = DataConfig(source=src, split="test" if src.startswith("hf:") else cfg.data.split,
                    prompt_field="prompt" if src.startswith("builtin:") else cfg.data.prompt_field,
                    max_prompts=cfg.eval.max_prompts, max_prompt_tokens=cfg.data.max_prompt_tokens, dedup=True)
    renderer = _renderer(tokenizer, cfg)
    records, report = load_prompts(dc, cfg.eval.seed,
                                   lambda chat: len(tokenizer(renderer.plain(chat), add_special_tokens=False)["input_ids"]))
    if not records:
        raise ValueError(f"no usable prompts in eval.prompts={src!r}: {report.summary()}")
    return [{"prompt_id": r.prompt_id, "messages": r.as_chat(), "prompt": r.prompt, "kind": r.kind} for r in records]


def read_heldout(pairs_dir: str, limit: int) -> list[dict]:
    """The first ``limit`` held-out rows (by prompt id) of a round's pairs table; [] when there are none."""
    import pyarrow.parquet as pq

    if limit <= 0 or not storage.exists(pairs_dir):
        return []
    cols = ["prompt_id", "split", "pos_context", "neg_context", "end_of_turn", "chosen", "rejected", "self_reward"]
    rows = [r for r in pq.read_table(pairs_dir, columns=cols).to_pylist() if r["split"] == "heldout"]
    return sorted(rows, key=lambda r: r["prompt_id"])[:limit]


# ---------------------------------------------------------------- model work (inside Ray tasks)

def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _free() -> None:
    """Give back the memory of models the caller has just dropped (set to None)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load(ref: str, cfg: Config):
    import torch

    from dlma_ray.models import load_causal_lm, load_tokenizer

    torch.set_num_threads(cfg.resources.threads_for(cfg.resources.cpus_per_scorer))
    model = load_causal_lm(ref, cfg.scoring.dtype, cfg.model.trust_remote_code).to(_device())
    return model, load_tokenizer(ref, cfg.model.trust_remote_code)


def contrastive_rewards(model, tokenizer, pos: list[str], neg: list[str], y_plus: list[str], y_minus: list[str],
                        **opts) -> list[float]:
    """R = [l+(y+) - l-(y+)] - [l+(y-) - l-(y-)] per pair, in one sorted scoring pass (responses carry end-of-turn)."""
    from dlma_ray.logprobs import score_texts
    from dlma_ray.losses import self_reward

    n = len(pos)
    lp = score_texts(model, tokenizer, pos + pos + neg + neg, y_plus + y_minus + y_plus + y_minus, "", **opts)
    return [self_reward(lp[i], lp[2 * n + i], lp[n + i], lp[3 * n + i]) for i in range(n)]


def generate_answers(model_ref: str, prompts: list[dict], cfg: Config) -> list[dict]:
    """The model's sampled answer to each prompt under the plain chat format (vLLM, seeded per prompt)."""
    g = cfg.generation
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(g.cpu_kvcache_gb))
    import torch
    from vllm import LLM, SamplingParams

    from dlma_ray.generate import engine_kwargs, request_seed
    from dlma_ray.models import resolve_model_path

    torch.set_num_threads(cfg.resources.threads_for(cfg.resources.cpus_per_scorer))
    gen = dict(vars(g), seed=cfg.eval.seed)
    llm = LLM(**engine_kwargs(resolve_model_path(model_ref), gen, cfg.resources.tensor_parallel_size,
                              cfg.model.trust_remote_code))
    renderer = _renderer(llm.get_tokenizer(), cfg)
    params = [SamplingParams(temperature=g.temperature, top_p=g.top_p, max_tokens=cfg.eval.max_new_tokens,
                             seed=request_seed(cfg.eval.seed, 0, p["prompt_id"], "eval")) for p in prompts]
    try:
        outs = llm.generate([renderer.plain(p["messages"]) for p in prompts], params, use_tqdm=False)
    finally:  # stop the engine's own processes now rather than leave them to interpreter exit
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        try:
            core.shutdown()
        except Exception:  # best effort: the worker process exits after this task anyway (max_calls=1)
            pass
    sampling = {"max_new_tokens": cfg.eval.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p,
                "seed": cfg.eval.seed}
    return [{**p, "model": model_ref, "answer": o.outputs[0].text, "tokens": len(o.outputs[0].token_ids),
             "finished": o.outputs[0].finish_reason == "stop", **sampling} for p, o in zip(prompts, outs)]


def pair_metrics(cfg: Config, policy_ref: str, reference_ref: str, pairs: list[dict], heldout: list[dict]) -> dict:
    """Self-reward, RLAIF-judge and implicit-reward accuracy on human pairs; R of held-out generated pairs."""
    from dlma_ray.logprobs import score_texts

    policy, tok = _load(policy_ref, cfg)
    opts = dict(batch_size=cfg.eval.batch_size, max_length=cfg.train.max_length)
    out: dict = {}
    if heldout:
        eot = [h["end_of_turn"] for h in heldout]
        r_new = contrastive_rewards(policy, tok, [h["pos_context"] for h in heldout],
                                    [h["neg_context"] for h in heldout],
                                    [h["chosen"] + e for h, e in zip(heldout, eot)],
                                    [h["rejected"] + e for h, e in zip(heldout, eot)], **opts)
        out["heldout_pairs"] = {**reward_summary(r_new), "model": policy_ref,
                                "at_scoring": reward_summary([h["self_reward"] for h in heldout])}
    else:
        out["heldout_pairs"] = {"n": 0, "note": "no held-out generated pairs (eval.heldout_pairs=0 or none stored)"}
    if not pairs:
        return out
    renderer = _renderer(tok, cfg)
    eot, chats = renderer.end_of_turn, [p["messages"] for p in pairs]
    y_plus, y_minus = [p["chosen"] + eot for p in pairs], [p["rejected"] + eot for p in pairs]
    r = contrastive_rewards(policy, tok, [renderer.positive(c) for c in chats], [renderer.negative(c) for c in chats],
                            y_plus, y_minus, **opts)
    out["self_reward"] = {**accuracy_by_range(r), "mean": sum(r) / len(r), "model": policy_ref}
    judge, _ = rlaif_judge(policy, tok, [(p["messages"], p["chosen"], p["rejected"]) for p in pairs],
                           cfg.eval.batch_size)
    out["rlaif_judge"] = {**judge, "model": policy_ref}
    plain = [renderer.plain(c) for c in chats] * 2
    pi = score_texts(policy, tok, plain, y_plus + y_minus, "", **opts)
    if reference_ref == policy_ref:
        ref = pi
    else:
        policy = None
        _free()
        reference, ref_tok = _load(reference_ref, cfg)
        ref = score_texts(reference, ref_tok, plain, y_plus + y_minus, "", **opts)
    n = len(pairs)
    out["implicit_reward"] = {**implicit_reward_summary(pi[:n], pi[n:], ref[:n], ref[n:], cfg.train.beta),
                              "reference": reference_ref}
    return out


def answer_metrics(cfg: Config, round0_ref: str, answers: list[dict], baseline: list[dict]) -> dict:
    """Perplexity of both answer sets under round 0's model; judge margins (new - round 0) when judged here."""
    model, tok = _load(round0_ref, cfg)
    renderer = _renderer(tok, cfg)
    out: dict = {"perplexity": {}, "margins": None}
    for name, rows in (("policy", answers), ("baseline", baseline)):
        kept = [a for a in rows if a["answer"]]  # an empty answer has no token to score
        nll, count = answer_nll(model, tok, [renderer.plain(a["messages"]) for a in kept],
                                [a["answer"] for a in kept], cfg.eval.batch_size) if kept else ([], [])
        out["perplexity"][name] = {**perplexity(nll, count), "model": round0_ref, "empty_skipped": len(rows) - len(kept)}
    chats = [a["messages"] for a in answers]
    if cfg.eval.judge == "self_reward":
        eot = renderer.end_of_turn
        out["margins"] = contrastive_rewards(
            model, tok, [renderer.positive(c) for c in chats], [renderer.negative(c) for c in chats],
            [a["answer"] + eot for a in answers], [b["answer"] + eot for b in baseline],
            batch_size=cfg.eval.batch_size)
    elif cfg.eval.judge == "reward_model":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = None
        _free()
        rm = AutoModelForSequenceClassification.from_pretrained(
            cfg.eval.judge_model, trust_remote_code=cfg.model.trust_remote_code).eval().to(_device())
        rm_tok = AutoTokenizer.from_pretrained(cfg.eval.judge_model, trust_remote_code=cfg.model.trust_remote_code)
        new = reward_model_scores(rm, rm_tok, chats, [a["answer"] for a in answers], cfg.eval.batch_size)
        old = reward_model_scores(rm, rm_tok, chats, [b["answer"] for b in baseline], cfg.eval.batch_size)
        out["margins"] = [a - b for a, b in zip(new, old)]
    return out


# ---------------------------------------------------------------- driver

def _ref(path: str) -> str:
    # Local folders travel to workers as absolute paths; builtin:, URIs and hub names as given.
    return storage.absolute(path) if not path.startswith("builtin:") and os.path.exists(path) else path


def _task(fn, num_cpus: float, num_gpus: float):
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_calls=1)(fn)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _read_baseline(path: str, prompts: list[dict], cfg: Config) -> list[dict] | None:
    """The cached round-0 answers, or None when missing or made with other prompts / model / sampling."""
    if not storage.exists(path):
        return None
    by_id = {r["prompt_id"]: r for r in (json.loads(x) for x in storage.read_text(path).splitlines() if x.strip())}
    want = {"model": _ref(cfg.model.path), "max_new_tokens": cfg.eval.max_new_tokens,
            "temperature": cfg.generation.temperature, "top_p": cfg.generation.top_p, "seed": cfg.eval.seed}
    rows = [by_id.get(p["prompt_id"]) for p in prompts]
    if all(r is not None and all(r.get(k) == v for k, v in want.items()) for r in rows):
        return rows
    log.warning("%s was made for other prompts, model or sampling settings: answering with round 0 again", path)
    return None


def _clean(x):
    """JSON without NaN/inf (not valid JSON): non-finite numbers become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _answer_summary(rows: list[dict], ppl: dict) -> dict:
    n = len(rows)
    return {"n": n, "mean_tokens": sum(r["tokens"] for r in rows) / n if n else None,
            "finished_fraction": sum(r["finished"] for r in rows) / n if n else None,
            "refusal": refusal_rates([r["answer"] for r in rows], [r["kind"] for r in rows]), "perplexity": ppl}


def evaluate_policy(cfg: Config, policy_path: str, out_dir: str, *, reference: str | None = None,
                    heldout: list[dict] | None = None, round_index: int | None = None,
                    baseline_path: str | None = None) -> dict:
    """Evaluate one policy folder; writes <out_dir>/answers.jsonl and <out_dir>/eval.json; returns eval.json.

    ``reference`` (the implicit-reward baseline) defaults to round 0's model; ``heldout`` rows come from
    ``read_heldout``; the round-0 answers are cached at ``baseline_path`` (default <run.dir>/baseline_answers.jsonl).
    """
    import ray

    from dlma_ray.models import load_tokenizer
    from dlma_ray.pipeline import init_ray

    start = time.time()
    check_judge(cfg)  # before any model loads: a broken judge should cost seconds, not a stage
    tok = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code, cfg.model.revision)
    prompts = load_eval_prompts(cfg, tok)
    pairs, pairs_info = load_eval_pairs(cfg, tok)
    baseline_path = baseline_path or storage.join(storage.absolute(cfg.run.dir), BASELINE_FILE)
    round0, policy, reference = _ref(cfg.model.path), _ref(policy_path), _ref(reference or cfg.model.path)
    init_ray(cfg)
    r = cfg.resources
    gen = _task(generate_answers, r.cpus_per_engine, r.gpus_per_engine)
    scorer = dict(num_cpus=r.cpus_per_scorer, num_gpus=r.gpus_per_scorer)
    log.info("evaluating %s: %d prompts, %d preference pairs, %d held-out pairs", policy, len(prompts), len(pairs),
             len(heldout or []))
    answers_ref = gen.remote(policy, prompts, cfg)
    baseline = _read_baseline(baseline_path, prompts, cfg)
    baseline_ref = gen.remote(round0, prompts, cfg) if baseline is None else None
    pairs_ref = _task(pair_metrics, **scorer).remote(cfg, policy, reference, pairs, heldout or [])
    answers = ray.get(answers_ref)
    storage.write_text_atomic(storage.join(out_dir, "answers.jsonl"), _jsonl(answers))
    if baseline_ref is not None:
        baseline = ray.get(baseline_ref)
        storage.write_text_atomic(baseline_path, _jsonl(baseline))
    am = ray.get(_task(answer_metrics, **scorer).remote(cfg, round0, answers, baseline))
    margins = am["margins"]
    if cfg.eval.judge == "openai":
        margins = openai_margins(cfg.eval.judge_url, cfg.eval.judge_model, api_key(cfg.eval.judge_api_key_env),
                                 [a["messages"] for a in answers], [a["answer"] for a in answers],
                                 [b["answer"] for b in baseline])
    # Identical texts tie by definition: no judge's noise (batch padding, sampling) should decide them.
    margins = [0.0 if a["answer"] == b["answer"] else m for a, b, m in zip(answers, baseline, margins)]
    pm = ray.get(pairs_ref)
    result = {
        "round": round_index, "policy": policy, "reference": reference, "round0_model": round0,
        "eval_config": vars(cfg.eval), "pairs_source": pairs_info, **pm,
        "answers": {"policy": _answer_summary(answers, am["perplexity"]["policy"]),
                    "baseline": _answer_summary(baseline, am["perplexity"]["baseline"])},
        "win_rate": {**win_summary(margins), "judge": cfg.eval.judge,
                     "judge_model": round0 if cfg.eval.judge == "self_reward" else cfg.eval.judge_model},
        "seconds": round(time.time() - start, 2),
    }
    storage.write_text_atomic(storage.join(out_dir, "eval.json"), json.dumps(_clean(result), indent=2))
    w = result["win_rate"]
    log.info("eval of %s: R accuracy %s (n=%d), RLAIF accuracy %s, win/tie/lose vs round 0 %d/%d/%d",
             policy, pm.get("self_reward", {}).get("accuracy"), pm.get("self_reward", {}).get("n", 0),
             pm.get("rlaif_judge", {}).get("accuracy"), w["win"], w["tie"], w["lose"])
    return result


def run_evaluate(cfg: Config, run_dir: str, k: int) -> tuple[str, int]:
    """The 4th stage of round k: evaluate round_k/policy; returns (path of eval.json, answers written)."""
    from dlma_ray.pipeline import reference_for_round, round_dir

    rd = round_dir(run_dir, k)
    policy = storage.join(rd, "policy")
    if not storage.exists(policy):
        raise FileNotFoundError(f"round {k} has no trained policy at {policy}; run its train stage first")
    result = evaluate_policy(cfg, policy, rd, reference=reference_for_round(cfg, run_dir, k),
                             heldout=read_heldout(storage.join(rd, "pairs"), cfg.eval.heldout_pairs),
                             round_index=k, baseline_path=storage.join(run_dir, BASELINE_FILE))
    return storage.join(rd, "eval.json"), result["answers"]["policy"]["n"]
