"""The model work of judging, run inside a Ray task (dlma_ray.stages.judging starts it).

    answer_set_scores   per answer set, each answer's score under one score judge:
                        reward_model / cost_model   a safe-rlhf score model or an HF classification head
                                                    (dlma_ray.model.scoremodel), safetensors, no remote code
                        distillation                C(y) = log pi_0(y | positive) - log pi_0(y | negative)
                                                    under the run's initial model and prompt pair (the
                                                    evaluation's own judge, dlma_ray.workers.eval_tasks)
                        five_point                  the mean points of the 5-point rubric, judged by a model on
                                                    one vLLM engine (`--judge-model`, default the run's pi_0)
    ab_pair_readings    the A/B judge's P(A) over pairs of answers, in both orders, on one vLLM engine
    human_pair_margins  every named judge's margin of the human-chosen answer over the rejected one: the policy
                        judges (ab, five_point) on one vLLM engine, R and C on transformers, reward / cost models
                        (dlma_ray.evaluation.judge_accuracy turns them into accuracies)

An answer set is a list of rows {prompt_id, messages, answer, finished, token_ids?}: a policy's stored or generated
answers, or human-written answers (no token ids: tokenised, with the end of turn after them).
"""

from __future__ import annotations

from contextlib import contextmanager

from dlma_ray.config.tree import Config


@contextmanager
def judge_engine(cfg: Config, model_ref: str):
    """A vLLM engine of ``model_ref`` for the policy judges (ab, five_point), stopped on the way out."""
    from dlma_ray.workers.engines import start_engine, stop_engine

    llm = start_engine(model_ref, vars(cfg.generation), cfg.resources.tensor_parallel_size,
                       cfg.model.trust_remote_code, cfg.resources.threads_for(cfg.resources.cpus_per_engine))
    try:
        yield llm
    finally:
        stop_engine(llm)


def ab_readings_both_orders(llm, cfg: Config, pairs: list[dict]) -> tuple[list[float], list[float]]:
    """(P(A) with `chosen` shown as A, P(A) with `rejected` shown as A) per pair {prompt_id, messages, chosen,
    rejected}: RLAIF's labelling prompt with the instruction drawn per prompt (rlaif.instruction), greedy."""
    from dlma_ray.evaluation.judges import ab
    from dlma_ray.workers import labelling
    from dlma_ray.workers.generation import request_seed

    tok, style = llm.get_tokenizer(), cfg.pair.style
    chats, ids = [p["messages"] for p in pairs], [p["prompt_id"] for p in pairs]
    seeds = [request_seed(cfg.eval.seed, 0, pid, "ab") for pid in ids]  # greedy: the seed only names the request
    instr = [ab.instruction_for(cfg.rlaif.instruction, cfg.run.seed, pid) for pid in ids]
    chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    first = labelling.ab_readings(llm, labelling.rlaif_prompts(tok, chats, chosen, rejected, instr, style), seeds)
    second = labelling.ab_readings(llm, labelling.rlaif_prompts(tok, chats, rejected, chosen, instr, style), seeds)
    return first, second


def five_point_means(llm, cfg: Config, rows: list[dict], tags: list[str]) -> list[float]:
    """Each answer's mean points over `self_rewarding.num_judgements` judgements of the 5-point rubric (NaN with
    fewer than `min_valid_judgements` parsed), rows {prompt_id, messages, answer}; ``tags`` name each row's
    judgement seeds (with the prompt id)."""
    from dlma_ray.evaluation.judges import five_point
    from dlma_ray.workers import labelling
    from dlma_ray.workers.generation import request_seed, stop_token_ids

    tok, t = llm.get_tokenizer(), cfg.self_rewarding.num_judgements
    asked = [(j, k) for j in range(len(rows)) for k in range(t)]
    texts = labelling.five_point_judgements(
        llm, [five_point.judge_question(five_point.question_of(rows[j]["messages"]), rows[j]["answer"])
              for j, _ in asked],
        [request_seed(cfg.eval.seed, 0, rows[j]["prompt_id"], f"judge-{tags[j]}.{k}") for j, k in asked],
        vars(cfg.self_rewarding), cfg.pair.style, stop_token_ids(tok, cfg.pair.renderer(tok).end_of_turn))
    scores = [five_point.parse_score(x) for x in texts]
    return five_point.mean_scores([scores[i:i + t] for i in range(0, len(scores), t)],
                                  cfg.self_rewarding.min_valid_judgements)


def ab_pair_readings(cfg: Config, model_ref: str, pair_sets: list[list[dict]]) -> list[tuple[list[float], list[float]]]:
    """``ab_readings_both_orders`` of every pair set on one engine of ``model_ref``."""
    with judge_engine(cfg, model_ref) as llm:
        return [ab_readings_both_orders(llm, cfg, pairs) if pairs else ([], []) for pairs in pair_sets]


def answer_set_scores(cfg: Config, judge: str, model_ref: str, sets: list[list[dict]]) -> list[list[float]]:
    """``model_ref``: the reward / cost model's folder, for distillation the run's initial model, for five_point the
    judging model (the answers of one prompt share their judgement seeds: a paired comparison)."""
    import torch

    from dlma_ray.workers.eval_tasks import answer_ids, contrast, device, free_memory, load

    if judge == "five_point":
        with judge_engine(cfg, model_ref) as llm:
            return [five_point_means(llm, cfg, rows, ["answer"] * len(rows)) if rows else [] for rows in sets]
    model = None
    try:
        if judge == "distillation":
            model, tok = load(model_ref, cfg)
            r = cfg.pair.renderer(tok)
            return [contrast(model, tok, r, rows, answer_ids(tok, rows, r.end_of_turn), cfg.eval.batch_size)
                    if rows else [] for rows in sets]
        from dlma_ray.model.scoremodel import answer_scores, load_judge_model

        torch.set_num_threads(cfg.resources.threads_for(cfg.resources.cpus_per_scorer))
        model, tok, kind = load_judge_model(model_ref, getattr(torch, cfg.scoring.dtype))
        model = model.to(device())
        return [answer_scores(model, tok, kind, [r["messages"] for r in rows], [r["answer"] for r in rows],
                              cfg.eval.batch_size) for rows in sets]
    finally:
        model = None
        free_memory()


def human_pair_margins(cfg: Config, policy_ref: str, initial_ref: str, pairs: list[dict], names: list[str],
                       judge_model: str = "") -> dict[str, list[float]]:
    """Each judge's margin of the human-chosen answer over the rejected one, per pair {messages, chosen, rejected}
    (dlma_ray.evaluation.judge_accuracy). The policy judges (ab, five_point) run on one vLLM engine of
    ``policy_ref``; self_reward scores R under ``policy_ref``, distillation C under ``initial_ref`` (pi_0)."""
    from dlma_ray.evaluation.judges import ab
    from dlma_ray.workers.eval_tasks import contrastive_rewards, free_memory, load, pair_ids

    out: dict[str, list[float]] = {}
    chats = [p["messages"] for p in pairs]
    if {"ab", "five_point"} & set(names):
        with judge_engine(cfg, policy_ref) as llm:
            if "ab" in names:
                first, second = ab_readings_both_orders(llm, cfg, pairs)
                out["ab"] = [p - 0.5 for p in ab.preference_for_chosen(first, second)]
            if "five_point" in names:
                rows = [{"prompt_id": p["prompt_id"], "messages": p["messages"], "answer": p[side]}
                        for p in pairs for side in ("chosen", "rejected")]
                means = five_point_means(llm, cfg, rows, ["chosen", "rejected"] * len(pairs))
                out["five_point"] = [means[2 * j] - means[2 * j + 1] for j in range(len(pairs))]
    for name, ref in (("self_reward", policy_ref), ("distillation", initial_ref)):
        if name in names:
            model, tok = load(ref, cfg)
            r = cfg.pair.renderer(tok)
            plus, minus = pair_ids(tok, pairs, r.end_of_turn)
            out[name] = contrastive_rewards(model, tok, [r.positive(c) for c in chats], [r.negative(c) for c in chats],
                                            plus, minus, cfg.eval.batch_size)
            model = None
            free_memory()
    for name in ("reward_model", "cost_model"):
        if name in names:
            rows = [[{"messages": p["messages"], "answer": p[side]} for p in pairs] for side in ("chosen", "rejected")]
            plus, minus = answer_set_scores(cfg, name, judge_model, rows)
            sign = -1.0 if name == "cost_model" else 1.0
            out[name] = [sign * (a - b) for a, b in zip(plus, minus)]
    return {name: out[name] for name in names}
