"""Self-Contrast (arXiv 2404.00604): y* against k of the policy's own least-similar samples.

Round k of `train.method: self_contrast`, on the pipeline's usual stages:

    generate  vLLM engine actors (generate.SampleEngine): N samples per prompt with an SFT target y*, under
              the plain context, seeded per (prompt, sample index)  -> round_k/generations/, N rows per prompt
              (chosen = y*, rejected = one sample)
    score     embedding actors (embedding.SimilarityActor): cosine of each sample to y*; then, per prompt
              (Ray Data groupby), the released `lastdedup` filter below; then scorer actors: reference
              log-probs only                                -> round_k/pairs/, k rows per kept prompt
    train     rows grouped back by prompt before the shard split (one row per prompt, its k negatives as
              list columns), so a prompt's k pairs share one micro-batch, one worker and one optimizer
              step; loss = mean over prompts of -(1/k) sum_i log sigmoid(beta * h(y*, y-_i))

The filter and the grouping are plain functions (tested without Ray); the `run_*` functions wire them
into Ray Data.
"""

from __future__ import annotations

import hashlib
import logging
import random

import numpy as np

log = logging.getLogger("dlma_ray")


# ---------------------------------------------------------------- the filter (plain functions)

def negative_seed(seed: int, round_index: int, prompt_id: str) -> int:
    """The seed of one prompt's k-sampling: fixed by (seed, round, prompt), whatever the batching."""
    digest = hashlib.sha256(f"{seed}:{round_index}:{prompt_id}:negatives".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def select_negatives(target: str, samples: list[str], similarities, keep_fraction: float, k: int,
                     seed: int) -> list[int]:
    """Indices (into ``samples``) of the k negatives of one prompt; [] when it has fewer than k candidates.

    The released `lastdedup-p` filter, N = len(samples):
      1. drop exact duplicates of an earlier sample and samples equal to y* (after stripping outer
         whitespace); blank samples are not responses and go too. `unique` = the distinct samples left;
      2. keep the min(int(p * N), unique - 1) LEAST similar to y* (the -1 always drops the closest
         one, as released); ties in similarity are broken by the text so the order never depends on
         sampling order;
      3. sample k of them with ``seed`` (returned least similar first).
    """
    seen, unique = {target.strip()}, []
    for i, text in enumerate(samples):
        key = text.strip()
        if key and key not in seen:
            seen.add(key)
            unique.append(i)
    keep = min(int(keep_fraction * len(samples)), len(unique) - 1)
    kept = sorted(unique, key=lambda i: (float(similarities[i]), samples[i]))[:max(keep, 0)]
    if len(kept) < k:
        return []
    return [kept[j] for j in sorted(random.Random(seed).sample(range(len(kept)), k))]


def filter_prompt_group(group: dict[str, np.ndarray], keep_fraction: float, k: int, seed: int) -> dict[str, np.ndarray]:
    """One prompt's N sample rows in, its k negative rows out (with `negative_index`), or no rows."""
    n = len(group["prompt_id"])
    if n == 0:
        return {name: values[:0] for name, values in group.items()} | {"negative_index": np.zeros(0, np.int32)}
    pid, round_index = str(group["prompt_id"][0]), int(group["round"][0])
    picks = select_negatives(str(group["chosen"][0]), [str(x) for x in group["rejected"]], group["similarity"],
                             keep_fraction, k, negative_seed(seed, round_index, pid))
    out = {name: np.asarray(values)[picks] for name, values in group.items()}
    out["negative_index"] = np.arange(len(picks), dtype=np.int32)
    return out


# ---------------------------------------------------------------- grouping for training (plain functions)

GROUP_LIST_COLUMNS = ("rejected", "ref_logp_rejected")  # per-negative values, carried as lists per prompt
GROUP_SCALAR_COLUMNS = ("prompt_id", "plain_context", "end_of_turn", "chosen", "ref_logp_chosen")


def group_pairs(table):
    """Pair rows of one prompt (pyarrow) -> one row: its y* and reference once, its negatives as lists."""
    import pyarrow as pa

    if table.num_rows == 0:
        return table.select(list(GROUP_SCALAR_COLUMNS + GROUP_LIST_COLUMNS))
    rows = sorted(table.select(list(GROUP_SCALAR_COLUMNS + GROUP_LIST_COLUMNS + ("negative_index",))).to_pylist(),
                  key=lambda r: r["negative_index"])
    first = rows[0]
    data = {c: [first[c]] for c in GROUP_SCALAR_COLUMNS}
    data.update({c: [[r[c] for r in rows]] for c in GROUP_LIST_COLUMNS})
    return pa.table(data, schema=pa.schema([(c, table.schema.field(c).type) for c in GROUP_SCALAR_COLUMNS]
                                           + [(c, pa.list_(table.schema.field(c).type)) for c in GROUP_LIST_COLUMNS]))


def expand_groups(rows: dict) -> tuple[list[str], list[str], list[float], list[int]]:
    """A micro-batch of grouped rows -> (rejected texts, their end-of-turn, reference log-probs, prompt index).

    Row b of the batch owns every returned pair whose prompt index is b; the list columns may arrive as
    object arrays of arrays or as a 2-D array (equal k), so both are read the same way.
    """
    rejected, eot, ref, group = [], [], [], []
    for b, (texts, refs) in enumerate(zip(rows["rejected"], rows["ref_logp_rejected"])):
        texts, refs = list(texts), [float(x) for x in refs]
        rejected += [str(t) for t in texts]
        eot += [str(rows["end_of_turn"][b])] * len(texts)
        ref += refs
        group += [b] * len(texts)
    return rejected, eot, ref, group


# ---------------------------------------------------------------- stage runners (Ray Data)

def shuffle_partitions(rows: int) -> int:
    """Hash partitions of a groupby: Ray's default (200) costs seconds of tasks on a small table; one per
    ~2000 rows, at most 200, keeps small rounds quick and large ones parallel."""
    return max(1, min(200, rows // 2000))


def run_generate(cfg, run_dir: str, k: int) -> tuple[str, int]:
    """N seeded samples per prompt with a target, under the plain context -> round_k/generations/."""
    import ray.data

    from dlma_ray import pipeline as p
    from dlma_ray import storage
    from dlma_ray.generate import SampleEngine
    from dlma_ray.prompts import pair_from_config
    from dlma_ray.schema import GENERATION_SCHEMA

    out = storage.join(p.round_dir(run_dir, k), "generations")
    r, sc = cfg.resources, cfg.self_contrast
    ds = ray.data.from_items(p.prompt_rows(cfg, k, require_target=True)).map_batches(
        SampleEngine,
        fn_constructor_kwargs=dict(
            model_path=p._model_for_actor(p.policy_for_round(cfg, run_dir, k)),
            pair=pair_from_config(cfg.pair.name, cfg.pair.positive, cfg.pair.negative), style=cfg.pair.style,
            gen=vars(cfg.generation), round_index=k, tensor_parallel_size=r.tensor_parallel_size,
            trust_remote_code=cfg.model.trust_remote_code, torch_threads=r.threads_for(r.cpus_per_engine),
            num_samples=sc.num_samples),
        # A batch of B prompts is B*N requests in one engine call.
        batch_size=max(1, cfg.generation.batch_size // sc.num_samples), concurrency=r.num_engines,
        num_cpus=r.cpus_per_engine, num_gpus=r.gpus_per_engine)
    return out, p._write_stage(ds, GENERATION_SCHEMA, out)


def run_score(cfg, run_dir: str, k: int) -> tuple[str, int, dict]:
    """Similarity to y*, the per-prompt filter, then reference log-probs -> round_k/pairs/ (k rows a prompt)."""
    import ray.data

    from dlma_ray import pipeline as p
    from dlma_ray import storage
    from dlma_ray.embedding import SimilarityActor
    from dlma_ray.schema import PAIR_SCHEMA
    from dlma_ray.score import PairScorer

    rd = p.round_dir(run_dir, k)
    src, out = storage.join(rd, "generations"), storage.join(rd, "pairs")
    r, sc = cfg.resources, cfg.self_contrast
    generations = ray.data.read_parquet(src)
    n_prompts = generations.count() // sc.num_samples  # the generate stage wrote N rows per prompt
    # Materialised before scoring: the embedding and the scorer pools then never hold CPUs at the same time
    # (on a small machine two pools plus Ray Data's own tasks would not fit).
    negatives = generations.map_batches(
        SimilarityActor,
        fn_constructor_kwargs=dict(model=sc.embedding_model, batch_size=sc.embedding_batch_size,
                                   torch_threads=r.threads_for(sc.cpus_per_embedder)),
        batch_size=max(sc.embedding_batch_size, 64), concurrency=sc.num_embedders,
        num_cpus=sc.cpus_per_embedder, num_gpus=sc.gpus_per_embedder,
    ).groupby("prompt_id", num_partitions=shuffle_partitions(n_prompts * sc.num_samples)).map_groups(
        filter_prompt_group, batch_format="numpy",
        fn_kwargs=dict(keep_fraction=sc.keep_fraction, k=sc.num_negatives, seed=cfg.generation.seed),
    ).materialize()
    kept = negatives.count() // sc.num_negatives  # exactly k rows per kept prompt
    summary = {"prompts": n_prompts, "kept_prompts": kept, "dropped_prompts": n_prompts - kept,
               "num_negatives": sc.num_negatives}
    log.info("round %d: self_contrast kept %d of %d prompts (%d had fewer than k=%d candidates after the filter)",
             k, kept, n_prompts, n_prompts - kept, sc.num_negatives)
    if not kept:
        raise ValueError(f"round {k}: no prompt kept {sc.num_negatives} negatives; sample more "
                         "(self_contrast.num_samples) or lower self_contrast.num_negatives")
    ds = negatives.map_batches(
        PairScorer,
        fn_constructor_kwargs=dict(
            policy_path=p._model_for_actor(p.policy_for_round(cfg, run_dir, k)),
            reference_path=p._model_for_actor(p.reference_for_round(cfg, run_dir, k)),
            dtype=cfg.scoring.dtype, batch_size=cfg.scoring.batch_size, padding_side=cfg.scoring.padding_side,
            max_length=cfg.train.max_length, contrastive=False,
            trust_remote_code=cfg.model.trust_remote_code, torch_threads=r.threads_for(r.cpus_per_scorer)),
        batch_size=max(cfg.scoring.batch_size, 32), concurrency=r.num_scorers,
        num_cpus=r.cpus_per_scorer, num_gpus=r.gpus_per_scorer)
    return out, p._write_stage(ds, PAIR_SCHEMA, out), summary


def training_dataset(ds, rows: int):
    """The train split's pair rows -> one row per prompt (see ``group_pairs``), before shuffle and shard split."""
    return ds.groupby("prompt_id", num_partitions=shuffle_partitions(rows)).map_groups(group_pairs,
                                                                                     batch_format="pyarrow")
