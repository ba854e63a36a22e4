"""Pairs that say what the model did: sampled ids kept, end-of-turn only after finished responses, too-long
and non-finite pairs dropped and counted. Fast: the tiny model in-process, no Ray, no vLLM."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import direct_logprob, eot_ids
from dlma_ray.workers.generation import sampled_ids, stop_token_ids
from dlma_ray.core.prompts import BUILTIN_PAIRS, ContrastiveRenderer
from dlma_ray.workers.scoring import PairScorer

DOCS = __import__("pathlib").Path(__file__).resolve().parents[3] / "docs"


def test_sampled_ids_drop_the_stop_token_only_when_stopped(tokenizer):
    stop = stop_token_ids(tokenizer, "<|im_end|>")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eos in stop
    assert sampled_ids(SimpleNamespace(token_ids=[5, 6, eos], finish_reason="stop"), stop) == ([5, 6], True)
    assert sampled_ids(SimpleNamespace(token_ids=[5, 6, 7], finish_reason="length"), stop) == ([5, 6, 7], False)


def _generation_rows(tokenizer, n: int, long_index: int | None = None) -> dict:
    r = ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["harmless"])
    rows = {c: [] for c in ("prompt_id", "round", "split", "pos_context", "neg_context", "plain_context", "end_of_turn",
                            "chosen", "rejected", "chosen_token_ids", "rejected_token_ids", "chosen_finished",
                            "rejected_finished", "messages_json")}
    for i in range(n):
        chat = [{"role": "user", "content": ("tell me more " * 60 if i == long_index else "") + f"Question {i}?"}]
        rows["prompt_id"].append(f"p{i}")
        rows["round"].append(0)
        rows["split"].append("train")
        rows["messages_json"].append(json.dumps(chat))
        rows["pos_context"].append(r.positive(chat))
        rows["neg_context"].append(r.negative(chat))
        rows["plain_context"].append(r.plain(chat))
        rows["end_of_turn"].append(r.end_of_turn)
        rows["chosen"].append(f"Answer {i}.")
        rows["rejected"].append(f"Bad {i}")
        rows["chosen_token_ids"].append(np.array(tokenizer(f"Answer {i}.")["input_ids"], dtype=np.int32))
        rows["rejected_token_ids"].append(np.array([100 + i, 200 + i, 300 + i], dtype=np.int32))
        rows["chosen_finished"].append(True)
        rows["rejected_finished"].append(i % 2 == 0)
    out = {k: np.array(v, dtype=object) for k, v in rows.items()}
    out["chosen_finished"] = np.array(rows["chosen_finished"])
    out["rejected_finished"] = np.array(rows["rejected_finished"])
    out["round"] = np.array(rows["round"], dtype=np.int32)
    return out


def test_scorer_scores_sampled_ids_and_drops_too_long(tiny_model_dir, tiny_model, tokenizer):
    batch = _generation_rows(tokenizer, 4, long_index=3)
    scorer = PairScorer(tiny_model_dir, tiny_model_dir, batch_size=3, max_length=128, mode="contrastive")
    out = scorer(batch)
    assert list(out["drop_reason"]) == ["", "", "", "too_long"]
    assert math.isnan(out["self_reward"][3])
    eot = eot_ids(tokenizer)
    for i in range(3):
        chosen = list(batch["chosen_token_ids"][i]) + eot
        rejected = list(batch["rejected_token_ids"][i]) + (eot if batch["rejected_finished"][i] else [])
        lp = {(c, s): direct_logprob(tiny_model, tokenizer, batch[c][i], ids)
              for c in ("pos_context", "neg_context", "plain_context") for s, ids in (("c", chosen), ("r", rejected))}
        assert out["logp_neg_rejected"][i] == pytest.approx(lp["neg_context", "r"], abs=1e-4)
        assert out["ref_logp_rejected"][i] == pytest.approx(lp["plain_context", "r"], abs=1e-4)
        by_hand = (lp["pos_context", "c"] - lp["neg_context", "c"]) - (lp["pos_context", "r"] - lp["neg_context", "r"])
        assert out["self_reward"][i] == pytest.approx(by_hand, abs=1e-3)


def test_scorer_drops_unfinished_when_asked_and_nonfinite_always(tiny_model_dir, tokenizer):
    batch = _generation_rows(tokenizer, 4)
    none = PairScorer(tiny_model_dir, tiny_model_dir, max_length=512, mode="none", unfinished="drop")
    out = none(batch)
    assert list(out["drop_reason"]) == ["", "unfinished", "", "unfinished"]  # rows 1 and 3: y- was cut
    assert all(math.isnan(x) for x in out["ref_logp_chosen"])  # mode none computes nothing
    ref = PairScorer(tiny_model_dir, tiny_model_dir, max_length=512, mode="reference")
    real = ref._score
    ref._score = lambda model, c, r: np.where(np.arange(len(c)) == 1, np.nan, real(model, c, r))  # one NaN score
    out = ref(batch)
    assert list(out["drop_reason"]) == ["", "nonfinite", "", ""]
    assert all(math.isnan(x) for x in out["self_reward"]) and math.isfinite(out["ref_logp_chosen"][0])


def test_evaluation_doc_covers_every_measure():
    from dlma_ray.evaluation.measures import MEASURES

    text = (DOCS / "evaluation.md").read_text()  # the Evaluation page of the docs site
    for m in MEASURES:
        assert f"`{m.name}`" in text, m.name
        assert not m.initial or f"`{m.initial}`" in text, m.initial
