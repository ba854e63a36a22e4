"""The evaluation's scorer tasks score each model's sequences in ONE packed call (dlma_ray.workers.eval_tasks):
the numbers of the separate per-measure calls, with each shared context forwarded once; and the torch threads
the evaluate stage gives scorer tasks that share a node (dlma_ray.stages.evaluate.scorer_threads)."""

from __future__ import annotations

import pytest

from conftest import direct_logprob
from dlma_ray.config.tree import load_config


@pytest.fixture(scope="module")
def items(tiny_model_dir, tokenizer):
    """A small evaluation: 3 held-out prompts with two answer sets (one answer unfinished), 4 human pairs,
    3 neutral texts, 2 held-out generated pairs."""
    from dlma_ray.model.logprobs import text_ids
    from dlma_ray.stages.evaluate import load_eval_pairs, load_eval_prompts, load_neutral_text

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "eval.max_pairs=4", "eval.batch_size=4",
                             "eval.max_prompts=3"])
    r = cfg.pair.renderer(tokenizer)
    prompts = load_eval_prompts(cfg, tokenizer)

    def answers(texts, finished):
        return [{**p, "answer": t, "token_ids": text_ids(tokenizer, t), "finished": f}
                for p, t, f in zip(prompts, texts, finished)]

    held = [{"prompt_id": f"h{i}", "pos_context": r.positive(p["messages"]), "neg_context": r.negative(p["messages"]),
             "end_of_turn": r.end_of_turn, "chosen": c, "rejected": j, "chosen_token_ids": text_ids(tokenizer, c),
             "rejected_token_ids": text_ids(tokenizer, j), "chosen_finished": True, "rejected_finished": i == 0}
            for i, (p, c, j) in enumerate(zip(prompts, ["Sure, here it is.", "No."], ["I can't.", "Fine then"]))]
    return dict(cfg=cfg, r=r, pairs=load_eval_pairs(cfg, tokenizer)[0], neutral=load_neutral_text(cfg)[:3],
                answers=answers(["I can't help with that.", "Here is how: first", "Yes."], [True, False, True]),
                baseline=answers(["Sure! Step one is", "No.", "I would rather not say."], [False, True, True]),
                held=held)


def _spy(monkeypatch) -> list:
    """Every scoring call the tasks make: ('score_ids', contexts, responses) or ('answer_nll', ...)."""
    from dlma_ray.model import logprobs

    calls = []
    for name in ("score_ids", "answer_nll"):
        real = getattr(logprobs, name)

        def spy(model, tok, contexts, responses, *a, _real=real, _name=name, **k):
            calls.append((_name, list(contexts), list(responses)))
            return _real(model, tok, contexts, responses, *a, **k)

        monkeypatch.setattr(logprobs, name, spy)
    return calls


def _tree_tokens(tokenizer, calls) -> int:
    """Tokens the packed scorer forwards for these calls (each call packed on its own, as score_ids does)."""
    from dlma_ray.core.prompts import context_ids
    from dlma_ray.model.logprobs import text_ids
    from dlma_ray.model.packing import pack_rows, row_layout

    total = 0
    for name, contexts, responses in calls:
        seqs = [context_ids(tokenizer, c) + (text_ids(tokenizer, y) if name == "answer_nll" else list(y))
                for c, y in zip(contexts, responses)]
        total += sum(len(row_layout([seqs[i] for i in row], [0] * len(row)).ids) for row in pack_rows(seqs, 2048))
    return total


def _separate(tiny_model, tokenizer, items) -> tuple[dict, dict]:
    """The outputs of the two tasks as the separate per-measure calls compute them."""
    from dlma_ray.model.logprobs import side_ids
    from dlma_ray.workers import eval_tasks as et

    r, p, bs = items["r"], items["pairs"], 4
    new, base = (et.answer_ids(tokenizer, items[k], r.end_of_turn) for k in ("answers", "baseline"))
    y_plus, y_minus = et.pair_ids(tokenizer, p, r.end_of_turn)
    chats = [x["messages"] for x in p]
    cols = {c: [h[c] for h in items["held"]] for c in items["held"][0]}
    logp_answers = et.plain_logps(tiny_model, tokenizer, r, [a["messages"] for a in items["answers"]], new, bs)
    chosen, rejected = (et.plain_logps(tiny_model, tokenizer, r, chats, y, bs) for y in (y_plus, y_minus))
    neutral = et.neutral_nll(tiny_model, tokenizer, r, items["neutral"], bs)
    init = {"contrast_policy": et.contrast(tiny_model, tokenizer, r, items["answers"], new, bs),
            "logp_policy_answers": logp_answers,
            "contrast_baseline": et.contrast(tiny_model, tokenizer, r, items["baseline"], base, bs),
            "pairs_chosen": chosen, "pairs_rejected": rejected, "neutral": neutral}
    pol = {"logp_policy_answers": logp_answers, "pairs_chosen": chosen, "pairs_rejected": rejected, "neutral": neutral,
           "self_reward_human": et.contrastive_rewards(tiny_model, tokenizer, [r.positive(c) for c in chats],
                                                       [r.negative(c) for c in chats], y_plus, y_minus, bs),
           "heldout_r": et.contrastive_rewards(tiny_model, tokenizer, cols["pos_context"], cols["neg_context"],
                                               side_ids(tokenizer, cols, "chosen"),
                                               side_ids(tokenizer, cols, "rejected"), bs)}
    return init, pol


def _tasks(tiny_model_dir, items):
    from dlma_ray.workers.eval_tasks import initial_model_scores, policy_scores

    i = items
    return (initial_model_scores(i["cfg"], tiny_model_dir, i["answers"], i["baseline"], i["pairs"], i["neutral"]),
            policy_scores(i["cfg"], tiny_model_dir, i["answers"], i["pairs"], i["held"], i["neutral"]))


@pytest.fixture(scope="module")
def scored(tiny_model_dir, tiny_model, tokenizer, items):
    """The separate calls' and the tasks' outputs, with the scoring calls each made."""
    with pytest.MonkeyPatch.context() as mp:
        calls = _spy(mp)
        separate = _separate(tiny_model, tokenizer, items)
        separate_calls = list(calls)
        calls.clear()
        tasks = _tasks(tiny_model_dir, items)
    return dict(separate=separate, tasks=tasks, separate_calls=separate_calls, task_calls=calls)


def test_each_task_scores_in_one_call_with_less_work(tokenizer, scored):
    """pi_0's and pi_k's task each make one score_ids call (the neutral text's NLL included) where the separate
    calls forwarded shared contexts once per call; the packed work is smaller than the separate calls'."""
    calls = scored["task_calls"]
    assert [c[0] for c in calls] == ["score_ids", "score_ids"], [c[0] for c in calls]
    assert len(calls[0][1]) == 2 * 3 + 3 + 2 * 3 + 2 * 4 + 3  # contrast x2, plain answers, pairs, neutral
    assert len(calls[1][1]) == 3 + 2 * 4 + 4 * 4 + 3 + 4 * 2  # plain answers, pairs, R of pairs, neutral, held-out R
    # the separate path: _separate's first 4 calls (answers' and pairs' plain log-probs, neutral) were made by both
    sep = scored["separate_calls"]
    separate = _tree_tokens(tokenizer, sep) + _tree_tokens(tokenizer, sep[:4])
    merged = _tree_tokens(tokenizer, calls)
    assert merged < separate, (merged, separate)


def test_merged_scores_equal_the_separate_calls(tiny_model, tokenizer, items, scored):
    """Every score of the one-call tasks equals the separate calls' within 1e-4 nats per sequence, and the
    unbatched reference (one sequence, no packing) too."""
    (want_init, want_pol), (init, pol) = scored["separate"], scored["tasks"]
    for got, want in ((init, want_init), (pol, want_pol)):
        for key, value in want.items():
            if key == "neutral":
                assert got[key][1] == value[1], key  # token counts
                assert got[key][0] == pytest.approx(value[0], abs=1e-4), key
            else:
                assert len(got[key]) == len(value) > 0 and got[key] == pytest.approx(value, abs=1e-4), key
    r = items["r"]
    a = items["answers"][1]  # unfinished: no end-of-turn tokens
    direct = direct_logprob(tiny_model, tokenizer, r.plain(a["messages"]), a["token_ids"])
    assert pol["logp_policy_answers"][1] == pytest.approx(direct, abs=1e-4)
    d = items["neutral"][0]
    from dlma_ray.model.logprobs import text_ids

    nll = -direct_logprob(tiny_model, tokenizer, r.plain([{"role": "user", "content": d["prompt"]}]),
                          text_ids(tokenizer, d["text"]))
    assert init["neutral"][0][0] == pytest.approx(nll, abs=1e-4)


def test_scorer_threads_fit_the_node():
    """The evaluate stage's scorer tasks run at once: on a node too small for all their threads, each gets its
    share of the node's CPUs; where they fit (a large node, a GPU per task) the configured count."""
    from dlma_ray.workers.eval_tasks import threads_per_task

    def node(cpus, gpus=0, alive=True):
        return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}

    assert threads_per_task(2, 2, [node(2)], 1, 0) == 1  # the demo machine: 4 threads on 2 cores before
    assert threads_per_task(2, 3, [node(2)], 1, 0) == 1  # a third task cannot fit: it waits, two run at once
    assert threads_per_task(2, 2, [node(16)], 1, 0) == 2
    assert threads_per_task(4, 2, [node(4)], 1, 0) == 2
    assert threads_per_task(2, 2, [node(16), node(2)], 1, 0) == 1  # the smallest node that can host them
    assert threads_per_task(2, 2, [node(2, alive=False), node(0), node(16)], 1, 0) == 2  # gone, or no task fits
    assert threads_per_task(2, 3, [node(8, gpus=1), node(2)], 1, 1) == 2  # GPU tasks: one per GPU node
    assert threads_per_task(2, 2, [node(2, gpus=2)], 1, 1) == 1
