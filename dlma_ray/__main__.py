"""`python -m dlma_ray` is the `dlma-ray` command (dlma_ray.cli)."""

import sys

from dlma_ray.cli import main

if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    sys.exit(main())
