"""RLAIF, Self-Rewarding and SPIN end to end through jobs/iterate.py, each started from its paper preset with
jobs/configs/embedded-overlay.yaml (the tiny model in place of the embedded one; the tests' overrides come last).

Each method runs once as a module fixture (a subprocess with a private Ray instance); the tests read the finished
run, and each method's resume test redoes a round from a copy of it (`--restart-from`): a killed round of that
method, resumed, must give the same pairs.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dlma_ray.core.schema import GENERATION_SCHEMA, PAIR_SCHEMA

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "jobs/configs/embedded-overlay.yaml"
PROMPTS = 8


def preset(name: str) -> list[str]:
    return ["--config", str(REPO / "jobs/configs" / name), "--config", str(OVERLAY)]


def job(tiny_model_dir: str, run_dir: Path, *extra: str, configs: list[str] = ()) -> list[str]:
    return [*configs, f"model.path={tiny_model_dir}", f"run.dir={run_dir}", "eval.enabled=false",
            f"data.max_prompts={PROMPTS}", "data.heldout_fraction=0.2", "generation.max_new_tokens=8",
            "generation.cpu_kvcache_gb=1", "train.micro_batch_size=2", "train.global_batch_size=4", "train.lr=1e-3",
            *extra]


def run_job(args: list[str]) -> str:
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(REPO / "jobs/iterate.py"), *args], cwd=REPO,
                            env=dict(os.environ, RAY_ADDRESS="local"), capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    lines = log.splitlines()
    tracebacks = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    assert not tracebacks, "\n".join(lines[tracebacks[0]:tracebacks[0] + 30]) if tracebacks else ""
    return log


def stages(run_dir: Path) -> dict[tuple[int, str], dict]:
    return {(s["round"], s["stage"]): s for s in json.loads((run_dir / "state.json").read_text())["stages"]}


def table(run_dir: Path, k: int, name: str, schema) -> list[dict]:
    t = pq.read_table(run_dir / f"round_{k}/{name}")
    assert t.schema.names == schema.names and [f.type for f in t.schema] == [f.type for f in schema]
    return t.to_pylist()


def same_rows(a: list[dict], b: list[dict], columns) -> bool:
    key = lambda r: (r["round"], r["prompt_id"])  # noqa: E731
    return [[r[c] for c in columns] for r in sorted(a, key=key)] == [[r[c] for c in columns] for r in sorted(b, key=key)]


def finished(args: list[str]) -> Path:
    """The run dir of ``args`` after running it to the end."""
    run_job(args)
    return Path(next(a for a in args if a.startswith("run.dir=")).split("=", 1)[1])


def resumed_copy(run_dir: Path, tmp_path: Path, restart_from: str, args: list[str]) -> Path:
    """The finished run copied and redone from ``restart_from`` (as a run killed there would be resumed) up to
    that round's score stage (`--stop-after`: the pairs are what is compared; training them is tested above)."""
    copy = tmp_path / "resumed"
    shutil.copytree(run_dir, copy)
    k = restart_from.split("/")[0]
    run_job([*[a if not a.startswith("run.dir=") else f"run.dir={copy}" for a in args],
             "--restart-from", restart_from, "--stop-after", f"{k}/score"])
    assert list(stages(copy))[-1] == (int(k.removeprefix("round_")), "score"), "--stop-after stops after that stage"
    return copy


# ---------------------------------------------------------------- RLAIF

@pytest.fixture(scope="module")
def rlaif_args(tiny_model_dir, tmp_path_factory) -> list[str]:
    return job(tiny_model_dir, tmp_path_factory.mktemp("rlaif") / "run", "rlaif.margin=0",
               configs=preset("rlaif-paper-pku-7b.yaml"))


@pytest.fixture(scope="module")
def rlaif_run(rlaif_args) -> Path:
    return finished(rlaif_args)


def test_rlaif_labels_are_the_policys_own_ab_reading(rlaif_run, tiny_model_dir, tokenizer):
    """Each stored label is the engine's reading of the letters' log-probs, which equals the transformers reading
    of the same prompt (the evaluation's judge) to float precision; the preferred answer is `chosen`."""
    from dlma_ray.evaluation.judges import ab
    from dlma_ray.model.loading import load_causal_lm
    from dlma_ray.workers.labelling import rlaif_prompts

    generations = table(rlaif_run, 0, "generations", GENERATION_SCHEMA)
    assert len(generations) == PROMPTS
    model = load_causal_lm(tiny_model_dir)
    for g in generations[:3]:
        detail = json.loads(g["judge_json"])
        p1, p2 = detail["p_a_first"], detail["p_a_second"]
        assert detail["instruction"] in ab.CAI_PRINCIPLES  # the preset's harmlessness labels
        assert g["label_preference"] == pytest.approx(0.5 + (p1 - p2) / 2, abs=1e-12)
        swapped = g["label_preference"] < 0.5
        y1, y2 = (g["rejected"], g["chosen"]) if swapped else (g["chosen"], g["rejected"])
        chat, instruction = json.loads(g["messages_json"]), [detail["instruction"]]
        prompts = [rlaif_prompts(tokenizer, [chat], [a], [b], instruction, "raw")[0] for a, b in ((y1, y2), (y2, y1))]
        assert prompts[0] == ab.labelling_prompt(chat, y1, y2, detail["instruction"])  # raw style: RLCD's text as is
        assert prompts[0].startswith(ab.RLCD_PREFIX) and prompts[0].endswith("The answer is: (")
        direct = ab.ab_preference(model, tokenizer, prompts)
        assert direct == pytest.approx([p1, p2], abs=2e-4)
    rows = table(rlaif_run, 0, "pairs", PAIR_SCHEMA)
    assert rows and all(math.isfinite(r["ref_logp_chosen"]) and math.isnan(r["self_reward"]) for r in rows)
    summary = stages(rlaif_run)[(0, "generate")]["metrics"]
    assert summary["prompts"] == PROMPTS and summary["labelled"] == PROMPTS and summary["no_pair"] == {}
    assert summary["swapped"] == sum(g["label_preference"] < 0.5 for g in generations)
    assert json.loads((rlaif_run / "round_0/policy/train_metrics.jsonl").read_text().splitlines()[0])["loss"] > 0


def test_rlaif_killed_round_resumed_gives_the_same_pairs(rlaif_run, rlaif_args, tmp_path):
    copy = resumed_copy(rlaif_run, tmp_path, "round_0/generate", rlaif_args)
    columns = ["chosen", "rejected", "chosen_token_ids", "label_preference", "judge_json", "ref_logp_chosen"]
    assert same_rows(table(copy, 0, "pairs", PAIR_SCHEMA), table(rlaif_run, 0, "pairs", PAIR_SCHEMA), columns)


# ---------------------------------------------------------------- Self-Rewarding

@pytest.fixture(scope="module")
def sr_args(tiny_model_dir, tmp_path_factory) -> list[str]:
    return job(tiny_model_dir, tmp_path_factory.mktemp("sr") / "run", "rounds.count=1",
               configs=preset("self-rewarding-paper-7b.yaml"))


@pytest.fixture(scope="module")
def sr_run(sr_args) -> Path:
    return finished(sr_args)


def test_self_rewarding_pairs_are_best_against_worst_of_the_policys_scores(sr_run):
    state = json.loads((sr_run / "state.json").read_text())
    sr = state["config"]["self_rewarding"]
    assert (sr["temperature"], sr["top_p"], sr["constrained_score"]) == (0.7, 0.9, True)
    generations = table(sr_run, 0, "generations", GENERATION_SCHEMA)
    assert len(generations) == PROMPTS
    for g in generations:
        detail = json.loads(g["judge_json"])
        scores = detail["scores"]
        assert len(scores) == sr["num_samples"] and all(len(s) == sr["num_judgements"] for s in scores)
        # constrained decoding: every judgement parsed, into the rubric's 0..5 points
        assert detail["unparsed"] == 0 and all(x in (0, 1, 2, 3, 4, 5) for s in scores for x in s)
        means = [sum(s) / len(s) for s in scores]
        assert detail["means"] == pytest.approx(means)
        if g["label_drop"] == "tie":
            assert max(means) == min(means) and math.isnan(g["chosen_judge_score"])
        else:
            assert g["label_drop"] == ""
            assert g["chosen_judge_score"] == max(means) > g["rejected_judge_score"] == min(means)
            assert means[detail["best"]] == max(means) and means[detail["worst"]] == min(means)
    rows = table(sr_run, 0, "pairs", PAIR_SCHEMA)
    kept = [g for g in generations if not g["label_drop"]]
    assert len(rows) == len(kept) and all(r["chosen_judge_score"] > r["rejected_judge_score"] for r in rows)
    score = stages(sr_run)[(0, "score")]["metrics"]
    assert score["dropped"] == ({"tie": PROMPTS - len(kept)} if len(kept) < PROMPTS else {})  # counted, not scored
    assert stages(sr_run)[(0, "generate")]["metrics"]["no_pair"] == score["dropped"]


def test_self_rewarding_killed_round_resumed_gives_the_same_pairs(sr_run, sr_args, tmp_path):
    copy = resumed_copy(sr_run, tmp_path, "round_0/generate", sr_args)
    columns = ["chosen", "rejected", "chosen_judge_score", "rejected_judge_score", "judge_json", "ref_logp_rejected"]
    assert same_rows(table(copy, 0, "pairs", PAIR_SCHEMA), table(sr_run, 0, "pairs", PAIR_SCHEMA), columns)


# ---------------------------------------------------------------- SPIN

@pytest.fixture(scope="module")
def spin_args(tiny_model_dir, tmp_path_factory, hh_file) -> list[str]:
    return job(tiny_model_dir, tmp_path_factory.mktemp("spin") / "run", "rounds.count=2", "train.epochs=1",
               f"data.source={hh_file}", "data.prompt_field=chosen", configs=preset("spin-paper-ultrachat-7b.yaml"))


@pytest.fixture(scope="module")
def spin_run(spin_args) -> Path:
    return finished(spin_args)


def test_spin_round_1_trains_on_both_rounds_against_the_previous_iterate(spin_run, tokenizer, tiny_model_dir):
    from conftest import direct_logprob, eot_ids
    from dlma_ray.model.loading import load_causal_lm

    done = stages(spin_run)
    assert [key for key in done] == [(0, "generate"), (0, "score"), (0, "train"), (1, "generate"), (1, "score"),
                                     (1, "train")]
    first, second = table(spin_run, 0, "pairs", PAIR_SCHEMA), table(spin_run, 1, "pairs", PAIR_SCHEMA)
    assert {r["round"] for r in first} == {0} and {r["round"] for r in second} == {0, 1}
    assert len(second) == len(first) + len([r for r in second if r["round"] == 1])
    old = {r["prompt_id"]: r for r in first}
    # the SFT target against one sample of the round's policy
    for r in second:
        assert r["chosen_finished"] and r["chosen"] == old[r["prompt_id"]]["chosen"]
        assert r["policy"].endswith("round_0/policy") if r["round"] == 1 else r["policy"] == tiny_model_dir
    # round 1's opponent is pi_1 (round 0's policy): round 0's pairs are re-scored by it
    assert done[(1, "score")]["metrics"]["reference"].endswith("round_0/policy")
    assert done[(1, "score")]["metrics"]["rounds"] == [0, 1]
    opponent = load_causal_lm(str(spin_run / "round_0/policy"))
    for r in [r for r in second if r["round"] == 0][:2]:
        ids = list(r["rejected_token_ids"]) + (eot_ids(tokenizer) if r["rejected_finished"] else [])
        assert r["ref_logp_rejected"] == pytest.approx(direct_logprob(opponent, tokenizer, r["plain_context"], ids),
                                                       abs=2e-3)
        assert r["ref_logp_rejected"] != pytest.approx(old[r["prompt_id"]]["ref_logp_rejected"], abs=1e-3)
    steps = [json.loads(x) for x in (spin_run / "round_1/policy/train_metrics.jsonl").read_text().splitlines()]
    assert steps and all(math.isfinite(s["loss"]) for s in steps)


def test_spin_killed_round_resumed_gives_the_same_pairs(spin_run, spin_args, tmp_path):
    # killed in round 1's score stage: its generations stay, the pairs of both rounds are scored again
    copy = resumed_copy(spin_run, tmp_path, "round_1/score", spin_args)
    assert [k for k in stages(copy)] == [k for k in stages(spin_run)][:-1]
    columns = ["chosen", "rejected_token_ids", "ref_logp_chosen", "ref_logp_rejected"]
    assert same_rows(table(copy, 1, "pairs", PAIR_SCHEMA), table(spin_run, 1, "pairs", PAIR_SCHEMA), columns)


# ---------------------------------------------------------------- the judges against human labels

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
