"""Self-Contrast (arXiv 2404.00604): the target y* against k of the policy's own samples least similar to it
(the filter and the grouping: dlma_ray.data.negatives)."""

from __future__ import annotations

import logging

from dlma_ray.config.interfaces import StageResult
from dlma_ray.methods.base import Method, float_column, register
from dlma_ray.data.negatives import expand_groups, filter_prompt_group, group_pairs, shuffle_partitions
from dlma_ray.stages import generate, score
from dlma_ray.stages.round import Round
from dlma_ray.stages.pools import ActorPool, map_actors

log = logging.getLogger("dlma_ray")


@register
class SelfContrast(Method):
    name = "self_contrast"
    order = 30
    unit = "prompts"  # a training row is one prompt with its k negatives
    summary = "N samples per prompt, k least similar to the target y* as negatives, grouped DPO"

    def check(self, cfg):
        sc = cfg.self_contrast
        most = min(int(sc.keep_fraction * sc.num_samples), sc.num_samples - 1)
        if sc.num_negatives > most:
            return [f"self_contrast.num_negatives: {sc.num_negatives} can never be met: at most "
                    f"min(int(keep_fraction * num_samples), num_samples - 1) = {most} candidates per prompt; "
                    "raise self_contrast.num_samples or lower num_negatives"]
        return []

    def engine_call(self, cfg):
        n = cfg.self_contrast.num_samples
        return max(1, cfg.generation.batch_size // n), n  # B prompts x N samples: batch_size requests a call

    def generate(self, r: Round) -> StageResult:
        """N seeded samples per prompt with a target, under the plain context -> round_k/generations/."""
        return generate.samples(r, *self.engine_call(r.cfg))

    def score(self, r: Round) -> StageResult:
        """Similarity to y*, the per-prompt filter, then reference log-probs -> round_k/pairs/ (k rows a prompt)."""
        import ray.data

        from dlma_ray.workers.embedding import SimilarityActor

        sc, res = r.cfg.self_contrast, r.cfg.resources
        generations = ray.data.read_parquet(r.paths.generations)
        n_prompts = generations.count() // sc.num_samples  # the generate stage wrote N rows per prompt
        embedders = ActorPool("embedders", SimilarityActor,
                              dict(model=sc.embedding_model, batch_size=sc.embedding_batch_size,
                                   torch_threads=res.threads_for(sc.cpus_per_embedder)),
                              sc.num_embedders, sc.cpus_per_embedder, sc.gpus_per_embedder,
                              max(sc.embedding_batch_size, 64), res.max_actor_restarts)
        # Materialised before scoring: the embedding and the scorer pools then never hold CPUs at the same
        # time (on a small machine two pools plus Ray Data's own tasks would not fit).
        negatives = map_actors(generations, embedders).groupby(
            "prompt_id", num_partitions=shuffle_partitions(n_prompts * sc.num_samples)).map_groups(
            filter_prompt_group, batch_format="numpy",
            fn_kwargs=dict(keep_fraction=sc.keep_fraction, k=sc.num_negatives, seed=r.cfg.generation.seed),
        ).materialize()
        kept = negatives.count() // sc.num_negatives  # exactly k rows per kept prompt
        summary = {"prompts": n_prompts, "kept_prompts": kept, "dropped_prompts": n_prompts - kept,
                   "num_negatives": sc.num_negatives}
        log.info("round %d: self_contrast kept %d of %d prompts (%d had fewer than k=%d candidates after the "
                 "filter)", r.k, kept, n_prompts, n_prompts - kept, sc.num_negatives)
        if not kept:
            raise ValueError(f"round {r.k}: no prompt kept {sc.num_negatives} negatives; sample more "
                             "(self_contrast.num_samples) or lower self_contrast.num_negatives")
        scored = score.pairs(r, "reference", negatives)
        return StageResult(scored.output, scored.rows, {**summary, "pairs": scored.summary})

    def training_rows(self, ds):
        """One row per prompt, its k negatives as lists (negatives.group_pairs)."""
        return ds.groupby("prompt_id", num_partitions=shuffle_partitions(ds.count())).map_groups(
            group_pairs, batch_format="pyarrow")

    def loss(self, model, tokenizer, rows, train, device):
        from dlma_ray.core.losses import grouped_dpo_loss
        from dlma_ray.model.logprobs import encode_response, pad_id, response_logprobs, side_ids

        """y* is encoded once per prompt, then each of its negatives: B + M sequences in one forward."""
        import torch

        rejected, ref_rejected, group = expand_groups(tokenizer, rows)
        contexts = [str(c) for c in rows["plain_context"]]
        enc = [encode_response(tokenizer, c, r, train["max_length"])
               for c, r in zip(contexts, side_ids(tokenizer, rows, "chosen"))]
        enc += [encode_response(tokenizer, contexts[g], r, train["max_length"]) for g, r in zip(group, rejected)]
        logp = response_logprobs(model, enc, pad_id(tokenizer), device, train.get("packing", True))
        n = len(contexts)
        return grouped_dpo_loss(logp[:n], logp[n:], float_column(rows["ref_logp_chosen"], device),
                                float_column(ref_rejected, device), torch.as_tensor(group, device=device),
                                beta=train["beta"])
