"""The evaluate stage's scorer tasks: one `score_ids` call per model (`eval_tasks.ScoreBatch`, what the tasks do)
against one call per measure (what they did), on a finished round's evaluation items, in one process.

The workload is a task's own: pi_0's (contrast of the policy's and of pi_0's answers, log-probs of the policy's
answers, of the human pairs' y+ and y-, the neutral text's NLL) and pi_k's (log-probs of the policy's answers and
of the pairs, R of the human and of the held-out generated pairs, the neutral text), both under one model (the
run's pi_0: the work does not depend on the weights). Interleaved runs; the max abs difference between the two
paths' numbers is printed as the correctness check.

    python bench/bench_eval_scoring.py --run RUN_DIR [--prompts 24] [--pairs 16] [--repeats 2]
"""

import argparse
import json
import statistics

import common


def items(run: str, cfg, tok, prompts: int, pairs: int) -> dict:
    from dlma_ray.stages.evaluate import load_eval_pairs, load_neutral_text, read_heldout

    def rows(path):
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.strip()][:prompts]

    return dict(answers=rows(f"{run}/round_0/answers.jsonl"), baseline=rows(f"{run}/baseline_answers.jsonl"),
                pairs=load_eval_pairs(cfg, tok)[0][:pairs], neutral=load_neutral_text(cfg),
                held=read_heldout(f"{run}/round_0/pairs", cfg.eval.heldout_pairs))


def separate_calls(model, tok, r, it: dict) -> list[float]:
    """The tasks' numbers by one scoring call per measure (the code before ScoreBatch)."""
    from dlma_ray.model.logprobs import side_ids
    from dlma_ray.workers import eval_tasks as et

    new, base = et.answer_ids(tok, it["answers"], r.end_of_turn), et.answer_ids(tok, it["baseline"], r.end_of_turn)
    y_plus, y_minus = et.pair_ids(tok, it["pairs"], r.end_of_turn)
    chats, achats = [p["messages"] for p in it["pairs"]], [a["messages"] for a in it["answers"]]
    cols = {c: [h[c] for h in it["held"]] for c in it["held"][0]}
    out = []
    for task in ("pi_0", "pi_k"):
        out += et.plain_logps(model, tok, r, achats, new, 8)
        out += et.plain_logps(model, tok, r, chats, y_plus, 8) + et.plain_logps(model, tok, r, chats, y_minus, 8)
        out += [-v for v in et.neutral_nll(model, tok, r, it["neutral"], 8)[0]]
        if task == "pi_0":
            out += et.contrast(model, tok, r, it["answers"], new, 8)
            out += et.contrast(model, tok, r, it["baseline"], base, 8)
        else:
            out += et.contrastive_rewards(model, tok, [r.positive(c) for c in chats], [r.negative(c) for c in chats],
                                          y_plus, y_minus, 8)
            out += et.contrastive_rewards(model, tok, cols["pos_context"], cols["neg_context"],
                                          side_ids(tok, cols, "chosen"), side_ids(tok, cols, "rejected"), 8)
    return out


def one_call(model, tok, r, it: dict) -> list[float]:
    """The same numbers, one ScoreBatch per task (as eval_tasks.initial_model_scores / policy_scores)."""
    from dlma_ray.model.logprobs import side_ids
    from dlma_ray.workers import eval_tasks as et
    from dlma_ray.workers.eval_tasks import ScoreBatch

    new, base = et.answer_ids(tok, it["answers"], r.end_of_turn), et.answer_ids(tok, it["baseline"], r.end_of_turn)
    y_plus, y_minus = et.pair_ids(tok, it["pairs"], r.end_of_turn)
    chats, achats = [p["messages"] for p in it["pairs"]], [a["messages"] for a in it["answers"]]
    cols = {c: [h[c] for h in it["held"]] for c in it["held"][0]}
    out = []
    for task in ("pi_0", "pi_k"):
        b = ScoreBatch()
        b.add("policy", [r.plain(c) for c in achats], new)
        b.add("chosen", [r.plain(c) for c in chats], y_plus)
        b.add("rejected", [r.plain(c) for c in chats], y_minus)
        b.add_neutral("neutral", tok, r, it["neutral"])
        if task == "pi_0":
            b.add_contrast("policy", r, achats, new)
            b.add_contrast("baseline", r, [a["messages"] for a in it["baseline"]], base)
        else:
            b.add_rewards("human", [r.positive(c) for c in chats], [r.negative(c) for c in chats], y_plus, y_minus)
            b.add_rewards("heldout", cols["pos_context"], cols["neg_context"], side_ids(tok, cols, "chosen"),
                          side_ids(tok, cols, "rejected"))
        lp = b.score(model, tok, 8)
        out += lp["policy"] + lp["chosen"] + lp["rejected"] + [-v for v in lp.neutral("neutral")[0]]
        out += (lp.contrast("policy") + lp.contrast("baseline") if task == "pi_0"
                else lp.rewards("human") + lp.rewards("heldout"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a run folder with round 0 evaluated (answers, pairs)")
    ap.add_argument("--prompts", type=int, default=24, help="held-out prompts' answers used (each answer set)")
    ap.add_argument("--pairs", type=int, default=16, help="human pairs used")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    common.setup()
    from dlma_ray.model.loading import load_causal_lm, load_tokenizer

    common.header("bench_eval_scoring: the evaluate stage's scorer tasks, one score_ids call per task vs per measure")
    cfg = common.bench_config()
    tok = load_tokenizer(common.model_dir())
    model = load_causal_lm(common.model_dir(), cfg.scoring.dtype)
    r = common.renderer(tok, cfg)
    it = items(args.run, cfg, tok, args.prompts, args.pairs)
    common.say(f"{len(it['answers'])} prompts x 2 answer sets, {len(it['pairs'])} human pairs, {len(it['held'])} "
               f"held-out generated pairs, {len(it['neutral'])} neutral texts; pi_0's and pi_k's task")
    methods = {("one score_ids call per measure (before)", 1): lambda: separate_calls(model, tok, r, it),
               ("one score_ids call per task (now)", 1): lambda: one_call(model, tok, r, it)}
    wall, cpu, out = common.interleaved(methods, args.repeats)
    before, now = list(methods)
    diff = max(abs(a - b) for a, b in zip(out[before][-1], out[now][-1]))
    rows = [[m[0], statistics.median(wall[m]), common.runs(wall[m]), statistics.median(cpu[m]),
             statistics.median(wall[before]) / statistics.median(wall[m])] for m in methods]
    common.say(f"median of {args.repeats} interleaved runs; {len(out[now][-1])} numbers, max abs diff {diff:.2e} nats")
    common.table(["path", "wall s", "all runs", "CPU s", "speed-up (wall)"], rows)
    common.footer()


if __name__ == "__main__":
    main()
