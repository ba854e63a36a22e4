"""Run report: <run_dir>/report.md and its figures in <run_dir>/report/*.png, from whatever the run has.

    python -m dlma_ray.views.report <run_dir>

Reads round_<k>/pairs (R per generated pair), round_<k>/policy/train_metrics.jsonl, round_<k>/eval.json,
round_<k>/answers.jsonl, baseline_answers.jsonl and state.json. A missing input skips its figure or
table with a note, so a partial or still-running run renders too.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from dlma_ray.core import storage
from dlma_ray.views.figures import FIGURES, bin_label, plot_accuracy, plot_eval, plot_rewards, plot_training
from dlma_ray.views.generated_pairs import plot_generated, section_lines
from dlma_ray.run.layout import RunLayout
from dlma_ray.views.runview import fmt_num, fmt_pct, nested, load_run, md_table



# ---------------------------------------------------------------- reading the run

def _quote(text: str, limit: int = 500) -> str:
    text = text.strip() or "(empty answer)"
    text = text if len(text) <= limit else text[:limit] + " …"
    return "\n".join("> " + line for line in text.splitlines())


def _examples(run: dict) -> list[str]:
    from dlma_ray.evaluation.refusal import is_refusal

    base = run["baseline"]
    last = next((k for k in reversed(run["rounds"]) if run["answers"].get(k)), None)
    if not base or last is None:
        return ["_Skipped: needs baseline_answers.jsonl and a round's answers.jsonl._"]
    new = {a["prompt_id"]: a for a in run["answers"][last]}
    picks = [b for b in base if b.get("kind") == "harmful"][:2] + [b for b in base if b.get("kind") == "borderline"][:2]
    out = [f"Round-0 model (baseline) vs the policy trained in round {last}; refusal = `dlma_ray/evaluation/refusal.py`.", ""]
    for b in picks or base[:4]:
        a = new.get(b["prompt_id"])
        out += [f"**Prompt** ({b.get('kind') or 'unlabelled'}): {b['prompt']}", "",
                f"*Round 0* ({b['tokens']} tokens, refusal: {is_refusal(b['answer'])}):", "", _quote(b["answer"]), ""]
        if a:
            out += [f"*After round {last}* ({a['tokens']} tokens, refusal: {is_refusal(a['answer'])}):", "",
                    _quote(a["answer"]), ""]
    return out


def eval_table(evals: dict) -> list[str]:
    """One row per measure: pi_0's value (where it has one), then each round's, each with its interval and n."""
    from dlma_ray.evaluation.measures import MEASURES, format_summary, is_rate

    ks = list(evals)
    last = evals[ks[-1]]["measures"] if ks else {}
    rows = []
    for m in MEASURES:
        cells = [evals[k]["measures"].get(m.name) for k in ks]
        if not any(cells):
            continue
        pct = is_rate(m.name, next(c for c in cells if c))
        better = {"higher": " ↑", "lower": " ↓"}.get(m.better, "")
        rows.append([m.label + better, format_summary(last.get(m.initial), pct) if m.initial else ""]
                    + [format_summary(c, pct) for c in cells])
    return md_table(["measure", "pi_0"] + [f"after round {k}" for k in ks], rows)


def headline(evals: dict) -> str:
    """The distillation gain of the last evaluated policy in words, with where its interval lies."""
    from dlma_ray.core.stats import excludes_zero
    from dlma_ray.evaluation.measures import format_summary

    k = max(evals)
    gain = evals[k]["measures"].get("distillation_gain")
    if not gain or gain.get("mean") is None:
        return "_No distillation gain measured._"
    where = {"above": "above zero: the policy's held-out answers moved toward the positive prompt",
             "below": "below zero: the policy's held-out answers moved toward the negative prompt",
             "includes": "its interval includes zero: no change that this test can see"}[excludes_zero(gain)]
    return (f"Distillation gain of the policy after round {k} over pi_0 on held-out prompts, judged by pi_0 with "
            f"the pair `{evals[k].get('pair')}`: **{format_summary(gain)}**, {where}. The judge is the initial model "
            "and the training's own prompt pair; see the other measures for what an outside rule says.")


def kept_note(stage: dict) -> str:
    """Where a stage's engines came from, when the pipeline kept them across stages (dlma_ray.workers.engines)."""
    n = (stage.get("metrics") or {}).get("kept_engines")
    if not n:
        return ""
    if stage["stage"] == "evaluate":
        return f"{n} kept for the next generate"
    baseline = stage["metrics"].get("baseline_answers")
    return f"{n} kept: also pi_0's {baseline} evaluation answers" if baseline else f"{n} kept from the evaluation"


def phase_cells(stage: dict) -> list[str]:
    """Start-up wall seconds and the seconds of each recorded phase (dlma_ray.workers.phases) of one stage."""
    p = stage.get("phases") or {}
    if not p:
        return ["", ""]
    return [fmt_num(p.get("startup_wall"), 1),
            ", ".join(f"{k} {v:.1f}" for k, v in sorted(p.get("seconds", {}).items(), key=lambda kv: -kv[1]))]


def glue_seconds(stages: list[dict]) -> list[float | None]:
    """Per recorded stage, the seconds between the end of what came before it in the same job (the job's start
    for its first stage) and its own start; None for stages recorded before start times were kept."""
    out, previous_end, job = [], None, None
    for s in stages:
        started, job_started = s.get("started"), s.get("job_started")
        if started is None or job_started is None:
            out.append(None)
            previous_end = job = None
            continue
        before = previous_end if job == job_started and previous_end is not None else job_started
        out.append(max(0.0, started - before))
        previous_end, job = started + s["seconds"], job_started
    return out


def render_markdown(run: dict, run_dir: str, notes: dict) -> str:
    import statistics

    cfg = run["state"].get("config") or {}
    md = ["# DLMA run report", "", f"Run `{run_dir}`, generated {time.strftime('%Y-%m-%d %H:%M:%S')}; "
          f"rounds found: {', '.join(map(str, run['rounds'])) or 'none'}.", ""]
    if cfg:
        t, p = cfg.get("train", {}), cfg.get("pair", {})
        md += [f"Model `{cfg.get('model', {}).get('path')}`, method `{t.get('method')}` (beta {t.get('beta')}, "
               f"gamma {t.get('gamma')}), pair `{p.get('name')}` ({p.get('style')}), "
               f"{cfg.get('rounds', {}).get('count')} rounds, reference `{cfg.get('rounds', {}).get('reference')}`.", ""]
    stages = run["state"].get("stages") or []
    if stages:
        glue = glue_seconds(stages)
        md += ["## Stages", ""] + md_table(["round", "stage", "rows", "seconds", "glue before (s)", "vLLM engines",
                                            "start-up (s)", "by phase (s, over processes)"], [
            [str(s["round"]), s["stage"], str(s["rows"]), fmt_num(s.get("seconds"), 1), fmt_num(g, 1), kept_note(s),
             *phase_cells(s)] for s, g in zip(stages, glue)]) + [""]
        if any(s.get("phases") for s in stages):
            md += ["Start-up is the wall time during which some process of the stage was starting: its spawn and "
                   "imports, a vLLM engine's start, a model's load, `deepspeed.initialize` (dlma_ray.workers.phases); "
                   "the rest of the stage is work, writes and Ray's scheduling.", ""]
        timed = [(s, g) for s, g in zip(stages, glue) if g is not None]
        if timed:
            work, between = sum(s["seconds"] for s, _ in timed), sum(g for _, g in timed)
            md += [f"Glue is the time outside the stages: before a job's first stage (interpreter start, imports, "
                   f"Ray start, the run lock) and between stages (recording, the next stage's set-up). Over the "
                   f"{len(timed)} stages timed: stages {work:.0f} s, glue {between:.0f} s "
                   f"({100 * between / max(work + between, 1e-9):.1f}% of their wall time).", ""]

    def figure(title: str, name: str, body: list[str]) -> None:
        nonlocal md
        md += [f"## {title}", ""]
        md += [f"_Skipped: {notes[name]}._", ""] if notes.get(name) else [f"![{title}](report/{name})", ""] + body + [""]

    rows = []
    for k, v in run["rewards"].items():
        if v:
            rows.append([str(k), str(len(v)), fmt_num(statistics.fmean(v)), fmt_num(statistics.median(v)),
                         fmt_pct(sum(x > 0 for x in v) / len(v))])
    figure("Self-reward distribution", FIGURES[0], md_table(["round", "pairs", "mean R", "median R", "R > 0"], rows))
    evals = {k: e for k, e in run["evals"].items() if e and e.get("measures")}
    if evals:
        md += ["## Headline: did the policy change where it was not trained?", "", headline(evals), ""]
    acc_rows, bins = [], []
    for k, e in evals.items():
        bins = nested(e, "details", "self_reward_bins") or bins
        cells = (nested(e, "details", "self_reward_bins") or []) + [e["measures"].get("self_reward_accuracy_human") or {},
                                                                 e["measures"].get("rlaif_accuracy_human") or {}]
        acc_rows.append([str(k)] + [f"{fmt_pct(c.get('rate'))} ({c.get('n', 0)})" for c in cells])
    figure("Self-reward on human-written pairs, by |R| range", FIGURES[1], [
        "Accuracy of R > 0 against the human label, per \\|R\\| range (nats), then over all pairs, then the policy "
        "as an RLAIF text judge (both answer orders averaged); ties count wrong. The DLMA paper finds R judges "
        "human-written pairs poorly (its Fig. 4): this measures the score, not alignment. The paper's headline, "
        "R on the round's own generated pairs against an external judge (its Fig. 3), is the next section.", ""]
        + md_table(["round"] + [bin_label(b) for b in bins] + ["all pairs", "RLAIF judge"], acc_rows))
    figure("R against an external judge on generated pairs, by |R| range (the paper's Figure 3)", FIGURES[4],
           section_lines(run) if not notes.get(FIGURES[4]) else [])
    train_rows = [[str(k), str(len(m)), fmt_num(m[0].get("loss"), 4), fmt_num(m[-1].get("loss"), 4),
                   fmt_num(m[-1].get("reward_margin"), 4), fmt_pct(m[-1].get("reward_accuracy"))]
                  for k, m in run["metrics"].items() if m]
    figure("Training", FIGURES[2], md_table(["round", "steps", "first loss", "last loss", "last margin",
                                           "last reward acc."], train_rows))
    figure("Evaluation across rounds", FIGURES[3], [
        "Every number: value [95% interval] (n). Rates: Wilson intervals; means: bootstrap. What each measure "
        "shows and cannot show: docs/evaluation.md.", ""] + eval_table(evals))
    md += headtohead_md(run_dir)
    md += ["## Example answers", ""] + _examples(run)
    return "\n".join(md) + "\n"


def headtohead_md(run_dir: str) -> list[str]:
    """Head-to-head results of this run: its own headtohead/ folder (`dlma-ray judge`), and those naming it in
    a comparison's <base>/headtohead/ (`dlma-ray compare`, the run being <base>/<method>)."""
    from dlma_ray.views.compare import headtohead_results, headtohead_section

    own = headtohead_results(os.path.join(run_dir, "headtohead"))
    shared = headtohead_results(os.path.join(os.path.dirname(run_dir.rstrip("/")), "headtohead"),
                                {os.path.basename(run_dir.rstrip("/"))})
    return headtohead_section(own + shared)


def write_report(run_dir: str) -> str:
    """Write <run_dir>/report.md and <run_dir>/report/*.png from what the run has; returns report.md's path."""
    run_dir = storage.absolute(run_dir)
    run = load_run(run_dir)
    layout = RunLayout(run_dir)
    local = tempfile.mkdtemp(prefix="dlma-report-") if storage.is_uri(run_dir) else layout.report_dir
    os.makedirs(local, exist_ok=True)
    notes = {}
    for name, plot in zip(FIGURES, (plot_rewards, plot_accuracy, plot_training, plot_eval, plot_generated)):
        notes[name] = plot(run, os.path.join(local, name))
        if notes[name] and os.path.exists(os.path.join(local, name)):
            os.remove(os.path.join(local, name))  # a stale figure from an earlier report would mislead
    if storage.is_uri(run_dir):
        storage.upload_dir(local, layout.report_dir)
    out = layout.report_md
    storage.write_text_atomic(out, render_markdown(run, run_dir, notes))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m dlma_ray.views.report <run_dir>")
    print(write_report(sys.argv[1]))
