"""Every method head to head at a small size on the embedded model, and every judge against human labels: the two
tables of the documentation's Results page (docs/results.md).

    python bench/compare_methods.py [--out runs/compare-methods] [--prompts 24] [--accuracy-pairs 150]

1. `dlma-ray judge-accuracy`: R, the policy's A/B and 5-point judgements against the human labels of hh-rlhf pairs
   from ../shared (none of them among the training rows below).
2. `dlma-ray compare --methods all --one-round-unless-iterative --judge distillation`: each method from the same
   pi_0 on the same prompts, pair, seeds and batch sizes, one round (two for the methods that iterate by design),
   every method against every other and against pi_0 on the held-out prompts (win / tie / lose with 95% Wilson
   intervals). The prompts are short hh-rlhf harmless dialogues from ../shared (their final assistant turn is the
   SFT target SPIN and Self-Contrast need; DPO trains on the same rows' human pairs).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared/data/hh-rlhf-harmless/pairs.jsonl.gz"


def short_pairs(limit: int, skip: int = 0, max_chars: int = 500) -> list[dict]:
    rows = []
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if len(row["chosen"]) < max_chars and len(row["rejected"]) < max_chars:
                rows.append({"chosen": row["chosen"], "rejected": row["rejected"]})
    return rows[skip:skip + limit]


def run(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "dlma_ray", *args], cwd=REPO, check=True,
                   env=dict(os.environ, RAY_ADDRESS=os.environ.get("RAY_ADDRESS", "local")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare-methods")
    ap.add_argument("--prompts", type=int, default=24, help="training prompts per method")
    ap.add_argument("--accuracy-pairs", type=int, default=150, help="human pairs each judge is asked about")
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train = out / "train_pairs.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in short_pairs(args.prompts)))
    held = out / "accuracy_pairs.jsonl"  # never among the training rows
    held.write_text("".join(json.dumps(r) + "\n" for r in short_pairs(args.accuracy_pairs, skip=args.prompts)))
    common = [f"run.dir={out}", f"data.source={train}", "data.prompt_field=chosen", f"data.max_prompts={args.prompts}",
              "data.heldout_fraction=0.1", "generation.max_new_tokens=32", "train.global_batch_size=8",
              "train.micro_batch_size=4", "eval.max_prompts=24", "eval.max_new_tokens=32", "eval.max_pairs=16",
              "eval.heldout_pairs=0", "eval.neutral_text=", "self_contrast.num_samples=4",
              "self_contrast.num_negatives=2", "self_rewarding.num_judgements=2", "self_rewarding.judge_max_tokens=32"]
    if not args.skip_accuracy:
        run(["judge-accuracy", "--judges", "self_reward,ab,five_point", f"run.dir={out}",
             f"eval.preference_pairs={held}", f"eval.max_pairs={args.accuracy_pairs}",
             "self_rewarding.judge_max_tokens=32"])
    if not args.skip_compare:
        run(["compare", "--methods", "all", "--one-round-unless-iterative", "--judge", "distillation", *common])


if __name__ == "__main__":
    main()
