"""The report's score analysis on generated pairs (the DLMA paper's Figure 3): R and the RLAIF text judge
against an external judge by |R| range, beside R against the human label on human-written pairs (its Figure 4).

    judged_rounds    the rounds whose eval.json has R judged on generated pairs
    section_lines    the report's Markdown under the figure: what was judged, by whom, and the table
    plot_generated   the PNG: accuracy per |R| bin with 95% intervals, n on each bar
    no_judge_note    the line the report prints when no round had an external judge

eval.json's fields: dlma_ray.evaluation.score_analysis (measures self_reward_vs_judge / rlaif_vs_judge, details
self_reward_vs_judge_bins / rlaif_vs_judge_bins / generated_pairs_judged).
"""

from __future__ import annotations

from dlma_ray.views.figures import bin_label, pyplot
from dlma_ray.views.runview import nested, md_table

SERIES = (  # (label, per-bin key in details, overall key in measures)
    ("R vs judge, generated pairs", "self_reward_vs_judge_bins", "self_reward_vs_judge"),
    ("RLAIF text judge vs judge, same pairs", "rlaif_vs_judge_bins", "rlaif_vs_judge"),
    ("R vs human label, human pairs", "self_reward_bins", "self_reward_accuracy_human"),
)


def judged_rounds(run: dict) -> dict:
    return {k: e for k, e in run["evals"].items() if nested(e, "details", "self_reward_vs_judge_bins")}


def no_judge_note(run: dict) -> str:
    """Why the figure is missing: no external judge configured, or no evaluation yet."""
    evals = {k: e for k, e in run["evals"].items() if e and e.get("measures")}
    if not evals:
        return "no round has eval.json yet"
    notes = [nested(e, "details", "generated_pairs_judged", "note") for e in evals.values()]
    if any(e.get("judge") == "self_reward" for e in evals.values()):
        return ("no external judge was configured (eval.judge: self_reward), so R's accuracy on the round's "
                "generated pairs was not measured; set eval.judge to reward_model or openai")
    return next((n for n in notes if n), "no round's eval.json has R judged on generated pairs")


def _cell(c: dict | None) -> str:
    if not c or c.get("rate") is None:
        return f"– (n={(c or {}).get('n', 0)})"
    lo, hi = c["ci95"]
    return f"{100 * c['rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] (n={c['n']})"


def section_lines(run: dict) -> list[str]:
    evals = judged_rounds(run)
    first = next(iter(evals.values()))
    bins = first["details"]["self_reward_vs_judge_bins"]
    out = []
    for k, e in evals.items():
        info = e["details"].get("generated_pairs_judged") or {}
        prefers = (info.get("judge_prefers_chosen") or {}).get("rate")
        out.append(f"- Round {k}: {info.get('judged', '?')} of {info.get('pairs', '?')} generated pairs "
                   f"({info.get('heldout', '?')} held-out, {info.get('train', '?')} training) judged by "
                   f"**{info.get('judge') or e.get('judge')}**; R scored by `{info.get('r_model') or 'pi_k'}`; "
                   f"{info.get('judge_ties', 0)} judge ties left out; the judge prefers y+ in "
                   f"{'–' if prefers is None else f'{100 * prefers:.0f}%'} of the rest.")
    rows = []
    for k, e in evals.items():
        for label, bins_key, overall_key in SERIES:
            cells = nested(e, "details", bins_key)
            if cells:
                rows.append([str(k), label] + [_cell(c) for c in cells] + [_cell(e["measures"].get(overall_key))])
    return (["Accuracy against an **external judge** on the round's own **generated** pairs (y+ sampled under the "
             "positive prompt, y- under the negative, R stored by the score stage), per \\|R\\| range (nats): how "
             "often sign(R) agrees with the judge, and how often the same model asked in text (RLAIF, both orders "
             "averaged) does. The DLMA paper (Fig. 3) finds R's accuracy rising with \\|R\\| and above RLAIF. The "
             "last rows per round are R against the human label on **human-written** pairs (Fig. 4 of the paper, "
             "where R does poorly): a different judge and different pairs. Pairs the judge cannot tell apart are "
             "left out; R = 0 and a text preference of exactly 0.5 count wrong. Cells: accuracy [95% Wilson "
             "interval] (n).", ""] + out + [""]
            + md_table(["round", "who judges, which pairs"] + [bin_label(b) for b in bins] + ["all pairs"], rows))


def plot_generated(run: dict, path: str) -> str | None:
    import numpy as np

    evals = judged_rounds(run)
    if not evals:
        return no_judge_note(run)
    plt = pyplot()
    fig, axes = plt.subplots(len(evals), 1, figsize=(12, 4.6 * len(evals)), squeeze=False)
    for ax, (k, e) in zip(axes[:, 0], evals.items()):
        series = [(label, e["details"].get(b), e["measures"].get(o)) for label, b, o in SERIES
                  if e["details"].get(b)]
        labels = [bin_label(b) for b in e["details"]["self_reward_vs_judge_bins"]] + ["all pairs"]
        x = np.arange(len(labels), dtype=float)
        x[-1] += 0.5
        width = 0.8 / len(series)
        for i, (label, cells, overall) in enumerate(series):
            cells = list(cells) + [overall or {}]
            rates = [c.get("rate") for c in cells]
            lo = [c["rate"] - c["ci95"][0] if c.get("rate") is not None else 0 for c in cells]
            hi = [c["ci95"][1] - c["rate"] if c.get("rate") is not None else 0 for c in cells]
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, [r or 0 for r in rates], width, yerr=[lo, hi], capsize=2, label=label,
                   hatch="//" if "human" in label else None, alpha=0.6 if "human" in label else 1.0)
            for p_, c in zip(pos, cells):
                ax.text(p_, 0.02, f"n={c.get('n', 0)}", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.axvline((x[-2] + x[-1]) / 2, color="black", linewidth=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=9)
        ax.set_ylim(0, 1.15)
        judge = nested(e, "details", "generated_pairs_judged", "judge") or e.get("judge")
        ax.set_title(f"Round {k}: agreement with {judge} on the round's generated pairs, by |R| range", fontsize=10)
        ax.set_ylabel("accuracy (bars: 95% Wilson)")
        ax.legend(fontsize=8, loc="upper left")
    axes[-1, 0].set_xlabel("|R| range (nats) of the stored self-reward (human pairs: of the policy's R)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
