"""A round's pairs as a Hugging Face `datasets` dataset in TRL's conversational preference format.

    python -m dlma_ray.views.export RUN_DIR --round K --out DIR [--split train|heldout|all] [--jsonl FILE]
    dlma-ray export RUN_DIR --round K --out DIR          (the same, from the command line tool)

Each row of `<run>/round_k/pairs/` (dlma_ray.core.schema.PAIR_SCHEMA) becomes

    prompt    [{"role": ..., "content": ...}, ...]   the prompt's messages (`messages_json`), last one from the user
    chosen    [{"role": "assistant", "content": y+}]
    rejected  [{"role": "assistant", "content": y-}]

which is TRL's "conversational, explicit prompt" preference type: `trl.DPOTrainer(train_dataset=
datasets.load_from_disk(DIR))` takes it as is and applies the model's own chat template. The prompt is
the plain one the run trained on: the contrastive system prompts (pos/neg_context) are not in it.

Extra columns, kept for reading and filtering: `prompt_id`, `round`, `kind`, `pair_of` (`answers`, or
`judgements` for Self-Rewarding's meta-judge pairs, whose prompt is the judge's question), `self_reward` (R, NaN for
methods that do not compute it), `ref_logp_chosen` / `ref_logp_rejected` (the run's reference log-probs),
`chosen_finished` / `rejected_finished`. TRL's DPOTrainer drops columns it does not know (its
`remove_unused_columns`); the reference log-probs are deliberately NOT named TRL's `ref_chosen_logps`:
they are summed over the tokens the engine sampled, with the end-of-turn token only for finished
responses, while TRL scores the re-tokenised text plus the template's closing tokens, so TRL computing
its own reference is the exact choice. A response cut at `generation.max_new_tokens` has no end of turn
in the run (it trains as a prefix) but TRL's template closes every turn: `finished_only` drops such pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from dlma_ray.core import storage
from dlma_ray.run.layout import RunLayout

EXTRA_COLUMNS = ("prompt_id", "round", "kind", "pair_of", "self_reward", "ref_logp_chosen", "ref_logp_rejected",
                 "chosen_finished", "rejected_finished")
SPLITS = ("train", "heldout", "all")


def pairs_path(run_dir: str, round_k: int) -> str:
    return RunLayout(storage.absolute(run_dir)).round(round_k).pairs


def _number(x) -> float:
    return float("nan") if x is None else float(x)


def trl_row(row: dict) -> dict:
    """One pairs-table row as a TRL conversational preference row (plus the extra columns)."""
    messages = json.loads(row["messages_json"])
    if not messages or messages[-1].get("role") != "user":
        raise ValueError(f"pair {row.get('prompt_id')}: messages_json does not end with a user message")
    out = {"prompt": [{"role": m["role"], "content": m["content"]} for m in messages],
           "chosen": [{"role": "assistant", "content": row["chosen"]}],
           "rejected": [{"role": "assistant", "content": row["rejected"]}]}
    for c in EXTRA_COLUMNS:
        out[c] = row.get(c)
    for c in ("self_reward", "ref_logp_chosen", "ref_logp_rejected"):
        out[c] = _number(out[c])
    out["kind"] = out["kind"] or ""
    out["pair_of"] = out["pair_of"] or "answers"  # a table from before judgement pairs
    return out


def trl_rows(run_dir: str, round_k: int, split: str = "train", finished_only: bool = False) -> list[dict]:
    """Round ``round_k``'s pairs of ``split`` (train / heldout / all) as TRL rows, in table order."""
    import pyarrow.parquet as pq

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    path = pairs_path(run_dir, round_k)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: round {round_k} has no pairs table (has its score stage run?)")
    rows = pq.read_table(path).to_pylist()
    out = []
    for r in rows:
        if split != "all" and r["split"] != split:
            continue
        if finished_only and not (r["chosen_finished"] and r["rejected_finished"]):
            continue
        out.append(trl_row(r))
    return out


def to_dataset(rows: list[dict]):
    """TRL rows as a `datasets.Dataset` with explicit features (an empty export keeps its columns)."""
    import datasets

    message = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
    features = datasets.Features({
        "prompt": message, "chosen": message, "rejected": message,
        "prompt_id": datasets.Value("string"), "round": datasets.Value("int32"), "kind": datasets.Value("string"),
        "pair_of": datasets.Value("string"),
        "self_reward": datasets.Value("float64"), "ref_logp_chosen": datasets.Value("float64"),
        "ref_logp_rejected": datasets.Value("float64"), "chosen_finished": datasets.Value("bool"),
        "rejected_finished": datasets.Value("bool")})
    return datasets.Dataset.from_list(rows, features=features)


def _json_safe(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def export_round(run_dir: str, round_k: int, out: str, split: str = "train", jsonl: str | None = None,
                 finished_only: bool = False) -> dict:
    """Write round ``round_k``'s pairs with ``save_to_disk`` to ``out`` (and as JSON lines to ``jsonl``).

    ``split="all"`` writes a DatasetDict with `train` and `test` (the held-out pairs); otherwise one Dataset.
    Returns {"out", "jsonl", "rows": {split: count}}.
    """
    import datasets

    if split == "all":
        parts = {"train": trl_rows(run_dir, round_k, "train", finished_only),
                 "test": trl_rows(run_dir, round_k, "heldout", finished_only)}
        ds = datasets.DatasetDict({name: to_dataset(rows) for name, rows in parts.items()})
    else:
        parts = {split: trl_rows(run_dir, round_k, split, finished_only)}
        ds = to_dataset(parts[split])
    ds.save_to_disk(out)
    if jsonl:
        # NaN is not JSON: missing numbers are written as null.
        text = "".join(json.dumps({"split": name, **_json_safe(r)} if split == "all" else _json_safe(r),
                                  ensure_ascii=False) + "\n" for name, rows in parts.items() for r in rows)
        storage.write_text_atomic(jsonl, text)
    return {"out": out, "jsonl": jsonl, "rows": {name: len(rows) for name, rows in parts.items()}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--round", type=int, required=True, help="round k whose pairs to export")
    parser.add_argument("--out", required=True, help="folder for `save_to_disk` (load with datasets.load_from_disk)")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="pairs to export: train (default), heldout, or all (a DatasetDict: train and test)")
    parser.add_argument("--jsonl", help="also write the rows as JSON lines to this file")
    parser.add_argument("--finished-only", action="store_true",
                        help="drop pairs with a response cut at generation.max_new_tokens")


def run_from_args(run_dir: str, args: argparse.Namespace) -> int:
    result = export_round(run_dir, args.round, args.out, args.split, args.jsonl, args.finished_only)
    counts = ", ".join(f"{n} {name}" for name, n in result["rows"].items())
    print(f"wrote {result['out']} ({counts} pairs)" + (f" and {result['jsonl']}" if result["jsonl"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run directory (run.dir)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args.run_dir, args)


if __name__ == "__main__":
    sys.exit(main())
