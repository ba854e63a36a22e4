"""The two judges that read log-probs the pipeline already computes, with no model of their own:

    self_reward   DLMA's R = [l+(y+) - l-(y+)] - [l+(y-) - l-(y-)] under pi_k (dlma_ray.core.losses.self_reward);
                  y+ is preferred when R > 0. It labels DLMA's pairs (its margin) and is evaluation's default.
    distillation  C(y) = log pi_0(y | positive) - log pi_0(y | negative): one answer's score under the run's
                  initial model and prompt pair; the higher C wins. R of a pair is C(y+) - C(y-) under pi_k.

A method trained on R is judged by C on its own signal: results judged so carry that caveat
(dlma_ray.evaluation.headtohead.TRAINED_SIGNAL_NOTE).
"""

from __future__ import annotations

from dlma_ray.evaluation.judges.judge import Judge, register


@register
class SelfReward(Judge):
    name = "self_reward"
    summary = "DLMA's R from the policy's log-probs under the contrastive prompts (y+ preferred when R > 0)"
    verdict = "prefer"
    runs_on = "pair_logprobs"
    answers_vs_round0 = True  # eval.judge=self_reward: the evaluation's C under pi_0
    order = 0


@register
class Distillation(Judge):
    name = "distillation"
    summary = "C(y) = log pi_0(y | positive) - log pi_0(y | negative), one answer at a time (higher wins)"
    verdict = "score"
    runs_on = "pair_logprobs"
    head_to_head = True
    order = 10
