"""Self-Rewarding Language Models (Yuan et al. 2024, arXiv 2401.10020): N answers per prompt from pi_k, each scored by
pi_k itself with the additive 5-point LLM-as-a-Judge rubric (dlma_ray.evaluation.judges.five_point), judged
several times and averaged; the best answer against the worst is the pair, DPO with the previous iterate as the
reference, round after round. Optional: NeMo-Aligner's length control, and Meta-Rewarding's meta-judge
(arXiv 2407.19594; dlma_ray.evaluation.judges.meta_judge), whose judgement pairs train the policy's judging."""

from __future__ import annotations

import math

from dlma_ray.config.interfaces import StageResult
from dlma_ray.methods.base import Method, register
from dlma_ray.stages import generate
from dlma_ray.stages.round import Round


@register
class SelfRewarding(Method):
    name = "self_rewarding"
    order = 60
    judge = "five_point"
    iterates = True
    summary = "N samples a prompt scored by the policy's own 5-point judgement, best vs worst, iterative DPO"

    def check(self, cfg):
        sr = cfg.self_rewarding
        problems = []
        if sr.min_valid_judgements > sr.num_judgements:
            problems.append(f"self_rewarding.min_valid_judgements: {sr.min_valid_judgements} can never be met with "
                            f"self_rewarding.num_judgements={sr.num_judgements}; lower it or judge more often")
        if sr.length_control >= 0.5:
            problems.append(f"self_rewarding.length_control: {sr.length_control} lets the chosen and the rejected "
                            "answer come from one band; use a value from 0 to below 0.5")
        if sr.meta_judge and sr.num_judgements < 2:
            problems.append("self_rewarding.meta_judge: compares judgements of one answer, so it needs "
                            f"self_rewarding.num_judgements >= 2 (is {sr.num_judgements})")
        return problems

    def engine_call(self, cfg):
        # N answers a prompt, then N x J judgements (two requests each when the score is constrained), then the
        # meta-judge's contests: the calls stay near 2*batch_size requests, as a contrastive method's.
        sr = cfg.self_rewarding
        requests = sr.num_samples * (1 + sr.num_judgements * (2 if sr.constrained_score else 1)) + meta_requests(sr)
        return max(1, cfg.generation.batch_size * 2 // requests), sr.num_samples

    def judge_work(self, cfg):
        sr = cfg.self_rewarding
        judged = sr.num_samples * sr.num_judgements
        tokens = judged * (sr.judge_max_tokens + int(sr.constrained_score)) + meta_requests(sr)  # one letter each
        return judged + meta_requests(sr), math.ceil(tokens / (judged + meta_requests(sr)))

    def generate(self, r: Round) -> StageResult:
        from dlma_ray.workers.labelling import SelfRewardingEngine

        return generate.labelled(r, SelfRewardingEngine, self.engine_call(r.cfg)[0],
                                 self_rewarding=vars(r.cfg.self_rewarding))


def meta_requests(sr) -> int:
    """The meta-judge's requests a prompt at most: every two judgements of one answer, in both orders."""
    return sr.num_judgements * (sr.num_judgements - 1) if sr.meta_judge else 0
