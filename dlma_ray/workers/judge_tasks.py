"""The model work of a head-to-head judgement, run inside a Ray task (dlma_ray.stages.judging starts it).

    answer_set_scores   per answer set, each answer's score under one score judge:
                        reward_model / cost_model   a safe-rlhf score model or an HF classification head
                                                    (dlma_ray.model.scoremodel), safetensors, no remote code
                        distillation                C(y) = log pi_0(y | positive) - log pi_0(y | negative)
                                                    under the run's initial model and prompt pair (the
                                                    evaluation's own judge, dlma_ray.workers.eval_tasks)

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
