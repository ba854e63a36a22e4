"""The policy's model card: front matter that parses, the evaluation's intervals, the config, the base's license."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from hand_built_run import finished_run  # noqa: F401  (the hand-built two-round run, a fixture)

from dlma_ray.views.modelcard import base_model_info, front_matter, write_model_card


def _interval(summary: dict) -> str:
    """A measure's cell written out here, independently of dlma_ray.evaluation.measures: value [lo, hi] (n=N)."""
    value = summary.get("rate", summary.get("mean", summary.get("value")))
    lo, hi = summary["ci95"]
    if "rate" in summary and "mean" not in summary:
        return f"{round(100 * value)}% [{round(100 * lo)}%, {round(100 * hi)}%] (n={summary['n']})"
    return f"{value:.3g} [{lo:.3g}, {hi:.3g}] (n={summary['n']})"


def test_card_of_a_finished_run(finished_run):  # noqa: F811
    path = write_model_card(str(finished_run), 1)
    assert path == str(finished_run / "round_1" / "policy" / "README.md")
    text = Path(path).read_text(encoding="utf-8")
    meta = front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers" and {"dlma-ray", "dlma"} <= set(meta["tags"])
    ev = json.loads((finished_run / "round_1" / "eval.json").read_text())
    for name in ("distillation_gain", "win_rate", "refusal_harmful", "implicit_reward_accuracy"):
        assert _interval(ev["measures"][name]) in text, name
    ev0 = json.loads((finished_run / "round_0" / "eval.json").read_text())
    assert _interval(ev0["measures"]["distillation_gain"]) in text  # every round up to k, not only the last
    assert "after round 0" in text and "after round 1" in text
    config = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.DOTALL).group(1))
    assert config == json.loads((finished_run / "state.json").read_text())["config"]
    assert "after 2 training round(s) of 2" in text and "`dlma`" in text


def test_card_without_evaluation(finished_run):  # noqa: F811
    (finished_run / "round_0" / "eval.json").unlink()
    text = Path(write_model_card(str(finished_run), 0)).read_text(encoding="utf-8")
    assert "_Not evaluated" in text and front_matter(text)["tags"][0] == "dlma-ray"


def test_base_model_info(tmp_path):
    assert base_model_info("builtin:smollm2-135m-instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert base_model_info(str(tmp_path)) == (None, None)  # a local folder without a card: nothing is guessed
    (tmp_path / "README.md").write_text("---\nlicense: mit\nbase_model: org/base-7b\n---\n# a model\n")
    assert base_model_info(str(tmp_path)) == ("org/base-7b", "mit")
    assert base_model_info("some-org/some-model-not-cached")[0] == "some-org/some-model-not-cached"
    assert base_model_info("s3://bucket/models/x") == (None, None)


def test_card_for_the_pipeline_never_raises(tmp_path, caplog):
    from dlma_ray.views.modelcard import write_card_quietly

    write_card_quietly(str(tmp_path), 0)  # no policy folder: logged, not raised
    assert "could not write round 0's model card" in caplog.text


def test_card_of_a_real_run(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).resolve().parents[2] / "data" / "run_before_layout", run)
    text = Path(write_model_card(str(run), 1)).read_text(encoding="utf-8")
    ev = json.loads((run / "round_1" / "eval.json").read_text())
    for name in ("distillation_gain", "refusal_harmful", "kl_to_initial"):
        assert _interval(ev["measures"][name]) in text, name
    assert front_matter(text)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    stages = {(e["round"], e["stage"]): e["rows"] for e in json.loads((run / "state.json").read_text())["stages"]}
    assert f"| 1 | {stages[1, 'score']} | {stages[1, 'train']} |" in text  # pairs scored and trained on
