"""pi_0's evaluation answers from round 0's generate engines (pipeline.answers_baseline_on_generate,
stages/baseline.py): when the pipeline asks for them, and that a matching cache or engines of another model make
none. The answers against a fresh engine's: tests/e2e/test_engine_handover.py; end to end:
tests/e2e/test_killed_run.py."""

import json

from dlma_ray import methods
from dlma_ray.config import load_config
from dlma_ray.pipeline import answers_baseline_on_generate
from dlma_ray.stages.baseline import answer_baseline, read_baseline
from dlma_ray.stages.round import initial_model
from dlma_ray.stages.evaluate import load_eval_prompts
from dlma_ray.workers.eval_tasks import answer_sampling
from dlma_ray.workers.engines import KeptEngines

ALL = [(k, s) for k in (0, 1) for s in ("generate", "score", "train", "evaluate")]


def test_round_0_generate_keeps_its_engines_for_pi0_answers():
    cfg = load_config(None, [])
    method = methods.check(cfg)
    assert answers_baseline_on_generate(cfg, method, 0, ALL)
    assert not answers_baseline_on_generate(cfg, method, 1, ALL[4:]), "pi_1's engines answer no baseline"
    assert not answers_baseline_on_generate(cfg, method, 0, ALL[:3]), "no evaluation in this job"
    for off in ("eval.enabled=false", "resources.keep_engines=false"):
        c = load_config(None, [off])
        assert not answers_baseline_on_generate(c, methods.check(c), 0, ALL), off
    dpo = load_config(None, ["train.method=dpo", "data.source=builtin:demo-pairs"])
    assert not answers_baseline_on_generate(dpo, methods.check(dpo), 0, ALL), "a method that samples on no engine"


def test_no_answers_from_other_engines_or_over_a_matching_cache(tmp_path, tokenizer):
    cfg = load_config(None, ["eval.max_prompts=3"])
    prompts = load_eval_prompts(cfg, tokenizer)
    path = str(tmp_path / "baseline_answers.jsonl")
    unused = KeptEngines("some/other/policy", hosts=[object()])  # never called: it holds another model
    assert answer_baseline(cfg, unused, path, prompts) == 0 and read_baseline(path, prompts, cfg) is None
    rows = [{**p, "model": initial_model(cfg), "answer": "x", "token_ids": [1], "tokens": 1, "finished": True,
             **answer_sampling(cfg)} for p in prompts]
    (tmp_path / "baseline_answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cached = KeptEngines(initial_model(cfg), hosts=[object()])  # never called: the cache matches
    assert answer_baseline(cfg, cached, path, prompts) == 0
    assert read_baseline(path, prompts, cfg) == rows
