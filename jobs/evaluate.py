"""Evaluate a policy on Ray: distillation gain vs pi_0, refusals, KL, perplexity, implicit reward, with intervals.

    python jobs/evaluate.py --config FILE                      # the run's latest policy (round_<k>/policy)
    python jobs/evaluate.py --config FILE --round 0            # round 0's new policy, into round_0/eval.json
    python jobs/evaluate.py --config FILE --policy DIR [--out DIR] [--round K] [section.key=value ...]

--policy evaluates any HF folder (or builtin:/hub name) alone; its eval.json and answers.jsonl go to --out
(default <run.dir>/evals/<policy folder name>); with --round K it is also scored on round K's held-out pairs.
The `ray job submit` entry point of `dlma-ray eval` (dlma_ray/cli.py, dlma_ray/commands.py: evaluate_job).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dlma_ray.cli import main as cli_main  # noqa: E402
from dlma_ray.commands import latest_round  # noqa: E402, F401  (kept importable from here)


def main(argv=None) -> int:
    return cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    sys.exit(main())
