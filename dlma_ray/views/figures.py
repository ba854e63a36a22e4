"""The run report's figures (PNG): each takes the loaded run and a path, and returns a note when skipped."""

from __future__ import annotations


from dlma_ray.views.runview import nested

FIGURES = ("self_reward_distribution.png", "accuracy_by_range.png", "training.png", "eval_metrics.png",
           "generated_pairs_vs_judge.png")  # the last: dlma_ray.views.generated_pairs


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_rewards(run: dict, path: str) -> str | None:
    import numpy as np

    data = {k: v for k, v in run["rewards"].items() if v}
    if not data:
        return "no round has scored pairs (round_<k>/pairs) yet"
    plt = pyplot()
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


def bin_label(b: dict) -> str:
    return f"≥{b['low']:g}" if b["high"] is None else f"[{b['low']:g}, {b['high']:g})"


def plot_accuracy(run: dict, path: str) -> str | None:
    import numpy as np

    evals = {k: e for k, e in run["evals"].items() if nested(e, "details", "self_reward_bins")}
    if not evals:
        return "no round has eval.json with self-reward accuracy on human pairs yet"
    plt = pyplot()
    first = next(iter(evals.values()))["details"]["self_reward_bins"]
    labels = [bin_label(b) for b in first] + ["all pairs", "RLAIF\ntext judge"]
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
    plt = pyplot()
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
    from dlma_ray.evaluation.measures import BY_NAME, value

    evals = {k: e for k, e in run["evals"].items() if e and e.get("measures")}
    if not evals:
        return "no round has eval.json yet"
    plt = pyplot()
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
