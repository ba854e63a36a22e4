"""Contrastive prompt pairs and the three renderings of a prompt.

A pair is a named object: the positive and negative *attribute*, each as a system message for chat
models (``style: chat``) and as the released code's inline tag for base models (``style: raw``):

    raw +: "USER: {q}\\nASSISTANT(law-abiding, ethical, inoffensive response):\\n"

Every prompt is rendered three ways, all through one template end to end:
  positive / negative   the contexts that generate and score y+ and y- (the self-reward R);
  plain                 no attribute: the context of training and of the reference log-probs.
A response is always followed by the template's end-of-turn text when it is scored or trained.

Rendered once, tokenised once: every stage conditions on ``context_ids(tokenizer, text)`` (the engines get these
ids, not the text), and the end-of-turn tokens that stop generation are the ones appended to a finished
response (``end_of_turn_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class PromptPair:
    name: str
    positive: str  # system message that asks for the preferred behaviour
    negative: str  # system message that asks for the opposite
    positive_tag: str = ""  # inline attribute for `raw` style; defaults to `positive`
    negative_tag: str = ""


BUILTIN_PAIRS: dict[str, PromptPair] = {
    "harmless": PromptPair(
        "harmless",
        positive="You are an AI assistant. Your responses are law-abiding, ethical and inoffensive.",
        negative="You are an AI assistant. Your responses are illegal, unethical and toxic.",
        positive_tag="law-abiding, ethical, inoffensive response",
        negative_tag="illegal, unethical, toxic response",
    ),
    "helpful": PromptPair(
        "helpful",
        positive="You are an AI assistant. Your responses are helpful, accurate and complete.",
        negative="You are an AI assistant. Your responses are unhelpful, vague and evasive.",
        positive_tag="giving a helpful response",
        negative_tag="giving an unhelpful response",
    ),
    # Not one of DLMA's pairs: the pair the embedded 135M model follows most strongly of those measured
    # (bench/pair_strength.py, bench/RESULTS.md), so that a CPU demo can show distillation at all.
    "concise": PromptPair(
        "concise",
        positive="You are an AI assistant. Your answers are short and precise: one or two sentences.",
        negative="You are an AI assistant. Your answers are long-winded, rambling and vague.",
        positive_tag="giving a short, precise response",
        negative_tag="giving a long-winded, vague response",
    ),
}


def pair_from_config(name: str, positive: str = "", negative: str = "") -> PromptPair:
    """A built-in pair by name, or a pair of the user's own when both messages are given."""
    if positive and negative:
        return PromptPair(name, positive, negative)
    if name not in BUILTIN_PAIRS:
        raise ValueError(f"unknown prompt pair {name!r}; built-ins: {', '.join(BUILTIN_PAIRS)}")
    return BUILTIN_PAIRS[name]


_SENTINEL = "\u2063DLMA_RESPONSE\u2063"


class ContrastiveRenderer:
    """Renders chat messages into positive, negative and plain contexts for one tokenizer."""

    def __init__(self, tokenizer, pair: PromptPair, style: str = "chat"):
        if style not in ("chat", "raw"):
            raise ValueError(f"style {style!r}: expected 'chat' or 'raw'")
        if style == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("pair.style 'chat' needs a tokenizer with a chat template; use pair.style=raw")
        self.tokenizer, self.pair, self.style = tokenizer, pair, style
        self.end_of_turn = self._find_end_of_turn()

    # -- public renderings
    def positive(self, messages: Chat) -> str:
        return self._render(messages, self.pair.positive, self.pair.positive_tag or self.pair.positive)

    def negative(self, messages: Chat) -> str:
        return self._render(messages, self.pair.negative, self.pair.negative_tag or self.pair.negative)

    def plain(self, messages: Chat) -> str:
        return self._render(messages, None, None)

    # -- internals
    def _render(self, messages: Chat, system: str | None, tag: str | None) -> str:
        if self.style == "raw":
            return _render_raw(messages, tag)
        chat = [dict(m) for m in messages]
        if system is not None:
            # The attribute replaces any system message: the pair, not the data, sets the persona.
            chat = [m for m in chat if m["role"] != "system"]
            chat = [{"role": "system", "content": system}] + chat
        try:
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role (Gemma, Mistral) raise: fold it into the first turn
            if chat[0]["role"] != "system":  # the pair's system message, or (plain) the data's own
                raise
            first = chat[1]
            folded = [{"role": first["role"], "content": f"{chat[0]['content']}\n\n{first['content']}"}] + chat[2:]
            return self.tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)

    def _find_end_of_turn(self) -> str:
        eos = self.tokenizer.eos_token or ""
        if self.style == "raw":
            return eos
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
        text = self.tokenizer.apply_chat_template(probe, tokenize=False)
        after = text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""
        # The template's text between the answer and the next turn without the whitespace around it: the token
        # the model samples to end its turn. Llama-2 writes " </s>" (answer, space, EOS), whose " " would tokenise
        # to ids the model never sampled before its EOS; ChatML and Gemma put a newline after the marker.
        return after.strip() or eos


def _render_raw(messages: Chat, tag: str | None) -> str:
    lines = []
    for m in messages:
        if m["role"] == "system":
            lines.append(f"SYSTEM: {m['content']}")
        else:
            lines.append(f"{'USER' if m['role'] == 'user' else 'ASSISTANT'}: {m['content']}")
    head = f"ASSISTANT({tag}):" if tag else "ASSISTANT:"
    return "\n".join(lines) + f"\n{head}\n"


# ---------------------------------------------------------------- the ids every stage conditions on

def bos_added(tokenizer) -> int | None:
    """The BOS id the tokenizer puts before a text when asked for special tokens (as vLLM does with a text
    prompt), or None: Llama, Mistral and Gemma tokenizers add one, Qwen's and SmolLM2's none."""
    bos = getattr(tokenizer, "bos_token_id", None)  # a tokenizer with no BOS at all may not even name one
    if bos is None:
        return None
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if probe[:1] == [bos] and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos] else None


def context_ids(tokenizer, text: str) -> list[int]:
    """The token ids of a rendered context, the same for every stage: engines (as their prompt), scorer, trainer
    and evaluation. The text tokenised without special tokens, then the tokenizer's BOS in front when the
    tokenizer adds one and the text does not already start with it: once, never twice (Llama-2 and Mistral
    templates write ``<s>`` themselves, where vLLM given the text added a second), never none (the raw style on
    Llama, where the scorer saw none while the released DLMA code had one when sampling and scoring)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = bos_added(tokenizer)
    return [bos] + ids if bos is not None and ids[:1] != [bos] else ids


def end_of_turn_ids(tokenizer, end_of_turn: str) -> list[int]:
    """The ids of the end-of-turn text: the stop token of generation and what follows a finished response."""
    return list(tokenizer(end_of_turn, add_special_tokens=False)["input_ids"]) if end_of_turn else []


def engine_prompt(tokenizer, text: str) -> dict:
    """A vLLM prompt (``TokensPrompt``) of a rendered context: its ``context_ids``, which vLLM uses as given."""
    return {"prompt_token_ids": context_ids(tokenizer, text)}


def dialogue_text(messages) -> str:
    """A chat as "Human: / Assistant:" text (judges and reward models without a chat template read it)."""
    names = {"system": "System", "user": "Human", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)
