"""Run state that never turns against its user: a run with nothing finished takes a corrected config,
a damaged state.json names itself and the way out, credentials never enter a path. Fast, no Ray."""

import json

import pytest

from dlma_ray.config.tree import ConfigError, load_config
from dlma_ray.run.state import ConfigMismatchError, RunState, StateFileError


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
    from dlma_ray.workers.training import mean_across_workers

    assert mean_across_workers({"loss": 0.5}, "cpu") == {"loss": 0.5}


def test_one_writer_per_run_directory(tmp_path, caplog):
    import os
    import subprocess
    import sys

    from dlma_ray.run.lock import LOCK_FILE, RunLocked, run_lock

    code = ("import sys; from dlma_ray.run.lock import run_lock\n"
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

    from dlma_ray.run.layout import RunLayout
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


def test_stage_line_says_rows_in_kept_dropped_by_reason_and_seconds():
    from dlma_ray.config.interfaces import StageResult
    from dlma_ray.pipeline import stage_line

    scored = StageResult("/r/round_0/pairs", 60, {"rows_in": 64, "dropped": {"too_long": 3, "nonfinite": 1}})
    assert stage_line(0, "score", scored, 12.34) == ("round 0: score done: 64 rows in, 60 kept, 4 dropped "
                                                     "(nonfinite 1, too_long 3), 12.3 s -> /r/round_0/pairs")
    trained = StageResult("/r/round_1/policy", 58, {"loss": 0.5})
    assert stage_line(1, "train", trained, 7) == "round 1: train done: 58 rows in, 58 kept, 0 dropped, 7.0 s -> " \
                                                 "/r/round_1/policy"


def _two_finished_rounds(run_dir, config: dict) -> RunState:
    state = RunState.open(str(run_dir), config)
    for k in (0, 1):
        for stage in ("generate", "score", "train", "evaluate"):
            state.record(k, stage, f"round_{k}/{stage}", 8, 1.0)
    return state


@pytest.mark.parametrize("override, first", [("train.beta=0.5", "train"), ("scoring.dtype=bfloat16", "score"),
                                             ("train.max_length=700", "score"), ("generation.temperature=0.7",
                                                                                "generate"),
                                             ("train.method=rlcd", "generate"), ("rounds.reference=initial", "score")])
def test_a_stale_change_is_refused_with_the_restart_point_it_needs(tmp_path, override, first):
    _two_finished_rounds(tmp_path, load_config(None, []).to_dict())
    with pytest.raises(ConfigMismatchError) as err:
        RunState.open(str(tmp_path), load_config(None, [override]).to_dict())
    assert override.split("=")[0] in str(err.value) and f"--restart-from round_0/{first}" in str(err.value)


def test_restart_from_forgets_that_stage_and_every_later_one_and_records_why(tmp_path):
    from dlma_ray.run.state import parse_stage

    _two_finished_rounds(tmp_path, load_config(None, []).to_dict())
    changed = load_config(None, ["train.beta=0.5"]).to_dict()
    state = RunState.open(str(tmp_path), changed, parse_stage("round_1/train"))
    assert [(e["round"], e["stage"]) for e in state.stages] == [
        (0, "generate"), (0, "score"), (0, "train"), (0, "evaluate"), (1, "generate"), (1, "score")]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["config"]["train"]["beta"] == 0.5
    assert saved["restarts"][0]["from"] == "round_1/train" and saved["restarts"][0]["kept"] == 6
    assert any("train.beta" in c for c in saved["restarts"][0]["changes"])
    # the restart is remembered: the same config resumes without a new restart, and the history stays
    again = RunState.open(str(tmp_path), changed)
    assert len(again.stages) == 6 and again.restarts == saved["restarts"]
    assert RunState.open(str(tmp_path), changed, parse_stage("round_0/generate")).stages == []


@pytest.mark.parametrize("text", ["round_1", "round_x/train", "1/train", "round_0/sample", ""])
def test_a_bad_restart_point_names_the_accepted_form(text):
    from dlma_ray.run.state import parse_stage

    with pytest.raises(ValueError, match="round_K/STAGE"):
        parse_stage(text)
    assert parse_stage("round_2/evaluate/") == (2, "evaluate")


def test_stages_to_do_after_a_restart_drops_the_old_training_checkpoints(tmp_path):
    import os

    from dlma_ray.run.layout import RunLayout
    from dlma_ray.pipeline import stages_to_do

    cfg = load_config(None, [f"run.dir={tmp_path}", "rounds.count=2"])
    _two_finished_rounds(tmp_path, cfg.to_dict())
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = RunLayout(str(tmp_path))
    for k in (0, 1):  # whole outputs where the recorded stages point, and a checkpoint left in each round's scratch
        paths = run.round(k)
        for table in (paths.output("generate"), paths.output("score")):
            os.makedirs(table)
            pq.write_table(pa.table({"x": list(range(8))}), os.path.join(table, "part-0.parquet"))
        os.makedirs(paths.output("train"))
        open(os.path.join(paths.output("train"), "config.json"), "w").write("{}")
        open(paths.output("evaluate"), "w").write("{}")
        os.makedirs(os.path.join(paths.train_scratch, "train", "checkpoint_1"))
    changed = load_config(None, [f"run.dir={tmp_path}", "rounds.count=2", "train.lr=1e-4"])
    state, pending = stages_to_do(changed, run, (1, "train"))
    assert pending == [(1, "train"), (1, "evaluate")]
    assert (tmp_path / "round_0/.ray_train").exists() and not (tmp_path / "round_1/.ray_train").exists()


def test_another_methods_section_does_not_make_a_run_stale(tmp_path):
    """rlaif.margin shapes no stage of a dlma run (its change is accepted there), but every stage of an rlaif run."""
    from dlma_ray.pipeline import stages_to_do
    from dlma_ray.run.layout import RunLayout

    _two_finished_rounds(tmp_path / "dlma", load_config(None, []).to_dict())
    state, _ = stages_to_do(load_config(None, ["rlaif.margin=0.3", "spin.loss=hinge"]), RunLayout(str(tmp_path / "dlma")))
    assert state.config["rlaif"]["margin"] == 0.3
    _two_finished_rounds(tmp_path / "rlaif", load_config(None, ["train.method=rlaif"]).to_dict())
    with pytest.raises(ConfigMismatchError, match="rlaif.margin"):
        stages_to_do(load_config(None, ["train.method=rlaif", "rlaif.margin=0.3"]), RunLayout(str(tmp_path / "rlaif")))
