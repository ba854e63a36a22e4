"""Every stage conditions on the same prompt ids, on five real families' templates and BOS/EOS settings (issue 22,
defect 7): the engine's prompt, the scorer's three contexts, the trainer's batch and the evaluation's answers and
scores. BOS appears once where the family has one; the end-of-turn token that stops generation is the one
appended to a finished response. Tiny tokenizers and models from tests/families.py; no Ray, no vLLM (the engine
itself: tests/e2e/test_engine_prompt_ids.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from families import FAMILIES, build_tokenizer, make_family_model

from dlma_ray.workers.engines import Completion
from dlma_ray.workers.generation import sampled_ids, stop_token_ids
from dlma_ray.model.logprobs import response_ids, tokenize_responses
from dlma_ray.methods.base import preference_batch
from dlma_ray.core.prompts import BUILTIN_PAIRS, ContrastiveRenderer, context_ids, end_of_turn_ids, engine_prompt

CHATS = [
    [{"role": "user", "content": "How do I cook rice?"}],
    [{"role": "system", "content": "Reply in French."}, {"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Why?"}],
]


def engine_sees(tokenizer, prompt) -> list[int]:
    """The ids vLLM conditions on for a prompt: a TokensPrompt's ids as given; a text tokenised with special tokens
    (vllm/renderers/params.py: add_special_tokens defaults to True), which is how the engines were fed before."""
    if isinstance(prompt, dict):
        return list(prompt["prompt_token_ids"])
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def expected_ids(family, tokenizer, text: str) -> list[int]:
    """The family's rule, written out: the text's ids, BOS first once where the family's tokenizer adds one."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.convert_tokens_to_ids(family.bos) if family.bos else None
    return [bos] + ids if family.adds_bos and ids[:1] != [bos] else ids


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Per family: its tokenizer and the tiny model folder (built once for the module)."""
    out = {}
    for name, family in FAMILIES.items():
        path = make_family_model(family, str(tmp_path_factory.mktemp(name.replace(".", "_"))), layers=1)
        out[name] = (build_tokenizer(family), path)
    return out


def contexts(renderer) -> list[tuple[str, str, str]]:
    return [(renderer.positive(c), renderer.negative(c), renderer.plain(c)) for c in CHATS]


@pytest.mark.parametrize("style", ["chat", "raw"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_engine_prompt_is_the_context_ids_with_one_bos(built, name, style):
    family, (tok, _) = FAMILIES[name], built[name]
    r = ContrastiveRenderer(tok, BUILTIN_PAIRS["harmless"], style)
    bos = tok.convert_tokens_to_ids(family.bos) if family.bos else None
    for triple in contexts(r):
        for text in triple:
            ids = engine_sees(tok, engine_prompt(tok, text))
            assert ids == context_ids(tok, text) == expected_ids(family, tok, text)
            if family.adds_bos:  # once in front; Llama-2's template also opens every later user turn with one
                written = max(1, text.count(family.bos))
                assert ids[0] == bos and ids[1] != bos and ids.count(bos) == written, f"{name}/{style}: {ids[:3]}"
            elif bos is not None:
                assert ids[0] != bos


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.adds_bos])
def test_families_reproduce_the_defect_conditions(built, name):
    """The builder is faithful where it matters: these templates write BOS themselves and these tokenizers add one,
    so a text prompt would reach vLLM with two (what the engines conditioned on before token-id prompts)."""
    family, (tok, _) = FAMILIES[name], built[name]
    text = ContrastiveRenderer(tok, BUILTIN_PAIRS["harmless"], "chat").plain(CHATS[0])
    bos = tok.convert_tokens_to_ids(family.bos)
    assert text.startswith(family.bos) and engine_sees(tok, text)[:2] == [bos, bos]


def direct_logprob(model, ids: list[int], n_context: int) -> float:
    """Reference log-prob of ids[n_context:] after ids[:n_context]: one sequence, float64, no project code."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(n_context, len(ids)))


def generation_rows(tok, r, chosen: list[list[int]], rejected: list[list[int]]) -> dict:
    pos, neg, plain = zip(*contexts(r))
    n = len(pos)
    col = lambda values: np.array(values, dtype=object)  # noqa: E731
    ids = lambda values: col([list(v) for v in values] + [None])[:-1]  # noqa: E731 - a column of lists
    return {"pos_context": col(pos), "neg_context": col(neg), "plain_context": col(plain),
            "chosen": col(["x"] * n), "rejected": col(["y"] * n), "chosen_token_ids": ids(chosen),
            "rejected_token_ids": ids(rejected), "chosen_finished": np.ones(n, dtype=bool),
            "rejected_finished": np.array([True, False][:n]), "end_of_turn": col([r.end_of_turn] * n),
            "round": np.zeros(n, dtype=np.int32)}


@pytest.mark.parametrize("style", ["chat", "raw"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_scorer_trainer_and_evaluation_condition_on_the_engine_ids(built, name, style):
    from dlma_ray.workers import eval_tasks
    from dlma_ray.model.loading import load_causal_lm
    from dlma_ray.workers.scoring import PairScorer

    family, (tok, path) = FAMILIES[name], built[name]
    r = ContrastiveRenderer(tok, BUILTIN_PAIRS["harmless"], style)
    eot = end_of_turn_ids(tok, r.end_of_turn)
    content = [t for t in tok("Sure, here it is.", add_special_tokens=False)["input_ids"]]
    chosen, rejected = [content[:4], content[2:]], [content[1:3], content[:5]]
    rows = generation_rows(tok, r, chosen, rejected)
    engine = {c: engine_sees(tok, engine_prompt(tok, c)) for k in ("pos_context", "neg_context", "plain_context")
              for c in rows[k]}
    model = load_causal_lm(path)

    # the score stage: l+(y+), l-(y+), ..., the reference log-probs under the plain context
    out = PairScorer(path, path, mode="contrastive")(rows)
    for i in range(len(CHATS)):
        yc, yr = chosen[i] + eot, rejected[i] + (eot if rows["rejected_finished"][i] else [])
        for column, ctx, y in (("logp_pos_chosen", "pos_context", yc), ("logp_neg_rejected", "neg_context", yr),
                               ("ref_logp_chosen", "plain_context", yc), ("ref_logp_rejected", "plain_context", yr)):
            ids = engine[rows[ctx][i]]
            assert out[column][i] == pytest.approx(direct_logprob(model, ids + y, len(ids)), abs=2e-4), column

    # the train step: the batch's context ids are the engine's plain-context ids
    batch = preference_batch(tok, rows, max_length=4096)
    for b, i in enumerate(list(range(len(CHATS))) * 2):
        n = batch.context_lengths[b]
        assert batch.input_ids[b, :n].tolist() == engine[rows["plain_context"][i]]

    # evaluation: the answers' prompts, their C(y) and log-probs, the neutral text's perplexity context
    answers = [{"messages": c, "answer": "", "token_ids": chosen[i], "finished": True} for i, c in enumerate(CHATS)]
    ids = eval_tasks.answer_ids(tok, answers, r.end_of_turn)
    plain = eval_tasks.plain_logps(model, tok, r, CHATS, ids, 4)
    contrast = eval_tasks.contrast(model, tok, r, answers, ids, 4)
    for i, chat in enumerate(CHATS):
        p, n, q = (engine[r.positive(chat)], engine[r.negative(chat)], engine[r.plain(chat)])
        assert engine_sees(tok, engine_prompt(tok, r.plain(chat))) == q  # eval_tasks.answer_prompts' request
        assert plain[i] == pytest.approx(direct_logprob(model, q + ids[i], len(q)), abs=2e-4)
        assert contrast[i] == pytest.approx(direct_logprob(model, p + ids[i], len(p))
                                            - direct_logprob(model, n + ids[i], len(n)), abs=4e-4)
    neutral = tokenize_responses(tok, [r.plain(CHATS[0])], ["Some text."], "")
    assert neutral.input_ids[0, :neutral.context_lengths[0]].tolist() == engine[r.plain(CHATS[0])]


@pytest.mark.parametrize("style", ["chat", "raw"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_end_of_turn_that_stops_is_the_one_appended(built, name, style):
    family, (tok, _) = FAMILIES[name], built[name]
    r = ContrastiveRenderer(tok, BUILTIN_PAIRS["harmless"], style)
    expected = family.end_of_turn if style == "chat" else family.eos
    assert r.end_of_turn == expected
    eot = end_of_turn_ids(tok, r.end_of_turn)
    assert eot == [tok.convert_tokens_to_ids(expected)], f"{name}: {r.end_of_turn!r} -> {eot}"
    stops = stop_token_ids(tok, r.end_of_turn)
    assert eot[0] in stops
    sampled = tok("Sure, here it is.", add_special_tokens=False)["input_ids"] + eot  # what the engine returns
    content, finished = sampled_ids(Completion("", sampled, "stop"), stops)
    assert finished and response_ids(tok, "", content, finished, r.end_of_turn) == sampled
    cut, finished = sampled_ids(Completion("", sampled[:3], "length"), stops)
    assert not finished and response_ids(tok, "", cut, finished, r.end_of_turn) == sampled[:3]
    # a finished response scored from its text (a table without token ids) ends the same way
    assert response_ids(tok, "Sure, here it is.", None, True, r.end_of_turn)[-1:] == eot


def test_smollm2_ids_are_unchanged(tokenizer):
    """The demo model has no BOS in its template and its tokenizer adds none: the engine's ids are those of the text
    prompt it was given before, and the end of turn is still <|im_end|>."""
    r = ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["concise"], "chat")
    for chat in CHATS:
        for text in (r.positive(chat), r.negative(chat), r.plain(chat)):
            old = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert engine_sees(tokenizer, engine_prompt(tokenizer, text)) == old == engine_sees(tokenizer, text)
    assert r.end_of_turn == "<|im_end|>"
    assert end_of_turn_ids(tokenizer, r.end_of_turn) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
