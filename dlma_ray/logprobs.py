"""Summed response log-probabilities for batches of (context, response) pairs.

The released DLMA scorer tokenised prompt+response as one string and masked the prompt by its
token count while padding on the left, which shifts the mask. Here the context and the response
are tokenised separately, their ids concatenated, and a per-sequence response mask built before
padding, so the result does not depend on the tokenizer's padding side. Position ids are derived
from the attention mask, so left padding does not shift positions either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenizedPairs:
    """A padded batch. ``response_mask[b, t]`` is 1 where token t of sequence b is a response token."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    response_mask: torch.Tensor  # [B, T] bool
    context_lengths: list[int]
    response_lengths: list[int]  # response tokens counted, end-of-turn included, after truncation

    def to(self, device) -> "TokenizedPairs":
        return TokenizedPairs(self.input_ids.to(device), self.attention_mask.to(device),
                              self.response_mask.to(device), self.context_lengths, self.response_lengths)


def encode_pair(tokenizer, context: str, response: str, end_of_turn: str,
                max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the context and of the response followed by the end-of-turn text.

    When the whole exceeds ``max_length`` the response is cut from the right (the context is kept:
    pairs with over-long contexts are dropped upstream).
    """
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    resp = tokenizer(response + end_of_turn, add_special_tokens=False)["input_ids"]
    if max_length is not None:
        resp = resp[: max(0, max_length - len(ctx))]
    if not resp:
        raise ValueError(f"no room for the response: context is {len(ctx)} tokens, max_length {max_length}")
    return ctx, resp


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int, padding_side: str = "right") -> TokenizedPairs:
    """Pad encoded (context ids, response ids) pairs into one batch."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side {padding_side!r}: expected 'left' or 'right'")
    width = max(len(c) + len(r) for c, r in encoded)
    ids, attn, resp_mask = [], [], []
    for ctx, resp in encoded:
        seq = ctx + resp
        pad = width - len(seq)
        mask = [0] * len(ctx) + [1] * len(resp)
        if padding_side == "right":
            ids.append(seq + [pad_id] * pad)
            attn.append([1] * len(seq) + [0] * pad)
            resp_mask.append(mask + [0] * pad)
        else:
            ids.append([pad_id] * pad + seq)
            attn.append([0] * pad + [1] * len(seq))
            resp_mask.append([0] * pad + mask)
    return TokenizedPairs(
        input_ids=torch.tensor(ids, dtype=torch.long),
        attention_mask=torch.tensor(attn, dtype=torch.long),
        response_mask=torch.tensor(resp_mask, dtype=torch.bool),
        context_lengths=[len(c) for c, _ in encoded],
        response_lengths=[len(r) for _, r in encoded],
    )


def tokenize_pairs(tokenizer, contexts: list[str], responses: list[str], end_of_turn: str,
                   padding_side: str = "right", max_length: int | None = None) -> TokenizedPairs:
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_pair(tokenizer, c, r, end_of_turn, max_length) for c, r in zip(contexts, responses)]
    return collate(encoded, pad_id, padding_side)


def gather_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[t]) under logits[t], in float32: [B, T, V], [B, T] -> [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, labels.unsqueeze(-1)).squeeze(-1)


def summed_response_logprobs(logits: torch.Tensor, batch: TokenizedPairs) -> torch.Tensor:
    """Sum of log p(response token | everything before it), per sequence: [B]."""
    # logits at position t predict token t+1.
    token_logp = gather_token_logprobs(logits[:, :-1], batch.input_ids[:, 1:])
    mask = batch.response_mask[:, 1:].to(token_logp.dtype)
    return (token_logp * mask).sum(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_logits(model, batch: TokenizedPairs) -> torch.Tensor:
    return model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids_from_mask(batch.attention_mask),
        use_cache=False,
    ).logits


def sequence_logprobs(model, batch: TokenizedPairs) -> torch.Tensor:
    """Summed response log-probs of a padded batch under ``model`` (keeps the graph for training)."""
    return summed_response_logprobs(forward_logits(model, batch), batch)


@torch.no_grad()
def score_texts(model, tokenizer, contexts: list[str], responses: list[str], end_of_turn: str,
                batch_size: int = 8, padding_side: str = "right", max_length: int | None = None) -> list[float]:
    """Summed response log-probs for many pairs, in batches sorted by length to limit padding."""
    device = next(model.parameters()).device
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]) + len(responses[i]))
    out = [0.0] * len(contexts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenize_pairs(tokenizer, [contexts[i] for i in idx], [responses[i] for i in idx],
                               end_of_turn, padding_side, max_length).to(device)
        for i, value in zip(idx, sequence_logprobs(model, batch).tolist()):
            out[i] = value
    return out
