"""The `dlma-ray` command: subcommands, config output, exit status 2 on a bad config, jobs/*.py delegating to it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from hand_built_run import finished_run  # noqa: F401  (the hand-built two-round run, a fixture)

from dlma_ray.cli import main
from dlma_ray.config.tree import Config, load_config
from dlma_ray.views.config_reference import config_reference

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("run", "eval", "compare", "report", "config", "export", "card")


def cli(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, script] if script else [sys.executable, "-m", "dlma_ray"]
    return subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_console_script_is_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["dlma-ray"].split(":")
    assert (module, func) == ("dlma_ray.cli", "main")


def test_the_cli_and_the_registries_load_without_torch():
    """`dlma-ray --help`, a config error or `dlma-ray plan` answer in a fraction of a second: the command line, the
    methods and the judges import no torch, transformers, vLLM or Ray (each loads where its work runs)."""
    code = ("import sys, dlma_ray.cli, dlma_ray.methods, dlma_ray.evaluation.judges; dlma_ray.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_the_commands_and_config_help_the_sections():
    top = cli("--help")
    assert top.returncode == 0
    for name in COMMANDS:
        assert f"\n    {name} " in top.stdout, name
    config_help = cli("config", "--help").stdout
    for section in dataclasses.fields(Config):
        assert f"\n  {section.name} " in config_help, section.name
    assert "gradient_checkpointing" in config_help  # a section's keys are listed too


def test_config_prints_yaml_that_loads_back(tmp_path):
    out = cli("config", "train.beta=0.3", "rounds.count=4")
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed == load_config(None, ["train.beta=0.3", "rounds.count=4"]).to_dict()
    (tmp_path / "c.yaml").write_text(out.stdout)
    again = cli("config", "--config", str(tmp_path / "c.yaml"))
    assert yaml.safe_load(again.stdout) == printed
    assert cli("config", "--reference").stdout == config_reference()


@pytest.mark.parametrize("args", [("config", "train.betta=1"), ("run", "train.betta=1"),
                                  ("eval", "train.betta=1"), ("compare", "train.betta=1"),
                                  ("card", "train.betta=1")])
def test_bad_override_exits_2_naming_the_field(args):
    out = cli(*args)
    assert out.returncode == 2
    assert "train.betta: unknown key" in out.stderr and "beta" in out.stderr


@pytest.mark.parametrize("script", ["jobs/iterate.py", "jobs/evaluate.py", "jobs/compare.py"])
def test_jobs_call_the_same_code(script):
    out = cli("train.betta=1", script=script)  # (compare sets train.method per method: a bad key fails every one)
    assert out.returncode == 2 and "train.betta: unknown key" in out.stderr
    assert cli("--help", script=script).stdout.startswith("usage: dlma-ray ")


def test_card_and_report_from_a_run_dir(finished_run, capsys):  # noqa: F811
    for k in (0, 1):  # a complete policy folder has its config.json
        (finished_run / f"round_{k}" / "policy" / "config.json").write_text("{}")
    assert main(["card", str(finished_run)]) == 0  # default: the latest trained round (1)
    card = finished_run / "round_1" / "policy" / "README.md"
    assert capsys.readouterr().out.strip() == str(card) and card.read_text().startswith("---\n")
    card.unlink()
    assert main(["card", f"run.dir={finished_run}", "--round", "0"]) == 0  # the run dir from an override
    assert (finished_run / "round_0" / "policy" / "README.md").exists() and not card.exists()
    assert main(["report", str(finished_run)]) == 0 and (finished_run / "report.md").exists()
    with pytest.raises(SystemExit) as exc:
        main(["report", str(finished_run), "rounds.count=3"])
    assert exc.value.code == 2


def test_export_through_the_command(finished_run, tmp_path, capsys):  # noqa: F811
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The hand-built pairs carry no real messages: give them one user turn each.
    path = finished_run / "round_0" / "pairs" / "part-0.parquet"
    table = pq.read_table(path)
    messages = [json.dumps([{"role": "user", "content": f"q{i}"}]) for i in range(table.num_rows)]
    pq.write_table(table.set_column(table.schema.get_field_index("messages_json"), "messages_json",
                                    pa.array(messages)), path)
    assert main(["export", str(finished_run), "--round", "0", "--out", str(tmp_path / "d")]) == 0
    ds = datasets.load_from_disk(str(tmp_path / "d"))
    assert len(ds) == sum(r == "train" for r in table.column("split").to_pylist())
    assert ds[0]["prompt"] == [{"role": "user", "content": "q1"}] and "(36 train pairs)" in capsys.readouterr().out


@pytest.mark.parametrize("point, named", [("round_2/train", "rounds 0..1"), ("round_0/evaluate", "stages generate, "
                                                                               "score, train"),
                                          ("round0/score", "expected round_K/STAGE")])
def test_stop_after_outside_the_run_exits_2_naming_what_it_has(point, named, tmp_path, capsys):
    code = main(["run", f"run.dir={tmp_path / 'run'}", "rounds.count=2", "eval.enabled=false", "--stop-after", point])
    err = capsys.readouterr().err
    assert code == 2 and f"--stop-after {point!r}" in err
    assert named in err and not (tmp_path / "run").exists(), "nothing started, nothing written"


def test_stop_after_keeps_the_stages_up_to_it():
    from dlma_ray.pipeline import stop_point
    from dlma_ray.run.state import parse_stage

    cfg = load_config(None, ["rounds.count=2"])
    assert stop_point(cfg, parse_stage("round_1/evaluate", "--stop-after")) == (1, "evaluate")
    with pytest.raises(ValueError, match="--stop-after 'x'"):
        parse_stage("x", "--stop-after")
