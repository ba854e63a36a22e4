"""The model work of judging, run inside a Ray task (dlma_ray.stages.judging starts it).

    answer_set_scores   per answer set, each answer's score under one score judge:
                        reward_model / cost_model   a safe-rlhf score model or an HF classification head
                                                    (dlma_ray.model.scoremodel), safetensors, no remote code
                        distillation                C(y) = log pi_0(y | positive) - log pi_0(y | negative)
                                                    under the run's initial model and prompt pair (the
                                                    evaluation's own judge, dlma_ray.workers.eval_tasks)

    human_pair_margins  every named judge's margin of the human-chosen answer over the rejected one: the policy
                        judges (ab, five_point) on one vLLM engine, R and C on transformers, reward / cost models
                        (dlma_ray.evaluation.judge_accuracy turns them into accuracies)

An answer set is a list of rows {messages, answer, finished, token_ids?}: a policy's stored or generated
answers, or human-written answers (no token ids: tokenised, with the end of turn after them).
"""

from __future__ import annotations

from dlma_ray.config.tree import Config


def answer_set_scores(cfg: Config, judge: str, model_ref: str, sets: list[list[dict]]) -> list[list[float]]:
    """``model_ref``: the reward / cost model's folder, or for distillation the run's initial model."""
    import torch

    from dlma_ray.workers.eval_tasks import answer_ids, contrast, device, free_memory, load

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
    from dlma_ray.evaluation.judges import ab, five_point
    from dlma_ray.workers import labelling
    from dlma_ray.workers.engines import start_engine, stop_engine
    from dlma_ray.workers.eval_tasks import contrastive_rewards, free_memory, load, pair_ids
    from dlma_ray.workers.generation import request_seed, stop_token_ids

    out: dict[str, list[float]] = {}
    chats = [p["messages"] for p in pairs]
    ids = [p["prompt_id"] for p in pairs]
    seeds = [request_seed(cfg.eval.seed, 0, pid, "ab") for pid in ids]  # greedy: the seed only names the request
    if {"ab", "five_point"} & set(names):
        llm = start_engine(policy_ref, vars(cfg.generation), cfg.resources.tensor_parallel_size,
                           cfg.model.trust_remote_code, cfg.resources.threads_for(cfg.resources.cpus_per_engine))
        try:
            tok, style = llm.get_tokenizer(), cfg.pair.style
            if "ab" in names:
                instr = [ab.instruction_for(cfg.rlaif.instruction, cfg.run.seed, pid) for pid in ids]
                chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
                first = labelling.ab_readings(llm, labelling.rlaif_prompts(tok, chats, chosen, rejected, instr, style),
                                              seeds)
                second = labelling.ab_readings(llm, labelling.rlaif_prompts(tok, chats, rejected, chosen, instr, style),
                                               seeds)
                out["ab"] = [p - 0.5 for p in ab.preference_for_chosen(first, second)]
            if "five_point" in names:
                sr, t = vars(cfg.self_rewarding), cfg.self_rewarding.num_judgements
                eot = cfg.pair.renderer(tok).end_of_turn
                asked = [(j, side, k) for j in range(len(pairs)) for side in ("chosen", "rejected") for k in range(t)]
                texts = labelling.five_point_judgements(
                    llm, [five_point.judge_question(five_point.question_of(chats[j]), pairs[j][side])
                          for j, side, _ in asked],
                    [request_seed(cfg.eval.seed, 0, ids[j], f"judge-{side}.{k}") for j, side, k in asked], sr, style,
                    stop_token_ids(tok, eot))
                scores = [five_point.parse_score(x) for x in texts]
                means = five_point.mean_scores([scores[i:i + t] for i in range(0, len(scores), t)],
                                               cfg.self_rewarding.min_valid_judgements)
                out["five_point"] = [means[2 * j] - means[2 * j + 1] for j in range(len(pairs))]
        finally:
            stop_engine(llm)
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
