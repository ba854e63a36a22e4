"""One whole round through `dlma_ray.pipeline.run`: per-stage seconds vs the wall time.

Runs a small round (data.max_prompts=16, generation.max_new_tokens=32, rounds.count=1,
eval.enabled=false) into a temporary run dir, then prints each stage's seconds from state.json,
their sum, and the wall time split into Ray start, the stages, and everything else (run-state
bookkeeping, logging, ...). The Ray start is timed by calling `init_ray` before `run`, which then
finds Ray already up.

    python bench/bench_round.py [--prompts 16] [--max-new-tokens 32] [extra.dotted=overrides ...]
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import common


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    wall_start = time.perf_counter()
    common.setup()
    import ray

    from dlma_ray.pipeline import run
    from dlma_ray.stages.ray_session import init_ray

    common.header("bench_round: one pipeline round, stage seconds vs wall time")
    run_dir = os.path.join(tempfile.mkdtemp(prefix="bench-round-"), "run")
    cfg = common.bench_config(f"data.max_prompts={args.prompts}", f"generation.max_new_tokens={args.max_new_tokens}",
                              "rounds.count=1", "eval.enabled=false", f"run.dir={run_dir}", *args.overrides)
    t = {}
    with common.timed(t, "ray_start"):
        init_ray(cfg)
    with common.timed(t, "run"):
        run(cfg)
    with common.timed(t, "ray_shutdown"):
        ray.shutdown()
    wall = time.perf_counter() - wall_start

    stages = json.loads(open(os.path.join(run_dir, "state.json")).read())["stages"]
    rows = [[s["round"], s["stage"], s["rows"], s["seconds"], s["seconds"] / wall] for s in stages]
    total = sum(s["seconds"] for s in stages)
    other = t["run"] - total
    rows += [["", "sum of stages", "", total, total / wall],
             ["", "Ray start (init_ray)", "", t["ray_start"], t["ray_start"] / wall],
             ["", "rest of run() outside stages", "", other, other / wall],
             ["", "Ray shutdown", "", t["ray_shutdown"], t["ray_shutdown"] / wall],
             ["", "imports and config (before Ray)",
              "", wall - t["ray_start"] - t["run"] - t["ray_shutdown"],
              (wall - t["ray_start"] - t["run"] - t["ray_shutdown"]) / wall],
             ["", "wall time (script, after interpreter start)", "", wall, 1.0]]
    train = next((s for s in stages if s["stage"] == "train"), {})
    steps = (train.get("metrics") or {}).get("step")
    common.say(f"config: {args.prompts} prompts, max_new_tokens {args.max_new_tokens}, train steps {steps}, "
          f"global batch {cfg.train.global_batch_size}; run dir {run_dir}")
    common.table(["round", "stage", "rows", "seconds", "share of wall"], rows)
    common.say(f"overhead (wall - sum of stages): {wall - total:.1f} s = {(wall - total) / wall:.0%} of wall; "
          f"stages / wall = {total / wall:.2f}")
    if not args.keep:
        shutil.rmtree(os.path.dirname(run_dir), ignore_errors=True)
    common.footer()


if __name__ == "__main__":
    main()
