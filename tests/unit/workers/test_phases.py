"""Start-up spans a stage's processes record (dlma_ray.workers.phases) and how the driver sums them."""

import json
import os
import time

from dlma_ray.views.report import phase_cells
from dlma_ray.workers import phases


def test_spans_are_recorded_only_where_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(phases.ENV, raising=False)
    with phases.phase("model_load"):
        pass
    assert not list(tmp_path.iterdir()), "without $DLMA_PHASES_DIR a process records nothing"
    monkeypatch.setenv(phases.ENV, str(tmp_path / "spans"))
    with phases.phase("model_load"):
        time.sleep(0.01)
    phases.process_started()
    spans = phases.read(str(tmp_path / "spans"))
    assert sorted(s["phase"] for s in spans) == ["model_load", "process"]
    assert all(s["pid"] == os.getpid() and s["end"] >= s["start"] for s in spans)
    assert not [n for n in os.listdir(tmp_path / "spans") if not n.endswith(".json")], "written whole, then renamed"


def test_summary_clips_to_the_stage_and_counts_overlap_once():
    spans = [{"phase": "process", "start": 5.0, "end": 12.0, "pid": 1},      # began before the stage: clipped
             {"phase": "engine_start", "start": 12.0, "end": 40.0, "pid": 1},
             {"phase": "model_load", "start": 30.0, "end": 50.0, "pid": 2},   # overlaps the engine's start
             {"phase": "save", "start": 90.0, "end": 95.0, "pid": 2},         # not start-up
             {"phase": "model_load", "start": 200.0, "end": 210.0, "pid": 3}]  # another stage
    got = phases.summarize(spans, 10.0, 100.0)
    assert got["seconds"] == {"process": 2.0, "engine_start": 28.0, "model_load": 20.0, "save": 5.0}
    assert got["processes"] == 2
    assert got["startup_wall"] == 40.0, "10..50 s: the union of the start-up spans, overlap counted once"
    assert phases.union_seconds([]) == 0.0


def test_report_cells():
    stage = {"phases": {"seconds": {"model_load": 20.0, "save": 5.0}, "startup_wall": 21.5, "processes": 2}}
    assert phase_cells(stage) == ["21.5", "model_load 20.0, save 5.0"]
    assert phase_cells({}) == ["", ""]
    json.dumps(stage)  # what state.json holds
