"""Training and round metrics for the trackers: the TRL-named step metrics and the loss metrics they come
from against hand-computed numbers, the step logger (tokens, steps, progress bar, offsets after a
resume), and a finished round's eval and stage metrics, read back from the jsonl lines and TensorBoard."""

import json
import math

import pytest
import torch

from dlma_ray.workers import trainlog
from dlma_ray.config.tree import load_config
from dlma_ray.core.losses import dlma_loss, grouped_dpo_loss
from tracking_readback import CONFIG, jsonl, scalars


# ---------------------------------------------------------------- the losses' metrics, by hand

def test_dlma_loss_metrics_by_hand():
    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -18.0])
    rc, rr = torch.tensor([-11.0, -19.0]), torch.tensor([-11.5, -19.5])
    reward = torch.tensor([50.0, -3.0])
    beta, gamma = 0.1, 0.2
    loss, m = dlma_loss(pc, pr, rc, rr, reward, beta=beta, gamma=gamma, clip_low=-40, clip_high=40)
    # pair 0: chosen ratio +1, rejected ratio -0.5, h = 1.5; pair 1: chosen -1, rejected +1.5, h = -2.5
    assert m["rewards_chosen"].item() == pytest.approx(beta * (1 + -1) / 2)
    assert m["rewards_rejected"].item() == pytest.approx(beta * (-0.5 + 1.5) / 2)
    assert m["reward_margin"].item() == pytest.approx(beta * (1.5 - 2.5) / 2)
    assert m["reward_accuracy"].item() == pytest.approx(0.5)
    assert m["logps_chosen"].item() == pytest.approx(-15.0) and m["logps_rejected"].item() == pytest.approx(-15.0)
    assert m["h"].item() == pytest.approx((1.5 - 2.5) / 2)
    assert m["self_reward_raw"].item() == pytest.approx(23.5)
    assert m["self_reward_clipped"].item() == pytest.approx((40 - 3) / 2)
    assert m["target_margin"].item() == pytest.approx(beta * gamma * 18.5)
    by_hand = -(math.log(1 / (1 + math.exp(-(0.15 - 0.02 * 40)))) + math.log(1 / (1 + math.exp(-(-0.25 + 0.02 * 3)))))
    assert loss.item() == pytest.approx(by_hand / 2, rel=1e-6)
    _, plain = dlma_loss(pc, pr, rc, rr, reward, beta=beta, gamma=0.0)
    assert "self_reward_raw" not in plain and plain["h"].item() == pytest.approx(-0.5)


def test_grouped_loss_metrics_are_over_pairs():
    # prompt 0: y* logp -5 (ref -6), two negatives; prompt 1: y* logp -8 (ref -7), one negative
    _, m = grouped_dpo_loss(torch.tensor([-5.0, -8.0]), torch.tensor([-9.0, -7.0, -4.0]), torch.tensor([-6.0, -7.0]),
                            torch.tensor([-8.0, -8.0, -5.0]), torch.tensor([0, 0, 1]), beta=0.5)
    # pairs' h: (1 - -1) = 2, (1 - 1) = 0, (-1 - 1) = -2
    assert m["h"].item() == pytest.approx(0.0)
    assert m["logps_chosen"].item() == pytest.approx((-5 - 5 - 8) / 3)
    assert m["logps_rejected"].item() == pytest.approx(-20 / 3)
    assert m["reward_accuracy"].item() == pytest.approx(1 / 3)
    assert m["rewards_chosen"].item() == pytest.approx(0.5 * (1 + 1 - 1) / 3)


def test_trl_step_metrics_names_and_rates():
    report = {"loss": 0.6, "rewards_chosen": 0.1, "rewards_rejected": -0.2, "reward_margin": 0.3,
              "reward_accuracy": 0.75, "logps_chosen": -40.0, "logps_rejected": -50.0, "lr": 1e-5, "grad_norm": 2.0,
              "num_tokens": 5000, "step_tokens": 1000, "seconds": 4.0, "epoch": 0, "self_reward_raw": 12.0,
              "self_reward_clipped": 11.0, "h": 3.0, "step": 7, "target_margin": 0.2}
    m = trainlog.trl_step_metrics(report, rows_per_step=8)
    assert m == {"loss": 0.6, "rewards/chosen": 0.1, "rewards/rejected": -0.2, "rewards/margins": 0.3,
                 "rewards/accuracies": 0.75, "logps/chosen": -40.0, "logps/rejected": -50.0, "learning_rate": 1e-5,
                 "grad_norm": 2.0, "num_tokens": 5000.0, "epoch": 0.0, "self_reward/raw": 12.0,
                 "self_reward/clipped": 11.0, "h": 3.0, "pairs_per_second": 2.0, "tokens_per_second": 250.0}


def test_step_logger_counts_tokens_and_continues_steps(tmp_path, tiny_model):
    from types import SimpleNamespace

    from dlma_ray.model.logprobs import collate, sequence_logprobs

    # What the logger reads of a DeepSpeed engine: the module it wraps, its device, its gradient norm.
    engine = SimpleNamespace(module=tiny_model, device="cpu", get_global_grad_norm=lambda: torch.tensor(3.0))
    spec = {"names": ["jsonl"], "dir": str(tmp_path), "run_name": "r", "config": CONFIG, "round": 1,
            "step_offset": 10, "token_offset": 1000}
    steplog = trainlog.StepLogger(spec, 0, engine, rows_per_step=8)
    encoded = [([5, 6, 7], [8, 9]), ([5], [8, 9, 10, 11, 12, 13])]  # 5 and 7 tokens, padded to 7 in the batch
    with torch.no_grad():
        for step in (1, 2):
            for _ in range(step):  # micro-batches of this step: one, then two
                sequence_logprobs(tiny_model, collate(encoded, pad_id=0))
            report = {"loss": 0.5, "step": step, "lr": 1e-5}
            steplog.update(report)
            assert report["step_tokens"] == 12 * step and report["grad_norm"] == 3.0
    assert report["num_tokens"] == 1000 + 12 + 24
    steplog.close()
    tiny_model(input_ids=torch.tensor([[1, 2]]))  # the hook is gone: nothing counts this
    assert steplog.local_tokens == 0
    lines = jsonl(tmp_path / "tracking" / "metrics.jsonl")
    assert [x["step"] for x in lines] == [11, 12]
    assert lines[1]["num_tokens"] == 1036 and lines[1]["grad_norm"] == 3.0 and lines[1]["learning_rate"] == 1e-5
    assert lines[1]["pairs_per_second"] > 0 and lines[1]["tokens_per_second"] == pytest.approx(
        24 * lines[1]["pairs_per_second"] / 8)
    # the train stage's packed forward (train.packing): [5, 6, 7, 8, 9] and [5, 8, ..., 13] share [5]: 11 tokens
    from dlma_ray.model.packing import packed_logprobs

    counted = trainlog.StepLogger(None, 0, engine, rows_per_step=8)
    with torch.no_grad():
        packed_logprobs(tiny_model, encoded, pad=0)
    assert counted.local_tokens == 11
    counted.close()
    # rank 1 logs nothing; a retry resumed from a checkpoint continues the running count of its metrics file
    metrics_file = tmp_path / "train_metrics.jsonl"
    metrics_file.write_text(json.dumps({"step": 1, "num_tokens": 1012}) + "\n")
    other = trainlog.StepLogger(spec, 1, SimpleNamespace(**{**vars(engine), "get_global_grad_norm": lambda: None}),
                                rows_per_step=8, metrics_path=str(metrics_file))
    report = {"loss": 0.5, "step": 2}
    other.update(report)
    other.close()
    assert report["num_tokens"] == 1012 and "grad_norm" not in report
    assert len(jsonl(tmp_path / "tracking" / "metrics.jsonl")) == 2


def test_training_bar_counts_steps_and_shows_loss_margin_and_rate(tmp_path, tiny_model):
    from types import SimpleNamespace

    assert trainlog.progress_text({"loss": 0.69314, "reward_margin": 0.25, "seconds": 4.0}, 8) == \
        "loss 0.6931, margin +0.250, 2.00 pairs/s"
    assert trainlog.progress_text({"loss": 1.5}, 8) == "loss 1.5000"  # no pairs (context distillation), no time yet
    engine = SimpleNamespace(module=tiny_model, device="cpu", get_global_grad_norm=lambda: None)
    metrics_file = tmp_path / "train_metrics.jsonl"  # a retry that resumed after step 2 of 5
    metrics_file.write_text("".join(json.dumps({"step": s, "num_tokens": 10 * s}) + "\n" for s in (1, 2)))
    steplog = trainlog.StepLogger({"round": 3}, 0, engine, rows_per_step=8, metrics_path=str(metrics_file),
                                  total_steps=5)
    assert (steplog.bar.n, steplog.bar.total) == (2, 5)
    steplog.update({"loss": 0.5, "step": 3, "reward_margin": -0.1})
    assert steplog.bar.n == 3 and steplog.bar._desc.startswith("round 3 train | loss 0.5000, margin -0.100, ")
    bar = steplog.bar
    steplog.close()
    assert bar._closed and steplog.bar is None
    assert trainlog.StepLogger({}, 1, engine, rows_per_step=8, total_steps=5).bar is None  # rank 0 only


def test_step_offsets_from_state(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"config": {}, "stages": [
        {"round": 0, "stage": "train", "metrics": {"step": 6, "num_tokens": 900}},
        {"round": 0, "stage": "evaluate", "metrics": {}},
        {"round": 1, "stage": "train", "metrics": {"step": 5}},  # a run from before num_tokens was recorded
        {"round": 2, "stage": "train", "metrics": {"step": 7, "num_tokens": 1}}]}))
    assert trainlog.step_offsets(str(tmp_path), 0) == (0, 0)
    assert trainlog.step_offsets(str(tmp_path), 2) == (11, 900)
    assert trainlog.step_offsets(str(tmp_path / "none"), 3) == (0, 0)


# ---------------------------------------------------------------- per round

MEASURES = {"win_rate": {"n": 32, "count": 20, "rate": 0.625, "ci95": [0.45, 0.77], "ties": 1},
            "distillation_gain": {"n": 32, "mean": 1.5, "ci95": [0.2, 2.9], "sd": 3.0},
            "perplexity_neutral": {"n": 10, "value": 12.0, "ci95": [11.0, 13.5]},
            "self_reward_vs_judge": {"n": 0, "count": 0, "rate": None, "ci95": [None, None]}}
STAGES = [{"round": 1, "stage": "generate", "rows": 24, "seconds": 30.5},
          {"round": 1, "stage": "train", "rows": 20, "seconds": 61.0, "metrics": {"step": 2}}]


def test_round_metrics():
    m = trainlog.round_metrics(MEASURES, STAGES)
    assert m == {"eval/win_rate": 0.625, "eval/win_rate/low": 0.45, "eval/win_rate/high": 0.77, "eval/win_rate/n": 32,
                 "eval/distillation_gain": 1.5, "eval/distillation_gain/low": 0.2, "eval/distillation_gain/high": 2.9,
                 "eval/distillation_gain/n": 32, "eval/perplexity_neutral": 12.0, "eval/perplexity_neutral/low": 11.0,
                 "eval/perplexity_neutral/high": 13.5, "eval/perplexity_neutral/n": 10,
                 "stage/generate/rows": 24, "stage/generate/seconds": 30.5, "stage/train/rows": 20,
                 "stage/train/seconds": 61.0}


def test_log_finished_round_reads_eval_and_state(tmp_path):
    from dlma_ray.run.state import RunState

    cfg = load_config(None, [f"run.dir={tmp_path}", "run.trackers=[tensorboard, jsonl]"])
    (tmp_path / "round_1").mkdir()
    (tmp_path / "round_1" / "eval.json").write_text(json.dumps({"measures": MEASURES}))
    state = RunState(str(tmp_path), cfg.to_dict(), [{**STAGES[0], "round": 0}, *STAGES])
    trainlog.log_finished_round(cfg, str(tmp_path), state, 1)
    (line,) = jsonl(tmp_path / "tracking" / "metrics.jsonl")
    assert line["step"] == 1 and line["eval/win_rate/high"] == 0.77 and line["stage/train/seconds"] == 61.0
    got = scalars(tmp_path / "tracking" / "tensorboard")
    assert got["eval/distillation_gain/low"] == [(1, pytest.approx(0.2))] and got["stage/generate/rows"] == [(1, 24)]
