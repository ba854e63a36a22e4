"""Run DLMA rounds: generate -> score -> train, R times, resuming from the run directory.

    python jobs/iterate.py                                  # the embedded demo, into runs/demo
    python jobs/iterate.py --config jobs/configs/demo.yaml train.beta=0.2
    ray job submit --working-dir . -- python jobs/iterate.py --config ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dlma_ray.cli import parse, setup_environment  # noqa: E402


def main(argv=None) -> int:
    setup_environment()
    cfg = parse(__doc__.splitlines()[0], argv)
    from dlma_ray.pipeline import run
    from dlma_ray.runlock import RunLocked
    from dlma_ray.state import ConfigMismatchError, StateFileError

    try:
        run(cfg)
    except (ConfigMismatchError, StateFileError, RunLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    sys.exit(main())
