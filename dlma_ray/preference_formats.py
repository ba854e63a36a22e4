"""Preference rows in TRL's conversational format, as (prompt chat, chosen text, rejected text).

TRL's preference datasets (https://huggingface.co/docs/trl/dataset_formats) hold, per row:

    explicit prompt   {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
    implicit prompt   {"chosen": [messages], "rejected": [messages]}   (full dialogues; the prompt is what
                                                                      they share before the last assistant turn)

with messages `{"role": ..., "content": ...}`; `dlma_ray.export` writes the explicit kind. A completion
here is one assistant message (a string is taken too, as in TRL's mixed rows). Message contents given as
text parts (`[{"type": "text", "text": ...}]`) are joined; any other part (an image) makes the row unusable.
The string formats (hh-rlhf dialogues, `{prompt, chosen, rejected}` strings) stay in dlma_ray.data.
"""

from __future__ import annotations

from typing import Any

from dlma_ray.data import Chat, RowError, _chat_from_value


def _is_messages(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def is_conversational_pair(row: dict) -> bool:
    """Does the row hold chat messages in `prompt`, `chosen` or `rejected` (TRL's `is_conversational`)?"""
    return any(_is_messages(row.get(k)) for k in ("prompt", "chosen", "rejected"))


def _content(value: Any) -> Any:
    """A message content as text: a string, or text parts joined; anything else is left for the checks."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, dict) for p in value):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in value):
            raise RowError("wrong type", "a message holds a non-text part (image, audio)")
        return "".join(p["text"] for p in value)
    return value


def _messages(value: Any) -> Chat:
    """Messages with text contents, checked like every prompt (roles alternate from a user turn)."""
    if not _is_messages(value):
        raise RowError("wrong type", f"expected a list of {{role, content}} messages, got {type(value).__name__}")
    return _chat_from_value([{**m, "content": _content(m.get("content"))} for m in value])


def _completion(value: Any) -> str:
    """A completion: one assistant message, or a plain string."""
    if isinstance(value, str):
        return value.strip()
    if not (isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value)):
        raise RowError("wrong type", f"a completion must be a string or a list of messages, got {type(value).__name__}")
    if len(value) != 1 or value[0].get("role") != "assistant":
        raise RowError("bad pair", "a completion must be exactly one assistant message")
    content = _content(value[0].get("content"))
    if not isinstance(content, str):
        raise RowError("wrong type", "an assistant message's content is not text")
    return content.strip()


def conversational_pair(row: dict) -> tuple[Chat, str, str]:
    """(prompt messages ending with a user turn, chosen text, rejected text) of a TRL conversational row."""
    if row.get("chosen") is None or row.get("rejected") is None:
        raise RowError("missing field", "chosen/rejected")
    if row.get("prompt") is not None:
        prompt = row["prompt"]
        chat = _messages(prompt) if not isinstance(prompt, str) else _chat_from_value(prompt)
        return chat, _completion(row["chosen"]), _completion(row["rejected"])
    chosen, rejected = _messages(row["chosen"]), _messages(row["rejected"])
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise RowError("bad pair", "a dialogue does not end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise RowError("bad pair", "chosen and rejected differ before their last turn")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]
