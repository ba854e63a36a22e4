"""`dlma-ray plan` run in-process, and the job configs shipped in jobs/configs: shared by tests/unit/test_plan.py
and tests/e2e/test_plan_on_ray.py."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from dlma_ray.cli import main

JOB_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("*.yaml"))


def run_plan(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["plan", *argv])
    return rc, out.getvalue() + err.getvalue()
