"""Export to TRL's preference format and back: dlma_ray.views.export, dlma_ray.data.formats, load_preference_pairs.

The pairs table is built by hand (PAIR_SCHEMA) with the real SmolLM2 chat template; TRL's own functions
(`is_conversational`, `maybe_apply_chat_template`) read the export; `trl.DPOTrainer` training on it:
tests/e2e/test_trl_dpo_trainer.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlma_ray.data.records import RowError, load_preference_pairs, pair_from_row, prompt_id_of
from dlma_ray.views.export import export_round
from dlma_ray.views.export import main as export_main
from dlma_ray.core.schema import PAIR_SCHEMA

CHATS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Bonjour ?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a prime number — and explain ü."}],
    [{"role": "user", "content": "How do I pick a lock?"}],
    [{"role": "user", "content": "Tell me a joke."}],
    [{"role": "user", "content": "What is 2 + 2?"}],
]
SPLITS = ["train", "train", "train", "train", "heldout", "train"]
REAL_RUN = Path(__file__).resolve().parents[2] / "data" / "run_before_layout"  # a real 2-round DLMA run of SmolLM2


@pytest.fixture
def pairs_run(tmp_path, tokenizer) -> Path:
    """A run dir whose round_1/pairs holds six pairs: one held out, one with a cut response, one with R NaN."""
    from dlma_ray.core.prompts import BUILTIN_PAIRS, ContrastiveRenderer

    renderer = ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["harmless"])
    rows = []
    for i, (chat, split) in enumerate(zip(CHATS, SPLITS)):
        chosen, rejected = f"A good answer {i}.", f"A worse answer {i}, longer and vaguer."
        rows.append({name: None for name in PAIR_SCHEMA.names} | {
            "prompt_id": prompt_id_of(chat), "messages_json": json.dumps(chat), "prompt": chat[-1]["content"],
            "kind": "harmful" if i == 3 else "", "split": split, "round": 1, "policy": "m",
            "pos_context": renderer.positive(chat), "neg_context": renderer.negative(chat),
            "plain_context": renderer.plain(chat), "end_of_turn": renderer.end_of_turn, "chosen": chosen,
            "rejected": rejected, "chosen_tokens": 5, "rejected_tokens": 9, "chosen_finished": True,
            "rejected_finished": i != 2, "chosen_token_ids": [1], "rejected_token_ids": [2],
            "self_reward": math.nan if i == 1 else 0.5 * i, "ref_logp_chosen": -1.0 - i, "ref_logp_rejected": -2.0 - i,
            "similarity": math.nan, "negative_index": 0})
    run = tmp_path / "run"
    (run / "round_1" / "pairs").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), run / "round_1" / "pairs" / "part-0.parquet")
    return run


def _table(run: Path) -> list[dict]:
    return pq.read_table(run / "round_1" / "pairs").to_pylist()


def test_export_is_trl_conversational_with_extras(pairs_run, tmp_path):
    import datasets

    out = tmp_path / "trl"
    assert export_main([str(pairs_run), "--round", "1", "--out", str(out), "--jsonl", str(tmp_path / "p.jsonl")]) == 0
    ds = datasets.load_from_disk(str(out))
    source = [r for r in _table(pairs_run) if r["split"] == "train"]
    assert len(ds) == len(source) == 5  # only the train split by default
    for got, want in zip(ds, source):
        assert got["prompt"] == json.loads(want["messages_json"])
        assert got["chosen"] == [{"role": "assistant", "content": want["chosen"]}]
        assert got["rejected"] == [{"role": "assistant", "content": want["rejected"]}]
        assert (got["prompt_id"], got["round"], got["kind"]) == (want["prompt_id"], 1, want["kind"])
        assert got["pair_of"] == "answers"  # unset in the fixture, as in a table from before the column
        assert got["ref_logp_chosen"] == want["ref_logp_chosen"]
        assert got["rejected_finished"] == want["rejected_finished"]
        assert (math.isnan(got["self_reward"]) and math.isnan(want["self_reward"])
                or got["self_reward"] == want["self_reward"])
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in lines] == ds["prompt_id"] and lines[1]["self_reward"] is None  # NaN -> null


def test_export_splits_and_finished_only(pairs_run, tmp_path):
    import datasets

    export_round(str(pairs_run), 1, str(tmp_path / "all"), split="all")
    dd = datasets.load_from_disk(str(tmp_path / "all"))
    assert {k: len(v) for k, v in dd.items()} == {"train": 5, "test": 1}
    assert dd["test"][0]["prompt"] == CHATS[4]
    result = export_round(str(pairs_run), 1, str(tmp_path / "fin"), finished_only=True)
    assert result["rows"] == {"train": 4}  # pair 2 has a cut response
    with pytest.raises(FileNotFoundError, match="round 3 has no pairs"):
        export_round(str(pairs_run), 3, str(tmp_path / "x"))


@pytest.mark.parametrize("form", ["folder", "hf:folder", "jsonl", "dict-test"])
def test_round_trip_through_load_preference_pairs(pairs_run, tmp_path, form):
    out, jsonl = tmp_path / "trl", tmp_path / "p.jsonl"
    export_round(str(pairs_run), 1, str(out), split="all" if form == "dict-test" else "train", jsonl=str(jsonl))
    source = {"folder": str(out), "hf:folder": f"hf:{out}", "jsonl": str(jsonl), "dict-test": str(out)}[form]
    pairs, report = load_preference_pairs(source, split="test" if form == "dict-test" else "train")
    want = [r for r in _table(pairs_run) if r["split"] == ("heldout" if form == "dict-test" else "train")]
    assert report.kept == len(want) and not report.skipped
    got = [(p.prompt.prompt_id, p.prompt.as_chat(), p.chosen, p.rejected, p.prompt.kind) for p in pairs]
    assert got == [(r["prompt_id"], json.loads(r["messages_json"]), r["chosen"], r["rejected"], r["kind"])
                   for r in want]


def test_trl_row_forms():
    user = [{"role": "user", "content": "Q?"}]
    a = [{"role": "assistant", "content": "good"}]
    b = [{"role": "assistant", "content": "bad"}]
    explicit = pair_from_row({"prompt": user, "chosen": a, "rejected": b})
    implicit = pair_from_row({"chosen": user + a, "rejected": user + b})
    mixed = pair_from_row({"prompt": user, "chosen": " good ", "rejected": "bad"})
    parts = pair_from_row({"prompt": [{"role": "user", "content": [{"type": "text", "text": "Q"},
                                                                   {"type": "text", "text": "?"}]}],
                           "chosen": a, "rejected": b})
    string_prompt = pair_from_row({"prompt": "Q?", "chosen": a, "rejected": b})
    for p in (explicit, implicit, mixed, parts, string_prompt):
        assert (p.prompt.as_chat(), p.chosen, p.rejected) == (user, "good", "bad")
        assert p.prompt.prompt_id == prompt_id_of(user)
    bad = {
        "bad pair": [{"prompt": user, "chosen": a + user + a, "rejected": b},  # multi-turn completion
                     {"chosen": user + a, "rejected": [{"role": "user", "content": "other"}] + b},
                     {"prompt": user, "chosen": a, "rejected": a}],
        "wrong type": [{"prompt": [{"role": "user", "content": [{"type": "image"}]}], "chosen": a, "rejected": b},
                       {"prompt": user, "chosen": a, "rejected": 3}],
        "bad dialogue": [{"prompt": user + a, "chosen": a, "rejected": b},
                         {"prompt": [{"role": "robot", "content": "x"}], "chosen": a, "rejected": b}],
        "empty": [{"prompt": user, "chosen": [{"role": "assistant", "content": "  "}], "rejected": b}],
    }
    for reason, rows in bad.items():
        for row in rows:
            with pytest.raises(RowError) as err:
                pair_from_row(row)
            assert err.value.reason == reason, row


def test_trl_reads_the_export_as_the_run_trained(pairs_run, tmp_path, tokenizer):
    """TRL's own rules see a conversational row and render the prompt exactly as the run's plain context."""
    pytest.importorskip("trl")
    import datasets
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    export_round(str(pairs_run), 1, str(tmp_path / "trl"))
    ds = datasets.load_from_disk(str(tmp_path / "trl"))
    source = [r for r in _table(pairs_run) if r["split"] == "train"]
    for row, want in zip(ds, source):
        assert is_conversational(row)
        text = maybe_apply_chat_template(row, tokenizer)
        assert text["prompt"] == want["plain_context"]
        assert text["chosen"].startswith(want["chosen"] + want["end_of_turn"])
        assert text["rejected"].startswith(want["rejected"] + want["end_of_turn"])


def test_export_of_a_real_run_renders_as_the_run_trained(tmp_path, tokenizer):
    """Every pair of a real run's round, through TRL's own template code, gives back the run's plain context."""
    pytest.importorskip("trl")
    import datasets
    from trl.data_utils import maybe_apply_chat_template

    result = export_round(str(REAL_RUN), 1, str(tmp_path / "trl"), split="all")
    dd = datasets.load_from_disk(str(tmp_path / "trl"))
    table = pq.read_table(REAL_RUN / "round_1" / "pairs").to_pylist()
    want = [r for r in table if r["split"] == "train"] + [r for r in table if r["split"] == "heldout"]
    got = list(dd["train"]) + list(dd["test"])
    assert result["rows"] == {"train": len(dd["train"]), "test": len(dd["test"])} and len(got) == len(want) > 0
    for row, r in zip(got, want):
        text = maybe_apply_chat_template(row, tokenizer)
        assert text["prompt"] == r["plain_context"]
        assert text["chosen"].startswith(r["chosen"] + (r["end_of_turn"] if r["chosen_finished"] else ""))
        assert row["self_reward"] == r["self_reward"] and row["ref_logp_rejected"] == r["ref_logp_rejected"]


def test_dpo_reads_an_export(pairs_run, tmp_path):
    """The dpo method's generate stage takes an exported folder as data.source (no engine: tokenizer only)."""
    from dlma_ray.config.tree import load_config
    from dlma_ray.methods.dpo import human_pair_rows

    export_round(str(pairs_run), 1, str(tmp_path / "trl"))
    cfg = load_config(None, ["train.method=dpo", f"data.source={tmp_path / 'trl'}", "data.max_prompts=0",
                             "pair.name=harmless"])
    rows = sorted(human_pair_rows(cfg, 0), key=lambda r: r["prompt_id"])
    want = sorted((r for r in _table(pairs_run) if r["split"] == "train"), key=lambda r: r["prompt_id"])
    assert [(r["prompt_id"], r["chosen"], r["rejected"], r["plain_context"], r["pos_context"]) for r in rows] == \
        [(r["prompt_id"], r["chosen"], r["rejected"], r["plain_context"], r["pos_context"]) for r in want]
    assert {r["policy"] for r in rows} == {f"data:{tmp_path / 'trl'}"}
