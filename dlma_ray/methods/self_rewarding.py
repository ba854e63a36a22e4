"""Self-Rewarding Language Models (Yuan et al. 2024, arXiv 2401.10020): N answers per prompt from pi_k, each scored by
pi_k itself with the additive 5-point LLM-as-a-Judge rubric (dlma_ray.evaluation.judges.five_point), judged
several times and averaged; the best answer against the worst is the pair, DPO with the previous iterate as the
reference, round after round."""

from __future__ import annotations

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
        if sr.min_valid_judgements > sr.num_judgements:
            return [f"self_rewarding.min_valid_judgements: {sr.min_valid_judgements} can never be met with "
                    f"self_rewarding.num_judgements={sr.num_judgements}; lower it or judge more often"]
        return []

    def engine_call(self, cfg):
        # N answers a prompt, then N x J judgements (two requests each when the score is constrained): the calls
        # stay near 2*batch_size requests, as a contrastive method's.
        sr = cfg.self_rewarding
        requests = sr.num_samples * (1 + sr.num_judgements * (2 if sr.constrained_score else 1))
        return max(1, cfg.generation.batch_size * 2 // requests), sr.num_samples

    def judge_work(self, cfg):
        sr = cfg.self_rewarding
        return sr.num_samples * sr.num_judgements, sr.judge_max_tokens + int(sr.constrained_score)

    def generate(self, r: Round) -> StageResult:
        from dlma_ray.workers.labelling import SelfRewardingEngine

        return generate.labelled(r, SelfRewardingEngine, self.engine_call(r.cfg)[0],
                                 self_rewarding=vars(r.cfg.self_rewarding))
