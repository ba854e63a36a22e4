"""SPIN, Self-Play fIne-tuNing (Chen et al. 2024, arXiv 2401.01335): the SFT target y* against one sample of the
current policy, the previous iterate as the opponent (the reference), SPIN's logistic loss on summed log-probs
(dlma_ray.core.losses.spin_loss). Each round trains on its own pairs and, as the released configs do, on the earlier
rounds' (`spin.history_rounds`), all re-scored by this round's opponent."""

from __future__ import annotations

from dlma_ray.config.interfaces import StageResult
from dlma_ray.methods.base import Method, float_column, pair_logprobs, register
from dlma_ray.stages import generate, score
from dlma_ray.stages.round import Round


def history(k: int, history_rounds: int) -> list[int]:
    """The rounds whose generated pairs round k trains on: k and up to ``history_rounds`` before it (-1: all)."""
    first = 0 if history_rounds < 0 else max(0, k - history_rounds)
    return list(range(first, k + 1))


@register
class Spin(Method):
    name = "spin"
    order = 70
    iterates = True
    summary = "the SFT target against one sample of pi_k, the previous iterate as opponent, earlier rounds' pairs kept"

    def check(self, cfg):
        if cfg.rounds.reference != "round_start":
            return ["rounds.reference: train.method=spin needs `round_start`: SPIN's opponent is the previous "
                    "iterate pi_k, not pi_0"]
        return []

    def train_options(self, cfg):
        return {"spin_loss": cfg.spin.loss}

    def engine_call(self, cfg):
        return cfg.generation.batch_size, 1

    def generate(self, r: Round) -> StageResult:
        """One sample of pi_k per prompt with a target: chosen = y*, rejected = the sample."""
        return generate.samples(r, *self.engine_call(r.cfg))

    def score(self, r: Round) -> StageResult:
        """This round's and the earlier rounds' generations, scored by this round's reference (the opponent)."""
        import ray.data

        rounds = history(r.k, r.cfg.spin.history_rounds)
        ds = ray.data.read_parquet([r.run.round(j).generations for j in rounds])
        scored = score.pairs(r, "reference", ds)
        scored.summary["rounds"] = rounds
        return scored

    def loss(self, model, tokenizer, rows, train, device):
        from dlma_ray.core.losses import spin_loss

        target, sample = pair_logprobs(model, tokenizer, rows, train["max_length"], device, train.get("packing", True))
        return spin_loss(target, sample, float_column(rows["ref_logp_chosen"], device),
                         float_column(rows["ref_logp_rejected"], device), beta=train["beta"],
                         loss_type=train["spin_loss"])
