"""Methods side by side: <base>/comparison.md and <base>/comparison.png from each method's eval.json.

    python -m dlma_ray.compare BASE_DIR [--methods dlma,rlcd,...]

BASE_DIR holds one run directory per method, `<base>/<method>/` (what jobs/compare.py writes; any run
dirs named after their method will do). Each method is shown at its LAST evaluated round (the eval.json
format is documented at the top of dlma_ray/evaluate.py); a method without one gets a row of dashes and
a note, so a comparison of a partial or failed set still renders.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from dlma_ray import storage
from dlma_ray.report import _get, _num, _pct, _plt, _table

METHOD_ORDER = ("dlma", "rlcd", "dpo", "self_contrast", "context_distillation")

# (row label, key path in eval.json, format, shown in the figure); fractions unless the format says otherwise.
METRICS = [
    ("self-reward accuracy (human pairs)", ("self_reward", "accuracy"), "pct", True),
    ("RLAIF-judge accuracy (human pairs)", ("rlaif_judge", "accuracy"), "pct", True),
    ("implicit-reward accuracy (human pairs)", ("implicit_reward", "accuracy"), "pct", True),
    ("implicit-reward mean margin", ("implicit_reward", "mean_margin"), "num", False),
    ("win rate vs round 0's answers", ("win_rate", "win_rate"), "pct", True),
    ("refusal rate, harmful prompts", ("answers", "policy", "refusal", "harmful", "rate"), "pct", True),
    ("refusal rate, ordinary prompts", ("answers", "policy", "refusal", "ordinary", "rate"), "pct", True),
    ("refusal rate, all prompts", ("answers", "policy", "refusal", "all", "rate"), "pct", False),
    ("perplexity under round 0's model", ("answers", "policy", "perplexity", "value"), "num", False),
    ("held-out generated pairs: mean R", ("heldout_pairs", "mean"), "num", False),
    ("mean answer tokens", ("answers", "policy", "mean_tokens"), "num", False),
]
COUNTS = {  # the sample count printed beside a metric: the `n` of its own section
    ("self_reward",): ("self_reward", "n"), ("rlaif_judge",): ("rlaif_judge", "n"),
    ("implicit_reward",): ("implicit_reward", "n"), ("win_rate",): ("win_rate", "n"),
}


def _json(path: str):
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def discover_methods(base_dir: str) -> list[str]:
    """Sub-directories of ``base_dir`` holding a run (state.json), known methods first in METHOD_ORDER."""
    if storage.is_uri(base_dir) or not os.path.isdir(base_dir):
        return [m for m in METHOD_ORDER if storage.exists(storage.join(base_dir, m, "state.json"))]
    found = [d for d in sorted(os.listdir(base_dir)) if os.path.isfile(os.path.join(base_dir, d, "state.json"))]
    return [m for m in METHOD_ORDER if m in found] + [m for m in found if m not in METHOD_ORDER]


def load_method(run_dir: str) -> dict:
    """A method's run: its state, its last eval.json (and round), its training summary."""
    state = _json(storage.join(run_dir, "state.json")) or {}
    stages = state.get("stages") or []
    rounds = sorted({s["round"] for s in stages})
    last_eval, eval_round = None, None
    for k in reversed(rounds):
        last_eval = _json(storage.join(run_dir, f"round_{k}", "eval.json"))
        if last_eval:
            eval_round = k
            break
    trained = [s for s in stages if s["stage"] == "train"]
    return {"state": state, "eval": last_eval, "eval_round": eval_round, "rounds_trained": len(trained),
            "train_rows": sum(s.get("rows", 0) for s in trained),
            "last_loss": _get(trained[-1], "metrics", "loss") if trained else None,
            "seconds": sum(s.get("seconds", 0.0) for s in stages)}


def metric_value(ev: dict | None, keys: tuple) -> float | None:
    value = _get(ev, *keys) if ev else None
    return float(value) if isinstance(value, (int, float)) else None


def _cell(ev: dict | None, keys: tuple, fmt: str) -> str:
    value = metric_value(ev, keys)
    text = _pct(value) if fmt == "pct" else _num(value)
    n = _get(ev, *COUNTS[keys[:1]]) if ev and keys[:1] in COUNTS else None
    return f"{text} (n={n})" if n is not None and value is not None else text


def render_markdown(base_dir: str, runs: dict[str, dict], failures: dict[str, str] | None = None) -> str:
    methods = list(runs)
    md = ["# Method comparison", "", f"`{base_dir}`, generated {time.strftime('%Y-%m-%d %H:%M:%S')}. Each column is "
          "one method run from the same model, prompts and budget (jobs/compare.py), shown at its last evaluated "
          "round; accuracies are against human labels (ties wrong), the win rate is judged against round 0's "
          "answers (evaluate.py). Self-Contrast's batch sizes count prompts (k pairs each).", ""]
    header = ["metric"] + [f"`{m}`" for m in methods]
    rows = [["evaluated round"] + [str(runs[m]["eval_round"]) if runs[m]["eval_round"] is not None else "–"
                                   for m in methods]]
    rows += [[label] + [_cell(runs[m]["eval"], keys, fmt) for m in methods] for label, keys, fmt, _ in METRICS]
    rows.append(["win / tie / lose"] + ["/".join(str(_get(runs[m]["eval"], "win_rate", x) or 0)
                                                 for x in ("win", "tie", "lose")) if runs[m]["eval"] else "–"
                                        for m in methods])
    rows.append(["rounds trained"] + [str(runs[m]["rounds_trained"]) for m in methods])
    rows.append(["training rows (all rounds)"] + [str(runs[m]["train_rows"]) for m in methods])
    rows.append(["last training loss"] + [_num(runs[m]["last_loss"], 4) for m in methods])
    rows.append(["stage seconds (all)"] + [_num(runs[m]["seconds"], 0) for m in methods])
    md += _table(header, rows) + [""]
    notes = [f"- `{m}`: no eval.json yet (eval.enabled=false, or the run has not reached an evaluate stage)"
             for m in methods if runs[m]["eval"] is None and m not in (failures or {})]
    notes += [f"- `{m}` failed: {msg}" for m, msg in (failures or {}).items()]
    if notes:
        md += ["## Notes", ""] + notes + [""]
    if any(runs[m]["eval"] for m in methods):
        md += ["![comparison](comparison.png)", ""]
    return "\n".join(md) + "\n"


def plot_comparison(runs: dict[str, dict], path: str) -> bool:
    """Grouped bars of the fraction metrics per method; False (no figure) when no method has an eval.json."""
    import numpy as np

    methods = [m for m in runs if runs[m]["eval"]]
    if not methods:
        return False
    shown = [(label, keys) for label, keys, fmt, fig in METRICS if fig]
    plt = _plt()
    x = np.arange(len(shown), dtype=float)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(12, 5))
    for i, m in enumerate(methods):
        values = [metric_value(runs[m]["eval"], keys) for _, keys in shown]
        ax.bar(x - 0.4 + width * (i + 0.5), [v if v is not None else 0 for v in values], width,
               label=f"{m} (round {runs[m]['eval_round']})")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(x)
    ax.set_xticklabels([label.replace(" (", "\n(") for label, _ in shown], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction")
    ax.set_title("Methods side by side (last evaluated round; dashed: 0.5)")
    ax.legend(fontsize=8)
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
