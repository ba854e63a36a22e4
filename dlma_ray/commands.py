"""What each job does once its config is loaded: `dlma-ray run | eval | compare` and jobs/*.py call these.

    run_job(cfg)                                   jobs/iterate.py: every round, resumable
    evaluate_job(cfg, policy, round_k, out)        jobs/evaluate.py: a round's policy, or any policy folder
    method_configs, compare_job                    jobs/compare.py: several methods from the same start
    judge_job                                      `dlma-ray judge A B`: head to head

Argument parsing lives in dlma_ray.cli; these take parsed values and return the exit status.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from dlma_ray import methods as registry
from dlma_ray.config.tree import Config, load_config

log = logging.getLogger("dlma_ray")
DEFAULT_METHODS = ("dlma", "rlcd", "context_distillation")


def setup_logging(cfg: Config) -> None:
    logging.basicConfig(level=cfg.run.log_level, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_job(cfg: Config, restart_from: str | None = None, stop_after: str | None = None) -> int:
    """Run (or resume) every round of ``cfg``, or redo it from ``restart_from`` (`round_K/STAGE`) on, up to
    ``stop_after`` (`round_K/STAGE`, default the last); 2 for a bad stage name or a run directory that refuses this
    config or is locked."""
    from dlma_ray.pipeline import run, stop_point
    from dlma_ray.run.lock import RunLocked
    from dlma_ray.run.state import ConfigMismatchError, StateFileError, parse_stage

    try:
        point = parse_stage(restart_from) if restart_from else None
        last = stop_point(cfg, parse_stage(stop_after, "--stop-after")) if stop_after else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run(cfg, point, last)
    except (ConfigMismatchError, StateFileError, RunLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def latest_round(run_dir: str) -> int:
    """The last round with a trained policy."""
    from dlma_ray.run.layout import RunLayout

    k = RunLayout(run_dir).latest_policy()
    if k is None:
        raise SystemExit(f"error: {run_dir} has no trained policy (round_0/policy); give --policy PATH")
    return k


def evaluate_job(cfg: Config, policy: str | None = None, round_k: int | None = None, out: str | None = None) -> int:
    """Without ``policy``: round k's policy (default the latest) into round_k/eval.json, then the report and
    the policy's model card. With ``policy``: that folder alone into ``out`` (default <run>/evals/<name>),
    also scored on round k's held-out pairs when ``round_k`` is given."""
    from dlma_ray.core import storage
    from dlma_ray.stages.evaluate import evaluate_policy, read_heldout, run_round
    from dlma_ray.run.layout import RunLayout
    from dlma_ray.views.modelcard import write_card_quietly
    from dlma_ray.views.report import write_report
    from dlma_ray.stages.round import Round

    run = RunLayout(storage.absolute(cfg.run.dir))
    if policy is None:
        k = latest_round(run.root) if round_k is None else round_k
        out_path = run_round(Round(cfg, run, k)).output
        write_card_quietly(run.root, k)
        print(f"wrote {out_path}; report: {write_report(run.root)}")
        return 0
    out = out or run.evals(Path(policy.rstrip("/")).name.replace(":", "_"))
    heldout, reference = [], None
    if round_k is not None:
        r = Round(cfg, run, round_k)
        heldout, reference = read_heldout(r.paths.pairs, cfg.eval.heldout_pairs), r.reference
    evaluate_policy(cfg, policy, out, reference=reference, heldout=heldout, round_index=round_k,
                    baseline_path=run.baseline_answers)
    print(f"wrote {storage.join(out, 'eval.json')}")
    return 0


def share_baseline(base: Path, method: str, done: list[str]) -> None:
    """pi_0's evaluation answers and its scores of the fixed items depend on the model and eval settings only,
    the same for every method: hand an earlier method's to this one (evaluate.py re-checks both by their
    settings and key, and computes them again if they differ)."""
    from dlma_ray.run.layout import BASELINE_ANSWERS_FILE, BASELINE_SCORES_FILE

    for name in (BASELINE_ANSWERS_FILE, BASELINE_SCORES_FILE):
        target = base / method / name
        for other in done:
            source = base / other / name
            if source.exists() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                break


def method_configs(config_path: str | list[str] | None, overrides: list[str],
                   methods: list[str], one_round_unless_iterative: bool = False) -> tuple[Config, dict]:
    """The base config and one per method (`train.method`, `run.dir=<run.dir>/<method>`); ConfigError if any
    is invalid, so that every method's config is checked before any work starts. ``one_round_unless_iterative``:
    a method that does not iterate by design (`Method.iterates`) runs one round, the others rounds.count."""
    from dlma_ray.core import storage

    base_cfg = load_config(config_path, overrides)
    rounds = {m: [] if registry.get(m).iterates or not one_round_unless_iterative else ["rounds.count=1"]
              for m in methods}
    configs = {m: load_config(config_path, [*overrides, f"train.method={m}", *rounds[m],
                                            f"run.dir={storage.join(base_cfg.run.dir, m)}"]) for m in methods}
    for cfg in configs.values():
        registry.check(cfg)
    return base_cfg, configs


def judge_job(cfg: Config, a: str, b: str, judge: str, judge_model: str = "", out: str | None = None) -> int:
    """`dlma-ray judge A B`: the head-to-head result JSON (dlma_ray.stages.judging) and its table on stdout."""
    from dlma_ray.core import storage
    from dlma_ray.evaluation.headtohead import TABLE_HEADER, caveats, table_rows
    from dlma_ray.run.layout import RunLayout
    from dlma_ray.stages.judging import head_to_head
    from dlma_ray.views.runview import md_table

    run_a = RunLayout(storage.absolute(a.rstrip("/")))
    out = out or storage.join(run_a.root if storage.exists(run_a.state) else storage.absolute(cfg.run.dir),
                              "headtohead")
    try:
        doc = head_to_head(cfg, a, b, judge, judge_model, out)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}")
    print("\n".join(md_table(TABLE_HEADER, table_rows([doc]))))
    print("\n".join([f"answers {doc['answers_detail']}", *caveats([doc]), f"wrote {doc['path']}"]))
    return 0


def judge_accuracy_job(cfg: Config, names: list[str], policy: str | None, judge_model: str = "") -> int:
    """`dlma-ray judge-accuracy`: each judge against the human labels (dlma_ray.stages.judging.judge_accuracy)."""
    from dlma_ray.evaluation.judge_accuracy import markdown
    from dlma_ray.stages.judging import judge_accuracy

    try:
        doc = judge_accuracy(cfg, names, policy, judge_model)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}")
    print(markdown(doc["judges"], cfg.eval.preference_pairs, doc["policy"]))
    print(f"wrote {doc['path']} ({doc['seconds']} s)")
    return 0


def compare_job(base_cfg: Config, configs: dict[str, Config], judge: str | None = None) -> int:
    """Run each method's config in turn (a failure is reported and the others still run), then every pair of
    methods head to head (``judge``; default from eval.judge) and the comparison table; 1 if a method failed."""
    from dlma_ray.core import storage
    from dlma_ray.views.compare import write_comparison
    from dlma_ray.pipeline import run

    base = Path(storage.absolute(base_cfg.run.dir))
    failures, done = {}, []
    for m, cfg in configs.items():
        log.info("method %s -> %s", m, cfg.run.dir)
        if not storage.is_uri(str(base)):
            share_baseline(base, m, done)
        try:
            run(cfg)
            done.append(m)
        except Exception as exc:  # one method's failure must not cost the others their run
            log.exception("method %s failed; continuing with the others", m)
            failures[m] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    from dlma_ray.stages.judging import judge_every_pair

    judge_every_pair(base_cfg, str(base), done, judge)
    print(write_comparison(str(base), list(configs), failures))
    return 1 if failures else 0
