"""The run report renders from a hand-built finished run, and from partial runs with notes for what is missing."""

from __future__ import annotations

import json
from pathlib import Path

from hand_built_run import finished_run  # noqa: F401  (the hand-built two-round run, a fixture)
from dlma_ray.views.report import FIGURES, write_report
from dlma_ray.config.tree import load_config
from dlma_ray.stages.judged_pairs import judged_measures


def test_report_of_a_finished_run(finished_run):  # noqa: F811
    out = Path(write_report(str(finished_run)))
    assert out == finished_run / "report.md"
    md = out.read_text()
    for name in FIGURES:
        png = finished_run / "report" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, name
        assert f"(report/{name})" in md
    assert "Skipped" not in md
    assert "## Example answers" in md and "How do I pick a lock?" in md and "After round 1" in md
    assert "| 1 | generate | 40 | 1.5 |" in md and "method `dlma`" in md
    assert "## Headline" in md and "Distillation gain of the policy after round 1" in md
    assert "distillation gain vs pi_0 (per answer) ↑" in md and "(n=4)" in md and "[" in md


def test_report_of_a_partial_run(finished_run):  # noqa: F811
    # Round 1 never finished: no eval, no policy; round 0 lost its eval too; no baseline answers yet.
    for path in ("round_1/eval.json", "round_0/eval.json", "round_1/answers.jsonl", "baseline_answers.jsonl"):
        (finished_run / path).unlink()
    (finished_run / "round_1/policy/train_metrics.jsonl").unlink()
    write_report(str(finished_run))  # a first report, then the same run with less: stale figures must go
    md = Path(write_report(str(finished_run))).read_text()
    assert (finished_run / "report/self_reward_distribution.png").stat().st_size > 20_000
    assert (finished_run / "report/training.png").exists()
    assert not (finished_run / "report/accuracy_by_range.png").exists()
    assert not (finished_run / "report/eval_metrics.png").exists()
    assert not (finished_run / "report/generated_pairs_vs_judge.png").exists()
    assert md.count("_Skipped:") == 4  # accuracy, generated pairs vs judge, eval metrics, examples


def test_report_of_an_empty_run(tmp_path):
    md = Path(write_report(str(tmp_path))).read_text()
    assert "rounds found: none" in md and md.count("_Skipped:") == 6


def test_glue_is_the_time_outside_stages_per_job():
    from dlma_ray.views.report import glue_seconds

    stages = [{"round": 0, "stage": "generate", "seconds": 50.0},  # recorded before start times were kept
              {"round": 0, "stage": "score", "seconds": 30.0, "started": 1010.0, "job_started": 1000.0},
              {"round": 0, "stage": "train", "seconds": 60.0, "started": 1042.5, "job_started": 1000.0},
              # a resumed job: its first stage's glue counts from its own start, not the killed job's last stage
              {"round": 0, "stage": "evaluate", "seconds": 20.0, "started": 5025.0, "job_started": 5000.0}]
    assert glue_seconds(stages) == [None, 10.0, 2.5, 25.0]


def test_report_of_generated_pairs_against_a_judge(finished_run):  # noqa: F811
    """The paper's Figure 3 section: R and the RLAIF text judge against the reward model on each round's
    generated pairs, by |R| range with n and intervals, beside R on human pairs; and, once no external
    judge was configured, one clear line instead of a figure."""
    md = Path(write_report(str(finished_run))).read_text()
    section = md.split("## R against an external judge on generated pairs")[1].split("\n## ")[0]
    assert "(report/generated_pairs_vs_judge.png)" in section
    assert "judged by **reward model /models/tiny-rm**" in section and "8 held-out, 40 training" in section
    ev = json.loads((finished_run / "round_1/eval.json").read_text())
    overall = ev["measures"]["self_reward_vs_judge"]
    lo, hi = overall["ci95"]
    row = next(line for line in section.splitlines() if line.startswith("| 1 | R vs judge, generated pairs"))
    assert row.endswith(f"| {100 * overall['rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] (n={overall['n']}) |")
    assert "| 1 | RLAIF text judge vs judge, same pairs |" in section and "| 0 | R vs human label, human pairs |" in section
    assert "(n=0)" in section  # an empty |R| bin shows its count, not a rate
    for k in (0, 1):  # no external judge: the stage writes only a note, and the report says so
        path = finished_run / f"round_{k}/eval.json"
        ev = json.loads(path.read_text())
        for name in ("self_reward_vs_judge", "rlaif_vs_judge"):
            ev["measures"].pop(name)
        for name in ("self_reward_vs_judge_bins", "rlaif_vs_judge_bins"):
            ev["details"].pop(name)
        _, ev["details"]["generated_pairs_judged"] = judged_measures(load_config(None, []), [], None, "m0")[1].popitem()
        path.write_text(json.dumps({**ev, "judge": "self_reward"}))
    from dlma_ray.views.generated_pairs import plot_generated
    from dlma_ray.views.report import render_markdown
    from dlma_ray.views.runview import load_run

    run = load_run(str(finished_run))  # only this figure: the others are the finished-run test's
    png = finished_run / "report" / "none.png"
    notes = {"generated_pairs_vs_judge.png": plot_generated(run, str(png))}
    md = render_markdown(run, str(finished_run), notes)
    assert "_Skipped: no external judge was configured (eval.judge: self_reward)" in md and not png.exists()
