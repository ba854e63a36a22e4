"""The config reference, docs/CONFIG.md: `python -m dlma_ray.configdoc > docs/CONFIG.md`.

It lives above the method registry (dlma_ray.methods), so the reference lists the registered methods."""

from __future__ import annotations

import sys

from dlma_ray import methods
from dlma_ray.config import reference_markdown


def config_reference() -> str:
    return reference_markdown({"train.method": methods.names()})


if __name__ == "__main__":
    sys.stdout.write(config_reference())
