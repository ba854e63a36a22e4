"""The evaluate stage (`run_round`) for real (Ray + vLLM) on a hand-built one-round run: eval.json's measures,
the answers against pi_0's, the generated pairs judged by a tiny reward model, and the report.
Its pieces, in-process: tests/unit/stages/test_evaluate.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reward_model import tiny_reward_model
from dlma_ray.config.tree import load_config


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


def test_run_evaluate_for_real(tmp_path, tiny_model_dir, tokenizer):
    import ray

    from dlma_ray.stages.evaluate import run_round
    from dlma_ray.run.layout import RunLayout
    from dlma_ray.stages.round import Round
    from dlma_ray.views.report import write_report

    run = tmp_path / "run"
    _hand_made_run(run, tiny_model_dir, tokenizer)
    rm = tiny_reward_model(tmp_path / "rm", tiny_model_dir, tokenizer)  # the external judge
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
    from dlma_ray.model.scoremodel import reward_model_scores
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
