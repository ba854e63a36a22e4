"""Command-line plumbing shared by the job scripts: `--config FILE` plus dotted overrides."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dlma_ray.config import Config, ConfigError, load_config


def setup_environment() -> None:
    from dlma_ray.nodes import check_working_directory

    check_working_directory()  # before anything imports torch, which dies obscurely without one
    # One thread per process: on small CPU machines, oversubscription costs more than it gives.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def parse(description: str, argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=description, epilog="Overrides: section.key=value, e.g. "
                                     "train.beta=0.2 rounds.count=3. Field reference: python -m dlma_ray.config")
    parser.add_argument("--config", help="YAML config file (default: the embedded demo defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, section.key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    logging.basicConfig(level=cfg.run.log_level, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cfg
