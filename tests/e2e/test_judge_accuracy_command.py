"""`dlma-ray judge-accuracy` end to end: every policy judge against human labels, its readings checked against
direct computations."""

from __future__ import annotations

import json

import pytest
from labelled_runs import REPO

def test_judge_accuracy_command_counts_each_judges_agreement(tiny_model_dir, hh_file, tmp_path, tokenizer):
    """`dlma-ray judge-accuracy` on four human pairs: the policy's A/B readings (vLLM) equal the transformers
    reading of the same prompts, R equals a direct computation, and each row counts the margins above 0."""
    import os
    import subprocess
    import sys

    from dlma_ray.config import load_config
    from dlma_ray.evaluation.judges import ab
    from dlma_ray.model.loading import load_causal_lm
    from dlma_ray.stages.evaluate import load_eval_pairs
    from dlma_ray.workers.labelling import rlaif_prompts

    args = [f"model.path={tiny_model_dir}", f"run.dir={tmp_path}", f"eval.preference_pairs={hh_file}",
            "eval.max_pairs=4", "generation.cpu_kvcache_gb=1", "self_rewarding.num_judgements=2",
            "self_rewarding.judge_max_tokens=4", "rlaif.instruction=helpful"]
    result = subprocess.run([sys.executable, "-m", "dlma_ray", "judge-accuracy", "--judges", "self_reward,ab,five_point",
                             *args], cwd=REPO, env=dict(os.environ, RAY_ADDRESS="local"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "| `ab` | 4 |" in result.stdout and "95% interval" in result.stdout
    doc = json.loads((tmp_path / "judge_accuracy.json").read_text())
    rows = {r["judge"]: r for r in doc["judges"]}
    for name, margins in doc["margins"].items():
        assert len(margins) == 4 and rows[name]["count"] == sum(m > 0 for m in margins)
    assert all(-0.5 <= m <= 0.5 for m in doc["margins"]["ab"])
    assert all(-5 <= m <= 5 for m in doc["margins"]["five_point"])
    # the same pairs, read back as the command read them; the A/B margin against the transformers reading
    cfg = load_config(None, args)
    pairs, _ = load_eval_pairs(cfg, tokenizer)
    model = load_causal_lm(tiny_model_dir)
    p = pairs[0]
    prompts = [rlaif_prompts(tokenizer, [p["messages"]], [a], [b], [ab.HELPFUL_INSTRUCTION], "chat")[0]
               for a, b in ((p["chosen"], p["rejected"]), (p["rejected"], p["chosen"]))]
    first, second = ab.ab_preference(model, tokenizer, prompts)
    assert doc["margins"]["ab"][0] == pytest.approx(ab.preference_for_chosen([first], [second])[0] - 0.5, abs=2e-4)
    from conftest import direct_logprob
    from dlma_ray.model.logprobs import response_ids

    r = cfg.pair.renderer(tokenizer)
    ys = [response_ids(tokenizer, p[side], None, True, r.end_of_turn) for side in ("chosen", "rejected")]
    c = [direct_logprob(model, tokenizer, r.positive(p["messages"]), y)
         - direct_logprob(model, tokenizer, r.negative(p["messages"]), y) for y in ys]
    assert doc["margins"]["self_reward"][0] == pytest.approx(c[0] - c[1], abs=2e-3)


def test_judge_command_asks_the_policy_judges_in_both_orders(tiny_model_dir, hh_file, tmp_path, tokenizer):
    """`dlma-ray judge --judge ab` and `--judge five_point` on two answer files: the judge model (pi_0) reads both
    orders on a vLLM engine; each A/B pick agrees with the transformers reading of the same prompt, each 5-point
    pick with the two answers' mean points, and the human pairs are judged too."""
    import os
    import subprocess
    import sys

    from dlma_ray.config import load_config
    from dlma_ray.evaluation import headtohead as h2h
    from dlma_ray.evaluation.judges import ab
    from dlma_ray.model.loading import load_causal_lm
    from dlma_ray.workers.labelling import rlaif_prompts

    questions = ["How do I boil an egg?", "What is the capital of France?", "Name a primary colour."]
    answers = {"A": ["Put it in boiling water for nine minutes.", "Paris.", "Red."],
               "B": ["I will not help with that.", "Eggs are oval.", "The weather is nice."]}
    sampling = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "seed": 0}
    files = {}
    for side, texts in answers.items():
        files[side] = tmp_path / f"{side}.jsonl"
        files[side].write_text("".join(json.dumps({"prompt_id": f"p{i}", "messages": [{"role": "user", "content": q}],
                                                   "answer": a, "finished": True, **sampling}) + "\n"
                                       for i, (q, a) in enumerate(zip(questions, texts))))
    args = [f"model.path={tiny_model_dir}", f"run.dir={tmp_path}", f"eval.preference_pairs={hh_file}",
            "eval.max_pairs=2", "generation.cpu_kvcache_gb=1", "self_rewarding.num_judgements=2",
            "self_rewarding.min_valid_judgements=1", "self_rewarding.judge_max_tokens=4", "rlaif.instruction=helpful"]
    docs = {}
    for judge in ("ab", "five_point"):
        result = subprocess.run([sys.executable, "-m", "dlma_ray", "judge", str(files["A"]), str(files["B"]), *args,
                                 "--judge", judge, "--out", str(tmp_path / "h2h")], cwd=REPO,
                                env=dict(os.environ, RAY_ADDRESS="local"), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        docs[judge] = json.loads((tmp_path / "h2h" / f"A_vs_B.{judge}.json").read_text())
    for judge, doc in docs.items():
        assert doc["judge"] == judge and doc["judge_model"] == tiny_model_dir and doc["answers"] == "reused"
        assert doc["result"]["n"] == 3 and len(doc["human_verdicts"]) == 2
    for v in docs["five_point"]["verdicts"]:  # a score judge: both orders the same pick, from the means
        assert v["a_first"] == h2h.score_pick(v["score_a"], v["score_b"]) == v["b_first"]
        assert all(s != s or 0 <= s <= 5 for s in (v["score_a"], v["score_b"]))
    # the A/B judge's first-order pick of each prompt against the transformers reading of the same prompt
    cfg = load_config(None, args)
    model = load_causal_lm(tiny_model_dir)
    instruction, checked = [ab.HELPFUL_INSTRUCTION], 0
    for i, v in enumerate(docs["ab"]["verdicts"]):
        chat = [{"role": "user", "content": questions[i]}]
        prompts = [rlaif_prompts(tokenizer, [chat], [x], [y], instruction, cfg.pair.style)[0]
                   for x, y in ((answers["A"][i], answers["B"][i]), (answers["B"][i], answers["A"][i]))]
        p_first, p_second = ab.ab_preference(model, tokenizer, prompts)
        for p, pick in ((p_first, v["a_first"]), (p_second, v["b_first"])):
            if abs(p - 0.5) > 1e-3:  # a reading this close to a tie may round either way on the engine
                assert pick == h2h.probability_pick(p), (i, p, v)
                checked += 1
    assert checked >= 3, "too few readings away from a tie to check the picks"
