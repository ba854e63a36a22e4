"""The evaluate stage's pieces: the eval pairs and prompts, the tasks' numbers against direct computations
on the tiny model in-process, the reward-model judge, pi_0's fixed scores, and the job's latest policy.

The evaluate stage (`run_round`) for real (Ray + vLLM) on a hand-built one-round run: tests/e2e/test_evaluate_stage.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dlma_ray.config.tree import load_config
from conftest import direct_logprob, eot_ids
from reward_model import tiny_reward_model
from dlma_ray.evaluation.measures import assemble_measures
from dlma_ray.evaluation.refusal import refusal_rates

PAIRS_FILE = Path(__file__).resolve().parents[4] / "shared/data/hh-rlhf-harmless/pairs.jsonl.gz"


def test_builtin_demo_pairs_and_eval_prompts(tokenizer):
    from dlma_ray.stages.evaluate import load_eval_pairs, load_eval_prompts, pairs_source_path

    rows, info = load_eval_pairs(load_config(None, ["eval.max_pairs=0"]), tokenizer)
    assert len(rows) == 32 and info["n"] == 32 and info["too_long"] == 0 and "kept 32" in info["summary"]
    assert any(len(r["messages"]) == 3 for r in rows)  # multi-turn rows keep their history
    rows8, _ = load_eval_pairs(load_config(None, ["eval.max_pairs=8"]), tokenizer)
    assert len(rows8) == 8 and rows8 == load_eval_pairs(load_config(None, ["eval.max_pairs=8"]), tokenizer)[0]
    prompts = load_eval_prompts(load_config(None, ["eval.max_prompts=6"]), tokenizer)
    assert len(prompts) == 6 and {p["kind"] for p in prompts} <= {"harmful", "borderline"}
    with pytest.raises(ValueError, match="not a built-in"):
        pairs_source_path("builtin:nope")


@pytest.mark.skipif(not PAIRS_FILE.exists(), reason=f"{PAIRS_FILE} not present")
def test_real_hh_pairs_load_and_filter(tokenizer):
    from dlma_ray.stages.evaluate import load_eval_pairs

    cfg = load_config(None, [f"eval.preference_pairs={PAIRS_FILE}", "eval.max_pairs=16"])
    rows, info = load_eval_pairs(cfg, tokenizer)
    assert len(rows) == 16 and info["too_long"] > 0  # long multi-turn dialogues exceed max_prompt_tokens


def test_evaluation_tasks_in_process(tiny_model_dir, tokenizer):
    """The tasks' numbers against direct computations; a policy equal to pi_0 has gain, KL and implicit
    margins of exactly 0."""
    from dlma_ray.workers.eval_tasks import initial_model_scores, policy_scores
    from dlma_ray.stages.baseline import read_baseline
    from dlma_ray.stages.evaluate import load_eval_pairs, load_neutral_text

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "eval.max_pairs=4", "eval.batch_size=4",
                             "eval.rlaif_judge=true"])
    pairs, _ = load_eval_pairs(cfg, tokenizer)
    neutral = load_neutral_text(cfg)[:3]
    eot = eot_ids(tokenizer)
    held = [{"pos_context": "<|im_start|>system\ngood<|im_end|>\n", "neg_context": "<|im_start|>system\nbad<|im_end|>\n",
             "end_of_turn": "<|im_end|>", "chosen": "yes", "rejected": "no", "self_reward": 1.5, "prompt_id": "x",
             "chosen_token_ids": [9, 10], "rejected_token_ids": [11], "chosen_finished": True, "rejected_finished": False}]
    msgs = [{"role": "user", "content": "hi"}]
    answers = [{"messages": msgs, "answer": "Hello!", "prompt_id": "a", "token_ids": [19556, 17], "finished": True,
                "kind": "harmful", "tokens": 2},
               {"messages": msgs, "answer": "Go", "prompt_id": "b", "token_ids": [9019], "finished": False,
                "kind": "borderline", "tokens": 1}]
    init = initial_model_scores(cfg, tiny_model_dir, answers, answers, pairs, neutral)
    pol = policy_scores(cfg, tiny_model_dir, answers, pairs, held, neutral)
    from dlma_ray.model.loading import load_causal_lm

    model, r = load_causal_lm(tiny_model_dir), cfg.pair.renderer(tokenizer)
    ids = [[19556, 17] + eot, [9019]]  # end-of-turn only after the finished answer
    direct = [direct_logprob(model, tokenizer, r.positive(msgs), i) - direct_logprob(model, tokenizer, r.negative(msgs), i)
              for i in ids]
    assert init["contrast_policy"] == pytest.approx(direct, abs=1e-4) and init["tokens_policy"] == [3, 1]
    held_ids = ([9, 10] + eot, [11])
    by_hand = (direct_logprob(model, tokenizer, held[0]["pos_context"], held_ids[0])
               - direct_logprob(model, tokenizer, held[0]["neg_context"], held_ids[0])) \
        - (direct_logprob(model, tokenizer, held[0]["pos_context"], held_ids[1])
           - direct_logprob(model, tokenizer, held[0]["neg_context"], held_ids[1]))
    assert pol["heldout_r"] == pytest.approx([by_hand], abs=1e-3)
    assert len(pol["self_reward_human"]) == 4 and pol["rlaif"]["n"] == 4 and len(pol["neutral"][0]) == 3
    m, _ = assemble_measures(answers, answers, init, pol, None, beta=0.1, seed=0, refusal_rates=refusal_rates)
    assert m["distillation_gain"]["mean"] == 0.0 and m["win_rate"]["ties"] == 2
    assert m["kl_to_initial"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert m["implicit_reward_margin"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert m["perplexity_neutral"]["value"] == pytest.approx(m["perplexity_neutral_initial"]["value"], rel=1e-5)
    from dlma_ray.stages.round import model_for_actor

    assert model_for_actor(tiny_model_dir) == tiny_model_dir and model_for_actor("builtin:x") == "builtin:x"
    assert model_for_actor("org/m") == "org/m"
    assert read_baseline(str(Path(tiny_model_dir) / "none.jsonl"), [], cfg) is None


def test_job_finds_the_latest_policy(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_job", Path(__file__).resolve().parents[3] / "jobs/evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    with pytest.raises(SystemExit, match="no trained policy"):
        job.latest_round(str(tmp_path))
    for k in (0, 1):
        (tmp_path / f"round_{k}" / "policy").mkdir(parents=True)
        (tmp_path / f"round_{k}" / "policy" / "config.json").write_text("{}")
    (tmp_path / "round_2" / "pairs").mkdir(parents=True)  # round 2 still running: no policy yet
    (tmp_path / "round_2" / "policy").mkdir()  # an incomplete folder is not a policy
    assert job.latest_round(str(tmp_path)) == 1



def test_self_reward_against_a_reward_model_judge(tmp_path, tiny_model_dir, tiny_model, tokenizer):
    """With eval.judge=reward_model, the round's generated pairs are judged by the reward model and R's sign
    is scored against it by |R| range; the margins are the reward model's own scores, computed directly."""
    from dlma_ray.workers.eval_tasks import initial_model_scores, text_judge_preferences
    from dlma_ray.evaluation.judges import rlaif_judge
    from dlma_ray.model.scoremodel import reward_model_scores
    from dlma_ray.evaluation.score_analysis import score_analysis

    rm = tiny_reward_model(tmp_path / "rm", tiny_model_dir, tokenizer)
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "eval.judge=reward_model", f"eval.judge_model={tmp_path / 'rm'}"])
    msgs = [{"role": "user", "content": "Say something."}]
    answers = [{"messages": msgs, "answer": "Hi.", "prompt_id": "a", "token_ids": None, "finished": True,
                "kind": "", "tokens": 2}]
    judged = [{"messages": msgs, "chosen": f"A fine answer {i}.", "rejected": f"No {i}", "self_reward": r}
              for i, r in enumerate([3.0, -0.5, 12.0, 0.2])]
    out = initial_model_scores(cfg, tiny_model_dir, answers, answers, [], [], judged, None, True)
    # pi_0 (here the model whose R the pairs carry) also judged them in text, as rlaif_judge does directly
    _, direct = rlaif_judge(tiny_model, tokenizer, [(msgs, p["chosen"], p["rejected"]) for p in judged])
    assert out["judged_pair_rlaif"] == pytest.approx(direct, abs=1e-4)
    # from round 1 on, pi_k is not pi_0: a task of its own asks it
    assert text_judge_preferences(cfg, tiny_model_dir, judged) == pytest.approx(direct, abs=1e-4)
    plus = reward_model_scores(rm, tokenizer, [msgs] * 4, [p["chosen"] for p in judged])
    minus = reward_model_scores(rm, tokenizer, [msgs] * 4, [p["rejected"] for p in judged])
    assert out["judge_pair_margins"] == pytest.approx([a - b for a, b in zip(plus, minus)], abs=1e-4)
    rewards = [p["self_reward"] for p in judged]
    m, d = score_analysis(rewards, out["judge_pair_margins"])
    agree = sum((r > 0) == (j > 0) for r, j in zip(rewards, out["judge_pair_margins"]))
    assert m["self_reward_vs_judge"]["n"] == 4 and m["self_reward_vs_judge"]["count"] == agree
    assert sum(b["n"] for b in d["self_reward_vs_judge_bins"]) == 4


def test_pi0_fixed_scores_are_reused_not_recomputed(tiny_model_dir, tokenizer):
    """pi_0's scores of its own answers, the human pairs and the neutral text do not change across rounds:
    handed back (from baseline_scores.json), they are used as they are; the policy's own are always new."""
    from dlma_ray.workers.eval_tasks import FIXED_SCORES, initial_model_scores
    from dlma_ray.stages.evaluate import fixed_scores_key, load_eval_pairs

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "eval.max_pairs=2"])
    pairs, _ = load_eval_pairs(cfg, tokenizer)
    msgs = [{"role": "user", "content": "hi"}]
    answers = [{"messages": msgs, "answer": "Hello", "prompt_id": "a", "token_ids": [19556], "finished": True}]
    first = initial_model_scores(cfg, tiny_model_dir, answers, answers, pairs, [])
    planted = {k: first[k] for k in FIXED_SCORES} | {"contrast_baseline": [123.0]}
    again = initial_model_scores(cfg, tiny_model_dir, answers, answers, pairs, [], None, planted)
    assert again["contrast_baseline"] == [123.0] and again["pairs_chosen"] == first["pairs_chosen"]
    assert again["contrast_policy"] == pytest.approx(first["contrast_policy"], abs=1e-6)
    other = [{**answers[0], "token_ids": [19557]}]
    assert fixed_scores_key(cfg, answers, pairs, []) != fixed_scores_key(cfg, other, pairs, [])
