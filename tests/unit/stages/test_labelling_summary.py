"""What the labelling judge did, counted from a generations table (stages.generate.labelling_summary), and the
score stage's drop of a prompt the judge gave no pair (workers.scoring.drop_reasons): counted, never scored."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlma_ray.stages.generate import labelling_summary


def test_summary_counts_no_pair_reasons_swaps_and_judge_counts(tmp_path):
    rows = {"label_drop": ["", "tie", "", "too_few_judged", "tie"],
            "label_preference": [0.8, float("nan"), 0.3, float("nan"), 0.5],
            "judge_json": [json.dumps({"unparsed": 1, "samples_without_score": 0}), "",
                           json.dumps({"unparsed": 2, "samples_without_score": 1}), json.dumps({"unparsed": 0}), ""]}
    (tmp_path / "g").mkdir()
    pq.write_table(pa.table(rows), tmp_path / "g" / "part-0.parquet")
    s = labelling_summary(str(tmp_path / "g"))
    assert s["prompts"] == 5 and s["labelled"] == 2 and s["no_pair"] == {"tie": 2, "too_few_judged": 1}
    assert s["swapped"] == 1 and s["mean_confidence"] == pytest.approx((0.8 + 0.7 + 0.5) / 3)
    assert s["unparsed"] == 3 and s["samples_without_score"] == 1


def test_scorer_drops_a_prompt_the_judge_gave_no_pair(tokenizer):
    from dlma_ray.workers.scoring import drop_reasons

    batch = {"label_drop": np.array(["", "within_margin", ""], dtype=object),
             "chosen_finished": np.array([True, True, False]), "rejected_finished": np.array([True, True, True]),
             "plain_context": np.array(["a", "b", "c"], dtype=object)}
    ids = [[1, 2], [3], [4]]
    assert drop_reasons(tokenizer, batch, ids, ids, "reference", 512, "drop") == ["", "within_margin", "unfinished"]
    del batch["label_drop"]  # a method with no labelling judge
    assert drop_reasons(tokenizer, batch, ids, ids, "reference", 512, "keep") == ["", "", ""]


def test_summary_counts_judgement_pairs_apart_from_the_prompts(tmp_path):
    rows = {"label_drop": ["", "tie", "", ""],
            "label_preference": [float("nan")] * 4,
            "judge_json": [json.dumps({"unparsed": 0, "meta_judge": "pair"}),
                           json.dumps({"unparsed": 1, "meta_judge": "judgements_agree"}),
                           json.dumps({"unparsed": 0, "meta_judge": "heldout"}),
                           json.dumps({"meta_judge": {"answer": 0, "best": 1, "worst": 0}})],
            "pair_of": ["answers", "answers", "answers", "judgements"]}
    (tmp_path / "g").mkdir()
    pq.write_table(pa.table(rows), tmp_path / "g" / "part-0.parquet")
    s = labelling_summary(str(tmp_path / "g"))
    assert s["prompts"] == 3 and s["labelled"] == 2 and s["no_pair"] == {"tie": 1} and s["unparsed"] == 1
    assert s["judgement_pairs"] == 1 and s["no_judgement_pair"] == {"heldout": 1, "judgements_agree": 1}


def test_judgement_rows_append_to_a_batch_with_every_column_whole():
    from dlma_ray.workers.labelling import with_rows

    batch = {"prompt_id": np.array(["abc"], dtype="<U3"), "round": np.array([0], dtype=np.int32),
             "chosen_token_ids": _ids([[1, 2]]),
             "chosen_finished": np.array([False]), "pair_of": np.array(["answers"], dtype=object)}
    out = with_rows(batch, [{"prompt_id": "abc:judge", "round": 0, "chosen_token_ids": [3, 4, 5],
                             "chosen_finished": True}])
    assert list(out["prompt_id"]) == ["abc", "abc:judge"]  # not cut to the batch's string width
    assert out["round"].dtype == np.int32 and list(out["round"]) == [0, 0]
    assert [list(x) for x in out["chosen_token_ids"]] == [[1, 2], [3, 4, 5]]
    assert out["chosen_finished"].dtype == bool and list(out["chosen_finished"]) == [False, True]
    assert list(out["pair_of"]) == ["answers", "answers"]  # a column the row lacks takes its default


def _ids(rows):
    out = np.empty(len(rows), dtype=object)
    out[:] = rows
    return out
