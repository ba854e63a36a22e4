"""Preference rows in TRL's conversational format, brought to the shapes dlma_ray.data.records checks.

TRL's preference datasets (https://huggingface.co/docs/trl/dataset_formats) hold, per row:

    explicit prompt   {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
    implicit prompt   {"chosen": [messages], "rejected": [messages]}   (full dialogues; the prompt is what
                                                                      they share before the last assistant turn)

with messages `{"role": ..., "content": ...}`; `dlma_ray.views.export` writes the explicit kind. A completion
here is one assistant message (a string is taken too, as in TRL's mixed rows). Message contents given as
text parts (`[{"type": "text", "text": ...}]`) are joined; any other part (an image) makes the row unusable.
The roles, their order and empty texts are checked by dlma_ray.data.records.pair_from_row like every other row.
"""

from __future__ import annotations

from typing import Any

from dlma_ray.data.sources import RowError


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


def messages(value: Any) -> list[dict]:
    """A list of messages with text contents (a string is passed through: a plain or hh-rlhf prompt)."""
    if isinstance(value, str):
        return value
    if not _is_messages(value):
        raise RowError("wrong type", f"expected a list of {{role, content}} messages, got {type(value).__name__}")
    return [{**m, "content": _content(m.get("content"))} for m in value]


def completion(value: Any) -> str:
    """A completion's text: one assistant message, or a plain string."""
    if isinstance(value, str):
        return value
    if not (isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value)):
        raise RowError("wrong type", f"a completion must be a string or a list of messages, got {type(value).__name__}")
    if len(value) != 1 or value[0].get("role") != "assistant":
        raise RowError("bad pair", "a completion must be exactly one assistant message")
    text = _content(value[0].get("content"))
    if not isinstance(text, str):
        raise RowError("wrong type", "an assistant message's content is not text")
    return text


def conversational_parts(row: dict) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of a TRL conversational row: with an explicit prompt, its messages and the
    two completions' texts; with an implicit one, (None, chosen dialogue, rejected dialogue)."""
    if row.get("prompt") is not None:
        return messages(row["prompt"]), completion(row["chosen"]), completion(row["rejected"])
    return None, messages(row["chosen"]), messages(row["rejected"])
