"""Head-to-head judging (issue 24, 2): win / tie / lose counting against a hand-made table, the intervals,
safe-rlhf's LlamaForScore rebuilt on a tiny random model against a hand computation, padding, a cost model's
direction, a sequence-classification reward model, stored answers reused, and the comparison's table."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dlma_ray.core.stats import wilson_interval
from dlma_ray.evaluation.headtohead import (
    human_agreement, outcome, pick_verdicts, score_verdicts, table_rows, tally,
)

# a_first: pick with A's answer shown first; b_first: with B's shown first ("A" = the first shown)
TABLE = [  # (a_first, b_first, outcome by hand)
    ("A", "B", "win"),    # A's answer preferred in both orders
    ("B", "A", "lose"),   # B's answer preferred in both orders
    ("A", "A", "tie"),    # split: the judge always says the first position
    ("B", "B", "tie"),    # split the other way
    ("A", "tie", "tie"),  # one order undecided: not a win
    ("tie", "A", "tie"),  # undecided, then B's answer: not a loss
    ("A", "B", "win"),
    ("tie", "tie", "tie"),
]


def test_counting_both_orders_and_split_verdicts():
    v = pick_verdicts(list(range(len(TABLE))), [t[0] for t in TABLE], [t[1] for t in TABLE])
    assert [outcome(x) for x in v] == [t[2] for t in TABLE]
    t = tally(v)
    assert t["n"] == 8 and t["requests"] == 16
    assert (t["win"]["count"], t["tie"]["count"], t["lose"]["count"]) == (2, 5, 1)
    assert t["win"]["count"] + t["tie"]["count"] + t["lose"]["count"] == t["n"]
    assert t["split"] == 2 and t["order_ties"] == 4
    assert t["win"]["rate"] == 0.25 and t["tie"]["rate"] == 0.625
    # Wilson 95% for 2 of 8 by hand: center (0.25 + 1.96^2/16) / (1 + 1.96^2/8), half-width likewise
    z = 1.96
    center = (0.25 + z * z / 16) / (1 + z * z / 8)
    half = z * (0.25 * 0.75 / 8 + z * z / 256) ** 0.5 / (1 + z * z / 8)
    assert t["win"]["ci95"] == pytest.approx([center - half, center + half])
    assert t["lose"]["ci95"] == pytest.approx(list(wilson_interval(1, 8)))
    with pytest.raises(ValueError):
        pick_verdicts([0], ["C"], ["A"]) and outcome({"a_first": "C", "b_first": "A"})


def test_score_judges_direction_and_human_agreement():
    v = score_verdicts([0, 1, 2], [1.0, 0.0, 2.0], [0.5, 0.0, 3.0])
    assert [outcome(x) for x in v] == ["win", "tie", "lose"]
    assert [(x["a_first"], x["b_first"]) for x in v] == [("A", "B"), ("tie", "tie"), ("B", "A")]
    cost = score_verdicts([0, 1, 2], [1.0, 0.0, 2.0], [0.5, 0.0, 3.0], lower_is_better=True)
    assert [outcome(x) for x in cost] == ["lose", "tie", "win"]  # a cost model prefers the lower score
    h = human_agreement(score_verdicts([0, 1, 2, 3], [2.0, 1.0, 0.0, 5.0], [1.0, 1.0, 1.0, 4.0]))
    assert h["n"] == 4 and h["accuracy"]["count"] == 2 and h["ties"] == 1 and h["reversed"] == 1
    doc = {"a": "dlma", "b": "rlcd", "judge": "cost_model", "answers": "reused", "result": tally(cost),
           "human": h}
    assert table_rows([doc]) == [["`dlma` vs `rlcd`", "cost_model", "reused", "3", "33% [6%, 79%]",
                                  "33% [6%, 79%]", "33% [6%, 79%]", "50% [15%, 85%] (n=4)"]]



def test_policy_judges_picks_a_missing_score_and_their_caveat():
    from dlma_ray.evaluation.headtohead import caveats, pick_verdicts, probability_pick

    nan = float("nan")
    # a 5-point mean is NaN when too few judgements parsed: no score, no preference
    v = score_verdicts([0, 1, 2], [nan, 3.0, 4.5], [2.0, nan, 1.5])
    assert [outcome(x) for x in v] == ["tie", "tie", "win"]
    # the A/B reading: P(the answer shown first is better), each order its own pick
    assert [probability_pick(p) for p in (0.7, 0.3, 0.5)] == ["A", "B", "tie"]
    ab = pick_verdicts([0, 1, 2], [probability_pick(p) for p in (0.8, 0.6, 0.4)],
                       [probability_pick(p) for p in (0.3, 0.7, 0.8)])
    # prompt 0: A's answer preferred in both orders; 1: the first shown each time (split); 2: B's in both
    assert [outcome(x) for x in ab] == ["win", "tie", "lose"]
    assert caveats([{"judge": "ab"}]) and "Self-Rewarding" in caveats([{"judge": "five_point"}])[0]
    assert caveats([{"judge": "openai"}]) == []


# ---------------------------------------------------------------- score models built in the test

def tiny_llama_config(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0)


@pytest.fixture(scope="module")
def score_model_dirs(tmp_path_factory, tokenizer):
    """A tiny safe-rlhf score model (reward and cost flavours) as safe-rlhf saves one: config keys score_dim,
    bias, score_type; weights model.*, score_head.*, normalizer.*; safetensors."""
    from transformers import LlamaModel

    torch.manual_seed(0)
    cfg = tiny_llama_config(len(tokenizer))
    base = LlamaModel(cfg).eval()
    head_w, head_b = torch.randn(1, cfg.hidden_size), torch.randn(1)
    dirs = {}
    for kind in ("reward", "cost"):
        out = tmp_path_factory.mktemp(f"score-{kind}")
        doc = {**cfg.to_dict(), "architectures": ["LlamaForScore"], "score_dim": 1, "bias": True, "score_type": kind,
               "do_normalize": False, "normalizer_type": None}
        (out / "config.json").write_text(json.dumps(doc))
        state = {f"model.{k}": v.contiguous() for k, v in base.state_dict().items()}
        state.update({"score_head.weight": head_w, "score_head.bias": head_b, "normalizer.mean": torch.zeros(1),
                      "normalizer.var": torch.ones(1), "normalizer.count": torch.zeros(1, dtype=torch.long)})
        save_file(state, str(out / "model.safetensors"))
        tokenizer.save_pretrained(str(out))
        dirs[kind] = str(out)
    return dirs, base, head_w, head_b


CHATS = [[{"role": "user", "content": "How do I pick a lock?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
          {"role": "user", "content": "more?"}]]
ANSWERS = ["I cannot help with that, but a locksmith can.", "Hello!", "Here is a much longer answer " * 3]


def test_llama_for_score_end_score_matches_hand_computation(score_model_dirs, tokenizer):
    from dlma_ray.model.scoremodel import answer_scores, load_judge_model, safe_rlhf_text, score_type

    dirs, base, head_w, head_b = score_model_dirs
    model, tok, kind = load_judge_model(dirs["reward"])
    assert kind == "score" and score_type(dirs["cost"]) == "cost"
    got = answer_scores(model, tok, kind, CHATS, ANSWERS, batch_size=3)
    want = []
    for chat, answer in zip(CHATS, ANSWERS):  # slow reference: one unpadded sequence, last token, the head by hand
        ids = tok(safe_rlhf_text(chat, answer, tok.eos_token), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = base(input_ids=ids).last_hidden_state[0, -1]
        want.append(float(hidden @ head_w[0] + head_b[0]))
    assert got == pytest.approx(want, abs=1e-4)
    assert safe_rlhf_text(CHATS[0], "ok", "</s>") == \
        "BEGINNING OF CONVERSATION: USER: How do I pick a lock? ASSISTANT:ok</s>"
    # left and right padding give the same end scores
    texts = [safe_rlhf_text(c, a, tok.eos_token) for c, a in zip(CHATS, ANSWERS)]
    scores = {}
    for side in ("left", "right"):
        tok.padding_side = side
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            scores[side] = model.end_scores(enc["input_ids"], enc["attention_mask"])[:, 0]
    assert scores["left"].tolist() == pytest.approx(scores["right"].tolist(), abs=1e-4)
    assert scores["left"].tolist() == pytest.approx(want, abs=1e-4)


def test_cost_model_direction_flips_the_verdict(score_model_dirs):
    from dlma_ray.model.scoremodel import answer_scores, load_judge_model
    from dlma_ray.stages.judging import check_judge_model

    dirs = score_model_dirs[0]
    model, tok, kind = load_judge_model(dirs["cost"])
    a = answer_scores(model, tok, kind, CHATS, ANSWERS)
    b = answer_scores(model, tok, kind, CHATS, list(reversed(ANSWERS)))
    as_reward = [outcome(v) for v in score_verdicts([0, 1, 2], a, b)]
    as_cost = [outcome(v) for v in score_verdicts([0, 1, 2], a, b, lower_is_better=True)]
    flip = {"win": "lose", "lose": "win", "tie": "tie"}
    assert as_cost == [flip[o] for o in as_reward] and "win" in as_cost + as_reward
    with pytest.raises(ValueError, match="cost model"):
        check_judge_model("reward_model", dirs["cost"])  # read as a reward, every verdict would turn around
    check_judge_model("cost_model", dirs["cost"])


def test_sequence_classification_reward_model(tmp_path, tokenizer):
    from transformers import LlamaForSequenceClassification

    from dlma_ray.evaluation.judges import dialogue_text
    from dlma_ray.model.scoremodel import answer_scores, load_judge_model

    torch.manual_seed(1)
    cfg = tiny_llama_config(len(tokenizer))
    cfg.num_labels = 1
    rm = LlamaForSequenceClassification(cfg).eval()
    rm.save_pretrained(str(tmp_path), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp_path))
    model, tok, kind = load_judge_model(str(tmp_path))
    assert kind == "classification"
    got = answer_scores(model, tok, kind, CHATS, ANSWERS, batch_size=2)
    want = []
    for chat, answer in zip(CHATS, ANSWERS):
        full = list(chat) + [{"role": "assistant", "content": answer}]
        text = tok.apply_chat_template(full, tokenize=False) if tok.chat_template else dialogue_text(full)
        with torch.no_grad():
            want.append(float(rm(**tok(text, return_tensors="pt")).logits[0, 0]))
    assert got == pytest.approx(want, abs=1e-4)
    flipped = score_verdicts([0, 1, 2], got, got[::-1], lower_is_better=True)
    assert [outcome(v) for v in flipped] == [outcome(v) for v in score_verdicts([0, 1, 2], got[::-1], got)]


# ---------------------------------------------------------------- stored answers and the comparison table

def fake_run(base, name, prompt_ids, seed=0):
    run = base / name
    (run / "round_0").mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"stages": []}))
    rows = [{"prompt_id": p, "messages": [{"role": "user", "content": f"q{p}"}], "answer": f"{name} {p}",
             "finished": True, "max_new_tokens": 96, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "seed": seed}
            for p in prompt_ids]
    (run / "round_0" / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(run)


def test_stored_answers_reused_only_when_they_match(tmp_path):
    from dlma_ray.stages.judging import matched_answers, read_side

    a = read_side(fake_run(tmp_path, "dlma", [3, 1, 2]))
    b = read_side(fake_run(tmp_path, "rlcd", [1, 2, 3]))
    assert a["name"] == "dlma" and a["source"].endswith("round_0/answers.jsonl")
    x, y = matched_answers(a["answers"], b["answers"])
    assert [r["prompt_id"] for r in x] == [1, 2, 3] == [r["prompt_id"] for r in y]
    assert matched_answers(a["answers"], read_side(fake_run(tmp_path, "other_seed", [1, 2, 3], 7))["answers"]) is None
    assert matched_answers(a["answers"], read_side(fake_run(tmp_path, "fewer", [1, 2]))["answers"]) is None
    assert read_side("builtin:smollm2-135m-instruct")["answers"] is None  # a policy: answers are generated


def test_comparison_shows_head_to_head(tmp_path):
    from dlma_ray.views.compare import write_comparison

    (tmp_path / "headtohead").mkdir()
    v = pick_verdicts([0, 1, 2, 3], ["A", "A", "B", "A"], ["B", "A", "A", "B"])
    doc = {"a": "dlma", "b": "rlcd", "judge": "openai", "answers": "reused", "result": tally(v), "human": None}
    (tmp_path / "headtohead" / "dlma_vs_rlcd.openai.json").write_text(json.dumps(doc))
    md = open(write_comparison(str(tmp_path), methods=[])).read()
    assert "## Head to head" in md
    assert "| `dlma` vs `rlcd` | openai | reused | 4 | 50% [15%, 85%] | 25% [5%, 70%] | 25% [5%, 70%] | – |" in md
    assert "trained on" not in md  # an external judge: no caveat
    (tmp_path / "headtohead" / "dlma_vs_pi_0.distillation.json").write_text(json.dumps(
        {**doc, "b": "pi_0", "judge": "distillation"}))
    md = open(write_comparison(str(tmp_path), methods=[])).read()
    assert "| `dlma` vs `pi_0` | distillation |" in md
    assert "the contrastive signal DLMA, RLCD and context distillation are trained on" in md  # never unsaid


def test_head_to_head_with_score_judges_in_process(tmp_path, score_model_dirs, tiny_model_dir):
    """The whole judgement on stored answers: the worker's scoring function run in this process (the command
    runs the same function in a Ray task), a cost model and the distillation score under a tiny pi_0."""
    from dlma_ray.config.tree import load_config
    from dlma_ray.stages.judging import head_to_head
    from dlma_ray.workers.judge_tasks import answer_set_scores

    a, b = fake_run(tmp_path, "dlma", [1, 2, 3]), fake_run(tmp_path, "rlcd", [1, 2, 3])
    cfg = load_config(None, ["eval.max_pairs=4", f"model.path={tiny_model_dir}", "eval.batch_size=4"])
    doc = head_to_head(cfg, a, b, "cost_model", score_model_dirs[0]["cost"], str(tmp_path / "out"),
                       scorer=answer_set_scores)
    t = doc["result"]
    assert doc["answers"] == "reused" and t["n"] == 3 == len(doc["verdicts"])
    assert t["win"]["count"] + t["tie"]["count"] + t["lose"]["count"] == 3
    assert all(v["score_a"] != v["score_b"] and outcome(v) == ("win" if v["score_a"] < v["score_b"] else "lose")
               for v in doc["verdicts"])  # the lower cost wins
    assert doc["human"]["n"] == 4 and (tmp_path / "out" / "dlma_vs_rlcd.cost_model.json").exists()
    d = head_to_head(cfg, a, b, "distillation", scorer=answer_set_scores)
    assert d["result"]["n"] == 3 and d["human"]["n"] == 4 and d["judge_model"] == ""
