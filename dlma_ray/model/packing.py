"""Prefix-tree packing: score many (context, response) sequences with each shared prefix computed once.

The score stage's six sequences of a pair share a lot: y+ and y- follow the same context, the three
contexts of a pair share the user turn's chat template, and every pair's positive (negative, plain)
context starts with the same system message. Sorted by token ids, sequences that share a prefix are
neighbours; a run of them is laid out as one row of a prefix tree: each sequence adds only the tokens
after its longest common prefix with the previous one. A 4D attention mask lets each token see exactly
its own prefix (its ancestors in the tree) and position ids give each token its depth, so every
token's hidden state is the one a forward of its sequence alone computes. The logits are taken only at
the positions that predict a response token (``logits_at``), with a log-softmax over those rows only:
the context tokens never reach the 49k-wide output layer.

    rows = pack_rows(sequences, budget)         # which sequences share a row
    layout = row_layout([sequences[i] ...])     # ids, positions, mask, predicting positions
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def common_prefix(a: list[int], b: list[int]) -> int:
    n, m = 0, min(len(a), len(b))
    while n < m and a[n] == b[n]:
        n += 1
    return n


def pack_rows(sequences: list[list[int]], budget: int) -> list[list[int]]:
    """Indices of ``sequences`` grouped into rows of at most ``budget`` tree tokens (a longer sequence
    gets a row of its own), in token-id order so that each row holds neighbours that share prefixes."""
    order = sorted(range(len(sequences)), key=lambda i: sequences[i])
    rows: list[list[int]] = []
    size = 0
    for i in order:
        new = len(sequences[i]) - (common_prefix(sequences[rows[-1][-1]], sequences[i]) if rows else 0)
        if rows and size + new <= budget:
            rows[-1].append(i)
            size += new
        else:
            rows.append([i])
            size = len(sequences[i])
    return rows


@dataclass
class RowLayout:
    """One packed row: token ids, position ids (depth in the tree), the allowed-attention matrix
    ``allowed[q, k]`` (k is q or one of its ancestors), and for every scored token the row position
    whose logits predict it, its label and the index (within the row) of its sequence."""

    ids: list[int]
    positions: list[int]
    allowed: torch.Tensor  # [T, T] bool
    predict_at: list[int]
    labels: list[int]
    owner: list[int]
    segments: list[tuple[int, int, list[int]]]  # (start, end, ancestors): the new tokens of each sequence


def row_layout(sequences: list[list[int]], first_scored: list[int]) -> RowLayout:
    """Lay out lexicographically sorted ``sequences`` as a prefix tree; token d of sequence j is scored
    when d >= first_scored[j] (its context length) and d >= 1."""
    ids: list[int] = []
    positions: list[int] = []
    paths: list[list[int]] = []
    segments = []
    for j, seq in enumerate(sequences):
        shared = common_prefix(sequences[j - 1], seq) if j else 0
        start = len(ids)
        paths.append((paths[-1][:shared] if j else []) + list(range(start, start + len(seq) - shared)))
        if len(seq) > shared:
            segments.append((start, start + len(seq) - shared, paths[-1][:shared]))
        ids.extend(seq[shared:])
        positions.extend(range(shared, len(seq)))
    allowed = torch.zeros(len(ids), len(ids), dtype=torch.bool)
    predict_at, labels, owner = [], [], []
    for j, (seq, path) in enumerate(zip(sequences, paths)):
        path_t = torch.tensor(path, dtype=torch.long)
        n = len(seq)
        tri = torch.ones(n, n, dtype=torch.bool).tril()
        allowed[path_t.unsqueeze(1), path_t.unsqueeze(0)] |= tri  # a token sees itself and its prefix
        for d in range(max(first_scored[j], 1), n):
            predict_at.append(path[d - 1])
            labels.append(seq[d])
            owner.append(j)
    return RowLayout(ids, positions, allowed, predict_at, labels, owner, segments)


def _hf_config(model):
    """The transformers config of ``model``, also when a DeepSpeed engine wraps it (its own ``config`` is
    DeepSpeed's)."""
    return getattr(model, "module", model).config


TREE_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")  # plain softmax attention: no caps, sinks or windows


def tree_attention_applies(model) -> bool:
    """Whether ``tree_attention`` can stand in for the model's attention (else the dense 4D mask is used)."""
    c = _hf_config(model)
    return (c.model_type in TREE_MODEL_TYPES and getattr(c, "sliding_window", None) is None
            and not getattr(c, "attn_logit_softcapping", None))


def segment_plan(segments, device) -> list[tuple[int, int, int, torch.Tensor, torch.Tensor | None]]:
    """Per segment (row b, start, end, ancestors): key positions (ancestors, then the segment) and the
    [1, 1, n, len(keys)] mask in which token k of the segment sees every ancestor and segment tokens <= k;
    None for a segment without ancestors, which is plain causal attention (SDPA's is_causal: flash kernels)."""
    plan = []
    for b, start, end, ancestors in segments:
        n = end - start
        keys = torch.tensor(list(ancestors) + list(range(start, end)), device=device)
        mask = None  # no ancestors: causal attention, which SDPA's flash kernels take without a mask
        if ancestors:
            mask = torch.cat([torch.ones(n, len(ancestors), dtype=torch.bool),
                              torch.ones(n, n, dtype=torch.bool).tril()], dim=1)[None, None].to(device)
        plan.append((b, start, end, keys, mask))
    return plan


def tree_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, tree_plan=None,
                   **kwargs):
    """Attention of each segment's queries over its own keys only (an `AttentionInterface` function): the
    cost is that of each sequence alone, not of a dense row x row product. query [B, H, T, D].

    Each segment goes through transformers' own SDPA attention, the one training's forward runs, with 4-D
    [1, H, n, D] tensors: SDPA's fused kernels (flash, memory-efficient, CPU flash) take only 4-D inputs, and
    3-D ones fell back to the unfused math kernel, so the reference log-probs came from another kernel than
    the policy's log-probs in training (h at step 0 not 0 in bf16). Without a plan it is SDPA itself."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if tree_plan is None:  # a padded forward of a model whose attention is this one (use_tree_attention)
        return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    rows, heads, length, dim = query.shape
    out = query.new_zeros(rows, length, heads, dim)  # [B, T, H, D] as attention functions return; padding: never read
    for b, start, end, keys, mask in tree_plan:
        out[b:b + 1, start:end] = sdpa(module, query[b:b + 1, :, start:end], key[b:b + 1, :, keys],
                                       value[b:b + 1, :, keys], mask, dropout=dropout, scaling=scaling)[0]
    return out, None


TREE_ATTENTION = "dlma_tree"


def use_tree_attention(model) -> None:
    """Make ``model``'s attention ``tree_attention`` (SDPA, with SDPA's masks, when no plan is passed), for good:
    gradient checkpointing re-runs each layer's forward during backward and reads the config again then, so a
    switch undone after the forward would recompute the activations with another attention."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TREE_ATTENTION, tree_attention)
    AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)
    config = _hf_config(model)
    if config._attn_implementation != TREE_ATTENTION:
        config._attn_implementation = TREE_ATTENTION


def _forward_tree(model, plan, **inputs):
    use_tree_attention(model)
    return model(**inputs, tree_plan=plan)


def logits_at(model, b_idx: torch.Tensor, p_idx: torch.Tensor, plan=None, **inputs) -> torch.Tensor:
    """The model's logits at rows ``(b_idx[n], p_idx[n])`` only: [N, V]. A pre-hook on the output layer hands it
    just those hidden states, so the model's own logit processing (soft-capping, scaling) still applies.
    With a ``plan`` (``segment_plan``), attention is ``tree_attention``."""
    forward = model if plan is None else (lambda **kw: _forward_tree(model, plan, **kw))
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is None:  # no separate output layer to hook: take every position's logits
        return forward(**inputs).logits[b_idx, p_idx]

    def pick(_module, args):
        return (args[0][b_idx, p_idx].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(pick)
    try:
        return forward(**inputs).logits[0]
    finally:
        handle.remove()


def forward_rows(model, layouts: list[RowLayout], pad: int, padding_side: str = "right", tree: bool | None = None,
                 ) -> tuple[torch.Tensor, list[tuple[int, int]]] | None:
    """One forward of the packed ``layouts`` as a batch of rows: the float32 log-prob of every scored token
    ([S], with the graph when gradients are on) and, per token, (row, index of its sequence in the row);
    None when no token is scored. ``tree``: attention per segment (``tree_attention``; None = where it applies)
    or a dense 4D mask."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    tree = tree_attention_applies(model) if tree is None else tree
    width = max(len(lay.ids) for lay in layouts)
    ids = torch.full((len(layouts), width), pad, dtype=torch.long)
    pos = torch.zeros((len(layouts), width), dtype=torch.long)
    allowed = None if tree else torch.eye(width, dtype=torch.bool).repeat(len(layouts), 1, 1, 1)  # padding: itself
    where, labels, owners, segments = [], [], [], []
    for b, lay in enumerate(layouts):
        n = len(lay.ids)
        off = width - n if padding_side == "left" else 0
        ids[b, off:off + n] = torch.tensor(lay.ids)
        pos[b, off:off + n] = torch.tensor(lay.positions)
        if not tree:
            allowed[b, 0, off:off + n, off:off + n] = lay.allowed
        segments += [(b, off + s, off + e, [off + a for a in anc]) for s, e, anc in lay.segments]
        where += [(b, off + p) for p in lay.predict_at]
        labels += lay.labels
        owners += [(b, j) for j in lay.owner]
    if not where:
        return None
    # with tree attention the 4D mask is a placeholder: a 4D mask is used as given, and tree_attention ignores it
    mask = torch.zeros((len(layouts), 1, 1, 1) if tree else allowed.shape, dtype=dtype)
    if not tree:
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    plan = segment_plan(segments, device) if tree else None
    picked = logits_at(model, torch.tensor([b for b, _ in where], device=device),
                       torch.tensor([p for _, p in where], device=device), plan, input_ids=ids.to(device),
                       attention_mask=mask.to(device), position_ids=pos.to(device), use_cache=False).float()
    label_t = torch.tensor(labels, device=device)
    return picked.gather(-1, label_t.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(picked, dim=-1), owners


@torch.no_grad()
def score_packed(model, encoded: list[tuple[list[int], list[int]]], pad: int, budget: int = 512,
                 rows_per_batch: int = 1, padding_side: str = "right", tree: bool | None = None) -> list[float]:
    """Summed response log-probs of encoded (context ids, response ids), packed as prefix trees in rows
    of about ``budget`` tokens, ``rows_per_batch`` rows per forward (padded on ``padding_side``).
    ``tree``: attention per segment (``tree_attention``; None = where it applies) or a dense 4D mask."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side {padding_side!r}: expected 'left' or 'right'")
    seqs = [list(c) + list(r) for c, r in encoded]
    first = [len(c) for c, _ in encoded]
    rows = [(row, row_layout([seqs[i] for i in row], [first[i] for i in row])) for row in pack_rows(seqs, budget)]
    rows.sort(key=lambda r: len(r[1].ids))
    total = torch.zeros(len(seqs), dtype=torch.float64)
    for start in range(0, len(rows), rows_per_batch):
        group = rows[start:start + rows_per_batch]
        out = forward_rows(model, [lay for _, lay in group], pad, padding_side, tree)
        if out is None:
            continue
        token_logp, owners = out
        total.index_add_(0, torch.tensor([group[b][0][j] for b, j in owners]), token_logp.double().cpu())
    return total.tolist()


def packed_logprobs(model, encoded: list[tuple[list[int], list[int]]], pad: int, tree: bool | None = None,
                    ) -> torch.Tensor:
    """Summed response log-probs of encoded (context ids, response ids) as one differentiable float32 tensor
    [N] on the model's device: the train losses' forward (dlma_ray.methods). All sequences go into one row,
    so a pair's y+ and y- share their context's forward, no position is padding, and the output layer runs
    only where a response token is predicted; each sequence's value is its own forward's."""
    seqs = [list(c) + list(r) for c, r in encoded]
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    layout = row_layout([seqs[i] for i in order], [len(encoded[i][0]) for i in order])
    device = next(model.parameters()).device
    total = torch.zeros(len(seqs), dtype=torch.float32, device=device)
    out = forward_rows(model, [layout], pad, "right", tree)
    if out is None:
        return total
    token_logp, owners = out
    return total.index_add(0, torch.tensor([order[j] for _, j in owners], device=device), token_logp)
