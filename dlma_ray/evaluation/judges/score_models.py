"""Reward and cost models as judges (`--judge reward_model | cost_model`, `eval.judge=reward_model`): each answer
gets a score from a folder's model (dlma_ray.model.scoremodel: safe-rlhf score models and HF sequence-classification
heads, safetensors, no remote code); a cost model scores harm, so the LOWER score wins."""

from __future__ import annotations

import os

from dlma_ray.evaluation.judges.judge import Judge, JudgeError, register


@register
class RewardModel(Judge):
    name = "reward_model"
    summary = "a reward model's score of each answer (higher wins)"
    verdict = "score"
    runs_on = "score_model"
    head_to_head = True
    answers_vs_round0 = True
    order = 40

    def check(self, cfg, timeout: float = 5.0) -> None:
        e = cfg.eval
        if not e.judge_model:
            raise JudgeError(f"eval.judge={self.name} needs eval.judge_model: a local folder or a hub name of an "
                             "AutoModelForSequenceClassification reward model")
        path = os.path.expanduser(e.judge_model)
        if path.startswith(("/", ".", "~")) or os.path.exists(path) or path.count("/") > 1:
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise JudgeError(f"eval.judge_model={e.judge_model!r}: no reward model there (no such folder, "
                                 "or it has no config.json)")
            return
        try:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(e.judge_model)
        except Exception as exc:  # hub errors come in many types; all mean "cannot load"
            raise JudgeError(f"eval.judge_model={e.judge_model!r} cannot be loaded: {exc}") from None


@register
class CostModel(RewardModel):
    name = "cost_model"
    summary = "a cost model's score of each answer (lower harm wins; safe-rlhf's Beaver cost models)"
    answers_vs_round0 = False
    order = 50
