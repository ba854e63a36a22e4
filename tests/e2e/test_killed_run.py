"""The whole loop on the real stack (Ray, vLLM's CPU build, DeepSpeed), on a tiny random model.

One 2-round run takes every fault the pipeline promises to survive, injected by killing real processes:
the scorer actor in round 0's score stage (Ray restarts it and redoes its batches), the whole job between
round 0's score and train stages (the resubmitted job starts at train), the whole job again inside round
0's training once a checkpoint exists (the resubmitted job resumes from that checkpoint, not from step 0),
the vLLM engine kept from round 0's evaluation for round 1's generate stage (Ray restarts it on the same
policy and the stage's calls are retried), and a train worker in round 1 (Ray Train retries and resumes
from the latest checkpoint). Every
later check reads that finished run: the table schema, stored log-probs against a direct transformers
recomputation, R against its formula, the margin that training grew, and round 1's engine and scorer
running on round 0's policy.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conftest import checkpoint_registered, direct_logprob, eot_ids
from processes import kill_below
from dlma_ray.model.loading import load_causal_lm
from dlma_ray.core.schema import PAIR_SCHEMA

REPO = Path(__file__).resolve().parents[2]
# Each job starts its own Ray: never join a cluster that something else left running on the machine.
# Planted secrets: none may appear anywhere in the run directory or the job's output.
SECRETS = {"OPENAI_API_KEY": "sk-PLANTED-0penai-9f3e", "AWS_SECRET_ACCESS_KEY": "PLANTEDawsSECRET/7Kq2",
           "HF_TOKEN": "hf_PLANTEDtoken4Xz"}
ENV = {**os.environ, "RAY_ADDRESS": "local", **SECRETS}


def job_args(model_dir: str, run_dir: Path) -> list[str]:
    return [f"model.path={model_dir}", f"run.dir={run_dir}", "data.max_prompts=24", "rounds.count=2",
            "generation.max_new_tokens=16", "train.micro_batch_size=4", "train.global_batch_size=8",
            "train.lr=1e-3", "train.epochs=3", "data.heldout_fraction=0.2", "eval.max_pairs=8",
            "eval.max_prompts=4", "eval.max_new_tokens=8", "eval.heldout_pairs=4", "train.checkpoint_every=1"]


def run_job(args: list[str], timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs/iterate.py"), *args], cwd=REPO, timeout=timeout,
                          capture_output=True, text=True, env=ENV, **kw)


def stages(run_dir: Path) -> list[tuple[int, str]]:
    try:
        return [(s["round"], s["stage"]) for s in json.loads((run_dir / "state.json").read_text())["stages"]]
    except (OSError, ValueError):
        return []


def watch(proc: subprocess.Popen, log: Path, until, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not until():
        assert proc.poll() is None, f"the job ended before {what}: " + log.read_text()[-4000:]
        assert time.time() < deadline, f"no {what} in {timeout:.0f}s"
        time.sleep(0.2)


def start_job(args: list[str], log: Path) -> subprocess.Popen:
    """The job, its output going to ``log``: a pipe nobody reads while the test watches would fill and stall it."""
    with open(log, "w") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, str(REPO / "jobs/iterate.py"), *args], cwd=REPO, env=ENV,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    """A 2-round run that survives a killed scorer actor, a job killed between two stages, a job killed inside
    training, a killed kept engine and a killed train worker."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    args = job_args(tiny_model_dir, run_dir)
    log1, log2, log3 = (run_dir.parent / f"job{i}.log" for i in (1, 2, 3))
    proc = start_job(args, log1)
    watch(proc, log1, lambda: (0, "generate") in stages(run_dir) and kill_below(proc.pid, "MapBatches\\(PairScorer\\)"),
          "scorer actor to kill")
    watch(proc, log1, lambda: (0, "score") in stages(run_dir), "the score stage recorded")
    os.killpg(proc.pid, signal.SIGKILL)  # between two stages: score recorded, train not yet begun
    proc.wait()
    scored = {(s["round"], s["stage"]): s for s in json.loads((run_dir / "state.json").read_text())["stages"]}
    assert scored[(0, "score")]["rows"] == 24, "the restarted scorer redid the killed actor's batches"
    before = {p.name: p.stat().st_mtime for p in (run_dir / "round_0/generations").iterdir()}

    proc = start_job(args, log2)
    watch(proc, log2, lambda: checkpoint_registered(run_dir, 0), "checkpoint in round 0's training")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert stages(run_dir) == [(0, "generate"), (0, "score")], "the kill must land inside round 0's training"
    assert "round 0, stage train" in log2.read_text(), "the job killed between stages resumed at the next one"

    proc = start_job(args, log3)
    watch(proc, log3, lambda: (0, "evaluate") in stages(run_dir) and kill_below(proc.pid, "ray::EngineHost"),
          "the kept engine to kill")
    watch(proc, log3, lambda: (1, "score") in stages(run_dir) and checkpoint_registered(run_dir, 1),
          "checkpoint in round 1")
    assert kill_below(proc.pid, "RayTrainWorker") >= 1
    proc.wait(timeout=900)
    out = log3.read_text()
    assert proc.returncode == 0, out[-6000:]
    assert "resuming" in out and "round 0, stage train" in out
    assert "taking over the lock" in out  # the killed job's lock: its holder is gone
    resumed = [line for line in out.splitlines() if "resuming from the checkpoint at step" in line]
    assert len(resumed) >= 2, "round 0's resubmitted training and round 1's retry both start from a checkpoint"
    after = {p.name: p.stat().st_mtime for p in (run_dir / "round_0/generations").iterdir()}
    assert before == after, "finished stages must not be redone"
    return run_dir, args, out


def test_training_resumed_from_checkpoints_not_step_0(finished_run):
    """Each round's logged steps run 1..N exactly once: a retry from step 0 would repeat the first steps."""
    run_dir, _, _ = finished_run
    for k in (0, 1):
        steps = [json.loads(line)["step"] for line in (run_dir / f"round_{k}/policy/train_metrics.jsonl")
                 .read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3
        assert not (run_dir / f"round_{k}" / ".ray_train").exists(), "the round's checkpoints are removed"


def test_resume_finished_every_stage_once(finished_run):
    run_dir, args, _ = finished_run
    assert stages(run_dir) == [(k, s) for k in (0, 1) for s in ("generate", "score", "train", "evaluate")]
    rows = {(s["round"], s["stage"]): s["rows"] for s in json.loads((run_dir / "state.json").read_text())["stages"]}
    assert rows[(0, "generate")] == rows[(0, "score")] == rows[(1, "generate")] == 24
    # evaluate(0)'s engine, loaded with round 0's policy, also served generate(1) (dlma_ray.workers.engines)
    metrics = {(s["round"], s["stage"]): s.get("metrics", {}) for s in json.loads((run_dir / "state.json").read_text())["stages"]}
    assert metrics[(0, "evaluate")]["kept_engines"] == metrics[(1, "generate")]["kept_engines"] == 1
    # round 0's generate ran on a kept pi_0 engine, which then answered the evaluation's prompts for pi_0: evaluate(0)
    # started no pi_0 engine of its own (pipeline.answers_baseline_on_generate)
    assert metrics[(0, "generate")]["kept_engines"] == 1 and metrics[(0, "generate")]["baseline_answers"] == 4
    assert len((run_dir / "baseline_answers.jsonl").read_text().splitlines()) == 4
    assert "kept_engines" not in metrics[(1, "evaluate")] and "baseline_answers" not in metrics[(1, "generate")]
    # each stage's start-up as its processes recorded it (dlma_ray.workers.phases), for the report's Stages table
    spans = {(s["round"], s["stage"]): s.get("phases", {}) for s in json.loads((run_dir / "state.json").read_text())["stages"]}
    assert {"process", "model_load", "train_setup", "save"} <= set(spans[(1, "train")]["seconds"])
    assert {"engine_start", "model_load"} <= set(spans[(1, "evaluate")]["seconds"])
    assert 0 < spans[(1, "evaluate")]["startup_wall"] < json.loads((run_dir / "state.json").read_text())["stages"][-1]["seconds"]
    assert "round 1: generate on the 1 vLLM engine(s) kept from the evaluation" in finished_run[2]
    assert not list((run_dir / "round_0").glob(".*tmp-*")), "no temporary stage output left behind"
    assert (run_dir / "round_1/eval.json").exists() and (run_dir / "report.md").exists()
    report = (run_dir / "report.md").read_text()
    assert "glue before (s)" in report and "Glue is the time outside the stages" in report
    assert "| 1 | generate | 24 |" in report and "1 kept from the evaluation" in report
    assert "round 1: score done: 24 rows in, " in finished_run[2]  # the stage's one-line summary
    again = run_job(args, timeout=300)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_changed_config_is_refused(finished_run):
    run_dir, args, _ = finished_run
    result = run_job(args + ["train.beta=0.3"], timeout=300)
    assert result.returncode != 0
    assert "train.beta: 0.1 -> 0.3" in result.stdout + result.stderr
    assert "--restart-from round_0/train" in result.stdout + result.stderr  # the documented way out


def test_pairs_schema_and_recomputed_logprobs(finished_run, tiny_model_dir, tokenizer):
    """Every stored log-prob recomputes from its row alone (context tokenised, the sampled ids, end-of-turn
    only after a finished response), by an unbatched loop written apart from the code under test; R and its
    sign from those recomputed numbers, by hand."""
    run_dir, _, _ = finished_run
    table = pq.read_table(run_dir / "round_0/pairs")
    assert table.schema.names == PAIR_SCHEMA.names
    assert [f.type for f in table.schema] == [f.type for f in PAIR_SCHEMA]
    rows = table.slice(0, 6).to_pylist()
    model = load_causal_lm(tiny_model_dir)
    eot = eot_ids(tokenizer)
    for r in rows:
        ids = {side: list(r[f"{side}_token_ids"]) + (eot if r[f"{side}_finished"] else []) for side in ("chosen", "rejected")}
        assert len(r["chosen_token_ids"]) == r["chosen_tokens"] and len(r["rejected_token_ids"]) == r["rejected_tokens"]
        got = {(ctx, side): direct_logprob(model, tokenizer, r[ctx], ids[side])
               for ctx in ("pos_context", "neg_context", "plain_context") for side in ("chosen", "rejected")}
        assert r["logp_pos_chosen"] == pytest.approx(got["pos_context", "chosen"], abs=1e-3)
        assert r["logp_neg_chosen"] == pytest.approx(got["neg_context", "chosen"], abs=1e-3)
        assert r["logp_pos_rejected"] == pytest.approx(got["pos_context", "rejected"], abs=1e-3)
        assert r["logp_neg_rejected"] == pytest.approx(got["neg_context", "rejected"], abs=1e-3)
        assert r["ref_logp_chosen"] == pytest.approx(got["plain_context", "chosen"], abs=1e-3)
        assert r["ref_logp_rejected"] == pytest.approx(got["plain_context", "rejected"], abs=1e-3)
        by_hand = (got["pos_context", "chosen"] - got["neg_context", "chosen"]) \
            - (got["pos_context", "rejected"] - got["neg_context", "rejected"])
        assert r["self_reward"] == pytest.approx(by_hand, abs=2e-3)
        # A cut response is scored without the end-of-turn token: appending it changes the number.
        for side in ("chosen", "rejected"):
            if not r[f"{side}_finished"]:
                with_eot = direct_logprob(model, tokenizer, r["plain_context"], list(r[f"{side}_token_ids"]) + eot)
                assert abs(with_eot - r[f"ref_logp_{side}"]) > 1e-3
    for r in table.to_pylist():
        assert r["pos_context"] != r["neg_context"] and r["chosen_tokens"] >= 1
    assert {"train", "heldout"} == set(table.column("split").to_pylist())
    score = [s for s in json.loads((run_dir / "state.json").read_text())["stages"] if s["stage"] == "score"][0]
    assert score["metrics"]["kept"] == score["rows"] and score["metrics"]["rows_in"] == 24


def test_training_grew_the_margin(finished_run, tokenizer):
    run_dir, _, _ = finished_run
    rows = [r for r in pq.read_table(run_dir / "round_0/pairs").to_pylist() if r["split"] == "train"]
    policy = load_causal_lm(str(run_dir / "round_0/policy"))
    eot = eot_ids(tokenizer)

    def logp(r, side):
        return direct_logprob(policy, tokenizer, r["plain_context"],
                              list(r[f"{side}_token_ids"]) + (eot if r[f"{side}_finished"] else []))

    new_c = torch.tensor([logp(r, "chosen") for r in rows])
    new_r = torch.tensor([logp(r, "rejected") for r in rows])
    margin = (new_c - torch.tensor([r["ref_logp_chosen"] for r in rows])) - \
             (new_r - torch.tensor([r["ref_logp_rejected"] for r in rows]))
    # Before training policy == reference, so the margin was exactly 0.
    assert margin.mean().item() > 0.5
    metrics = [json.loads(line) for line in (run_dir / "round_0/policy/train_metrics.jsonl").read_text().splitlines()]
    assert len(metrics) >= 2 and all("loss" in m and "reward_margin" in m for m in metrics)


def test_tracking_events_with_trl_names(finished_run):
    """Train rank 0 wrote every optimizer step to TensorBoard under TRL's names, steps continuing across rounds
    (read back with TensorBoard's own reader); the driver wrote each round's measures and stage times."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _ = finished_run
    acc = EventAccumulator(str(run_dir / "tracking/tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    trl = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "learning_rate", "grad_norm", "num_tokens", "self_reward/raw", "self_reward/clipped", "h",
           "pairs_per_second", "tokens_per_second"}
    assert trl <= tags, trl - tags
    train = [s for s in json.loads((run_dir / "state.json").read_text())["stages"] if s["stage"] == "train"]
    steps = [s["metrics"]["step"] for s in train]
    assert [e.step for e in acc.Scalars("loss")] == list(range(1, sum(steps) + 1))
    last = json.loads((run_dir / "round_1/policy/train_metrics.jsonl").read_text().splitlines()[-1])
    assert acc.Scalars("rewards/margins")[-1].value == pytest.approx(last["reward_margin"], rel=1e-5)
    tokens = [e.value for e in acc.Scalars("num_tokens")]
    # a running total over both rounds: round 1 starts from round 0's total recorded in state.json
    assert tokens == sorted(tokens) and tokens[-1] == last["num_tokens"] == train[1]["metrics"]["num_tokens"]
    assert 0 < train[0]["metrics"]["num_tokens"] < train[1]["metrics"]["num_tokens"]
    assert [e.step for e in acc.Scalars("eval/distillation_gain")] == [0, 1]
    assert [e.step for e in acc.Scalars("stage/train/seconds")] == [0, 1]


def test_round_1_ran_on_round_0_policy(finished_run, tiny_model_dir, tokenizer):
    run_dir, _, _ = finished_run
    from safetensors.torch import load_file

    w0 = load_file(f"{tiny_model_dir}/model.safetensors")
    w1 = load_file(run_dir / "round_0/policy/model.safetensors")
    assert any(not torch.equal(w0[k], w1[k]) for k in w0), "training changed no weight"
    gens = pq.read_table(run_dir / "round_1/generations").to_pylist()
    assert {g["policy"] for g in gens} == {str(run_dir / "round_0/policy")}
    assert {g["round"] for g in gens} == {1}
    # Round 1's scores come from pi_1 (round 0's policy), not pi_0.
    row = pq.read_table(run_dir / "round_1/pairs").slice(0, 1).to_pylist()[0]
    ids = list(row["chosen_token_ids"]) + (eot_ids(tokenizer) if row["chosen_finished"] else [])
    pi1 = direct_logprob(load_causal_lm(str(run_dir / "round_0/policy")), tokenizer, row["pos_context"], ids)
    pi0 = direct_logprob(load_causal_lm(tiny_model_dir), tokenizer, row["pos_context"], ids)
    assert pi1 == pytest.approx(row["logp_pos_chosen"], abs=1e-3) and abs(pi0 - pi1) > 1e-2


def test_no_secret_reaches_the_run_dir_or_the_log(finished_run):
    run_dir, _, job_log = finished_run
    for value in SECRETS.values():
        assert value not in job_log
        for path in run_dir.rglob("*"):
            if path.is_file():
                assert value.encode() not in path.read_bytes(), path
