"""Experiment tracking: each backend written through, then read back with the tracker's own reader
(TensorBoard's EventAccumulator, MLflow's client on the file store, the jsonl lines, W&B's offline run
folder); the TRL-named step metrics and the loss metrics they come from against hand-computed numbers."""

import json
import logging
import math
import os

import pytest
import torch
from test_storage import s3_env  # noqa: F401 - the moto S3 server fixture

from dlma_ray import tracking, trainlog
from dlma_ray.config import ConfigError, load_config
from dlma_ray.losses import dlma_loss, grouped_dpo_loss

CONFIG = {"train": {"beta": 0.1, "method": "dlma"}, "run": {"trackers": ["console", "jsonl"]}}
STEP = {"loss": 0.69, "rewards/chosen": 0.02, "rewards/margins": 0.05, "grad_norm": 1.5, "num_tokens": 400.0}


def scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


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

    from dlma_ray.logprobs import collate, sequence_logprobs

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


# ---------------------------------------------------------------- backends, read back

def test_tensorboard_events_read_back(tmp_path):
    with tracking.open_trackers(["tensorboard"], str(tmp_path), "r", CONFIG) as t:
        t.log(STEP, 1)
        t.log({**STEP, "loss": 0.5, "skipped": None, "nan": float("nan")}, 2)
    got = scalars(tmp_path / "tracking" / "tensorboard")
    assert got["loss"] == [(1, pytest.approx(0.69)), (2, pytest.approx(0.5))]
    assert got["rewards/margins"] == [(1, pytest.approx(0.05)), (2, pytest.approx(0.05))]
    assert "skipped" not in got and "nan" not in got


def test_tensorboard_drops_what_a_killed_attempt_logged_after_its_checkpoint(tmp_path):
    with tracking.open_trackers(["tensorboard"], str(tmp_path), "r", CONFIG, start_step=1) as t:  # killed at 3
        for step in (1, 2, 3):
            t.log({"loss": float(step)}, step)
    with tracking.open_trackers(["tensorboard"], str(tmp_path), "r", CONFIG) as t:  # the driver: no restart
        t.log({"eval/win_rate": 0.5}, 0)
    with tracking.open_trackers(["tensorboard"], str(tmp_path), "r", CONFIG, start_step=3) as t:  # from step 2
        for step in (3, 4):
            t.log({"loss": 10.0 * step}, step)
    got = scalars(tmp_path / "tracking" / "tensorboard")
    assert got["loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)] and got["eval/win_rate"] == [(0, 0.5)]


def test_jsonl_read_back(tmp_path):
    with tracking.open_trackers(["jsonl", "jsonl"], str(tmp_path), "r", CONFIG) as t:  # a repeated name opens once
        t.log(STEP, 3)
    with tracking.open_trackers(["jsonl"], str(tmp_path), "r", CONFIG) as t:  # a later process appends
        t.log({"loss": 0.1}, 4)
    lines = jsonl(tmp_path / "tracking" / "metrics.jsonl")
    assert [(x["step"], x["loss"]) for x in lines] == [(3, 0.69), (4, 0.1)] and lines[0]["num_tokens"] == 400.0


def test_mlflow_file_store_read_back(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for step in (1, 2):  # two processes of one dlma-ray run (a round's training, then the driver): one MLflow run
        with tracking.open_trackers(["mlflow"], str(tmp_path), "myrun", CONFIG) as t:
            t.log({"rewards/chosen": 0.1 * step, "loss": 1.0 / step}, step)
    client = MlflowClient(tracking_uri=f"file://{tmp_path}/tracking/mlruns")
    exp = client.get_experiment_by_name("dlma-ray")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "myrun"
    assert runs[0].data.params["train.beta"] == "0.1" and runs[0].data.params["run.trackers"] == '["console", "jsonl"]'
    history = client.get_metric_history(runs[0].info.run_id, "rewards/chosen")
    assert sorted((h.step, h.value) for h in history) == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]


def test_mlflow_tracking_uri_wins(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{store}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "exp2")
    with tracking.open_trackers(["mlflow"], str(tmp_path / "run"), "run", CONFIG) as t:
        t.log({"loss": 0.3}, 5)
    assert not (tmp_path / "run" / "tracking" / "mlruns").exists()
    client = MlflowClient(tracking_uri=f"file://{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("exp2").experiment_id])
    assert run.data.metrics == {"loss": pytest.approx(0.3)}


def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    with tracking.open_trackers(["wandb"], str(tmp_path), "r", CONFIG) as t:
        t.log(STEP, 1)
    assert os.environ["WANDB_MODE"] == "offline"
    (run,) = (tmp_path / "tracking" / "wandb").glob("offline-run-*")
    (data,) = run.glob("*.wandb")
    import wandb

    wandb.teardown()  # W&B's service may still hold the last records: ending it writes them
    assert b"rewards/margins" in data.read_bytes()


def test_console_line(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="dlma_ray"), \
            tracking.open_trackers(["console"], "/nonexistent/run", "demo", CONFIG) as t:
        t.log({**STEP, "h": 2.0}, 4)
    assert "[demo] step 4: loss 0.69, rewards/margins 0.05, grad_norm 1.5" in caplog.text
    quiet = {**CONFIG, "run": {"log_level": "WARNING"}}
    with caplog.at_level(logging.INFO, logger="dlma_ray"), tracking.open_trackers(["console"], "/x", "q", quiet) as t:
        t.log(STEP, 5)
    assert "[q]" not in caplog.text and "[q]" not in capsys.readouterr().out
    with tracking.open_trackers(["console"], "/x", "w", CONFIG) as t:  # logging not set up for INFO: stdout
        t.log(STEP, 6)
    assert "[w] step 6: loss 0.69" in capsys.readouterr().out
    line = tracking.console_line({"eval/win_rate": 0.5, "eval/win_rate/low": 0.3, "eval/win_rate/high": 0.7,
                                  "eval/win_rate/n": 32, "stage/train/rows": 40}, 1)
    assert line == "step 1: eval/win_rate 0.5 [0.3, 0.7] (n=32), stage/train/rows 40"


def test_missing_library_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(tracking._LIBRARIES, "mlflow", ("no_such_module_xyz", "pip install 'dlma-ray[track]'"))
    with pytest.raises(tracking.TrackerUnavailable, match=r"'mlflow'.*dlma-ray\[track\]"):
        tracking.check_available(["console", "mlflow"])
    with pytest.raises(tracking.TrackerUnavailable):
        tracking.open_trackers(["jsonl", "mlflow"], str(tmp_path), "r", CONFIG)
    with pytest.raises(ValueError, match="allowed: console, tensorboard, jsonl, mlflow, wandb"):
        tracking.open_trackers(["tensorbord"], str(tmp_path), "r", CONFIG)


def test_config_field_and_validation():
    assert load_config().run.trackers == ["console", "tensorboard"]
    assert load_config(None, ["run.trackers=[jsonl, mlflow]"]).run.trackers == ["jsonl", "mlflow"]
    with pytest.raises(ConfigError, match=r"run.trackers: 'tb' is not a tracker; allowed: console, tensorboard"):
        load_config(None, ["run.trackers=[console, tb]"])
    with pytest.raises(ConfigError, match="run.trackers: 'console' is not a list of str"):
        load_config(None, ["run.trackers=console"])


def test_changing_trackers_does_not_block_a_resume(tmp_path):
    from dlma_ray.state import RunState

    cfg = load_config(None, ["run.trackers=[console]"]).to_dict()
    state = RunState.open(str(tmp_path), cfg)
    state.record(0, "generate", "x", 1, 1.0)
    RunState.open(str(tmp_path), load_config(None, ["run.trackers=[jsonl, tensorboard]"]).to_dict())


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
    from dlma_ray.state import RunState

    cfg = load_config(None, [f"run.dir={tmp_path}", "run.trackers=[tensorboard, jsonl]"])
    (tmp_path / "round_1").mkdir()
    (tmp_path / "round_1" / "eval.json").write_text(json.dumps({"measures": MEASURES}))
    state = RunState(str(tmp_path), cfg.to_dict(), [{**STAGES[0], "round": 0}, *STAGES])
    trainlog.log_finished_round(cfg, str(tmp_path), state, 1)
    (line,) = jsonl(tmp_path / "tracking" / "metrics.jsonl")
    assert line["step"] == 1 and line["eval/win_rate/high"] == 0.77 and line["stage/train/seconds"] == 61.0
    got = scalars(tmp_path / "tracking" / "tensorboard")
    assert got["eval/distillation_gain/low"] == [(1, pytest.approx(0.2))] and got["stage/generate/rows"] == [(1, 24)]


def test_remote_run_dir_uploads_at_close(s3_env, tmp_path):  # noqa: F811
    from dlma_ray import storage

    run = "s3://runs/tracked"
    for step in (1, 2):
        with tracking.open_trackers(["tensorboard", "jsonl"], run, "tracked", CONFIG) as t:
            t.log({"loss": 1.0 / step}, step)
    lines = [json.loads(x) for x in storage.read_text(f"{run}/tracking/metrics.jsonl").splitlines()]
    assert [(x["step"], x["loss"]) for x in lines] == [(1, 1.0), (2, 0.5)]
    storage.download_dir(f"{run}/tracking/tensorboard", str(tmp_path / "tb"))
    assert scalars(tmp_path / "tb")["loss"] == [(1, 1.0), (2, 0.5)]
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI"):
        pytest.importorskip("mlflow")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        tracking.open_trackers(["mlflow"], run, "tracked", CONFIG)


def test_remote_run_dir_wandb(s3_env, monkeypatch):  # noqa: F811
    pytest.importorskip("wandb")
    import pyarrow.fs as pafs

    monkeypatch.setenv("WANDB_SILENT", "true")
    with tracking.open_trackers(["wandb"], "s3://runs/wb", "wb", CONFIG) as t:
        t.log(STEP, 1)
    fs, root = pafs.FileSystem.from_uri("s3://runs/wb/tracking/wandb")
    names = [i.path[len(root):] for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))]
    assert any(n.startswith("/offline-run-") and n.endswith(".wandb") for n in names), names
    assert not any(n.startswith("/latest-run") for n in names)
