"""Compare methods: run each from the same start, then put their evaluations side by side.

    python jobs/compare.py --config FILE [--methods dlma,rlcd,context_distillation] [overrides]

Every method runs with the same config (model, prompts, rounds, batch sizes, seeds) but `train.method`,
into `<run.dir>/<method>/`, each an ordinary resumable run (rerun the command to resume; finished methods
are skipped). Then `<run.dir>/comparison.md` and `comparison.png` (dlma_ray/views/compare.py, which also runs alone
on existing run dirs), with the untouched pi_0 as the first column, and every pair of methods (and each
against pi_0) judged head to head, win / tie / lose in both answer orders (`--judge`; dlma_ray/stages/judging.py). The default methods are the three that
run on any prompts (dlma, rlcd, context_distillation). dpo needs preference pairs and self_contrast prompts with
targets in data.source: an hh-rlhf file with `data.prompt_field=chosen` serves all five. A method that fails is
reported and the others still run; the exit status is then 1.
The `ray job submit` entry point of `dlma-ray compare` (dlma_ray/cli.py, dlma_ray/commands.py: compare_job).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dlma_ray.cli import main as cli_main  # noqa: E402


def main(argv=None) -> int:
    return cli_main(["compare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    sys.exit(main())
