"""Evaluate a policy on Ray: distillation gain vs pi_0, refusals, KL, perplexity, implicit reward, with intervals.

    python jobs/evaluate.py --config FILE                      # the run's latest policy (round_<k>/policy)
    python jobs/evaluate.py --config FILE --round 0            # round 0's new policy, into round_0/eval.json
    python jobs/evaluate.py --config FILE --policy DIR [--out DIR] [--round K] [section.key=value ...]

--policy evaluates any HF folder (or builtin:/hub name) alone; its eval.json and answers.jsonl go to --out
(default <run.dir>/evals/<policy folder name>); with --round K it is also scored on round K's held-out pairs.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dlma_ray.cli import parse, setup_environment  # noqa: E402


def latest_round(run_dir: str) -> int:
    """The last round with a trained policy."""
    from dlma_ray.layout import RunLayout

    k = RunLayout(run_dir).latest_policy()
    if k is None:
        raise SystemExit(f"error: {run_dir} has no trained policy (round_0/policy); give --policy PATH")
    return k


def main(argv=None) -> int:
    setup_environment()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--policy", help="policy folder to evaluate (default: the run's latest policy)")
    pre.add_argument("--round", type=int, help="round whose policy (or held-out pairs, with --policy) to use")
    pre.add_argument("--out", help="output folder with --policy (default <run.dir>/evals/<policy name>)")
    ours, rest = pre.parse_known_args(argv)
    cfg = parse(__doc__.splitlines()[0] + " Also: --policy PATH, --round K, --out DIR (see jobs/evaluate.py).",
                rest)

    from dlma_ray import storage
    from dlma_ray.evaluate import evaluate_policy, read_heldout, run_round
    from dlma_ray.layout import RunLayout
    from dlma_ray.report import write_report
    from dlma_ray.stages.common import Round

    run = RunLayout(storage.absolute(cfg.run.dir))
    if ours.policy is None:
        k = latest_round(run.root) if ours.round is None else ours.round
        print(f"wrote {run_round(Round(cfg, run, k)).output}; report: {write_report(run.root)}")
        return 0
    out = ours.out or run.evals(Path(ours.policy.rstrip("/")).name.replace(":", "_"))
    heldout, reference = [], None
    if ours.round is not None:
        r = Round(cfg, run, ours.round)
        heldout, reference = read_heldout(r.paths.pairs, cfg.eval.heldout_pairs), r.reference
    evaluate_policy(cfg, ours.policy, out, reference=reference, heldout=heldout, round_index=ours.round,
                    baseline_path=run.baseline_answers)
    print(f"wrote {storage.join(out, 'eval.json')}")
    return 0


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    sys.exit(main())
