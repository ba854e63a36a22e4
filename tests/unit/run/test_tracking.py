"""Experiment tracking backends: each written through, then read back with the tracker's own reader
(TensorBoard's EventAccumulator, MLflow's client on the file store, the jsonl lines, W&B's offline run
folder), locally and to a remote (S3) run dir; the console line; the trackers' config field."""

import json
import logging
import os

import pytest
from s3_server import s3_env  # noqa: F401 - the moto S3 server fixture

from dlma_ray.run import tracking
from dlma_ray.config.tree import ConfigError, load_config
from tracking_readback import CONFIG, STEP, jsonl, scalars


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
    from dlma_ray.run.state import RunState

    cfg = load_config(None, ["run.trackers=[console]"]).to_dict()
    state = RunState.open(str(tmp_path), cfg)
    state.record(0, "generate", "x", 1, 1.0)
    RunState.open(str(tmp_path), load_config(None, ["run.trackers=[jsonl, tensorboard]"]).to_dict())


def test_remote_run_dir_uploads_at_close(s3_env, tmp_path):  # noqa: F811
    from dlma_ray.core import storage

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
