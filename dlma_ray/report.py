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

    evals = {k: e for k, e in run["evals"].items() if _get(e, "self_reward", "bins")}
    if not evals:
        return "no round has eval.json with a self-reward section yet"
    plt = _plt()
    first = next(iter(evals.values()))["self_reward"]["bins"]
    labels = [_bin_label(b) for b in first] + ["all pairs", "RLAIF\ntext judge"]
    x = np.arange(len(labels), dtype=float)
    x[-2:] += 0.5  # a gap between the per-range groups and the overall ones
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(11, 5))
    for i, (k, e) in enumerate(evals.items()):
        sr, rj = e["self_reward"], e.get("rlaif_judge") or {}
        acc = [b["accuracy"] for b in sr["bins"]] + [sr.get("accuracy"), rj.get("accuracy")]
        ns = [b["n"] for b in sr["bins"]] + [sr.get("n", 0), rj.get("n", 0)]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, [a or 0 for a in acc], width, label=f"policy after round {k}")
        for p, a, n in zip(pos, acc, ns):
            ax.text(p, (a or 0) + 0.01, f"n={n}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.axvline((x[-3] + x[-2]) / 2, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("|R| range (nats) of the policy's self-reward on human-labelled pairs")
    ax.set_ylabel("accuracy vs human label (fraction, ties wrong)")
    ax.set_title("Agreement with human preference: self-reward R by |R| range, and the RLAIF text judge")
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


def plot_eval(run: dict, path: str) -> str | None:
    evals = {k: e for k, e in run["evals"].items() if e}
    if not evals:
        return "no round has eval.json yet"
    plt = _plt()
    ks = list(evals)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))

    def line(ax, keys, label, style="-o"):
        ys = [_get(evals[k], *keys) for k in ks]
        if any(y is not None for y in ys):
            return ax.plot(ks, [math.nan if y is None else y for y in ys], style, label=label)[0].get_color()
        return "grey"

    def base(ax, keys, label, color="grey"):  # the round-0 model: one value, the same for every round
        y = _get(evals[ks[-1]], *keys)
        if y is not None:
            ax.axhline(y, linestyle="--", color=color, alpha=0.7, label=label)

    ax = axes[0, 0]
    line(ax, ("self_reward", "accuracy"), "self-reward R > 0")
    line(ax, ("rlaif_judge", "accuracy"), "RLAIF text judge (both orders)")
    line(ax, ("implicit_reward", "accuracy"), "implicit reward vs reference")
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax.set(title="Accuracy on human-labelled pairs", ylabel="fraction correct", ylim=(-0.03, 1.05))
    ax = axes[0, 1]
    line(ax, ("heldout_pairs", "mean"), "under the new policy")
    line(ax, ("heldout_pairs", "at_scoring", "mean"), "under $\\pi_k$ (at scoring)", "--s")
    ax.axhline(0, color="grey", linestyle=":")
    ax.set(title="Held-out generated pairs: mean R", ylabel="mean self-reward R (nats)")
    ax = axes[0, 2]
    for kind in ("harmful", "ordinary"):
        color = line(ax, ("answers", "policy", "refusal", kind, "rate"), f"{kind} prompts")
        base(ax, ("answers", "baseline", "refusal", kind, "rate"), f"{kind}: round-0 model", color)
    ax.set(title="Refusal rate of answers", ylabel="fraction refused", ylim=(-0.02, 1.05))
    ax = axes[1, 0]
    line(ax, ("answers", "policy", "perplexity", "value"), "policy answers")
    base(ax, ("answers", "baseline", "perplexity", "value"), "round-0 answers")
    ax.set(title="Perplexity of answers under the round-0 model", ylabel="perplexity")
    ax = axes[1, 1]
    line(ax, ("answers", "policy", "mean_tokens"), "policy answers")
    base(ax, ("answers", "baseline", "mean_tokens"), "round-0 answers")
    ax.set(title="Mean answer length", ylabel="tokens")
    ax = axes[1, 2]
    bottom = [0.0] * len(ks)
    for key, color in (("win_rate", "tab:green"), ("tie_rate", "tab:grey"), ("lose_rate", "tab:red")):
        ys = [_get(evals[k], "win_rate", key) or 0 for k in ks]
        ax.bar(ks, ys, bottom=bottom, color=color, label=key.split("_")[0], width=0.6)
        bottom = [b + y for b, y in zip(bottom, ys)]
    judge = _get(evals[ks[-1]], "win_rate", "judge") or "?"
    ax.set(title=f"New vs round-0 answers (judge: {judge})", ylabel="fraction of prompts", ylim=(0, 1.22))
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    for ax in axes.flat:
        ax.set_xlabel("round k (evaluating the policy it trained)")
        ax.set_xticks(ks)
        ax.margins(y=0.08)
        if ax.get_legend_handles_labels()[0] and ax.get_legend() is None:
            ax.legend(fontsize=8)
    fig.suptitle("Evaluation across rounds: each point is the policy trained in round k; dashed lines: the "
                 "round-0 model")
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
    from dlma_ray.evaluation import is_refusal

    base = run["baseline"]
    last = next((k for k in reversed(run["rounds"]) if run["answers"].get(k)), None)
    if not base or last is None:
        return ["_Skipped: needs baseline_answers.jsonl and a round's answers.jsonl._"]
    new = {a["prompt_id"]: a for a in run["answers"][last]}
    picks = [b for b in base if b.get("kind") == "harmful"][:2] + [b for b in base if b.get("kind") == "ordinary"][:2]
    out = [f"Round-0 model (baseline) vs the policy trained in round {last}; refusal = `evaluation.REFUSAL_PHRASES`.", ""]
    for b in picks or base[:4]:
        a = new.get(b["prompt_id"])
        out += [f"**Prompt** ({b.get('kind') or 'unlabelled'}): {b['prompt']}", "",
                f"*Round 0* ({b['tokens']} tokens, refusal: {is_refusal(b['answer'])}):", "", _quote(b["answer"]), ""]
        if a:
            out += [f"*After round {last}* ({a['tokens']} tokens, refusal: {is_refusal(a['answer'])}):", "",
                    _quote(a["answer"]), ""]
    return out


def _eval_row(k, e: dict) -> list[str]:
    def acc(*keys):
        sec = _get(e, *keys)
        return f"{_pct(sec.get('accuracy'))} (n={sec.get('n', 0)})" if sec else ""

    ans = _get(e, "answers", "policy") or {}
    w = e.get("win_rate") or {}
    ref = lambda kind: f"{_pct(_get(ans, 'refusal', kind, 'rate'))} (n={_get(ans, 'refusal', kind, 'n') or 0})"  # noqa: E731
    return [str(k), acc("self_reward"), acc("rlaif_judge"), acc("implicit_reward"),
            f"{_num(_get(e, 'heldout_pairs', 'mean'))} (n={_get(e, 'heldout_pairs', 'n') or 0})" if "heldout_pairs" in e
            else "",
            ref("harmful"), ref("ordinary"), f"{_num(_get(ans, 'perplexity', 'value'))} "
            f"({_get(ans, 'perplexity', 'tokens') or 0} tok)", _num(ans.get("mean_tokens"), 1),
            f"{w.get('win', 0)}/{w.get('tie', 0)}/{w.get('lose', 0)} (n={w.get('n', 0)})" if w else ""]


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
    evals = {k: e for k, e in run["evals"].items() if e}
    acc_rows, bins = [], []
    for k, e in evals.items():
        bins = _get(e, "self_reward", "bins") or bins
        cells = [b for b in _get(e, "self_reward", "bins") or []] + [e.get("self_reward") or {}, e.get("rlaif_judge") or {}]
        acc_rows.append([str(k)] + [f"{_pct(c.get('accuracy'))} ({c.get('n', 0)})" for c in cells])
    figure("Accuracy by |R| range vs the RLAIF judge", FIGURES[1], [
        "Accuracy (pairs) of R > 0 against the human label, per \\|R\\| range (nats), then over all pairs, "
        "then the policy as an RLAIF text judge (both answer orders averaged); ties count wrong.", ""]
        + _table(["round"] + [_bin_label(b) for b in bins] + ["all pairs", "RLAIF judge"], acc_rows))
    train_rows = [[str(k), str(len(m)), _num(m[0].get("loss"), 4), _num(m[-1].get("loss"), 4),
                   _num(m[-1].get("reward_margin"), 4), _pct(m[-1].get("reward_accuracy"))]
                  for k, m in run["metrics"].items() if m]
    figure("Training", FIGURES[2], _table(["round", "steps", "first loss", "last loss", "last margin",
                                           "last reward acc."], train_rows))
    figure("Evaluation across rounds", FIGURES[3], _table(
        ["round", "R acc.", "RLAIF acc.", "implicit acc.", "held-out mean R", "refusal harmful", "refusal ordinary",
         "perplexity", "mean tokens", "win/tie/lose"], [_eval_row(k, e) for k, e in evals.items()]
        + ([_eval_row("round-0 model", {"answers": {"policy": _get(evals[max(evals)], "answers", "baseline")}})]
           if evals else [])))
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
