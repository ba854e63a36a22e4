"""The evaluate stage's pieces: the eval pairs and prompts, the tasks' numbers against direct computations
on the tiny model in-process, the reward-model judge, pi_0's fixed scores, and the job's latest policy.

The one slow test runs the evaluate stage (`run_round`) for real (Ray + vLLM) on a hand-built one-round run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dlma_ray.config.tree import load_config
from conftest import direct_logprob, eot_ids
from dlma_ray.evaluation.measures import assemble_measures
from dlma_ray.evaluation.refusal import refusal_rates

PAIRS_FILE = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless/pairs.jsonl.gz"


# ---------------------------------------------------------------- the evaluate stage's pieces, in-process

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
    from dlma_ray.stages.common import model_for_actor

    assert model_for_actor(tiny_model_dir) == tiny_model_dir and model_for_actor("builtin:x") == "builtin:x"
    assert model_for_actor("org/m") == "org/m"
    assert read_baseline(str(Path(tiny_model_dir) / "none.jsonl"), [], cfg) is None


def test_job_finds_the_latest_policy(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_job", Path(__file__).resolve().parents[1] / "jobs/evaluate.py")
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


# ---------------------------------------------------------------- the real stage (slow)

def _hand_made_run(run: Path, model_dir: str, tokenizer) -> None:
    from dlma_ray.core.prompts import ContrastiveRenderer, pair_from_config
    from dlma_ray.core.schema import PAIR_SCHEMA

    shutil.copytree(model_dir, run / "round_0" / "policy")
    (run / "round_0" / "policy" / "train_metrics.jsonl").write_text("".join(
        json.dumps({"loss": 0.69 - 0.05 * i, "reward_margin": 0.1 * i, "reward_accuracy": 0.5, "step": i + 1,
                    "rewards_chosen": 0.0, "rewards_rejected": 0.0, "lr": 1e-3}) + "\n" for i in range(3)))
    r = ContrastiveRenderer(tokenizer, pair_from_config("harmless"))
    rows = []
    for i in range(6):
        chat = [{"role": "user", "content": f"Question number {i}?"}]
        rows.append({"prompt_id": f"p{i:02d}", "messages_json": json.dumps(chat), "prompt": chat[0]["content"],
                     "kind": "", "split": "heldout" if i < 4 else "train", "round": 0, "policy": model_dir,
                     "pos_context": r.positive(chat), "neg_context": r.negative(chat), "plain_context": r.plain(chat),
                     "end_of_turn": r.end_of_turn, "chosen": f"A kind answer {i}.", "rejected": f"A rude answer {i}.",
                     "chosen_tokens": 4, "rejected_tokens": 4, "chosen_finished": True, "rejected_finished": True,
                     "logp_pos_chosen": -1.0, "logp_neg_chosen": -2.0, "logp_pos_rejected": -2.0,
                     "logp_neg_rejected": -1.0, "self_reward": [2.0, -0.5, 12.0, 0.3, 45.0, 3.0][i],
                     "ref_logp_chosen": -3.0, "ref_logp_rejected": -3.0})
    (run / "round_0" / "pairs").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), run / "round_0" / "pairs" / "part-0.parquet")


@pytest.mark.slow
def test_run_evaluate_for_real(tmp_path, tiny_model_dir, tokenizer):
    import ray

    from dlma_ray.stages.evaluate import run_round
    from dlma_ray.run.layout import RunLayout
    from dlma_ray.stages.common import Round
    from dlma_ray.views.report import write_report

    run = tmp_path / "run"
    _hand_made_run(run, tiny_model_dir, tokenizer)
    rm = _tiny_reward_model(tmp_path / "rm", tiny_model_dir, tokenizer)  # the external judge
    cfg = load_config(None, [f"model.path={tiny_model_dir}", f"run.dir={run}", "eval.max_pairs=8",
                             "eval.max_prompts=4", "eval.max_new_tokens=8", "eval.heldout_pairs=4", "eval.rlaif_judge=true",
                             "generation.cpu_kvcache_gb=1", "rounds.count=1", "eval.judge=reward_model",
                             f"eval.judge_model={tmp_path / 'rm'}"])
    try:
        result = run_round(Round(cfg, RunLayout(str(run)), 0))
        path, rows = result.output, result.rows
    finally:
        ray.shutdown()
    assert path == str(run / "round_0" / "eval.json") and rows == 4
    ev = json.loads(Path(path).read_text())
    m = ev["measures"]
    assert ev["round"] == 0 and m["self_reward_accuracy_human"]["n"] == 8 and m["rlaif_accuracy_human"]["n"] == 8
    assert m["implicit_reward_accuracy"]["n"] == 8 and m["heldout_pairs_r"]["n"] == 4
    assert m["win_rate"]["n"] == 4 and ev["judge"] == "reward_model"
    assert m["distillation_gain"]["n"] == 4 and m["distillation_gain"]["mean"] == 0.0  # same weights, same answers
    assert ev["details"]["refusal_judge"]["n"] >= 80
    answers = [json.loads(x) for x in (run / "round_0" / "answers.jsonl").read_text().splitlines()]
    baseline = [json.loads(x) for x in (run / "baseline_answers.jsonl").read_text().splitlines()]
    assert len(answers) == len(baseline) == 4 and all(0 < a["tokens"] <= 8 for a in answers)
    # Same weights, same per-prompt seeds: the round-0 policy (a copy of the model) answers exactly like round 0.
    assert [a["answer"] for a in answers] == [b["answer"] for b in baseline]
    assert m["win_rate"]["ties"] == 4  # identical answers tie by rule, whatever the judge
    _check_generated_pairs_judged(run, ev, rm, tiny_model_dir, tokenizer)
    report = Path(write_report(str(run)))
    assert report.exists() and (run / "report" / "eval_metrics.png").stat().st_size > 5000
    md = report.read_text()
    assert "judged by **reward model" in md and "| 0 | RLAIF text judge vs judge, same pairs |" in md
    assert (run / "report" / "generated_pairs_vs_judge.png").stat().st_size > 5000


def _check_generated_pairs_judged(run: Path, ev: dict, rm, tiny_model_dir: str, tokenizer) -> None:
    """The paper's Figure 3 on the round's 6 generated pairs (4 held-out first): the reward model was asked
    about y+ and y- of each, its margins are its own scores computed here, the text judge was pi_0 (the model
    whose R they carry in round 0), and eval.json's numbers follow from the verdicts kept for a resume."""
    from dlma_ray.evaluation.judges import reward_model_scores
    from dlma_ray.evaluation.score_analysis import score_analysis

    info = ev["details"]["generated_pairs_judged"]
    assert (info["pairs"], info["heldout"], info["train"]) == (6, 4, 2)
    assert info["judge"] == f"reward model {run.parent / 'rm'}" and info["r_model"] == info["text_judge"] == tiny_model_dir
    kept = json.loads((run / "round_0" / "judged_pairs.json").read_text())
    rows = sorted(pq.read_table(run / "round_0" / "pairs").to_pylist(),
                  key=lambda r: (r["split"] != "heldout", r["prompt_id"]))
    assert kept["prompt_ids"] == [r["prompt_id"] for r in rows]
    chats = [json.loads(r["messages_json"]) for r in rows]
    plus = reward_model_scores(rm, tokenizer, chats, [r["chosen"] for r in rows])
    minus = reward_model_scores(rm, tokenizer, chats, [r["rejected"] for r in rows])
    assert kept["judge_margins"] == pytest.approx([a - b for a, b in zip(plus, minus)], abs=1e-4)
    assert len(kept["rlaif_preferences"]) == 6 and all(0 <= p <= 1 for p in kept["rlaif_preferences"])
    m, d = score_analysis([r["self_reward"] for r in rows], kept["judge_margins"], kept["rlaif_preferences"])
    for name in ("self_reward_vs_judge", "rlaif_vs_judge"):
        got = ev["measures"][name]
        assert (got["count"], got["n"], got["ci95"]) == (m[name]["count"], info["judged"], m[name]["ci95"])
    assert [b["n"] for b in ev["details"]["self_reward_vs_judge_bins"]] == [b["n"] for b in d["self_reward_vs_judge_bins"]]


def _tiny_reward_model(folder: Path, tiny_model_dir: str, tokenizer):
    """A one-label sequence-classification head on the tiny Llama, saved as safetensors with the tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_config(config).eval()
    rm.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return rm


def test_self_reward_against_a_reward_model_judge(tmp_path, tiny_model_dir, tiny_model, tokenizer):
    """With eval.judge=reward_model, the round's generated pairs are judged by the reward model and R's sign
    is scored against it by |R| range; the margins are the reward model's own scores, computed directly."""
    from dlma_ray.workers.eval_tasks import initial_model_scores, text_judge_preferences
    from dlma_ray.evaluation.judges import reward_model_scores, rlaif_judge
    from dlma_ray.evaluation.score_analysis import score_analysis

    rm = _tiny_reward_model(tmp_path / "rm", tiny_model_dir, tokenizer)
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
