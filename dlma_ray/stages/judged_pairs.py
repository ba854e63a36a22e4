"""The evaluate stage's score analysis on generated pairs (the paper's Figure 3), around the Ray tasks.

    read_judged_pairs                         the pairs: held-out ones first, by prompt id
    judged_key / read_judged / write_judged   the external judge's and the text judge's verdicts on a round's
                                              generated pairs, kept in round_<k>/judged_pairs.json: a resumed
                                              evaluation uses them instead of asking again (an endpoint need not
                                              answer the same twice)
    judged_measures                           eval.json's measures and details from them
                                              (dlma_ray.evaluation.score_analysis does the math)

The pairs are round k's own (y+, y-) with the R the score stage stored (scored by pi_k), chosen by
read_judged_pairs; the text judge is asked of the same pi_k, so both verdicts are one model's.
"""

from __future__ import annotations

import hashlib
import json
import math

from dlma_ray.config.tree import Config
from dlma_ray.core import storage
from dlma_ray.evaluation.score_analysis import score_analysis

JUDGED_FILE = "judged_pairs.json"  # in the round's folder, beside eval.json


def read_judged_pairs(pairs_dir: str, limit: int) -> list[dict]:
    """Up to ``limit`` of a round's generated pairs with a finite R, for an external judge: the held-out ones
    first (never trained on), then training ones, each by prompt id (the same pairs on every rerun)."""
    import pyarrow.parquet as pq

    if limit <= 0 or not storage.exists(pairs_dir):
        return []
    cols = ["prompt_id", "split", "messages_json", "chosen", "rejected", "self_reward"]
    rows = [r for r in pq.read_table(pairs_dir, columns=cols).to_pylist()
            if r["self_reward"] is not None and math.isfinite(r["self_reward"])]
    rows = sorted(rows, key=lambda r: (r["split"] != "heldout", r["prompt_id"]))[:limit]
    return [{**r, "messages": json.loads(r.pop("messages_json"))} for r in rows]


def judge_name(cfg: Config) -> str | None:
    """The external judge in words (None: no external judge, eval.judge=self_reward)."""
    e = cfg.eval
    return {"reward_model": f"reward model {e.judge_model}",
            "openai": f"OpenAI-compatible endpoint {e.judge_url} ({e.judge_model})"}.get(e.judge)


def judged_key(cfg: Config, pairs: list[dict], r_model: str | None) -> str:
    """What the verdicts depend on: the judges and the pairs (ids, texts, R)."""
    e = cfg.eval
    parts = {"judge": [e.judge, e.judge_model, e.judge_url], "text_judge": bool(e.rlaif_judge) and r_model,
             "pairs": [(p["prompt_id"], p["chosen"], p["rejected"], p["self_reward"]) for p in pairs]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_judged(path: str, key: str) -> dict | None:
    """The kept verdicts when they were made for the same judges and pairs, else None."""
    if not storage.exists(path):
        return None
    try:
        doc = json.loads(storage.read_text(path))
    except ValueError:  # a torn or foreign file: ask again
        return None
    return doc if doc.get("key") == key else None


def write_judged(path: str, key: str, pairs: list[dict], margins: list[float], rlaif: list[float] | None) -> dict:
    doc = {"key": key, "prompt_ids": [p["prompt_id"] for p in pairs], "judge_margins": margins,
           "rlaif_preferences": rlaif}
    storage.write_text_atomic(path, json.dumps(doc))
    return doc


def judged_measures(cfg: Config, pairs: list[dict], verdicts: dict | None, r_model: str | None) -> tuple[dict, dict]:
    """(measures, details) of R and the text judge against the external judge; with no external judge, only
    details.generated_pairs_judged saying so (the report prints it)."""
    name = judge_name(cfg)
    if name is None or verdicts is None:
        why = ("eval.judge is self_reward: there is no external judge, so R's accuracy on generated pairs is not "
               "measured (set eval.judge to reward_model or openai)" if name is None else
               "no generated pairs with a finite R to judge in this evaluation")
        return {}, {"generated_pairs_judged": {"judge": name, "pairs": 0, "note": why}}
    rewards = [p["self_reward"] for p in pairs]
    measures, details = score_analysis(rewards, verdicts["judge_margins"], verdicts.get("rlaif_preferences"))
    splits = [p.get("split", "") for p in pairs]
    details["generated_pairs_judged"].update(
        judge=name, r_model=r_model, text_judge=r_model if verdicts.get("rlaif_preferences") is not None else None,
        heldout=splits.count("heldout"), train=splits.count("train"))
    return measures, details
