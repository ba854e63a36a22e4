"""Engines kept from the evaluation for the next round's generate stage, against fresh engines for each.

What a round does between its evaluation and the next round's generate stage, on the embedded model, whose
copy plays round 0's trained policy (round 1 generates on it):
  (a) fresh: the evaluation's answer task on an engine of its own (`eval_tasks.generate_answers`, the
      engine runtime env), then the generate stage (`stages.generate.contrastive`) on engine actors of its own;
  (b) kept: `engines.KeptEngines` starts the engine once; the evaluation's answers come from it
      (`eval_tasks.answer_prompts`), the generate stage's actors drive it, then it is released.
Sides alternate (a, b, a, b, ...) in one Ray instance after one untimed engine start; both must give the
same answers and the same generations table, sample for sample.

    python bench/bench_handover.py [--prompts 32] [--eval-prompts 16] [--repeats 2]
"""

import argparse
import os
import tempfile

import common
from bench_generate import WARM_UP


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    common.setup()
    import subprocess
    import sys

    import pyarrow.parquet as pq
    import ray

    from dlma_ray.workers import eval_tasks
    from dlma_ray.workers.engines import ENGINE_RUNTIME_ENV, KeptEngines
    from dlma_ray.stages.evaluate import load_eval_prompts
    from dlma_ray.run.layout import RunLayout
    from dlma_ray.model.loading import load_tokenizer
    from dlma_ray.stages.round import Round, model_for_actor
    from dlma_ray.stages.ray_session import init_ray
    from dlma_ray.stages.generate import contrastive

    common.header("bench_handover: the evaluation's engine kept for the next generate stage vs fresh engines")
    base = tempfile.mkdtemp(prefix="bench-handover-")
    overrides = [f"data.max_prompts={args.prompts}", f"generation.max_new_tokens={args.max_new_tokens}",
                 f"eval.max_prompts={args.eval_prompts}", f"eval.max_new_tokens={args.max_new_tokens}"]
    subprocess.run([sys.executable, "-c", WARM_UP], check=True, capture_output=True)  # files in the page cache
    cfg = common.bench_config(*overrides, f"run.dir={base}")
    init_ray(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False
    prompts = load_eval_prompts(cfg, load_tokenizer(common.model_dir()))
    count = {"fresh": 0, "kept": 0}

    def round_dir(side: str) -> str:
        count[side] += 1
        run = os.path.join(base, f"{side}{count[side]}")
        os.makedirs(os.path.join(run, "round_0"))
        os.symlink(common.model_dir(), os.path.join(run, "round_0", "policy"))  # round 0's "trained" policy
        return run

    def fresh():
        run = round_dir("fresh")
        c = common.bench_config(*overrides, f"run.dir={run}")
        policy = model_for_actor(os.path.join(run, "round_0", "policy"))
        task = ray.remote(num_cpus=c.resources.cpus_per_engine, runtime_env=ENGINE_RUNTIME_ENV)(eval_tasks.generate_answers)
        answers = ray.get(task.remote(policy, prompts, c))
        return answers, contrastive(Round(c, RunLayout(run), 1)).output

    def kept():
        run = round_dir("kept")
        c = common.bench_config(*overrides, f"run.dir={run}")
        policy = model_for_actor(os.path.join(run, "round_0", "policy"))
        engines = KeptEngines.start(c, policy, 1)
        try:
            answers = eval_tasks.answer_prompts(engines.engine(), policy, prompts, c)
            return answers, contrastive(Round(c, RunLayout(run), 1, engines)).output
        finally:
            engines.release()

    try:
        wall, _, out = common.interleaved({"fresh": fresh, "kept": kept}, args.repeats)
    finally:
        ray.shutdown()

    def samples(result):
        answers, table = result
        t = pq.read_table(table).to_pandas().sort_values("prompt_id")
        return [a["token_ids"] for a in answers], [list(x) for x in t.chosen_token_ids], [list(x) for x in t.rejected_token_ids]

    same = all(samples(o) == samples(out["fresh"][0]) for side in out for o in out[side])
    common.table(["side", "evaluation answers + generate stage (s)", "runs (s)", "engine starts"],
                 [["fresh engines", min(wall["fresh"]), common.runs(wall["fresh"]), 2],
                  ["kept engine", min(wall["kept"]), common.runs(wall["kept"]), 1]])
    common.say(f"kept / fresh time: {min(wall['kept']) / min(wall['fresh']):.2f}x (best of {args.repeats}); saved "
               f"{min(wall['fresh']) - min(wall['kept']):.1f} s; {len(prompts)} evaluation prompts, {args.prompts} "
               f"prompts x 2 sides; identical answers and tables on every run: {same}")
    common.footer()
    assert same, "a kept engine must sample what fresh engines sample"


if __name__ == "__main__":
    main()
