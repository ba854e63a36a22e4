"""Evaluate stage: how good is a round's new policy? -> round_<k>/eval.json and round_<k>/answers.jsonl.

    run_round(r)                           after round k's train stage: pi_{k+1} = round_k/policy
    evaluate_policy(cfg, policy, out_dir)  any policy folder alone (jobs/evaluate.py)

Model work runs in Ray tasks with max_calls=1 (dlma_ray.workers.eval_tasks): the worker process exits when the
task returns, so vLLM's and torch's memory and the task's CPUs/GPUs go back to the cluster.
  answers   vLLM: the policy's answers to the held-out prompts (eval.prompts, never trained on); pi_0's
            answers once, cached in <run>/baseline_answers.jsonl
  pi_0      the fixed judge of every round: C(y) of both answer sets, log-probs for KL, implicit reward
            and perplexity (eval_tasks.initial_model_scores)
  pi_k      the same log-probs under the policy, R on human and held-out generated pairs, RLAIF judge

eval.json: round, policy, reference, round0_model, pair, seconds, eval_config, and
  measures   name -> summary with n and ci95 (dlma_ray.evaluation.measures documents each; dlma_ray.core.stats makes them)
  details    refusal by kind, R accuracy by |R| range, the RLAIF judge's summary, answer lengths, the
             refusal rule's agreement with human labels, the sources and their sizes
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from dlma_ray.workers import engines
from dlma_ray.workers import eval_tasks
from dlma_ray.workers.eval_tasks import threads_per_task
from dlma_ray.core import storage
from dlma_ray.config.tree import Config, DataConfig
from dlma_ray.evaluation.judges import api_key, check_judge, openai_margins
from dlma_ray.config.interfaces import StageResult
from dlma_ray.run.layout import BASELINE_SCORES_FILE, RunLayout
from dlma_ray.core.prompts import context_ids
from dlma_ray.evaluation.refusal import judge_agreement, refusal_rates
from dlma_ray.stages.round import Round, initial_model, model_for_actor
from dlma_ray.stages.ray_session import init_ray
from dlma_ray.stages.baseline import read_baseline
from dlma_ray.stages.judged_pairs import (JUDGED_FILE, judged_key, judged_measures, read_judged, read_judged_pairs,
                                         write_judged)

log = logging.getLogger("dlma_ray.stages.evaluate")
ASSETS = Path(__file__).resolve().parents[1] / "assets"  # dlma_ray/assets: package data
BUILTIN_PAIR_SOURCES = {"builtin:demo-pairs": ASSETS / "demo_pairs.jsonl"}
BUILTIN_TEXT_SOURCES = {"builtin:neutral-text": ASSETS / "neutral_text.jsonl"}
REFUSAL_LABELS = ASSETS / "refusal_labels.jsonl"


# ---------------------------------------------------------------- inputs

def pairs_source_path(source: str) -> str:
    if source.startswith("builtin:"):
        if source not in BUILTIN_PAIR_SOURCES:
            raise ValueError(f"eval.preference_pairs={source!r} is not a built-in; built-ins: "
                             + ", ".join(BUILTIN_PAIR_SOURCES))
        return str(BUILTIN_PAIR_SOURCES[source])
    return source


def _read_jsonl(path) -> list[dict]:
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_neutral_text(cfg: Config) -> list[dict]:
    """{prompt, text} rows whose text's perplexity shows whether text quality is kept; [] when off."""
    src = cfg.eval.neutral_text
    if not src:
        return []
    path = BUILTIN_TEXT_SOURCES.get(src)
    if src.startswith("builtin:") and path is None:
        raise ValueError(f"eval.neutral_text={src!r} is not a built-in; built-ins: " + ", ".join(BUILTIN_TEXT_SOURCES))
    rows = [r for r in _read_jsonl(path or src) if str(r.get("text") or "").strip()]
    return [{"prompt": str(r.get("prompt") or ""), "text": str(r["text"])} for r in rows]


def load_eval_pairs(cfg: Config, tokenizer) -> tuple[list[dict], dict]:
    """Human-labelled pairs whose plain context fits data.max_prompt_tokens, then a seeded sample."""
    from dlma_ray.data.records import load_preference_pairs
    from dlma_ray.data.sources import sample

    pairs, report = load_preference_pairs(pairs_source_path(cfg.eval.preference_pairs))
    renderer = cfg.pair.renderer(tokenizer)
    fit = [p for p in pairs
           if len(context_ids(tokenizer, renderer.plain(p.prompt.as_chat()))) <= cfg.data.max_prompt_tokens]
    rows = [{"prompt_id": p.prompt.prompt_id, "messages": p.prompt.as_chat(), "chosen": p.chosen,
             "rejected": p.rejected} for p in sample(fit, cfg.eval.max_pairs, cfg.eval.seed)]
    return rows, {"source": cfg.eval.preference_pairs, "summary": report.summary(), "too_long": len(pairs) - len(fit),
                  "n": len(rows)}


def load_eval_prompts(cfg: Config, tokenizer) -> list[dict]:
    from dlma_ray.data.records import load_prompts

    src = cfg.eval.prompts
    # Built-in files use `prompt`; an hf: source is read from its test split (never the training one).
    dc = DataConfig(source=src, split="test" if src.startswith("hf:") else cfg.data.split,
                    prompt_field="prompt" if src.startswith("builtin:") else cfg.data.prompt_field,
                    max_prompts=cfg.eval.max_prompts, max_prompt_tokens=cfg.data.max_prompt_tokens, dedup=True)
    renderer = cfg.pair.renderer(tokenizer)
    records, report = load_prompts(dc, cfg.eval.seed,
                                   lambda chat: len(context_ids(tokenizer, renderer.plain(chat))))
    if not records:
        raise ValueError(f"no usable prompts in eval.prompts={src!r}: {report.summary()}")
    return [{"prompt_id": r.prompt_id, "messages": r.as_chat(), "prompt": r.prompt, "kind": r.kind} for r in records]


def read_heldout(pairs_dir: str, limit: int) -> list[dict]:
    """The first ``limit`` held-out rows (by prompt id) of a round's pairs table; [] when there are none."""
    import pyarrow.parquet as pq

    if limit <= 0 or not storage.exists(pairs_dir):
        return []
    cols = ["prompt_id", "split", "pos_context", "neg_context", "end_of_turn", "chosen", "rejected", "self_reward",
            "chosen_token_ids", "rejected_token_ids", "chosen_finished", "rejected_finished"]
    table = pq.read_table(pairs_dir)  # a table of an older dlma-ray lacks the token ids: they are then re-made
    rows = [r for r in table.select([c for c in cols if c in table.column_names]).to_pylist()
            if r["split"] == "heldout"]
    return sorted(rows, key=lambda r: r["prompt_id"])[:limit]


# ---------------------------------------------------------------- driver



def _task(fn, num_cpus: float, num_gpus: float, resources: dict | None = None, runtime_env: dict | None = None):
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_calls=1, **({"resources": resources} if resources
                                                                           else {}),
                      **({"runtime_env": runtime_env} if runtime_env else {}))(fn)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _clean(x):
    """JSON without NaN/inf (not valid JSON): non-finite numbers become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def fixed_scores_key(cfg: Config, baseline: list[dict], pairs: list[dict], neutral: list[dict]) -> str:
    """What pi_0's fixed scores depend on: the model, the pair, the eval batch-independent items."""
    import hashlib

    parts = {"model": initial_model(cfg), "pair": [cfg.pair.name, cfg.pair.positive, cfg.pair.negative,
                                                    cfg.pair.style], "dtype": cfg.scoring.dtype,
             "baseline": [(b["prompt_id"], b["token_ids"], b["finished"]) for b in baseline],
             "pairs": [(p["prompt_id"], p["chosen"], p["rejected"]) for p in pairs], "neutral": neutral}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_fixed_scores(path: str, key: str) -> dict | None:
    if not storage.exists(path):
        return None
    try:
        doc = json.loads(storage.read_text(path))
    except ValueError:
        return None
    return doc["scores"] if doc.get("key") == key else None


def refusal_judge_agreement() -> dict:
    """How often the refusal rule agrees with the shipped human labels (dlma_ray/assets/refusal_labels.jsonl)."""
    return {**judge_agreement(_read_jsonl(REFUSAL_LABELS)), "labels": "builtin:refusal-labels"}


def evaluate_policy(cfg: Config, policy_path: str, out_dir: str, *, reference: str | None = None,
                    heldout: list[dict] | None = None, round_index: int | None = None,
                    baseline_path: str | None = None, judged_pairs: list[dict] | None = None,
                    kept: engines.KeptEngines | None = None, r_model: str | None = None) -> dict:
    """Evaluate one policy folder; writes <out_dir>/answers.jsonl and <out_dir>/eval.json; returns eval.json.

    ``reference`` is the training's reference (recorded only: every measure compares with pi_0, the fixed
    round-0 model); ``heldout`` rows come from ``read_heldout``; pi_0's answers are cached at
    ``baseline_path`` (default <run.dir>/baseline_answers.jsonl). ``judged_pairs`` (generated pairs with
    their R, from ``read_judged_pairs``) are judged by an external judge when one is configured: R's
    accuracy against it by |R| range, the paper's headline; ``r_model`` (pi_k, whose R they carry) also judges
    them in text when eval.rlaif_judge is on (dlma_ray.stages.judged_pairs). ``kept``: engines already loaded
    with this policy (the pipeline keeps them for the next round's generate stage): the answers come from them.
    """
    import ray

    from dlma_ray.evaluation.measures import assemble_measures
    from dlma_ray.model.loading import load_tokenizer
    start = time.time()
    check_judge(cfg)  # before any model loads: a broken judge should cost seconds, not a stage
    tok = load_tokenizer(initial_model(cfg), cfg.model.trust_remote_code)
    prompts = load_eval_prompts(cfg, tok)
    pairs, pairs_info = load_eval_pairs(cfg, tok)
    neutral = load_neutral_text(cfg)
    baseline_path = baseline_path or RunLayout(storage.absolute(cfg.run.dir)).baseline_answers
    round0, policy = initial_model(cfg), model_for_actor(policy_path)
    init_ray(cfg)
    res = cfg.resources
    gen = _task(eval_tasks.generate_answers, res.cpus_per_engine, res.gpus_per_engine, res.engine_resources,
                engines.ENGINE_RUNTIME_ENV)
    scorer = dict(num_cpus=res.cpus_per_scorer, num_gpus=res.gpus_per_scorer, resources=res.scorer_resources)
    log.info("evaluating %s: %d held-out prompts, %d human pairs, %d held-out generated pairs, %d neutral texts",
             policy, len(prompts), len(pairs), len(heldout or []), len(neutral))
    kept = kept if kept is not None and kept.serves(policy) else None
    answers_ref = None if kept else gen.remote(policy, prompts, cfg)
    baseline = read_baseline(baseline_path, prompts, cfg)
    baseline_ref = gen.remote(round0, prompts, cfg) if baseline is None else None
    answers = eval_tasks.answer_prompts(kept.engine(), policy, prompts, cfg) if kept else ray.get(answers_ref)
    storage.write_text_atomic(storage.join(out_dir, "answers.jsonl"), _jsonl(answers))
    if baseline_ref is not None:
        baseline = ray.get(baseline_ref)
        storage.write_text_atomic(baseline_path, _jsonl(baseline))
    judged_pairs = judged_pairs if cfg.eval.judge != "self_reward" else []
    judged_path, judged_id = storage.join(out_dir, JUDGED_FILE), judged_key(cfg, judged_pairs or [], r_model)
    verdicts = read_judged(judged_path, judged_id) if judged_pairs else None
    to_judge = judged_pairs if verdicts is None else []  # kept verdicts of a killed evaluation are not asked again
    text_judge = bool(to_judge) and cfg.eval.rlaif_judge and r_model is not None
    fixed_path = storage.join(storage.dirname(baseline_path), BASELINE_SCORES_FILE)
    key = fixed_scores_key(cfg, baseline, pairs, neutral)
    fixed = read_fixed_scores(fixed_path, key)
    own_rlaif = text_judge and r_model != round0
    threads = threads_per_task(res.threads_for(res.cpus_per_scorer), 3 if own_rlaif else 2, ray.nodes(),
                               res.cpus_per_scorer, res.gpus_per_scorer)  # the scorer tasks run at once
    initial_ref = _task(eval_tasks.initial_model_scores, **scorer).remote(cfg, round0, answers, baseline, pairs,
                                                                           neutral, to_judge, fixed,
                                                                           text_judge and r_model == round0, threads)
    rlaif_ref = (_task(eval_tasks.text_judge_preferences, **scorer).remote(cfg, r_model, to_judge, threads)
                 if own_rlaif else None)
    policy_ref = _task(eval_tasks.policy_scores, **scorer).remote(cfg, policy, answers, pairs, heldout or [], neutral,
                                                                  threads)
    initial, scores = ray.get(initial_ref), ray.get(policy_ref)
    if fixed is None:
        storage.write_text_atomic(fixed_path, json.dumps(
            {"key": key, "scores": {k: initial[k] for k in eval_tasks.FIXED_SCORES}}))
    margins = initial["margins"]
    if cfg.eval.judge == "openai":
        margins = openai_margins(cfg.eval.judge_url, cfg.eval.judge_model, api_key(cfg.eval.judge_api_key_env),
                                 [a["messages"] for a in answers], [a["answer"] for a in answers],
                                 [b["answer"] for b in baseline])
        if to_judge:
            initial["judge_pair_margins"] = openai_margins(
                cfg.eval.judge_url, cfg.eval.judge_model, api_key(cfg.eval.judge_api_key_env),
                [p["messages"] for p in judged_pairs], [p["chosen"] for p in judged_pairs],
                [p["rejected"] for p in judged_pairs])
    if to_judge:
        rlaif = ray.get(rlaif_ref) if rlaif_ref is not None else initial["judged_pair_rlaif"]
        verdicts = write_judged(judged_path, judged_id, to_judge, initial["judge_pair_margins"], rlaif)
    measures, details = assemble_measures(answers, baseline, initial, scores, margins, beta=cfg.train.beta,
                                          seed=cfg.eval.seed, refusal_rates=refusal_rates)
    judged_m, judged_d = judged_measures(cfg, judged_pairs or [], verdicts, r_model)
    measures.update(judged_m)
    details.update(judged_d)
    details.update(pairs_source=pairs_info, refusal_judge=refusal_judge_agreement(), heldout_prompts=len(prompts),
                   neutral_texts=len(neutral),
                   self_reward_bins_note="accuracy of R > 0 by |R| range on human-written pairs; the paper's headline "
                   "(accuracy rising with |R| against an external judge) needs eval.judge=reward_model or openai"
                   + ("" if verdicts else ": not computed in this evaluation"))
    result = {
        "round": round_index, "policy": policy, "reference": model_for_actor(reference) if reference else initial_model(cfg),
        "round0_model": round0, "pair": cfg.pair.name, "judge": cfg.eval.judge, "eval_config": vars(cfg.eval),
        "measures": measures, "details": details, "seconds": round(time.time() - start, 2),
    }
    storage.write_text_atomic(storage.join(out_dir, "eval.json"), json.dumps(_clean(result), indent=2))
    from dlma_ray.evaluation.measures import format_summary

    log.info("eval of %s: distillation gain vs pi_0 %s; refusal harmful %s, borderline %s; KL to pi_0 %s",
             policy, format_summary(measures.get("distillation_gain")),
             format_summary(measures.get("refusal_harmful"), pct=True),
             format_summary(measures.get("over_refusal"), pct=True), format_summary(measures.get("kl_to_initial")))
    return result


def run_round(r: Round) -> StageResult:
    """The evaluate stage of round k: pi_{k+1} = round_k/policy -> round_k/eval.json and answers.jsonl."""
    paths = r.paths
    if not storage.exists(paths.policy):
        raise FileNotFoundError(f"round {r.k} has no trained policy at {paths.policy}; run its train stage first")
    result = evaluate_policy(r.cfg, paths.policy, paths.dir, reference=r.reference,
                             heldout=read_heldout(paths.pairs, r.cfg.eval.heldout_pairs), round_index=r.k,
                             baseline_path=r.run.baseline_answers,
                             judged_pairs=read_judged_pairs(paths.pairs, r.cfg.eval.max_pairs), kept=r.engines,
                             r_model=r.policy)
    return StageResult(paths.eval_json, result["details"]["heldout_prompts"])
