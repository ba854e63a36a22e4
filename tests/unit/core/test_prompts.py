"""Contrastive pairs rendered through the chat template, and the raw released format."""

import pytest

from dlma_ray.core.prompts import BUILTIN_PAIRS, ContrastiveRenderer, PromptPair, pair_from_config

CHAT = [{"role": "user", "content": "How do I pick a lock?"}]


def test_chat_rendering_puts_attribute_in_system_message(tokenizer):
    r = ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["harmless"])
    pos, neg, plain = r.positive(CHAT), r.negative(CHAT), r.plain(CHAT)
    assert pos.startswith("<|im_start|>system\nYou are an AI assistant. Your responses are law-abiding")
    assert "illegal, unethical and toxic" in neg
    assert "law-abiding" not in plain and "SmolLM" in plain  # the model's own default system message
    for text in (pos, neg, plain):
        assert text.endswith("<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\n")


def test_attribute_replaces_a_data_system_message(tokenizer):
    r = ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["helpful"])
    chat = [{"role": "system", "content": "Talk like a pirate."}] + CHAT
    assert "pirate" not in r.positive(chat) and "pirate" in r.plain(chat)


def test_raw_style_matches_released_format(tokenizer):
    r = ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["harmless"], style="raw")
    assert r.positive(CHAT) == "USER: How do I pick a lock?\nASSISTANT(law-abiding, ethical, inoffensive response):\n"
    assert r.negative(CHAT) == "USER: How do I pick a lock?\nASSISTANT(illegal, unethical, toxic response):\n"
    helpful = ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["helpful"], style="raw")
    assert helpful.negative(CHAT).endswith("ASSISTANT(giving an unhelpful response):\n")
    multi = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert r.plain(multi) == "USER: a\nASSISTANT: b\nUSER: c\nASSISTANT:\n"
    assert r.end_of_turn == tokenizer.eos_token


def test_multi_turn_chat(tokenizer):
    r = ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["harmless"])
    multi = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    text = r.positive(multi)
    assert text.index("<|im_start|>user\na") < text.index("<|im_start|>assistant\nb") < text.index("user\nc")


def test_user_pair_and_unknown_pair():
    assert pair_from_config("mine", "Be kind.", "Be cruel.") == PromptPair("mine", "Be kind.", "Be cruel.")
    with pytest.raises(ValueError, match="built-ins: harmless, helpful, concise"):
        pair_from_config("nope")


def test_chat_style_needs_a_template(tokenizer):
    import copy

    plain_tok = copy.deepcopy(tokenizer)
    plain_tok.chat_template = None
    with pytest.raises(ValueError, match="pair.style=raw"):
        ContrastiveRenderer(plain_tok, BUILTIN_PAIRS["harmless"])
