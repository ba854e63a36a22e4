"""Summed response log-probabilities for batches of (context, response) pairs.

The released DLMA scorer tokenised prompt+response as one string and masked the prompt by its
token count while padding on the left, which shifts the mask. Here the context and the response
are tokenised separately, their ids concatenated, and a per-sequence response mask built before
padding, so the result does not depend on the tokenizer's padding side. Position ids are derived
from the attention mask, so left padding does not shift positions either.

A response is scored as token ids: the ids the engine sampled when the table stores them (decoding and
re-tokenising need not give them back), followed by the end-of-turn tokens only when the response
finished (``response_ids``). A pair too long for ``max_length`` raises ``ResponseTooLong``: the stages
drop it, counted, rather than cut its two responses to different lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlma_ray.model.packing import packed_logprobs, score_packed
from dlma_ray.core.prompts import context_ids, end_of_turn_ids


@dataclass
class TokenizedResponses:
    """A padded batch. ``response_mask[b, t]`` is 1 where token t of sequence b is a response token."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    response_mask: torch.Tensor  # [B, T] bool
    context_lengths: list[int]
    response_lengths: list[int]  # response tokens counted, end-of-turn included when the response finished

    def to(self, device) -> "TokenizedResponses":
        return TokenizedResponses(self.input_ids.to(device), self.attention_mask.to(device),
                              self.response_mask.to(device), self.context_lengths, self.response_lengths)


class ResponseTooLong(ValueError):
    """Context + response exceed ``max_length``: the caller drops the pair (cutting one side would bias h)."""


def text_ids(tokenizer, text: str) -> list[int]:
    """A response text's ids, no special tokens added (a context's ids: ``prompts.context_ids``)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_ids(tokenizer, text: str, token_ids=None, finished: bool = True, end_of_turn: str = "") -> list[int]:
    """The token ids a response is scored and trained as.

    ``token_ids`` are the ids the engine sampled (used as they are: decoding then re-tokenising need not
    round-trip); None means "not stored" (a given text, or a table written before they were kept), and the
    text is tokenised. The end-of-turn tokens follow only a ``finished`` response: one cut at
    max_new_tokens did not end its turn, and appending the tokens would add a term the model never produced.
    """
    ids = [int(i) for i in token_ids] if token_ids is not None else text_ids(tokenizer, text)
    return ids + (end_of_turn_ids(tokenizer, end_of_turn) if finished else [])


def side_ids(tokenizer, rows: dict, side: str) -> list[list[int]]:
    """``response_ids`` of every row's ``side`` ('chosen' or 'rejected') in a batch of table rows (dict of
    columns); tables written before `*_token_ids` existed fall back to tokenising the text."""
    n = len(rows[side])
    ids = rows.get(f"{side}_token_ids")
    finished = rows.get(f"{side}_finished")
    return [response_ids(tokenizer, str(rows[side][i]), None if ids is None else ids[i],
                         True if finished is None else bool(finished[i]), str(rows["end_of_turn"][i]))
            for i in range(n)]


def check_fits(context_len: int, response_len: int, max_length: int | None) -> None:
    if response_len < 1:
        raise ValueError("a response needs at least one token to score")
    if max_length is not None and context_len + response_len > max_length:
        raise ResponseTooLong(f"context {context_len} + response {response_len} tokens exceed max_length {max_length}")


def encode_response(tokenizer, context: str, ids: list[int], max_length: int | None = None,
                    ) -> tuple[list[int], list[int]]:
    """(context ids, response ids), tokenised separately (the context by ``prompts.context_ids``, as the engine
    saw it); raises ResponseTooLong past ``max_length``."""
    ctx = context_ids(tokenizer, context)
    check_fits(len(ctx), len(ids), max_length)
    return ctx, list(ids)


def encode_text_response(tokenizer, context: str, response: str, end_of_turn: str,
                max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the context and of a response text followed by the end-of-turn text."""
    return encode_response(tokenizer, context, text_ids(tokenizer, response + end_of_turn), max_length)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int, padding_side: str = "right") -> TokenizedResponses:
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
    return TokenizedResponses(
        input_ids=torch.tensor(ids, dtype=torch.long),
        attention_mask=torch.tensor(attn, dtype=torch.long),
        response_mask=torch.tensor(resp_mask, dtype=torch.bool),
        context_lengths=[len(c) for c, _ in encoded],
        response_lengths=[len(r) for _, r in encoded],
    )


def tokenize_responses(tokenizer, contexts: list[str], responses: list[str], end_of_turn: str,
                   padding_side: str = "right", max_length: int | None = None) -> TokenizedResponses:
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    encoded = [encode_text_response(tokenizer, c, r, end_of_turn, max_length) for c, r in zip(contexts, responses)]
    return collate(encoded, pad_id(tokenizer), padding_side)


def gather_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[t]) under logits[t], in float32: [B, T, V], [B, T] -> [B, T].

    The label's logit minus logsumexp, not log_softmax then gather: torch's float32 CPU log_softmax over a
    large vocabulary is biased high (about 4e-6 nats a token at 49k tokens, 1e-3 over a 256-token response),
    which the scorer's packed path (logsumexp) does not share; the train loss compares the two."""
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def summed_response_logprobs(logits: torch.Tensor, batch: TokenizedResponses) -> torch.Tensor:
    """Sum of log p(response token | everything before it), per sequence: [B]."""
    # logits at position t predict token t+1.
    token_logp = gather_token_logprobs(logits[:, :-1], batch.input_ids[:, 1:])
    mask = batch.response_mask[:, 1:].to(token_logp.dtype)
    return (token_logp * mask).sum(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_logits(model, batch: TokenizedResponses) -> torch.Tensor:
    return model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids_from_mask(batch.attention_mask),
        use_cache=False,
    ).logits


def sequence_logprobs(model, batch: TokenizedResponses) -> torch.Tensor:
    """Summed response log-probs of a padded batch under ``model`` (keeps the graph for training)."""
    return summed_response_logprobs(forward_logits(model, batch), batch)


def response_logprobs(model, encoded: list[tuple[list[int], list[int]]], pad: int, device, packed: bool = True,
                      ) -> torch.Tensor:
    """Summed response log-probs of encoded (context ids, response ids), with the graph: the forward of every
    train loss. ``packed`` (`train.packing`): one prefix-tree row (``packing.packed_logprobs``: no padding, a
    shared context once, the output layer at response positions only); else one padded batch."""
    if packed:
        return packed_logprobs(model, encoded, pad)
    return sequence_logprobs(model, collate(encoded, pad).to(device))


PACK_TOKENS = 2048  # tree tokens per packed row (dlma_ray.model.packing), one row per forward; 0 = padded sequences


@torch.no_grad()
def score_encoded(model, encoded: list[tuple[list[int], list[int]]], pad: int, batch_size: int = 8,
                  padding_side: str = "right", pack_tokens: int | None = None) -> list[float]:
    """Summed response log-probs of encoded (context ids, response ids).

    By default the sequences are packed as prefix trees (``dlma_ray.model.packing``: a shared prefix such as a
    context scored with two responses is computed once, and logits are taken only where a response token
    is predicted), one row of about ``pack_tokens`` tokens per forward (measured fastest on CPU: bench/RESULTS.md;
    ``batch_size`` is then unused). ``pack_tokens=0``: ``batch_size`` sequences per forward, sorted by length and
    padded (the training layout).
    """
    pack_tokens = PACK_TOKENS if pack_tokens is None else pack_tokens
    if pack_tokens > 0:
        return score_packed(model, encoded, pad, pack_tokens, 1, padding_side)
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    out = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([encoded[i] for i in idx], pad, padding_side).to(device)
        for i, value in zip(idx, sequence_logprobs(model, batch).tolist()):
            out[i] = value
    return out


def score_texts(model, tokenizer, contexts: list[str], responses: list[str], end_of_turn: str,
                batch_size: int = 8, padding_side: str = "right", max_length: int | None = None,
                pack_tokens: int | None = None) -> list[float]:
    """Summed response log-probs of response texts (each followed by ``end_of_turn``) after their contexts."""
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    encoded = [encode_text_response(tokenizer, c, r, end_of_turn, max_length) for c, r in zip(contexts, responses)]
    return score_encoded(model, encoded, pad_id(tokenizer), batch_size, padding_side, pack_tokens)


def score_ids(model, tokenizer, contexts: list[str], responses: list[list[int]], batch_size: int = 8,
              padding_side: str = "right", max_length: int | None = None,
              pack_tokens: int | None = None) -> list[float]:
    """Summed log-probs of response token ids (see ``response_ids``) after their context texts."""
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    cache: dict[str, list[int]] = {}  # the same context is scored with several responses
    encoded = []
    for c, r in zip(contexts, responses):
        if c not in cache:
            cache[c] = context_ids(tokenizer, c)
        check_fits(len(cache[c]), len(r), max_length)
        encoded.append((cache[c], list(r)))
    return score_encoded(model, encoded, pad_id(tokenizer), batch_size, padding_side, pack_tokens)


# ---------------------------------------------------------------- answers (perplexity)

def answer_nll_from_logits(logits: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of the response tokens and their count, per sequence ([B], [B])."""
    token_logp = gather_token_logprobs(logits[:, :-1], batch.input_ids[:, 1:])
    mask = batch.response_mask[:, 1:].to(token_logp.dtype)
    return -(token_logp * mask).sum(-1), mask.sum(-1)


@torch.no_grad()
def answer_nll(model, tokenizer, contexts: list[str], answers: list[str], batch_size: int = 8,
               max_length: int | None = None) -> tuple[list[float], list[int]]:
    """Per answer: summed NLL of its tokens given its context (no end-of-turn added), and its token count."""
    device = next(model.parameters()).device
    order = sorted(range(len(answers)), key=lambda i: len(contexts[i]) + len(answers[i]))
    nll, count = [0.0] * len(answers), [0] * len(answers)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenize_responses(tokenizer, [contexts[i] for i in idx], [answers[i] for i in idx], "",
                               max_length=max_length).to(device)
        s, c = answer_nll_from_logits(forward_logits(model, batch), batch)
        for i, a, b in zip(idx, s.tolist(), c.tolist()):
            nll[i], count[i] = a, int(b)
    return nll, count
