"""RLAIF, the DLMA paper's named baseline: the policy labels each pair itself with the A/B judge
(dlma_ray.evaluation.judges.ab: RLCD's release's prompt, the letters' next-token probabilities, both orders
averaged), and DPO trains on the preferred answer. The paper's RLAIF (RLCD's release) trained a reward model and
ran PPO: DPO on the AI labels departs from that (docs/methods/rlaif.md)."""

from __future__ import annotations

from dlma_ray.config.interfaces import StageResult
from dlma_ray.methods.base import Method, register
from dlma_ray.stages import generate
from dlma_ray.stages.round import Round


@register
class Rlaif(Method):
    name = "rlaif"
    order = 50
    judge = "ab"
    summary = "two answers a prompt, labelled by the policy's own A/B judgement (both orders), DPO on the preferred"

    def engine_call(self, cfg):
        # A prompt's two answers, then one single-token judge request per order: the calls stay near 2*batch_size
        # requests, as a contrastive method's.
        requests = 2 + (2 if cfg.rlaif.both_orders else 1)
        return max(1, cfg.generation.batch_size * 2 // requests), 2

    def judge_work(self, cfg):
        return (2 if cfg.rlaif.both_orders else 1), 1

    def generate(self, r: Round) -> StageResult:
        from dlma_ray.workers.labelling import RlaifEngine

        return generate.labelled(r, RlaifEngine, self.engine_call(r.cfg)[0], rlaif=vars(r.cfg.rlaif),
                                 run_seed=r.cfg.run.seed)
