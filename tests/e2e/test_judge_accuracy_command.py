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
