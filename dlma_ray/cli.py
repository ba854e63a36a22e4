"""The `dlma-ray` command: run, eval, compare, judge, judge-accuracy, report, config, export, card, plan.

    dlma-ray run [--config FILE] [section.key=value ...]        every round, resumable (= jobs/iterate.py);
                 [--restart-from round_K/STAGE]                 redo the run from a stage on with a changed config
                 [--stop-after round_K/STAGE]                   stop once that stage is done
    dlma-ray eval [--config FILE] [--policy DIR] [--round K]    evaluate a policy (= jobs/evaluate.py)
    dlma-ray compare [--config FILE] [--methods a,b]            methods side by side (= jobs/compare.py)
    dlma-ray judge A B [--judge J] [--judge-model M]            A's answers against B's: win / tie / lose
    dlma-ray judge-accuracy [--judges a,b] [--policy DIR]       each judge against human labels, with intervals
    dlma-ray report [RUN_DIR]                                   re-render <run>/report.md
    dlma-ray config [--config FILE] [overrides] [--reference]   the resolved config as YAML / the field reference
    dlma-ray export [RUN_DIR] --round K --out DIR               a round's pairs in TRL's preference format
    dlma-ray card [RUN_DIR] [--round K]                         a policy folder's model card (README.md)
    dlma-ray plan [--config FILE] [--gpus N --gpu-memory GB]    each stage's actors, memory and time on a cluster

Every command takes `--config FILE` and dotted overrides; report, export and card take a run directory
instead (or find it as the config's run.dir). A bad config exits with status 2, naming each bad field.
jobs/*.py, the `ray job submit` entry points, call `main` with their subcommand.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
import typing

from dlma_ray.config.tree import Config, ConfigError, load_config

SECTION_DOCS = {
    "model": "the policy at round 0: a built-in, a local HF folder or a hub name",
    "data": "prompts (or preference pairs for dpo): source, split, field, sampling, held-out fraction",
    "pair": "the contrastive prompt pair: a built-in or your own positive / negative system messages",
    "generation": "vLLM sampling and engine settings",
    "scoring": "scorer actors: batch size, dtype, what to do with cut responses",
    "train": "method, loss, optimizer, batch sizes, DeepSpeed ZeRO stage, precision",
    "self_contrast": "Self-Contrast: samples per prompt, the similarity filter, the embedding model",
    "rounds": "how many rounds, and the DPO reference (pi_k or pi_0)",
    "eval": "the evaluation after each round: held-out prompts, human pairs, the judge",
    "run": "run directory, seed, log level",
    "resources": "Ray address, actor pools and the CPUs / GPUs of each actor",
}
OVERRIDES_HELP = "dotted overrides, section.key=value (e.g. train.beta=0.2 rounds.count=3)"


def setup_environment() -> None:
    from dlma_ray.workers.nodes import check_working_directory

    check_working_directory()  # before anything imports torch, which dies obscurely without one
    # One thread per process: on small CPU machines, oversubscription costs more than it gives.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def sections_help() -> str:
    """One line per config section with its keys (from the config classes, so it never goes stale)."""
    hints = typing.get_type_hints(Config)
    lines = ["config sections (every field: dlma-ray config --reference, or docs/reference/config.md):"]
    for section in dataclasses.fields(Config):
        keys = ", ".join(f.name for f in dataclasses.fields(hints[section.name]))
        lines.append(f"  {section.name:<15}{SECTION_DOCS.get(section.name, '')}")
        lines += textwrap.wrap(f"keys: {keys}", 100, initial_indent=" " * 17, subsequent_indent=" " * 23)
    return "\n".join(lines)


def _config_arguments(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    p.add_argument("--config", action="append", help="YAML config file (default: the embedded demo defaults); "
                   "given twice or more, each file's keys go over the earlier ones' (a preset, then an overlay "
                   "such as jobs/configs/embedded-overlay.yaml)")
    if overrides:
        p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)


def _run_dir_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", help="YAML config file(s) whose run.dir to use when no RUN_DIR "
                   "is given")
    p.add_argument("target", nargs="*", metavar="RUN_DIR | section.key=value",
                   help="the run directory, or overrides that name it (run.dir=...)")


def build_parser() -> argparse.ArgumentParser:
    from dlma_ray import methods  # late: importing it imports torch (setup_environment comes first)
    from dlma_ray.evaluation import judges  # likewise

    raw = argparse.RawDescriptionHelpFormatter
    sections = ", ".join(f.name for f in dataclasses.fields(Config))
    parser = argparse.ArgumentParser(
        prog="dlma-ray", description=__doc__.split("\n\n")[0], formatter_class=raw,
        epilog=textwrap.fill(f"Each command has its own --help. Config sections: {sections}; `dlma-ray config "
                             "--help` describes them, `dlma-ray config --reference` every field.", 100))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("run", help="run (or resume) every round: generate -> score -> train -> evaluate",
                       description="Run DLMA rounds (or another train.method), resuming from the run directory.",
                       formatter_class=raw, epilog=sections_help())
    _config_arguments(p)
    p.add_argument("--restart-from", metavar="round_K/STAGE",
                   help="redo the run from this stage on with the given config (e.g. round_0/train after changing "
                        "train.beta): it and every later stage are redone; earlier ones are kept")
    p.add_argument("--stop-after", metavar="round_K/STAGE",
                   help="stop once this stage is done (e.g. round_0/score to read the pairs before training); "
                        "running again without it goes on from the next stage")
    p = sub.add_parser("eval", help="evaluate the run's latest (or round K's) policy, or any policy folder",
                       description="Evaluate a policy: distillation gain vs pi_0, refusals, KL, perplexity, "
                                   "implicit reward, each with a 95%% interval.")
    _config_arguments(p)
    p.add_argument("--policy", help="policy folder (or builtin:/hub name) to evaluate alone; default: the run's")
    p.add_argument("--round", type=int, help="round whose policy to evaluate (with --policy: whose held-out pairs)")
    p.add_argument("--out", help="output folder with --policy (default <run.dir>/evals/<policy name>)")
    p = sub.add_parser("compare", help="run several methods from the same start and compare their evaluations",
                       description="Every method runs with the same config but train.method, into "
                                   "<run.dir>/<method>/; then <run.dir>/comparison.md and comparison.png.")
    _config_arguments(p)
    from dlma_ray.commands import DEFAULT_METHODS

    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, of {', '.join(methods.names())}, or `all` (default: "
                        f"{','.join(DEFAULT_METHODS)})")
    p.add_argument("--one-round-unless-iterative", action="store_true",
                   help="methods that iterate by design (" + ", ".join(m for m in methods.names()
                                                                   if methods.get(m).iterates)
                        + ") run rounds.count rounds, the others one (the papers' own round counts)")
    p.add_argument("--judge", choices=judges.names(head_to_head=True),
                   help="head-to-head judge of every pair of methods (default: eval.judge; self_reward = distillation)")
    p = sub.add_parser("judge", help="policy A's answers against policy B's: win / tie / lose, both orders",
                       description="Judge A's answers against B's on the same held-out prompts, each prompt in both "
                                   "answer orders (a split verdict is a tie): win / tie / lose with 95%% intervals, "
                                   "and the judge's agreement with eval.preference_pairs' human labels. A and B: run "
                                   "dirs (their stored evaluation answers are reused when both answered the same "
                                   "prompts with the same sampling and seed), policy folders, or answer files such "
                                   "as <run>/baseline_answers.jsonl (pi_0).")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    _config_arguments(p)
    p.add_argument("--judge", default="distillation", choices=judges.names(head_to_head=True),
                   help="openai: an OpenAI-compatible endpoint (--judge-url, key from eval.judge_api_key_env); "
                        "reward_model / cost_model: a folder (safe-rlhf score model or sequence classifier; a cost "
                        "model prefers the lower score); distillation: C under pi_0 (default); ab / five_point: "
                        "RLAIF's A/B reading (both orders) / Self-Rewarding's 5-point rubric, asked of --judge-model "
                        "on a vLLM engine")
    p.add_argument("--judge-model", default="", help="the endpoint's model name, the reward/cost model's folder "
                                                     "(default: eval.judge_model), or the model that judges for ab / "
                                                     "five_point (default: the run's pi_0, model.path)")
    p.add_argument("--judge-url", default="", help="the endpoint's base URL, e.g. http://localhost:8000/v1 "
                                                   "(default: eval.judge_url)")
    p.add_argument("--out", help="folder of the result JSON (default: <A>/headtohead for a run dir, else "
                                 "<run.dir>/headtohead)")
    p = sub.add_parser("judge-accuracy", help="each judge against human preference labels: n, agreement, 95%% interval",
                       description="Ask each judge which answer of each human-labelled pair of eval.preference_pairs "
                                   "is better (at most eval.max_pairs, seeded) and count how often it sides with the "
                                   "humans: R, C, the policy's own A/B (rlaif.*) and 5-point (self_rewarding.*) "
                                   "judgements, reward / cost models. Writes <run.dir>/judge_accuracy.json.")
    _config_arguments(p)
    from dlma_ray.stages.judging import ACCURACY_JUDGES

    p.add_argument("--judges", default="self_reward,distillation,ab,five_point",
                   help=f"comma-separated, of {', '.join(ACCURACY_JUDGES)} (default: the four that need no model "
                        "of their own)")
    p.add_argument("--policy", help="the model whose judgements ab / five_point / self_reward are (default: "
                                    "model.path, pi_0)")
    p.add_argument("--judge-model", default="", help="the reward / cost model's folder")
    p = sub.add_parser("report", help="write <run>/report.md and its figures from what the run has",
                       description="Re-render a run's report (report.md, report/*.png).")
    _run_dir_arguments(p)
    p = sub.add_parser("config", help="print the resolved config as YAML, or the field reference",
                       description="Print the config after --config and overrides, as YAML (a file that "
                                   "`--config` takes back), or with --reference every field's type, default "
                                   "and meaning.", formatter_class=raw, epilog=sections_help())
    _config_arguments(p)
    p.add_argument("--reference", action="store_true", help="print every field's type, default and meaning "
                                                            "(Markdown, as in docs/reference/config.md)")
    p = sub.add_parser("export", help="export a round's pairs as a datasets dataset in TRL's preference format",
                       description="A round's pairs as a Hugging Face dataset (save_to_disk) in TRL's "
                                   "conversational preference format; trl.DPOTrainer loads it as is.")
    _run_dir_arguments(p)
    from dlma_ray.views.export import add_arguments

    add_arguments(p)
    p = sub.add_parser("card", help="write a policy folder's model card (README.md) for the HF Hub",
                       description="Write <run>/round_K/policy/README.md: method, base model, rounds, data, "
                                   "the evaluation with intervals, the config.")
    _run_dir_arguments(p)
    p.add_argument("--round", type=int, help="round whose policy (default: the latest trained)")
    p = sub.add_parser("plan", help="each stage's actors, their GPU/host memory and a round's time; refuses a "
                                    "plan that cannot fit",
                       description="From the config and the running Ray cluster (or --gpus/--gpu-memory/--nodes "
                                   "given by hand): every stage's actors with their GPUs and CPUs, estimated "
                                   "device and host memory, the time of a round; exit 1 when it cannot fit.")
    _config_arguments(p)
    from dlma_ray.plan import add_arguments as plan_arguments

    plan_arguments(p)
    for p in sub.choices.values():
        p.set_defaults(subparser=p)  # errors print the subcommand's usage line
    return parser


def _load(parser: argparse.ArgumentParser, path: list[str] | str | None, overrides: list[str]) -> Config:
    from dlma_ray import methods  # late: importing it imports torch (setup_environment comes first)

    try:
        cfg = load_config(path, overrides)
        methods.check(cfg)  # the method's name and its own settings, before any work
        return cfg
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")


def _run_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    overrides = [t for t in args.target if "=" in t]
    dirs = [t for t in args.target if "=" not in t]
    if len(dirs) > 1 or dirs and (overrides or args.config):
        parser.exit(2, f"error: give one RUN_DIR, or --config / overrides that name it; got {args.target}\n")
    return dirs[0] if dirs else _load(parser, args.config, overrides).run.dir


def main(argv: list[str] | None = None) -> int:
    setup_environment()
    from dlma_ray import methods  # late: importing it imports torch (setup_environment comes first)

    parser = build_parser()
    args = parser.parse_args(argv)
    sub = args.subparser
    from dlma_ray import commands

    if args.command in ("run", "eval", "config", "plan"):
        cfg = _load(sub, args.config, args.overrides)
        if args.command == "config":
            return print_config(cfg, args.reference)
        if args.command == "plan":
            from dlma_ray.plan import plan_command

            return plan_command(cfg, args, " + ".join(args.config or ["the default config"]))
        commands.setup_logging(cfg)
        if args.command == "run":
            return commands.run_job(cfg, args.restart_from, args.stop_after)
        return commands.evaluate_job(cfg, args.policy, args.round, args.out)
    if args.command == "compare":
        chosen = methods.names() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in methods.names()]
        if unknown or not chosen:
            sub.exit(2, f"error: --methods: unknown {unknown}; expected some of {', '.join(methods.names())}\n")
        try:
            base_cfg, configs = commands.method_configs(args.config, args.overrides, chosen,
                                                        args.one_round_unless_iterative)
        except ConfigError as exc:
            sub.exit(2, f"error: {exc}\n")
        commands.setup_logging(base_cfg)
        return commands.compare_job(base_cfg, configs, args.judge)
    if args.command == "judge-accuracy":
        cfg = _load(sub, args.config, args.overrides)
        commands.setup_logging(cfg)
        return commands.judge_accuracy_job(cfg, [n.strip() for n in args.judges.split(",") if n.strip()],
                                           args.policy, args.judge_model)
    if args.command == "judge":
        extra = [f"eval.judge_url={args.judge_url}"] if args.judge_url else []
        cfg = _load(sub, args.config, [*args.overrides, *extra])
        commands.setup_logging(cfg)
        return commands.judge_job(cfg, args.a, args.b, args.judge, args.judge_model, args.out)
    run_dir = _run_dir(sub, args)
    if args.command == "report":
        from dlma_ray.views.report import write_report

        print(write_report(run_dir))
        return 0
    if args.command == "export":
        from dlma_ray.views.export import run_from_args

        return run_from_args(run_dir, args)
    from dlma_ray.views.modelcard import write_model_card

    k = commands.latest_round(run_dir) if args.round is None else args.round
    print(write_model_card(run_dir, k))
    return 0


def print_config(cfg: Config, reference: bool = False) -> int:
    import yaml

    from dlma_ray.views.config_reference import config_reference

    sys.stdout.write(config_reference() if reference else yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return 0


def parse(description: str, argv: list[str] | None = None) -> Config:
    """`--config FILE` plus dotted overrides for a script of its own (the subcommands use main)."""
    from dlma_ray.commands import setup_logging

    parser = argparse.ArgumentParser(description=description, epilog="Overrides: section.key=value, e.g. "
                                     "train.beta=0.2 rounds.count=3. Field reference: dlma-ray config --reference")
    _config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = _load(parser, args.config, args.overrides)
    setup_logging(cfg)
    return cfg


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    sys.exit(main())
