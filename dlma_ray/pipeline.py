"""The round loop: generate -> score -> train, R times, resumable stage by stage.

    round k, policy pi_k:
      generate  Ray Data over vLLM engine actors      -> <run>/round_k/generations/  (Parquet)
      score     Ray Data over scorer actors            -> <run>/round_k/pairs/        (Parquet, PAIR_SCHEMA)
      train     Ray Train TorchTrainer + DeepSpeed     -> <run>/round_k/policy/       (HF folder) = pi_{k+1}
      evaluate  Ray tasks (dlma_ray.evaluate)          -> <run>/round_k/eval.json

Every method (`train.method`) runs these same stages; what differs lives in the stage runners, which
hand over to dlma_ray.methods (dpo's generate stage reads human pairs, context distillation's score stage
scores nothing) and dlma_ray.self_contrast (N samples; its score stage embeds, filters, then scores).

Every stage writes under a temporary name, renames into place, then records itself in
`<run>/state.json`; a rerun skips what is recorded there. Actor pools end with their stage, so the
same CPUs/GPUs serve every stage in turn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

from dlma_ray import metrics, storage
from dlma_ray.config import Config
from dlma_ray.prompts import pair_from_config
from dlma_ray.schema import GENERATION_SCHEMA, PAIR_SCHEMA, conform
from dlma_ray.state import RunState

log = logging.getLogger("dlma_ray")
STAGES = ("generate", "score", "train", "evaluate")


def round_dir(run_dir: str, k: int) -> str:
    return storage.join(run_dir, f"round_{k}")


def policy_for_round(cfg: Config, run_dir: str, k: int) -> str:
    """pi_k: the configured model at round 0, else the policy trained in round k-1."""
    return cfg.model.path if k == 0 else storage.join(round_dir(run_dir, k - 1), "policy")


def reference_for_round(cfg: Config, run_dir: str, k: int) -> str:
    return policy_for_round(cfg, run_dir, k) if cfg.rounds.reference == "round_start" else cfg.model.path


def split_of(prompt_id: str, seed: int, heldout_fraction: float) -> str:
    """A prompt's split, fixed for the whole run: held-out prompts are never trained on in any round."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:8], "little") / 2 ** 64
    return "heldout" if h < heldout_fraction else "train"


def renderer_for(cfg: Config):
    """The round-0 tokenizer and the run's ContrastiveRenderer (rendering and length checks in the driver)."""
    from dlma_ray.models import load_tokenizer
    from dlma_ray.prompts import ContrastiveRenderer

    tok = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code, cfg.model.revision)
    return tok, ContrastiveRenderer(tok, pair_from_config(cfg.pair.name, cfg.pair.positive, cfg.pair.negative),
                                    cfg.pair.style)


def prompt_rows(cfg: Config, k: int, require_target: bool = False) -> list[dict]:
    """Prompt rows (PROMPT_SCHEMA) for round k; ``require_target`` keeps only prompts with an SFT target and
    adds it as a `target` column (Self-Contrast's y*)."""
    from dlma_ray.data import load_prompts

    tok, renderer = renderer_for(cfg)

    def count_tokens(messages):  # the longest of the three renderings: each must fit the engine and training
        return max(len(tok(text, add_special_tokens=False)["input_ids"])
                   for text in (renderer.plain(messages), renderer.positive(messages), renderer.negative(messages)))

    records, report = load_prompts(cfg.data, cfg.run.seed, count_tokens, require_target)  # logs its summary
    records = without_control_tokens(records, tok, cfg.data.source)
    if not records:
        raise ValueError(f"no usable prompts in data.source={cfg.data.source!r}: {report.summary()}"
                         + ("; self_contrast needs prompts with targets (an hh dialogue ending with an assistant "
                            "turn, or a target/response column)" if require_target else ""))
    return [{"prompt_id": r.prompt_id, "messages_json": json.dumps(r.as_chat()), "prompt": r.prompt,
             "kind": r.kind, "split": split_of(r.prompt_id, cfg.run.seed, cfg.data.heldout_fraction),
             "round": k, **({"target": r.target} if require_target else {})} for r in records]


def without_control_tokens(records: list, tokenizer, source: str) -> list:
    """Drop, and count, prompts whose text holds the template's special tokens (e.g. `<|im_start|>system`):
    rendered, such text would open turns of its own, a system turn included."""
    specials = [t for t in tokenizer.all_special_tokens if len(t) > 1]
    kept = [r for r in records if not any(s in m["content"] for m in r.as_chat() for s in specials)]
    if len(kept) < len(records):
        log.warning("%s: skipped %d prompts holding the chat template's control tokens (%s)", source,
                    len(records) - len(kept), ", ".join(specials[:4]))
    return kept


def _write_stage(ds, schema, out: str) -> int:
    """Write a Ray dataset as Parquet under a temporary name, rename it into place, count its rows."""
    import ray.data

    tmp = storage.temp_sibling(out)
    ds.map_batches(lambda t: conform(t, schema), batch_format="pyarrow", batch_size=None).write_parquet(tmp)
    storage.commit_dir(tmp, out)
    return ray.data.read_parquet(out).count()


def run_generate(cfg: Config, run_dir: str, k: int) -> tuple[str, int]:
    import ray.data

    from dlma_ray.generate import GenerationEngine

    if cfg.train.method == "dpo":
        from dlma_ray.methods import run_human_pairs

        return run_human_pairs(cfg, run_dir, k)
    if cfg.train.method == "self_contrast":
        from dlma_ray import self_contrast

        return self_contrast.run_generate(cfg, run_dir, k)

    out = storage.join(round_dir(run_dir, k), "generations")
    r = cfg.resources
    ds = ray.data.from_items(prompt_rows(cfg, k)).map_batches(
        GenerationEngine,
        fn_constructor_kwargs=dict(
            model_path=_model_for_actor(policy_for_round(cfg, run_dir, k)),
            pair=pair_from_config(cfg.pair.name, cfg.pair.positive, cfg.pair.negative), style=cfg.pair.style,
            gen=vars(cfg.generation), round_index=k, tensor_parallel_size=r.tensor_parallel_size,
            trust_remote_code=cfg.model.trust_remote_code, torch_threads=r.threads_for(r.cpus_per_engine)),
        batch_size=cfg.generation.batch_size, concurrency=r.num_engines,
        num_cpus=r.cpus_per_engine, num_gpus=r.gpus_per_engine)
    return out, _write_stage(ds, GENERATION_SCHEMA, out)


def scoring_mode(method: str) -> str:
    """What the score stage computes for a method (dlma_ray.score): R only where the loss reads it."""
    from dlma_ray.methods import CONTRASTIVE_SCORING, UNSCORED

    return "contrastive" if method in CONTRASTIVE_SCORING else "none" if method in UNSCORED else "reference"


def scorer_stage(ds, cfg: Config, run_dir: str, k: int, mode: str):
    """``ds`` (generation rows) mapped through the scorer pool of round k: pair rows with `drop_reason`."""
    from dlma_ray.score import PairScorer

    r = cfg.resources
    return ds.map_batches(
        PairScorer,
        fn_constructor_kwargs=dict(
            policy_path=_model_for_actor(policy_for_round(cfg, run_dir, k)),
            reference_path=_model_for_actor(reference_for_round(cfg, run_dir, k)),
            dtype=cfg.scoring.dtype, batch_size=cfg.scoring.batch_size, padding_side=cfg.scoring.padding_side,
            max_length=cfg.train.max_length, mode=mode, unfinished=cfg.scoring.unfinished,
            trust_remote_code=cfg.model.trust_remote_code, torch_threads=r.threads_for(r.cpus_per_scorer)),
        batch_size=max(cfg.scoring.batch_size, 32), concurrency=r.num_scorers,
        num_cpus=r.cpus_per_scorer, num_gpus=r.gpus_per_scorer)


def write_scored(ds, out: str, k: int) -> tuple[int, dict]:
    """Count the scorer's drop reasons, write the kept rows as the pairs table; (rows, summary)."""
    ds = ds.materialize()
    flags = ds.select_columns(["drop_reason", "chosen_finished", "rejected_finished"]).to_pandas()
    kept = flags[flags.drop_reason == ""]
    summary = {"rows_in": len(flags), "kept": len(kept),
               "dropped": {str(k_): int(v) for k_, v in flags.drop_reason[flags.drop_reason != ""].value_counts().items()},
               "unfinished_kept": int((~(kept.chosen_finished & kept.rejected_finished)).sum())}
    log.info("round %d: score kept %d of %d pairs (dropped: %s; kept with a response cut at max_new_tokens, "
             "scored as a prefix: %d)", k, summary["kept"], summary["rows_in"], summary["dropped"] or "none",
             summary["unfinished_kept"])
    if not summary["kept"]:
        raise ValueError(f"round {k}: the score stage dropped every pair ({summary['dropped']}); raise "
                         "train.max_length or generation.max_new_tokens, or set scoring.unfinished=keep")
    return _write_stage(ds.filter(lambda row: row["drop_reason"] == ""), PAIR_SCHEMA, out), summary


def run_score(cfg: Config, run_dir: str, k: int) -> tuple:
    import ray.data

    if cfg.train.method == "self_contrast":
        from dlma_ray import self_contrast

        return self_contrast.run_score(cfg, run_dir, k)  # + a summary of kept / dropped prompts

    src = storage.join(round_dir(run_dir, k), "generations")
    out = storage.join(round_dir(run_dir, k), "pairs")
    ds = scorer_stage(ray.data.read_parquet(src), cfg, run_dir, k, scoring_mode(cfg.train.method))
    return (out, *write_scored(ds, out, k))


def run_train(cfg: Config, run_dir: str, k: int) -> tuple[str, int, dict]:
    import ray.data
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dlma_ray.train import train_loop_per_worker

    t, r = cfg.train, cfg.resources
    pairs = storage.join(round_dir(run_dir, k), "pairs")
    ds = ray.data.read_parquet(pairs).filter(lambda row: row["split"] == "train")
    unit = "pairs"
    if t.method == "self_contrast":
        # One row per prompt, its k negatives as lists, BEFORE the shuffle and the shard split: a prompt's
        # k pairs can then only ever be in one micro-batch on one worker, hence in one optimizer step.
        from dlma_ray.self_contrast import training_dataset

        ds, unit = training_dataset(ds, ds.count()), "prompts"
    ds = ds.random_shuffle(seed=t.seed + k).materialize()
    n_train = ds.count()
    per_step = t.micro_batch_size * r.num_train_workers
    steps_per_epoch = (n_train // r.num_train_workers) // t.micro_batch_size // (t.global_batch_size // per_step)
    total_steps = steps_per_epoch * t.epochs
    if total_steps < 1:
        raise ValueError(f"round {k} has {n_train} training {unit}, fewer than one optimizer step needs "
                         f"(train.global_batch_size={t.global_batch_size}); use more prompts or a smaller batch")
    log.info("round %d: %s training on %d %s, %d optimizer steps of %d %s", k, t.method, n_train, unit,
             total_steps, t.global_batch_size, unit)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dict(train=vars(t), threads=r.threads_for(r.cpus_per_train_worker), method=t.method,
                               total_steps=total_steps, round=k,
                               policy_path=_model_for_actor(policy_for_round(cfg, run_dir, k)),
                               use_gpu=r.use_gpu_for_training, trust_remote_code=cfg.model.trust_remote_code),
        scaling_config=ScalingConfig(num_workers=r.num_train_workers, use_gpu=r.use_gpu_for_training,
                                     resources_per_worker={"CPU": r.cpus_per_train_worker}),
        datasets={"train": ds},
        run_config=RunConfig(name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
                             storage_path=storage.absolute(storage.join(round_dir(run_dir, k), ".ray_train")),
                             failure_config=FailureConfig(max_failures=0)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"round {k}: training finished without a policy checkpoint")
    out = storage.join(round_dir(run_dir, k), "policy")
    src = result.checkpoint.path
    if storage.is_uri(run_dir):
        src = f"{run_dir.split('://', 1)[0]}://{src}"
    storage.commit_dir(src, out)
    storage.delete_dir(storage.join(round_dir(run_dir, k), ".ray_train"))
    return out, n_train, dict(result.metrics or {})


def _model_for_actor(ref: str) -> str:
    # `builtin:` references resolve inside each actor: every node converts and caches its own copy.
    # Hub names pass through; only an existing local path is made absolute for other processes.
    return storage.absolute(ref) if os.path.exists(ref) else ref


def init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    # `ray job submit` sets RAY_ADDRESS; without it the job starts its own Ray instead of joining
    # whatever cluster happens to run on the machine (`resources.ray_address=auto` joins one).
    address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    info = ray.init(address=address)
    ray.data.DataContext.get_current().enable_progress_bars = True
    url = getattr(info, "dashboard_url", "") or ""
    url = f"http://{url}" if url and "://" not in url else url or "not running"
    log.info("Ray dashboard: %s (Jobs, Train and Data tabs show progress; the Metrics tab and each node's "
             "Prometheus endpoint carry the dlma_* metrics: generation tokens/s, pairs scored, R, loss, margin)",
             url)


def run(cfg: Config) -> RunState:
    """Run (or resume) every round of ``cfg``, holding the run directory's lock; returns the final run state."""
    from dlma_ray.runlock import run_lock

    run_dir = storage.absolute(cfg.run.dir)
    with run_lock(run_dir):
        return _run_rounds(cfg, run_dir)


def output_intact(entry: dict) -> bool:
    """Is a recorded stage's output still there, whole? Tables must hold the rows recorded."""
    out = entry.get("output", "")
    if not out or not storage.exists(out):
        return False
    if entry["stage"] in ("generate", "score"):
        import pyarrow.dataset as pds

        try:
            return pds.dataset(storage.absolute(out), format="parquet").count_rows() == entry["rows"]
        except (OSError, ValueError):
            return False
    if entry["stage"] == "train":
        return storage.exists(storage.join(out, "config.json"))
    return True


def _run_rounds(cfg: Config, run_dir: str) -> RunState:
    state = RunState.open(run_dir, cfg.to_dict())
    broken = next((e for e in state.stages if not output_intact(e)), None)
    if broken is not None:  # every later stage was built on it: redo from there
        log.warning("round %d: %s's output %s is missing or does not hold the %d rows recorded: redoing it and "
                    "every stage after it", broken["round"], broken["stage"], broken["output"], broken["rows"])
        state.truncate(state.stages.index(broken))
    pending = [(k, s) for k in range(cfg.rounds.count) for s in stages_of(cfg) if not state.done(k, s)]
    if not pending:
        log.info("run %s already finished all %d rounds: nothing to do", run_dir, cfg.rounds.count)
        return state
    done = len(state.stages)
    if done:
        log.info("resuming %s at round %d, stage %s (%d stages already done)", run_dir, *pending[0], done)
    init_ray(cfg)
    from dlma_ray.evaluate import run_evaluate

    runners = {"generate": run_generate, "score": run_score, "train": run_train, "evaluate": run_evaluate}
    for k, stage in pending:
        storage.remove_stale_temps(round_dir(run_dir, k))
        log.info("round %d: %s ...", k, stage)
        metrics.set_gauge("dlma_current_round", k)
        metrics.set_gauge("dlma_stage_running", 1, stage=stage)
        start = time.time()
        try:
            out, rows, *extra = runners[stage](cfg, run_dir, k)
        finally:
            metrics.set_gauge("dlma_stage_running", 0, stage=stage)
        seconds = time.time() - start
        metrics.set_gauge("dlma_stage_seconds", seconds, round=k, stage=stage)
        state.record(k, stage, out, rows, seconds, **({"metrics": extra[0]} if extra else {}))
        log.info("round %d: %s done: %d rows in %.1fs -> %s", k, stage, rows, seconds, out)
    write_run_report(run_dir)
    return state


def stages_of(cfg: Config) -> tuple[str, ...]:
    return STAGES if cfg.eval.enabled else tuple(s for s in STAGES if s != "evaluate")


def write_run_report(run_dir: str) -> None:
    """The report is a view of finished work: a plotting problem must not fail a finished run."""
    from dlma_ray.report import write_report

    try:
        log.info("report: %s", write_report(run_dir))
    except Exception:  # noqa: BLE001
        log.exception("could not write the report; run `python -m dlma_ray.report %s` to retry", run_dir)
