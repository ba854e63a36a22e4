"""Self-Contrast's negatives (arXiv 2404.00604): the filter choosing k of the policy's own samples least
similar to the target y*, and the grouping of a prompt's k pairs for training. Plain functions; the
method (dlma_ray.methods.self_contrast) wires them into the stages:

    generate  vLLM engine actors (generate.SampleEngine): N samples per prompt with an SFT target y*, under
              the plain context, seeded per (prompt, sample index)  -> round_k/generations/, N rows per prompt
              (chosen = y*, rejected = one sample)
    score     embedding actors (embedding.SimilarityActor): cosine of each sample to y*; then, per prompt
              (Ray Data groupby), the released `lastdedup` filter below; then scorer actors: reference
              log-probs only                                -> round_k/pairs/, k rows per kept prompt
    train     rows grouped back by prompt before the shard split (one row per prompt, its k negatives as
              list columns), so a prompt's k pairs share one micro-batch, one worker and one optimizer
              step; loss = mean over prompts of -(1/k) sum_i log sigmoid(beta * h(y*, y-_i))
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

GROUP_LIST_COLUMNS = ("rejected", "rejected_token_ids", "rejected_finished", "ref_logp_rejected")  # per negative
GROUP_SCALAR_COLUMNS = ("prompt_id", "plain_context", "end_of_turn", "chosen", "chosen_token_ids", "chosen_finished",
                        "ref_logp_chosen")


def group_pairs(table):
    """Pair rows of one prompt (pyarrow) -> one row: its y* and reference once, its negatives as lists.

    Columns a table written by an older dlma-ray lacks (the token ids) are left out: training then
    tokenises the texts."""
    import pyarrow as pa

    scalars = [c for c in GROUP_SCALAR_COLUMNS if c in table.column_names]
    lists = [c for c in GROUP_LIST_COLUMNS if c in table.column_names]
    schema = pa.schema([(c, table.schema.field(c).type) for c in scalars]
                       + [(c, pa.list_(table.schema.field(c).type)) for c in lists])
    if table.num_rows == 0:
        return pa.table({c: [] for c in scalars + lists}, schema=schema)
    rows = sorted(table.select(scalars + lists + ["negative_index"]).to_pylist(), key=lambda r: r["negative_index"])
    data = {c: [rows[0][c]] for c in scalars}
    data.update({c: [[r[c] for r in rows]] for c in lists})
    return pa.table(data, schema=schema)


def expand_groups(tokenizer, rows: dict) -> tuple[list[list[int]], list[float], list[int]]:
    """A micro-batch of grouped rows -> (token ids of every negative, their reference log-probs, prompt index).

    Row b of the batch owns every returned pair whose prompt index is b; the list columns may arrive as
    object arrays of arrays or as a 2-D array (equal k), so both are read the same way. The ids are
    `logprobs.response_ids`: end-of-turn tokens only after a finished negative.
    """
    from dlma_ray.model.logprobs import response_ids

    rejected, ref, group = [], [], []
    ids_col, fin_col = rows.get("rejected_token_ids"), rows.get("rejected_finished")
    for b, (texts, refs) in enumerate(zip(rows["rejected"], rows["ref_logp_rejected"])):
        texts, eot = list(texts), str(rows["end_of_turn"][b])
        ids = [None] * len(texts) if ids_col is None else list(ids_col[b])
        fin = [True] * len(texts) if fin_col is None else [bool(f) for f in fin_col[b]]
        rejected += [response_ids(tokenizer, str(t), i, f, eot) for t, i, f in zip(texts, ids, fin)]
        ref += [float(x) for x in refs]
        group += [b] * len(texts)
    return rejected, ref, group


def shuffle_partitions(rows: int) -> int:
    """Hash partitions of a groupby: Ray's default (200) costs seconds of tasks on a small table; one per
    ~2000 rows, at most 200, keeps small rounds quick and large ones parallel."""
    return max(1, min(200, rows // 2000))
