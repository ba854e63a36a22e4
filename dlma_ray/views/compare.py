"""Methods side by side: <base>/comparison.md and <base>/comparison.png from each method's eval.json.

    python -m dlma_ray.views.compare BASE_DIR [--methods dlma,rlcd,...]

BASE_DIR holds one run directory per method, `<base>/<method>/` (what jobs/compare.py writes; any run
dirs named after their method will do). Each method is shown at its LAST evaluated round, every measure
of dlma_ray.evaluation.measures with its interval, beside `pi_0`, the untouched initial model on the same items; a
method without an eval.json gets a column of dashes and a note, so a partial or failed set still renders.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from dlma_ray.core import storage
from dlma_ray.views.figures import pyplot
from dlma_ray.run.layout import RunLayout
from dlma_ray.views.runview import fmt_num, nested, md_table, read_json

# The measures drawn in the figure (dlma_ray.evaluation.measures names), each with its 95% interval.
FIGURE_MEASURES = ("distillation_gain_per_token", "win_rate", "refusal_harmful", "over_refusal",
                   "implicit_reward_accuracy")


def discover_methods(base_dir: str) -> list[str]:
    """Sub-directories of ``base_dir`` holding a run (state.json), registered methods first, in registry order."""
    from dlma_ray.methods import names

    order = names()
    if storage.is_uri(base_dir) or not os.path.isdir(base_dir):
        return [m for m in order if storage.exists(RunLayout(storage.join(base_dir, m)).state)]
    found = [d for d in sorted(os.listdir(base_dir)) if os.path.isfile(os.path.join(base_dir, d, "state.json"))]
    return [m for m in order if m in found] + [m for m in found if m not in order]


def load_method(run_dir: str) -> dict:
    """A method's run: its state, its last eval.json (and round), its training summary."""
    run = RunLayout(run_dir)
    state = read_json(run.state) or {}
    stages = state.get("stages") or []
    rounds = sorted({s["round"] for s in stages})
    last_eval, eval_round = None, None
    for k in reversed(rounds):
        last_eval = read_json(run.round(k).eval_json)
        if last_eval:
            eval_round = k
            break
    trained = [s for s in stages if s["stage"] == "train"]
    return {"state": state, "eval": last_eval, "eval_round": eval_round, "rounds_trained": len(trained),
            "train_rows": sum(s.get("rows", 0) for s in trained),
            "last_loss": nested(trained[-1], "metrics", "loss") if trained else None,
            "seconds": sum(s.get("seconds", 0.0) for s in stages)}


def initial_column(runs: dict[str, dict]) -> dict | None:
    """pi_0's own values (`*_initial` measures), from the first method evaluated: every method's evaluation
    answers the same held-out prompts with the same seeds, so pi_0's answers are the same items."""
    return next((r["eval"]["measures"] for r in runs.values() if r["eval"] and r["eval"].get("measures")), None)


def headtohead_results(folder: str, names: set[str] | None = None) -> list[dict]:
    """The head-to-head results (dlma_ray.stages.judging) in ``folder``, those naming one of ``names`` if given."""
    import glob
    import json

    if storage.is_uri(folder):
        return []  # written by `dlma-ray judge` / compare to a local folder only
    docs = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except ValueError:
            continue
        if isinstance(doc, dict) and "result" in doc and (names is None or {doc.get("a"), doc.get("b")} & names):
            docs.append(doc)
    return docs


def headtohead_section(results: list[dict]) -> list[str]:
    """Markdown: win / tie / lose of A against B per pair and judge, with 95% intervals; [] when none."""
    from dlma_ray.evaluation.headtohead import TABLE_HEADER, caveats, table_rows

    if not results:
        return []
    return ["## Head to head", "", "Each prompt judged in both answer orders: A wins when the judge prefers A's "
            "answer in both, B wins when it prefers B's in both, anything else (a split verdict, an equal score) is "
            "a tie. Rates with their 95% Wilson interval; the last column is the same judge's accuracy on the "
            "human-labelled pairs (eval.preference_pairs). `answers`: reused from the runs' evaluations, or "
            "generated for the comparison. Written by `dlma-ray judge` / `dlma-ray compare`.", "",
            *md_table(TABLE_HEADER, table_rows(results)), "", *(f"_{c}_" for c in caveats(results)), ""]


def measure_rows(runs: dict, methods: list[str]) -> list[list[str]]:
    """The comparison table's rows (measure, pi_0, one cell per method): the round shown, each measure some method
    has as "value [95% interval] (n)", and the rounds trained."""
    from dlma_ray.evaluation.measures import MEASURES, format_summary, is_rate

    evals = {m: (runs[m]["eval"] or {}).get("measures") or {} for m in methods}
    initial = initial_column(runs) or {}
    rows = [["evaluated round", "–"] + [str(runs[m]["eval_round"]) if runs[m]["eval_round"] is not None else "–"
                                        for m in methods]]
    for measure in MEASURES:
        cells = [evals[m].get(measure.name) for m in methods]
        if not any(cells):
            continue
        pct = is_rate(measure.name, next(c for c in cells if c))
        better = {"higher": " ↑", "lower": " ↓"}.get(measure.better, "")
        rows.append([measure.label + better, format_summary(initial.get(measure.initial), pct) if measure.initial
                     else "–"] + [format_summary(c, pct) for c in cells])
    rows.append(["rounds trained", "0"] + [str(runs[m]["rounds_trained"]) for m in methods])
    return rows


def render_markdown(base_dir: str, runs: dict[str, dict], failures: dict[str, str] | None = None) -> str:
    methods = list(runs)
    md = ["# Method comparison", "", f"`{base_dir}`, generated {time.strftime('%Y-%m-%d %H:%M:%S')}. Each column is "
          "one method run from the same model, prompts, seeds and budget (jobs/compare.py), shown at its last "
          "evaluated round; `pi_0` is the untouched initial model on the same held-out items. Every cell: value "
          "[95% interval] (n). What each measure shows and who judges it: docs/evaluation.md.", ""]
    header = ["measure", "`pi_0`"] + [f"`{m}`" for m in methods]
    rows = measure_rows(runs, methods)
    rows.append(["training rows (all rounds)", "0"] + [str(runs[m]["train_rows"]) for m in methods])
    rows.append(["stage seconds (all)", "–"] + [fmt_num(runs[m]["seconds"], 0) for m in methods])
    md += md_table(header, rows) + [""]
    notes = [f"- `{m}`: no eval.json yet (eval.enabled=false, or the run has not reached an evaluate stage)"
             for m in methods if runs[m]["eval"] is None and m not in (failures or {})]
    notes += [f"- `{m}` failed: {msg}" for m, msg in (failures or {}).items()]
    if notes:
        md += ["## Notes", ""] + notes + [""]
    if any(runs[m]["eval"] for m in methods):
        md += ["![comparison](comparison.png)", ""]
    md += headtohead_section(headtohead_results(os.path.join(base_dir, "headtohead")))
    return "\n".join(md) + "\n"


def plot_comparison(runs: dict[str, dict], path: str) -> bool:
    """One panel per figure measure: pi_0 and each method with its 95% interval; False when nothing to draw."""
    from dlma_ray.evaluation.measures import BY_NAME, value

    methods = [m for m in runs if runs[m]["eval"] and runs[m]["eval"].get("measures")]
    if not methods:
        return False
    initial = initial_column(runs) or {}
    plt = pyplot()
    fig, axes = plt.subplots(1, len(FIGURE_MEASURES), figsize=(4 * len(FIGURE_MEASURES), 4.2))
    for ax, name in zip(axes, FIGURE_MEASURES):
        measure = BY_NAME[name]
        labels = (["pi_0"] if measure.initial else []) + methods
        cells = ([initial.get(measure.initial)] if measure.initial else []) + \
            [runs[m]["eval"]["measures"].get(name) for m in methods]
        for i, (label, cell) in enumerate(zip(labels, cells)):
            v = value(cell)
            if v is None:
                continue
            lo, hi = cell["ci95"]
            ax.errorbar([i], [v], yerr=[[v - (lo if lo is not None else v)], [(hi if hi is not None else v) - v]],
                        fmt="o", capsize=5, color="tab:orange" if label == "pi_0" else f"C{i}")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8, rotation=20)
        if name.startswith("distillation_gain"):
            ax.axhline(0, color="grey", linestyle=":")
        ax.set_title(measure.label, fontsize=9)
        ax.margins(x=0.2, y=0.2)
    fig.suptitle("Methods side by side, last evaluated round, 95% intervals (pi_0: the untouched initial model)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_comparison(base_dir: str, methods: list[str] | None = None, failures: dict[str, str] | None = None) -> str:
    """Write <base>/comparison.md (+ comparison.png); returns the Markdown's path."""
    base_dir = storage.absolute(base_dir)
    methods = methods or discover_methods(base_dir)
    runs = {m: load_method(storage.join(base_dir, m)) for m in methods}
    local = tempfile.mkdtemp(prefix="dlma-compare-") if storage.is_uri(base_dir) else base_dir
    os.makedirs(local, exist_ok=True)
    if plot_comparison(runs, os.path.join(local, "comparison.png")) and storage.is_uri(base_dir):
        storage.upload_dir(local, base_dir)  # the temp folder holds just the figure
    out = storage.join(base_dir, "comparison.md")
    storage.write_text_atomic(out, render_markdown(base_dir, runs, failures))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write <base>/comparison.md from the method runs under BASE_DIR.")
    parser.add_argument("base_dir")
    parser.add_argument("--methods", default="", help="comma-separated method dirs (default: every run found)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m] or None
    print(write_comparison(args.base_dir, methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
