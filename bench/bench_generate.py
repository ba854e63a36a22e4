"""Generation: the pipeline's generate stage vs standalone vLLM vs HF transformers `generate`.

Same prompts (N of the run's prompt set, each rendered under the positive and the negative prompt =
2N requests), same sampling (`generate.sampling_params`: temperature, top_p, top_k, max_new_tokens, the
end-of-turn stop), the pipeline's per-request seeds on both vLLM sides.
  (a) pipeline: `stages.generate.contrastive` (prompt loading, Ray Data, engine actor start, generate, Parquet
      write); inside the actor, `from vllm import LLM`, the engine's start and its generate call are timed.
  (a') kept engine: the engine of `engines.KeptEngines` (an `EngineHost` actor, no Ray Data stage beside it,
      as evaluate(k) starts it for round k+1's generate stage), one `generate` call from the driver.
  (b) standalone: `from vllm import LLM`, `vllm.LLM(...)` with the pipeline's engine arguments, one
      `llm.generate` over the same rendered prompts.
  (c) HF: one batched, left-padded `model.generate(do_sample=True, top_k=generation.top_k)` over the same
      prompts, with as many torch threads as vLLM's CPU worker computes with (all cores but one).
tokens/s counts generated tokens, end-of-turn included (HF rows up to their first EOS).

    python bench/bench_generate.py [--prompts 32] [--max-new-tokens 64] [--source builtin:demo] [key=value ...]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import common
from dlma_ray.workers.generation import GenerationEngine

WARM_UP = ("import sys; sys.path.insert(0, %r); import common; common.setup(); "
           "from dlma_ray.workers.engines import start_engine, stop_engine; "
           "stop_engine(start_engine(common.model_dir(), vars(common.bench_config().generation)))"
           % os.path.dirname(os.path.abspath(__file__)))
TIMES_FILE = os.path.join(tempfile.gettempdir(), f"bench-generate-{os.getpid()}.jsonl")


class TimedEngine(GenerationEngine):
    """The pipeline's engine, logging its start and its generate calls to TIMES_FILE."""

    times_file = TIMES_FILE

    def __init__(self, *a, **kw):
        t0 = time.perf_counter()
        # Timed apart from the engine start proper, as (b) times it. `vllm.LLM` is imported lazily: `import vllm`
        # alone left about 4 s of the import inside this side's engine start (until 2026-12-02).
        from vllm import LLM  # noqa: F401

        t1 = time.perf_counter()
        super().__init__(*a, **kw)
        self._log(import_s=t1 - t0, init_s=time.perf_counter() - t1)
        generate = self.llm.generate

        def timed_generate(*ga, **gk):
            t = time.perf_counter()
            outs = generate(*ga, **gk)
            self._log(generate_s=time.perf_counter() - t)
            return outs

        self.llm.generate = timed_generate  # an instance attribute: only this engine's calls

    def _log(self, **kw):
        with open(self.times_file, "a") as fh:
            fh.write(json.dumps(kw) + "\n")


def pipeline_side(cfg, run_dir):
    import pyarrow.parquet as pq
    import ray

    import dlma_ray.workers.generation
    from dlma_ray.run.layout import RunLayout
    from dlma_ray.stages.round import Round
    from dlma_ray.stages.ray_session import init_ray
    from dlma_ray.stages.generate import contrastive

    t = {}
    with common.timed(t, "ray_start"):
        init_ray(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False
    dlma_ray.workers.generation.GenerationEngine = TimedEngine  # the stage imports the class when called
    try:
        with common.timed(t, "total"):
            out = contrastive(Round(cfg, RunLayout(run_dir), 0)).output
    finally:
        dlma_ray.workers.generation.GenerationEngine = GenerationEngine
        ray.shutdown()
    logs = [json.loads(line) for line in open(TIMES_FILE)]
    os.remove(TIMES_FILE)
    for key in ("import", "init", "generate"):
        t[key] = sum(x.get(f"{key}_s", 0) for x in logs)
    table = pq.read_table(out).to_pandas().set_index("prompt_id")
    # the tables keep a response's content; the stop token the engine also generated counts here, as in (b)
    t["tokens"] = int(table.chosen_tokens.sum() + table.rejected_tokens.sum() + table.chosen_finished.sum()
                      + table.rejected_finished.sum())
    return t, table


def vllm_side(g, prompts, seeds, end_of_turn):
    t = {}
    with common.timed(t, "import"):
        from vllm import LLM, SamplingParams

        from dlma_ray.workers.engines import engine_kwargs
        from dlma_ray.workers.generation import sampling_params, stop_token_ids
    with common.timed(t, "init"):
        llm = LLM(**engine_kwargs(common.model_dir(), g, 1, False))
    # The pipeline's sampling settings, request by request (top_k and the end-of-turn stop included).
    stop = stop_token_ids(llm.get_tokenizer(), end_of_turn)
    params = [sampling_params(g, g["max_new_tokens"], s, stop) for s in seeds]
    assert all(isinstance(p, SamplingParams) for p in params)
    with common.timed(t, "generate"):
        outs = llm.generate(prompts, params, use_tqdm=False)
    llm.llm_engine.engine_core.shutdown()  # stop the engine processes before HF runs
    t["tokens"] = sum(len(o.outputs[0].token_ids) for o in outs)
    t["total"] = t["import"] + t["init"] + t["generate"]
    return t, [o.outputs[0].text for o in outs]


def host_side(cfg, prompts, seeds, end_of_turn):
    import ray

    from dlma_ray.workers.engines import KeptEngines
    from dlma_ray.workers.generation import sampling_params, stop_token_ids
    from dlma_ray.stages.ray_session import init_ray

    g = vars(cfg.generation)
    init_ray(cfg)
    kept = KeptEngines.start(cfg, common.model_dir(), 1)
    try:
        started = ray.get(kept.hosts[0].started_in.remote())  # returns once the engine has started
        t = {"import": started["import"], "init": started["engine"]}
        engine = kept.engine()
        stop = stop_token_ids(engine.get_tokenizer(), end_of_turn)
        params = [sampling_params(g, g["max_new_tokens"], s, stop) for s in seeds]
        with common.timed(t, "generate"):
            outs = engine.generate(prompts, params)
    finally:
        kept.release()
        ray.shutdown()
    t["tokens"] = sum(len(o.outputs[0].token_ids) for o in outs)
    t["total"] = t["import"] + t["init"] + t["generate"]
    return t, [o.outputs[0].text for o in outs]


def hf_side(g, prompts):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # vLLM's CPU worker computes on all cores but one (reserved for its scheduler): give HF as many threads.
    t = {"import": 0.0, "threads": max(1, len(os.sched_getaffinity(0)) - 1)}
    torch.set_num_threads(t["threads"])
    with common.timed(t, "init"):
        tok = AutoTokenizer.from_pretrained(common.model_dir(), padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(common.model_dir(), dtype=torch.float32)
        model = model.to(common.device()).eval()
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(g["seed"])
    with common.timed(t, "generate"), torch.no_grad():
        gen = model.generate(**enc, do_sample=True, temperature=g["temperature"], top_p=g["top_p"],
                             top_k=max(g["top_k"], 0),
                             max_new_tokens=g["max_new_tokens"], pad_token_id=tok.pad_token_id)
    new = gen[:, enc.input_ids.shape[1]:]
    eos = (new == tok.eos_token_id).int()
    t["tokens"] = int(torch.where(eos.any(1), eos.argmax(1) + 1, new.shape[1]).sum())
    t["total"] = t["init"] + t["generate"]
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--source", default="builtin:demo", help="data.source (e.g. an hh-rlhf .jsonl.gz)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. resources.gpus_per_engine=1 on a GPU")
    args = ap.parse_args()
    common.setup()
    from dlma_ray.workers.generation import request_seed

    common.header("bench_generate: pipeline generate stage vs standalone vLLM vs HF generate")
    # Whichever side starts an engine first would otherwise also pay for reading torch's, vLLM's and the model's
    # files from disk into the page cache: one whole engine start and stop first, measured for neither side.
    # (`import vllm` alone leaves the imports of the engine's core and worker processes and the model uncached.)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", WARM_UP], check=True, capture_output=True)
    common.say(f"page cache warmed by one engine start and stop in a subprocess: {time.perf_counter() - t0:.1f} s")
    run_dir = tempfile.mkdtemp(prefix="bench-generate-")
    cfg = common.bench_config(f"data.source={args.source}", f"data.max_prompts={args.prompts}",
                              f"generation.max_new_tokens={args.max_new_tokens}", f"run.dir={run_dir}",
                              *args.overrides)
    g = vars(cfg.generation)
    pipe, table = pipeline_side(cfg, run_dir)
    prompts = list(table.pos_context) + list(table.neg_context)
    seeds = [request_seed(g["seed"], 0, i, side) for side in ("pos", "neg") for i in table.index]
    common.say(f"{len(table)} prompts x 2 sides = {len(prompts)} requests; temperature {g['temperature']}, "
               f"top_p {g['top_p']}, max_new_tokens {g['max_new_tokens']}, dtype {g['dtype']}")
    kept, kept_texts = host_side(cfg, prompts, seeds, str(table.end_of_turn.iloc[0]))
    vl, texts = vllm_side(g, prompts, seeds, str(table.end_of_turn.iloc[0]))
    hf = hf_side(g, prompts)

    rows = []
    for name, t in (("(a) pipeline stage", pipe), ("(a') kept engine (EngineHost actor)", kept),
                    ("(b) standalone vLLM", vl), ("(c) HF generate, batched", hf)):
        start = t["import"] + t["init"]
        rows.append([name, start, t["generate"], t["total"], t["tokens"], t["tokens"] / t["generate"],
                     t["tokens"] / t["total"]])
    common.table(["side", "start s (import + engine/model)", "generate s", "total s", "tokens",
                  "tokens/s generate", "tokens/s total"], rows)
    common.say(f"start = import + engine: (a) {pipe['import']:.1f} + {pipe['init']:.1f} s in the actor, "
               f"(a') {kept['import']:.1f} + {kept['init']:.1f} s in the host, "
               f"(b) {vl['import']:.1f} + {vl['init']:.1f} s in this process")
    common.say(f"ratio engine start (vllm.LLM, import apart) vs standalone: (a) {pipe['init'] / vl['init']:.2f}, "
               f"(a') {kept['init'] / vl['init']:.2f}")
    rest = pipe["total"] - pipe["import"] - pipe["init"] - pipe["generate"]
    common.say(f"(a) Ray start {pipe['ray_start']:.1f} s before the stage (not in its total); the stage's rest "
               f"(prompt loading, Ray Data, actor launch, Parquet write): {rest:.1f} s")
    same = sum(a == b for a, b in zip(texts, list(table.chosen) + list(table.rejected)))
    common.say(f"HF torch threads: {hf['threads']}; vLLM binds its own (VLLM_CPU_OMP_THREADS_BIND="
               f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')})")
    common.say(f"identical responses pipeline vs standalone vLLM (same seeds): {same}/{len(texts)}; kept engine vs "
               f"standalone: {sum(a == b for a, b in zip(texts, kept_texts))}/{len(texts)}")
    tps = {k: (t["tokens"] / t["generate"], t["tokens"] / t["total"])
           for k, t in (("a", pipe), ("k", kept), ("b", vl), ("c", hf))}
    common.say(f"ratio pipeline/standalone vLLM (tokens/s): generate call {tps['a'][0] / tps['b'][0]:.2f}, "
               f"total {tps['a'][1] / tps['b'][1]:.2f}")
    common.say(f"ratio kept engine/standalone vLLM (tokens/s): generate call {tps['k'][0] / tps['b'][0]:.2f}, "
               f"total {tps['k'][1] / tps['b'][1]:.2f}")
    common.say(f"ratio vLLM/HF (tokens/s): generate call {tps['b'][0] / tps['c'][0]:.2f}, "
               f"total {tps['b'][1] / tps['c'][1]:.2f}")
    common.footer()


if __name__ == "__main__":
    main()
