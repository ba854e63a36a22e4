"""Run DLMA rounds: generate -> score -> train, R times, resuming from the run directory.

    python jobs/iterate.py                                  # the embedded demo, into runs/demo
    python jobs/iterate.py --config jobs/configs/demo.yaml train.beta=0.2
    ray job submit --working-dir . -- python jobs/iterate.py --config ...

The `ray job submit` entry point of `dlma-ray run` (dlma_ray/cli.py, dlma_ray/commands.py: run_job).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dlma_ray.cli import main as cli_main  # noqa: E402


def main(argv=None) -> int:
    return cli_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    sys.exit(main())
