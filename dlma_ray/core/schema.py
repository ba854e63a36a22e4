"""The tables that flow between stages, as pyarrow schemas: one column list, documented once.

    prompts      (input of generate)   one row per prompt
    generations  (generate -> score)   + the three rendered contexts and the two sampled responses
    pairs        (score -> train)      + the four contrastive log-probs, R, the reference log-probs, and
                                         Self-Contrast's similarity / negative_index (one table for all methods)

Per method (docs/methods/index.md): `dlma` fills every column but the labelling judge's (`rlaif`: label_preference;
`self_rewarding`: the judge scores); `rlcd` leaves the four contrastive log-probs and
R NaN; `context_distillation` leaves every log-prob NaN (its SFT loss needs none); `dpo` takes chosen /
rejected from human pairs and `self_contrast` takes chosen = the SFT target y* and one row per sampled
negative (k rows per prompt): for both, the responses were not sampled under pos/neg_context, which are the
pair's renderings kept for judging (evaluation's held-out R).

Every stored log-prob can be recomputed from its row alone: tokenise the context (`dlma_ray.core.prompts.context_ids`:
no special tokens, then the tokenizer's BOS in front if it adds one and the text lacks it; the ids the engine was
given, derived rather than stored, so older tables read the same way); take the response's
`*_token_ids`, followed by the tokens of `end_of_turn` when `*_finished` is true (a response cut at
max_new_tokens gets none); concatenate; sum the log-probs of the response tokens
(`dlma_ray.model.logprobs.response_ids`).
"""

from __future__ import annotations

import pyarrow as pa

PROMPT_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("prompt_id", pa.string(), "stable id: sha256 of the prompt's messages (16 hex chars)"),
    ("messages_json", pa.string(), "the prompt as JSON chat messages [{role, content}], last one from the user"),
    ("prompt", pa.string(), "the last user message, for reading"),
    ("kind", pa.string(), "optional label from the data (e.g. harmful / ordinary), '' if none"),
    ("split", pa.string(), "'train', or 'heldout' for pairs kept out of training for evaluation"),
    ("round", pa.int32(), "round index k whose policy pi_k generated the row"),
]

GENERATION_COLUMNS = PROMPT_COLUMNS + [
    ("policy", pa.string(), "the policy folder (or builtin: reference) whose engine sampled the responses; "
                            "dpo: `data:<source>`"),
    ("pos_context", pa.string(), "exact text before y+ under the positive prompt (rendered chat template)"),
    ("neg_context", pa.string(), "exact text before y- under the negative prompt"),
    ("plain_context", pa.string(), "exact text before a response with no attribute: training and reference"),
    ("end_of_turn", pa.string(), "the template's end-of-turn text, whose tokens follow a finished response "
                                 "(never a cut one) when scoring and training"),
    ("chosen", pa.string(), "y+: the response sampled under the positive prompt (dpo: the human-chosen one; "
                            "self_contrast: the SFT target y*)"),
    ("rejected", pa.string(), "y-: the response sampled under the negative prompt (dpo: the human-rejected one; "
                              "self_contrast: a sample of pi_k under the plain context)"),
    ("chosen_tokens", pa.int32(), "tokens generated for y+ (dpo / self_contrast: tokens of the given text)"),
    ("rejected_tokens", pa.int32(), "tokens generated for y- (dpo: tokens of the given text)"),
    ("chosen_finished", pa.bool_(), "y+ ended with end-of-turn (not cut at max_new_tokens); true for given texts"),
    ("rejected_finished", pa.bool_(), "y- ended with end-of-turn"),
    ("chosen_token_ids", pa.list_(pa.int32()), "the token ids of y+ as the engine sampled them, without the "
                                               "end-of-turn token (given texts: their tokenisation)"),
    ("rejected_token_ids", pa.list_(pa.int32()), "the token ids of y-, likewise"),
    # The labelling judge's columns (methods whose pairs a judge labels: rlaif, self_rewarding); tables written
    # before they existed, and other methods' engines, get their defaults (LABEL_DEFAULTS).
    ("label_preference", pa.float64(), "rlaif: the A/B judge's probability that the answer generated as y+ (under "
                                       "the positive prompt, or the first sample) is the better one, both orders "
                                       "averaged; chosen / rejected are swapped when it is below 0.5. NaN otherwise"),
    ("chosen_judge_score", pa.float64(), "self_rewarding: the 5-point judge's mean score of `chosen` (the best of "
                                         "the prompt's samples); NaN otherwise"),
    ("rejected_judge_score", pa.float64(), "self_rewarding: the mean score of `rejected` (the worst sample)"),
    ("label_drop", pa.string(), "why the labelling judge gave this prompt no pair ('' = it did): `within_margin` "
                                "(rlaif.margin), `tie` (best and worst samples scored alike), `too_few_judged` "
                                "(fewer than two samples with enough valid judgements); such rows are counted by "
                                "the score stage and never scored or trained on"),
    ("judge_json", pa.string(), "the labelling judge's readings as JSON (rlaif: P(A) in each order and the "
                                "instruction; self_rewarding: every judgement's points, the means, unparsed "
                                "judgements); '' when no judge labelled the row"),
    ("pair_of", pa.string(), "what the pair compares: `answers` (every method's pairs), or `judgements` "
                             "(self_rewarding with meta_judge: two of the policy's judgements of one answer, the "
                             "better by its own meta-judge as `chosen`; the judge's question is the prompt and its "
                             "context all three contexts; prompt_id `<the prompt's id>:judge`, split train)"),
]

LABEL_DEFAULTS = {"label_preference": float("nan"), "chosen_judge_score": float("nan"),
                  "rejected_judge_score": float("nan"), "label_drop": "", "judge_json": "", "pair_of": "answers"}

PAIR_COLUMNS = GENERATION_COLUMNS + [
    ("logp_pos_chosen", pa.float64(), "l+(y+): summed log pi_k(y+ | pos_context)"),
    ("logp_neg_chosen", pa.float64(), "l-(y+): summed log pi_k(y+ | neg_context)"),
    ("logp_pos_rejected", pa.float64(), "l+(y-)"),
    ("logp_neg_rejected", pa.float64(), "l-(y-)"),
    ("self_reward", pa.float64(), "R = [l+(y+) - l-(y+)] - [l+(y-) - l-(y-)], raw (clipped only in the loss)"),
    ("ref_logp_chosen", pa.float64(), "log pi_ref(y+ | plain_context), the DPO reference"),
    ("ref_logp_rejected", pa.float64(), "log pi_ref(y- | plain_context)"),
    ("similarity", pa.float64(), "self_contrast: cosine similarity of y- to the target y* (sentence embeddings); "
                                 "NaN for other methods"),
    ("negative_index", pa.int32(), "self_contrast: which of the prompt's k negatives this row is (0..k-1); "
                                   "0 for other methods"),
]


def _schema(columns) -> pa.Schema:
    return pa.schema([pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc in columns])


PROMPT_SCHEMA = _schema(PROMPT_COLUMNS)
GENERATION_SCHEMA = _schema(GENERATION_COLUMNS)
PAIR_SCHEMA = _schema(PAIR_COLUMNS)


def column_names(schema: pa.Schema) -> list[str]:
    return list(schema.names)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast ``table``'s columns to ``schema`` (a missing column is an error that names it)."""
    for name, value in LABEL_DEFAULTS.items():  # a table from a method with no labelling judge, or an older run
        if name in schema.names and name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, type=schema.field(name).type))
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing}; has {table.column_names}")
    table = table.select(schema.names)
    for i, f in enumerate(schema):
        col = table.column(i)
        if pa.types.is_list(f.type) and not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
            # Ray Data stores a column of numpy arrays as its own tensor type: rebuild it as a plain list.
            values = [None if v is None else [int(x) for x in v] for v in col.to_pylist()]
            table = table.set_column(i, f.name, pa.array(values, type=f.type))
    return table.cast(schema)


def markdown_table(schema: pa.Schema) -> str:
    rows = ["| column | type | meaning |", "| --- | --- | --- |"]
    for f in schema:
        doc = f.metadata[b"doc"].decode().replace("|", "\\|")
        rows.append(f"| `{f.name}` | {f.type} | {doc} |")
    return "\n".join(rows)
