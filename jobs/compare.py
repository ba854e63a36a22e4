"""Compare methods: run each from the same start, then put their evaluations side by side.

    python jobs/compare.py --config FILE [--methods dlma,rlcd,context_distillation] [overrides]

Every method runs with the same config (model, prompts, rounds, batch sizes, seeds) but `train.method`,
into `<run.dir>/<method>/`, each an ordinary resumable run (rerun the command to resume; finished methods
are skipped). Then `<run.dir>/comparison.md` and `comparison.png` (dlma_ray/compare.py, which also runs alone
on existing run dirs), with the untouched pi_0 as the first column. The default methods are the three that
run on any prompts (dlma, rlcd, context_distillation). dpo needs preference pairs and self_contrast prompts with targets in data.source: an
hh-rlhf file with `data.prompt_field=chosen` serves all five. A method that fails is reported and the others
still run; the exit status is then 1.
"""

import argparse
import logging
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dlma_ray import methods as registry  # noqa: E402
from dlma_ray.cli import setup_environment  # noqa: E402

DEFAULT_METHODS = ("dlma", "rlcd", "context_distillation")
log = logging.getLogger("dlma_ray.compare")


def share_baseline(base: Path, method: str, done: list[str]) -> None:
    """pi_0's evaluation answers and its scores of the fixed items depend on the model and eval settings only,
    the same for every method: hand an earlier method's to this one (evaluate.py re-checks both by their
    settings and key, and computes them again if they differ)."""
    from dlma_ray.layout import BASELINE_ANSWERS_FILE, BASELINE_SCORES_FILE

    for name in (BASELINE_ANSWERS_FILE, BASELINE_SCORES_FILE):
        target = base / method / name
        for other in done:
            source = base / other / name
            if source.exists() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                break


def main(argv=None) -> int:
    setup_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Overrides: section.key=value; they apply to every method.")
    parser.add_argument("--config", help="YAML config file (default: the embedded demo defaults)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated methods of {', '.join(registry.names())} (default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, section.key=value")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in registry.names()]
    if unknown or not methods:
        parser.exit(2, f"error: --methods: unknown {unknown}; expected some of {', '.join(registry.names())}\n")

    from dlma_ray import storage
    from dlma_ray.compare import write_comparison
    from dlma_ray.config import ConfigError, load_config

    try:  # every method's config is checked before any work starts
        base_cfg = load_config(args.config, args.overrides)
        configs = {m: load_config(args.config, args.overrides + [f"train.method={m}",
                                                                 f"run.dir={storage.join(base_cfg.run.dir, m)}"])
                   for m in methods}
        for cfg in configs.values():
            registry.check(cfg)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    logging.basicConfig(level=base_cfg.run.log_level, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from dlma_ray.pipeline import run

    base = Path(storage.absolute(base_cfg.run.dir))
    failures, done = {}, []
    for m in methods:
        log.info("method %s -> %s", m, configs[m].run.dir)
        if not storage.is_uri(str(base)):
            share_baseline(base, m, done)
        try:
            run(configs[m])
            done.append(m)
        except Exception as exc:  # noqa: BLE001 - one method's failure must not cost the others their run
            log.exception("method %s failed; continuing with the others", m)
            failures[m] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    print(write_comparison(str(base), methods, failures))
    return 1 if failures else 0


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    sys.exit(main())
