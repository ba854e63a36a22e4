"""Run state that never turns against its user: a run with nothing finished takes a corrected config,
a damaged state.json names itself and the way out, credentials never enter a path. Fast, no Ray."""

import json

import pytest

from dlma_ray.config import ConfigError, load_config
from dlma_ray.state import ConfigMismatchError, RunState, StateFileError


def test_a_run_with_nothing_finished_takes_a_changed_config(tmp_path):
    first = load_config(None, ["train.lr=1.0"]).to_dict()
    RunState.open(str(tmp_path), first)  # e.g. its first stage then failed: lr too high, data path wrong
    fixed = load_config(None, ["train.lr=1e-5"]).to_dict()
    state = RunState.open(str(tmp_path), fixed)
    assert json.loads((tmp_path / "state.json").read_text())["config"]["train"]["lr"] == 1e-5
    state.record(0, "generate", "out", 4, 1.0)
    with pytest.raises(ConfigMismatchError, match="train.lr: 1e-05 -> 0.001"):
        RunState.open(str(tmp_path), load_config(None, ["train.lr=1e-3"]).to_dict())
    assert RunState.open(str(tmp_path), fixed).done(0, "generate")["rows"] == 4


@pytest.mark.parametrize("text", ['{"config": {}, "stages": [', "", '{"stages": []}', "[1, 2]"])
def test_a_damaged_state_file_names_itself_and_the_way_out(tmp_path, text):
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(StateFileError) as err:
        RunState.open(str(tmp_path), load_config(None, []).to_dict())
    assert str(tmp_path / "state.json") in str(err.value) and "move it aside" in str(err.value)


@pytest.mark.parametrize("field, value", [("run.dir", "s3://AKIAEXAMPLE:wJalrSECRET@bucket/runs/x"),
                                          ("data.source", "s3://user@bucket/prompts.jsonl"),
                                          ("eval.judge_url", "https://bob:hunter2@judge.example/v1")])
def test_credentials_in_a_uri_are_refused(field, value):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{field}={value}"])
    msg = str(err.value)
    assert field in msg and "credential chain" in msg
    assert "wJalrSECRET" not in msg and "hunter2" not in msg  # the error itself leaks nothing


def test_plain_uris_pass():
    cfg = load_config(None, ["run.dir=s3://bucket/runs/x", "eval.judge_url=http://judge:8000/v1"])
    assert cfg.run.dir == "s3://bucket/runs/x"


def test_metrics_mean_on_one_process_needs_no_group():
    from dlma_ray.train import mean_across_workers

    assert mean_across_workers({"loss": 0.5}, "cpu") == {"loss": 0.5}


def test_one_writer_per_run_directory(tmp_path, caplog):
    import os
    import subprocess
    import sys

    from dlma_ray.runlock import LOCK_FILE, RunLocked, run_lock

    code = ("import sys; from dlma_ray.runlock import run_lock\n"
            "with run_lock(sys.argv[1]): pass")
    with run_lock(str(tmp_path)):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        second = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert second.returncode != 0 and f"pid {os.getpid()}" in second.stderr and "RunLocked" in second.stderr
    assert not (tmp_path / LOCK_FILE).exists()  # released at the end
    # A holder that is gone: its lock is taken over, and the log says so.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": gone.pid,
                                                  "started": "then"}))
    with caplog.at_level("WARNING"), run_lock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text
    with pytest.raises(RunLocked), run_lock(str(tmp_path)):
        with run_lock(str(tmp_path)):
            pass


def test_a_stage_whose_output_does_not_match_its_record_is_redone(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlma_ray.layout import RunLayout
    from dlma_ray.pipeline import output_intact

    gen, pairs = tmp_path / "round_0/generations", tmp_path / "round_0/pairs"
    for folder, n in ((gen, 3), (pairs, 2)):
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"x": list(range(n))}), folder / "part-0.parquet")
    entries = [{"round": 0, "stage": "generate", "output": str(gen), "rows": 3},
               {"round": 0, "stage": "score", "output": str(pairs), "rows": 3},  # a row went missing
               {"round": 0, "stage": "train", "output": str(tmp_path / "round_0/policy"), "rows": 3}]
    assert [output_intact(RunLayout(str(tmp_path)), e) for e in entries] == [True, False, False]
    state = RunState(str(tmp_path), {}, list(entries))
    state.truncate(1)
    assert [e["stage"] for e in json.loads((tmp_path / "state.json").read_text())["stages"]] == ["generate"]
