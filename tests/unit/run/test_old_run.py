"""A run directory written by dlma-ray before the package took its layered shape (a fresh-clone `make demo` of
commit b974694: two DLMA rounds, weights left out) still resumes: its config loads, every finished stage is
found intact at the paths the layout spells now (the directory has moved since: the paths it recorded are
gone), a longer run continues at the next round, and the report reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dlma_ray import methods
from dlma_ray.config.tree import config_from_dict
from dlma_ray.run.layout import RunLayout
from dlma_ray.pipeline import output_intact, stages_to_do
from dlma_ray.run.state import ConfigMismatchError

OLD_RUN = Path(__file__).resolve().parents[2] / "data" / "run_before_layout"


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "moved" / "demo"
    shutil.copytree(OLD_RUN, run)
    return run


def old_config(run: Path, *changes: tuple[str, str, object]):
    data = json.loads((run / "state.json").read_text())["config"]
    data["run"]["dir"] = str(run)  # the directory moved: run.dir may change on resume
    for section, key, value in changes:
        data[section][key] = value
    return config_from_dict(data)


def test_the_old_run_is_complete_and_resumes_with_nothing_to_do(old_run):
    cfg = old_config(old_run)
    assert methods.check(cfg).name == "dlma"
    recorded = json.loads((old_run / "state.json").read_text())["stages"]
    assert all(not e["output"].startswith(str(old_run)) for e in recorded)  # recorded where it was written
    run = RunLayout(str(old_run))
    assert all(output_intact(run, e) for e in recorded)
    state, pending = stages_to_do(cfg, run)
    assert pending == [] and len(state.stages) == 8
    assert run.rounds(2) == [0, 1] and run.latest_policy() == 1


def test_a_longer_run_continues_at_the_next_round(old_run):
    state, pending = stages_to_do(old_config(old_run, ("rounds", "count", 3)), RunLayout(str(old_run)))
    assert pending == [(2, "generate"), (2, "score"), (2, "train"), (2, "evaluate")]
    assert len(state.stages) == 8


def test_a_damaged_table_is_redone_from_that_stage(old_run):
    next((old_run / "round_1" / "pairs").glob("*.parquet")).unlink()
    state, pending = stages_to_do(old_config(old_run), RunLayout(str(old_run)))
    assert pending == [(1, "score"), (1, "train"), (1, "evaluate")]


def test_a_change_that_would_make_finished_stages_stale_is_refused(old_run):
    with pytest.raises(ConfigMismatchError, match=r"train\.beta: 0\.1 -> 0\.5"):
        stages_to_do(old_config(old_run, ("train", "beta", 0.5)), RunLayout(str(old_run)))


def test_the_report_reads_the_old_run(old_run):
    from dlma_ray.views.report import write_report

    text = Path(write_report(str(old_run))).read_text()
    assert "distillation" in text.lower() and "round 1" in text
