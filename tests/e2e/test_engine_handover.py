"""Engines kept from the evaluation for the next round's generate stage (dlma_ray.workers.engines).

In real Ray and vLLM: one engine kept on a policy answers the evaluation prompts from the driver, then serves
round 1's generate stage through Ray Data. Its answers and the stage's table must equal, sample for sample,
what fresh engines give, and releasing it must end its actor and every process it started (its engine's
watchdog included: dlma_ray.workers.watchdog, whose own test is tests/unit/workers/test_watchdog.py). The
pipeline's use of it (kept from evaluate(0) for generate(1), recorded in state.json) is checked on the killed
2-round run (tests/e2e/test_killed_run.py). When kept engines leave room for evaluation's scorers:
tests/unit/workers/test_engines.py.
"""

import os
import shutil
import time

import pyarrow.parquet as pq


def started_by(pid: int) -> list:
    """The processes below ``pid``: an engine's core and workers, its watchdog, Python's resource tracker."""
    import psutil

    return psutil.Process(pid).children(recursive=True)


def running(procs: list) -> list:
    import psutil

    def up(p):
        try:  # is_running() also tells a reused pid from the process recorded
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [p for p in procs if up(p)]


def left_after(procs: list, seconds: float) -> list[str]:
    """Command lines of ``procs`` still running after up to ``seconds``; those are then killed (never leaked)."""
    deadline = time.time() + seconds
    while running(procs) and time.time() < deadline:
        time.sleep(0.5)
    left = []
    for p in running(procs):
        try:
            left.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            p.kill()
        except Exception:  # noqa: BLE001 - gone meanwhile
            pass
    return left


def watchdogs_below(pid: int) -> list[str]:
    return [" ".join(p.cmdline()) for p in running(started_by(pid)) if "dlma_ray.workers.watchdog" in p.cmdline()]


def actor_pid(actor) -> int:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))


def generations(run_dir) -> dict:
    t = pq.read_table(run_dir / "round_1/generations").to_pylist()
    return {r["prompt_id"]: r for r in t}


def test_kept_engine_samples_what_fresh_engines_sample(tmp_path, tiny_model_dir, tokenizer):
    import ray

    from dlma_ray.workers import eval_tasks
    from dlma_ray.config.tree import load_config
    from dlma_ray.workers.engines import KeptEngines
    from dlma_ray.stages.evaluate import load_eval_prompts
    from dlma_ray.run.layout import RunLayout
    from dlma_ray.stages.round import Round, model_for_actor
    from dlma_ray.stages.generate import contrastive

    runs = {}
    for name in ("kept", "fresh"):  # round 0 "trained" a copy of the model; round 1 generates on it
        runs[name] = tmp_path / name
        shutil.copytree(tiny_model_dir, runs[name] / "round_0/policy")
    args = [f"model.path={tiny_model_dir}", "data.max_prompts=16", "generation.max_new_tokens=8",
            "generation.batch_size=4", "generation.cpu_kvcache_gb=1", "eval.max_prompts=4", "eval.max_new_tokens=8"]
    cfg = {name: load_config(None, [*args, f"run.dir={run}"]) for name, run in runs.items()}
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        policy = model_for_actor(str(runs["kept"] / "round_0/policy"))
        kept = KeptEngines.start(cfg["kept"], policy, 1)
        host = kept.hosts[0]
        prompts = load_eval_prompts(cfg["kept"], tokenizer)
        answers = eval_tasks.answer_prompts(kept.engine(), policy, prompts, cfg["kept"])
        result = contrastive(Round(cfg["kept"], RunLayout(str(runs["kept"])), 1, kept))
        # pi_0's evaluation answers are asked of round 0's generate engines after that stage (pipeline.baseline_from)
        after_stage = eval_tasks.answer_prompts(kept.engine(fresh=True), policy, prompts, cfg["kept"])
        served = ray.get(host.served.remote())
        host_procs = started_by(actor_pid(host))
        kept.release()
        deadline = time.time() + 60  # ray.kill is asynchronous: a call right after it may still be served
        while True:
            try:
                ray.get(host.served.remote(), timeout=10)
            except ray.exceptions.RayActorError:
                break
            assert time.time() < deadline, "the released engine host is still alive"
            time.sleep(0.5)
        host_left = left_after(host_procs, 10)

        fresh_policy = model_for_actor(str(runs["fresh"] / "round_0/policy"))
        fresh_answers = ray.get(ray.remote(num_cpus=1)(eval_tasks.generate_answers).remote(
            fresh_policy, prompts, cfg["fresh"]))
        task_watchdogs = watchdogs_below(os.getpid())  # the answer task's worker lives on, its engine stopped
        fresh = contrastive(Round(cfg["fresh"], RunLayout(str(runs["fresh"])), 1))
    finally:
        ray.shutdown()
    assert len(host_procs) >= 2, f"the engine's core and worker run in processes of their own: {host_procs}"
    assert not host_left, f"a released engine host left processes behind: {host_left}"
    assert not task_watchdogs, f"an evaluation task's stopped engine left its watchdog running: {task_watchdogs}"
    assert result.rows == fresh.rows == 16
    assert served == 2 * len(prompts) + 2 * result.rows, "every evaluation answer and every y+/y- came from the kept engine"
    assert [a["token_ids"] for a in answers] == [a["token_ids"] for a in fresh_answers]
    assert [a["token_ids"] for a in after_stage] == [a["token_ids"] for a in fresh_answers], "a stage's prefix cache"
    assert [a["answer"] for a in answers] == [a["answer"] for a in fresh_answers]
    got, want = generations(runs["kept"]), generations(runs["fresh"])
    assert got.keys() == want.keys()
    for pid, row in got.items():
        for col in ("chosen_token_ids", "rejected_token_ids", "chosen", "rejected", "chosen_finished", "pos_context"):
            assert row[col] == want[pid][col], (pid, col)
    assert len({r["chosen"] for r in got.values()}) > 8, "each request keeps its own seed"
