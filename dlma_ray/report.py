"""Run report: <run_dir>/report.md and its figures in <run_dir>/report/*.png, from whatever the run has.

    python -m dlma_ray.report <run_dir>

Reads round_<k>/pairs (R per generated pair), round_<k>/policy/train_metrics.jsonl, round_<k>/eval.json,
round_<k>/answers.jsonl, baseline_answers.jsonl and state.json. A missing input skips its figure or
table with a note, so a partial or still-running run renders too.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

from dlma_ray import storage

FIGURES = ("self_reward_distribution.png", "accuracy_by_range.png", "training.png", "eval_metrics.png")


# ---------------------------------------------------------------- reading the run

def _json(path: str):
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def _jsonl(path: str):
    if not storage.exists(path):
        return None
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def _rewards(run_dir: str, k: int) -> list[float] | None:
    import pyarrow.parquet as pq

    path = storage.join(run_dir, f"round_{k}", "pairs")
    if not storage.exists(path):
        return None
    rows = pq.read_table(path, columns=["self_reward"]).column("self_reward").to_pylist()
    return [r for r in rows if r is not None and math.isfinite(r)]


def load_run(run_dir: str) -> dict:
    state = _json(storage.join(run_dir, "state.json")) or {}
    count = (state.get("config") or {}).get("rounds", {}).get("count", 0)
    rounds, k = [], 0
    while k < count or storage.exists(storage.join(run_dir, f"round_{k}")):
        if storage.exists(storage.join(run_dir, f"round_{k}")):
            rounds.append(k)
        k += 1
    return {
        "state": state, "rounds": rounds,
        "rewards": {k: _rewards(run_dir, k) for k in rounds},
        "metrics": {k: _jsonl(storage.join(run_dir, f"round_{k}", "policy", "train_metrics.jsonl")) for k in rounds},
        "evals": {k: _json(storage.join(run_dir, f"round_{k}", "eval.json")) for k in rounds},
        "answers": {k: _jsonl(storage.join(run_dir, f"round_{k}", "answers.jsonl")) for k in rounds},
        "baseline": _jsonl(storage.join(run_dir, "baseline_answers.jsonl")),
    }


def _get(d, *keys):
    for key in keys:
        if not isinstance(d, dict) or d.get(key) is None:
            return None
        d = d[key]
    return d


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _num(x, digits=2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


# ---------------------------------------------------------------- figures (each returns a note when skipped)

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_rewards(run: dict, path: str) -> str | None:
    import numpy as np

    data = {k: v for k, v in run["rewards"].items() if v}
    if not data:
        return "no round has scored pairs (round_<k>/pairs) yet"
    plt = _plt()
    allv = np.concatenate([np.asarray(v) for v in data.values()])
    lo, hi = np.percentile(allv, [1, 99]) if len(allv) > 20 else (allv.min(), allv.max())
    lo, hi = min(lo, -1.0), max(hi, 1.0)  # keep 0 inside the axis
    bins = np.linspace(lo, hi, 41)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for k, v in data.items():
        v = np.asarray(v)
        ax.hist(np.clip(v, lo, hi), bins=bins, histtype="step", linewidth=2,
                label=f"round {k}: n={len(v)}, mean {v.mean():.2f}, R>0 {np.mean(v > 0):.0%}")
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("self-reward R (nats; values outside the 1st-99th percentile drawn in the edge bins)")
    ax.set_ylabel("generated pairs")
    ax.set_title("Self-reward R of each round's generated pairs, scored by that round's policy $\\pi_k$")
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _bin_label(b: dict) -> str:
    return f"≥{b['low']:g}" if b["high"] is None else f"[{b['low']:g}, {b['high']:g})"


def plot_accuracy(run: dict, path: str) -> str | None:
    import numpy as np

    evals = {k: e for k, e in run["evals"].items() if _get(e, "details", "self_reward_bins")}
    if not evals:
        return "no round has eval.json with self-reward accuracy on human pairs yet"
    plt = _plt()
    first = next(iter(evals.values()))["details"]["self_reward_bins"]
    labels = [_bin_label(b) for b in first] + ["all pairs", "RLAIF\ntext judge"]
    x = np.arange(len(labels), dtype=float)
    x[-2:] += 0.5  # a gap between the per-range groups and the overall ones
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(11, 5))
    for i, (k, e) in enumerate(evals.items()):
        m = e["measures"]
        cells = e["details"]["self_reward_bins"] + [m.get("self_reward_accuracy_human") or {},
                                                    m.get("rlaif_accuracy_human") or {}]
        rates = [c.get("rate") for c in cells]
        lo = [c["rate"] - c["ci95"][0] if c.get("rate") is not None else 0 for c in cells]
        hi = [c["ci95"][1] - c["rate"] if c.get("rate") is not None else 0 for c in cells]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, [r or 0 for r in rates], width, yerr=[lo, hi], capsize=2, label=f"policy after round {k}")
        for p_, r, c in zip(pos, rates, cells):
            ax.text(p_, 0.02, f"n={c.get('n', 0)}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.axvline((x[-3] + x[-2]) / 2, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("|R| range (nats) of the policy's self-reward on human-written pairs")
    ax.set_ylabel("accuracy vs human label (ties wrong; bars: 95% Wilson)")
    ax.set_title("Self-reward R on HUMAN-written pairs by |R| range, and the RLAIF text judge\n"
                 "(the paper finds R judges human-written pairs poorly; this is not the alignment measure)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def plot_training(run: dict, path: str) -> str | None:
    metrics = {k: m for k, m in run["metrics"].items() if m}
    if not metrics:
        return "no round has train_metrics.jsonl (round_<k>/policy) yet"
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    offset = 0
    for k, rows in metrics.items():
        steps = [offset + r.get("step", i + 1) for i, r in enumerate(rows)]
        for ax, key in zip(axes, ("loss", "reward_margin")):
            ax.plot(steps, [r.get(key) for r in rows], marker="o", markersize=3, label=f"round {k}")
        offset = steps[-1]
        for ax in axes:
            ax.axvline(offset + 0.5, color="grey", linestyle=":", linewidth=1)
    axes[0].set_ylabel("DLMA loss (nats)")
    axes[0].set_title("Training: loss and implicit reward margin per optimizer step")
    axes[1].set_ylabel("reward margin β·h (nats)")
    axes[1].axhline(0, color="grey", linestyle="--", linewidth=1)
    axes[1].set_xlabel("optimizer step (cumulative over rounds; dotted lines end a round)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


EVAL_PANELS = ("distillation_gain", "distillation_gain_per_token", "win_rate", "refusal_harmful", "over_refusal",
               "kl_to_initial", "perplexity_neutral", "implicit_reward_accuracy", "heldout_pairs_r")


def plot_eval(run: dict, path: str) -> str | None:
    from dlma_ray.measures import BY_NAME, value

    evals = {k: e for k, e in run["evals"].items() if e and e.get("measures")}
    if not evals:
        return "no round has eval.json yet"
    plt = _plt()
    ks = list(evals)
    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    for ax, name in zip(axes.flat, EVAL_PANELS):
        m = BY_NAME[name]
        got = [(k, evals[k]["measures"].get(name)) for k in ks]
        got = [(k, s_) for k, s_ in got if value(s_) is not None]
        if got:
            ys = [value(s_) for _, s_ in got]
            lo = [y - (s_["ci95"][0] if s_["ci95"][0] is not None else y) for y, (_, s_) in zip(ys, got)]
            hi = [(s_["ci95"][1] if s_["ci95"][1] is not None else y) - y for y, (_, s_) in zip(ys, got)]
            ax.errorbar([k for k, _ in got], ys, yerr=[lo, hi], fmt="-o", capsize=4, label="policy after round k")
        base = evals[ks[-1]]["measures"].get(m.initial) if m.initial else None
        if value(base) is not None:
            ax.axhline(value(base), linestyle="--", color="tab:orange", label="$\\pi_0$")
            if base.get("ci95") and None not in base["ci95"]:
                ax.axhspan(*base["ci95"], color="tab:orange", alpha=0.12)
        if name.startswith("distillation_gain") or name == "heldout_pairs_r":
            ax.axhline(0, color="grey", linestyle=":")
        n = (got[-1][1] or {}).get("n", 0) if got else 0
        ax.set(title=f"{m.label} (n={n})", xlabel="round k (policy it trained)")
        ax.set_xticks(ks)
        ax.margins(y=0.15)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Evaluation across rounds with 95% intervals; the judge of distillation and the reference of "
                 "KL / implicit reward is the fixed initial model $\\pi_0$ (dashed: $\\pi_0$'s own value)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---------------------------------------------------------------- markdown

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _quote(text: str, limit: int = 500) -> str:
    text = text.strip() or "(empty answer)"
    text = text if len(text) <= limit else text[:limit] + " …"
    return "\n".join("> " + line for line in text.splitlines())


def _examples(run: dict) -> list[str]:
    from dlma_ray.refusal import is_refusal

    base = run["baseline"]
    last = next((k for k in reversed(run["rounds"]) if run["answers"].get(k)), None)
    if not base or last is None:
        return ["_Skipped: needs baseline_answers.jsonl and a round's answers.jsonl._"]
    new = {a["prompt_id"]: a for a in run["answers"][last]}
    picks = [b for b in base if b.get("kind") == "harmful"][:2] + [b for b in base if b.get("kind") == "borderline"][:2]
    out = [f"Round-0 model (baseline) vs the policy trained in round {last}; refusal = `dlma_ray/refusal.py`.", ""]
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
    from dlma_ray.measures import MEASURES, format_summary, is_rate

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
    return _table(["measure", "$\\pi_0$"] + [f"after round {k}" for k in ks], rows)


def headline(evals: dict) -> str:
    """The distillation gain of the last evaluated policy in words, with where its interval lies."""
    from dlma_ray.evalstats import excludes_zero
    from dlma_ray.measures import format_summary

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
        md += ["## Stages", ""] + _table(["round", "stage", "rows", "seconds"], [
            [str(s["round"]), s["stage"], str(s["rows"]), _num(s.get("seconds"), 1)] for s in stages]) + [""]

    def figure(title: str, name: str, body: list[str]) -> None:
        nonlocal md
        md += [f"## {title}", ""]
        md += [f"_Skipped: {notes[name]}._", ""] if notes.get(name) else [f"![{title}](report/{name})", ""] + body + [""]

    rows = []
    for k, v in run["rewards"].items():
        if v:
            rows.append([str(k), str(len(v)), _num(statistics.fmean(v)), _num(statistics.median(v)),
                         _pct(sum(x > 0 for x in v) / len(v))])
    figure("Self-reward distribution", FIGURES[0], _table(["round", "pairs", "mean R", "median R", "R > 0"], rows))
    evals = {k: e for k, e in run["evals"].items() if e and e.get("measures")}
    if evals:
        md += ["## Headline: did the policy change where it was not trained?", "", headline(evals), ""]
    acc_rows, bins = [], []
    for k, e in evals.items():
        bins = _get(e, "details", "self_reward_bins") or bins
        cells = (_get(e, "details", "self_reward_bins") or []) + [e["measures"].get("self_reward_accuracy_human") or {},
                                                                 e["measures"].get("rlaif_accuracy_human") or {}]
        acc_rows.append([str(k)] + [f"{_pct(c.get('rate'))} ({c.get('n', 0)})" for c in cells])
    figure("Self-reward on human-written pairs, by |R| range", FIGURES[1], [
        "Accuracy of R > 0 against the human label, per \\|R\\| range (nats), then over all pairs, then the policy "
        "as an RLAIF text judge (both answer orders averaged); ties count wrong. The DLMA paper finds R judges "
        "human-written pairs poorly: this measures the score, not alignment. The paper's headline (accuracy "
        "rising with \\|R\\| against an external judge) needs `eval.judge: reward_model` or `openai`; with only "
        "the built-in judge it is not computed.", ""]
        + _table(["round"] + [_bin_label(b) for b in bins] + ["all pairs", "RLAIF judge"], acc_rows))
    train_rows = [[str(k), str(len(m)), _num(m[0].get("loss"), 4), _num(m[-1].get("loss"), 4),
                   _num(m[-1].get("reward_margin"), 4), _pct(m[-1].get("reward_accuracy"))]
                  for k, m in run["metrics"].items() if m]
    figure("Training", FIGURES[2], _table(["round", "steps", "first loss", "last loss", "last margin",
                                           "last reward acc."], train_rows))
    figure("Evaluation across rounds", FIGURES[3], [
        "Every number: value [95% interval] (n). Rates: Wilson intervals; means: bootstrap. What each measure "
        "shows and cannot show: docs/EVALUATION.md.", ""] + eval_table(evals))
    md += ["## Example answers", ""] + _examples(run)
    return "\n".join(md) + "\n"


def write_report(run_dir: str) -> str:
    """Write <run_dir>/report.md and <run_dir>/report/*.png from what the run has; returns report.md's path."""
    run_dir = storage.absolute(run_dir)
    run = load_run(run_dir)
    local = tempfile.mkdtemp(prefix="dlma-report-") if storage.is_uri(run_dir) else os.path.join(run_dir, "report")
    os.makedirs(local, exist_ok=True)
    notes = {}
    for name, plot in zip(FIGURES, (plot_rewards, plot_accuracy, plot_training, plot_eval)):
        notes[name] = plot(run, os.path.join(local, name))
        if notes[name] and os.path.exists(os.path.join(local, name)):
            os.remove(os.path.join(local, name))  # a stale figure from an earlier report would mislead
    if storage.is_uri(run_dir):
        storage.upload_dir(local, storage.join(run_dir, "report"))
    out = storage.join(run_dir, "report.md")
    storage.write_text_atomic(out, render_markdown(run, run_dir, notes))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m dlma_ray.report <run_dir>")
    print(write_report(sys.argv[1]))
