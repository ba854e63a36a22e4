"""bench/results_page.py: docs/results.md and the generated blocks of bench/RESULTS.md are what bench/results.json
gives (stale = fail: run `python bench/results_page.py`), every entry is well formed, and the importers read what
`dlma-ray compare` and `dlma-ray judge-accuracy` write."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlma_ray.core.stats import rate_summary

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("results_page", REPO / "bench" / "results_page.py")
rp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rp)


def test_results_page_and_results_md_are_current():
    for path, text in rp.outputs(rp.load()).items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run `python bench/results_page.py`"


def test_record_is_well_formed():
    record = rp.load()
    assert rp.problems(record) == []
    for e in record["entries"]:  # a result says what ran, when, at which commit, on what
        assert re.fullmatch(r"[0-9a-f]{7,40}", e["commit"]), e["id"]
        assert re.match(r"20\d\d-\d\d-\d\d", e["date"]), e["id"]
    text = (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    for e in record["entries"]:  # each entry's block once, with its heading inside
        assert text.count(f"<!-- results:{e['id']} -->\n## {e['title']}\n") == 1, e["id"]


def test_problems_name_what_is_wrong():
    record = {"machines": {"m": "a machine"}, "entries": [
        {"id": "a", "group": "speed", "title": "A", "command": "c", "date": "2026-01-01", "commit": "abcdef1",
         "machine": "m", "summary": "{x:.1f} and {missing}", "numbers": {"x": 1.0},
         "tables": [{"columns": ["one", "two"], "rows": [["1"]]}]},
        {"id": "a", "group": "elsewhere", "title": "B", "command": "c", "date": "d", "commit": "c", "machine": "n",
         "summary": "s"}]}
    bad = "\n".join(rp.problems(record))
    assert "cannot fill" in bad and "'missing'" in bad
    assert "a row of 1 cells for 2 columns" in bad
    assert "id used twice" in bad and "group must be one of" in bad and "machine 'n'" in bad


def test_numbers_fill_the_summary():
    numbers = {"gain": {"mean": 6.8, "ci95": [5.82, 7.8], "n": 64}, "win": {"rate": 0.98, "ci95": [0.92, 1.0]},
               "diff": 2.6e-05, "seconds": 2515}
    text = rp.fill("{gain:.2f}; {win:.0%}; {diff:.1e}; {seconds:,} s; {{literal}}", numbers)
    assert text == "6.80 [5.82, 7.80] (n=64); 98% [92%, 100%]; 2.6e-5; 2,515 s; {literal}"


def test_results_md_blocks_rewritten_appended_and_checked():
    record = {"machines": {"m": "a machine"}, "entries": [
        {"id": "one", "group": "speed", "title": "One", "command": "`x`", "date": "2026-01-01", "commit": "abcdef1",
         "machine": "m", "summary": "{r}x", "numbers": {"r": 2.0},
         "speed": [{"what": "w", "against": "a", "result": "{r}x", "goal": "g"}]}]}
    text = "# R\n\n<!-- results:one -->\nold\n<!-- /results:one -->\n\nprose stays\n"
    out = rp.results_md(text, record)
    assert "old" not in out and "prose stays" in out and "- **result**: 2.0x" in out
    assert "<!-- results:speed-table -->" in out and "| w | a | 2.0x | g | 2026-01-01, `abcdef1`, m |" in out
    assert rp.results_md(out, record) == out
    with pytest.raises(SystemExit, match="gone"):
        rp.results_md(out + "<!-- results:gone -->\n<!-- /results:gone -->\n", record)
    page = rp.page(record)
    assert page.startswith("# Results\n") and "## Speed" in page and "| w | a | 2.0x | g |" in page


def test_import_judge_accuracy_and_upsert(tmp_path):
    doc = {"settings": {"pair": "concise"}, "judges": [
        {"judge": "self_reward", "n": 149, "count": 65, "rate": 65 / 149, "ci95": [0.3592, 0.5165], "ties": 0},
        {"judge": "five_point", "n": 149, "count": 64, "rate": 64 / 149, "ci95": [0.3528, 0.5098], "ties": 20}]}
    path = tmp_path / "judge_accuracy.json"
    path.write_text(json.dumps(doc))
    imported = rp.import_judge_accuracy([str(path)])
    assert imported["tables"][0]["rows"] == [
        ["`self_reward` (R under pi_0)", "`concise`", "43.6% (65/149)", "[35.9, 51.6]", "0"],
        ["`five_point` (Self-Rewarding's rubric)", "–", "43.0% (64/149)", "[35.3, 51.0]", "20"]]
    record = {"machines": {"cpu-2core": "m"}, "entries": [{"id": "judges", "summary": "kept {five_point:.1%}",
                                                         "title": "Judges", "command": "c"}]}
    args = SimpleNamespace(id="judges", title="", command="", date="2026-12-07", commit="ec42355", machine="cpu-2core",
                           conditions="", summary="")
    record = rp.upsert(record, args, imported)
    assert len(record["entries"]) == 1 and record["entries"][0]["summary"] == "kept {five_point:.1%}"
    assert rp.problems(record) == []
    assert rp.fill(record["entries"][0]["summary"], record["entries"][0]["numbers"]) == "kept 43.0% [35.3%, 51.0%] (n=149)"


def test_import_comparison_reads_each_method_s_last_eval(tmp_path):
    for method, gain in (("dlma", 0.5), ("rlcd", 0.25)):
        run = tmp_path / method
        stages = [{"round": k, "stage": s, "output": "", "rows": 10, "seconds": 1.0}
                  for k in range(2) for s in ("generate", "score", "train", "evaluate")]
        run.mkdir()
        (run / "state.json").write_text(json.dumps({"config": {"train": {"method": method}}, "stages": stages}))
        for k in range(2):
            (run / f"round_{k}").mkdir()
            (run / f"round_{k}" / "eval.json").write_text(json.dumps({"round": k, "measures": {
                "distillation_gain": {"n": 16, "mean": gain + k, "ci95": [gain + k - 0.5, gain + k + 0.5]},
                "win_rate": rate_summary(3, 4)}}))
    imported = rp.import_comparison(str(tmp_path))
    table = imported["tables"][0]
    assert table["columns"] == ["measure", "`pi_0`", "`dlma`", "`rlcd`"]
    assert ["evaluated round", "–", "1", "1"] in table["rows"]
    assert ["distillation gain vs pi_0 (per answer) ↑", "–", "1.5 [1, 2] (n=16)", "1.25 [0.75, 1.75] (n=16)"] \
        in table["rows"]
    assert imported["numbers"]["dlma_distillation_gain"] == {"mean": 1.5, "ci95": [1.0, 2.0], "n": 16}
    assert imported["group"] == "methods" and len(imported["tables"]) == 1  # no headtohead/ folder: no second table
