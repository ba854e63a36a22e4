"""Prompt and preference-pair loading: formats, malformed rows counted by reason, dedup, filters, sampling."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from dlma_ray.config.tree import DataConfig
from dlma_ray.data.records import (
    PromptRecord,
    load_preference_pairs,
    load_prompts,
    parse_hh_dialogue,
    prompt_id_of,
    record_from_row,
)

PAIRS_FILE = Path(__file__).resolve().parents[4] / "shared/data/hh-rlhf-harmless/pairs.jsonl.gz"


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def words(chat: list[dict]) -> int:
    return sum(len(m["content"].split()) for m in chat)


# ---------------------------------------------------------------- hh dialogues and rows

def test_parse_hh_multi_turn():
    text = "\n\nHuman: Hi there \n\nAssistant:  Hello!\n\nHuman: Bake bread?\nWith yeast."
    assert parse_hh_dialogue(text) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bake bread?\nWith yeast."},
    ]


@pytest.mark.parametrize("text, message", [
    ("preamble\n\nHuman: hi", "before the first"),
    ("no markers at all", "no 'Human:'"),
    ("\n\nHuman: hi\n\nAssistant:   \n\nHuman: again", "empty"),
    ("\n\nHuman: hi\n\nHuman: again", "both Human"),
    ("\n\nHuman: hi\n\nAssistant: a\n\nAssistant: b", "both Assistant"),
])
def test_parse_hh_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_hh_dialogue(text)


def test_trailing_assistant_turn_becomes_target():
    rec = record_from_row({"prompt": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d", "kind": "harmful"})
    assert rec.as_chat() == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                             {"role": "user", "content": "c"}]
    assert rec.target == "d" and rec.prompt == "c" and rec.kind == "harmful"
    # An empty trailing "Assistant:" only marks whose turn it is: no target.
    open_turn = record_from_row({"prompt": "\n\nHuman: a\n\nAssistant:"})
    assert open_turn.as_chat() == [{"role": "user", "content": "a"}] and open_turn.target is None


def test_chat_list_rows_and_target_column():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " q "},
            {"role": "assistant", "content": "a"}]
    rec = record_from_row({"msgs": chat}, "msgs")
    assert rec.as_chat() == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    assert rec.target == "a" and rec.kind == ""
    assert rec.prompt_id == prompt_id_of(rec.as_chat()) and len(rec.prompt_id) == 16
    plain = record_from_row({"prompt": " Why is the sky blue? ", "response": "Scattering."})
    assert plain.messages[0].role == "user" and plain.prompt == "Why is the sky blue?"
    assert plain.target == "Scattering."
    # Same messages, same id, whatever the source format.
    assert record_from_row({"prompt": "\n\nHuman: Why is the sky blue?"}).prompt_id == plain.prompt_id
    with pytest.raises(ValueError):
        PromptRecord.from_chat([{"role": "assistant", "content": "x"}])


# ---------------------------------------------------------------- malformed rows

def test_every_malformed_row_kind_is_skipped_and_counted(tmp_path, caplog):
    good = ['{"prompt": "How do I bake bread?", "kind": "ordinary"}',
            '{"prompt": "\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: tell me a joke"}',
            '{"prompt": [{"role": "user", "content": "What is 2 + 2?"}]}']
    bad = ['["a", "list", "not", "an", "object"]',     # not an object
           '"just a string"',                          # not an object
           '{"prompt": "unterminated',                  # invalid json
           '{"text": "wrong column"}',                 # missing field
           '{"prompt": null}',                         # missing field
           '{"prompt": "   "}',                        # empty
           '{"prompt": []}',                           # empty
           '{"prompt": 42}',                           # wrong type
           '{"prompt": {"role": "user"}}',             # wrong type
           '{"prompt": "\\n\\nHuman: a\\n\\nHuman: b"}',  # bad dialogue: repeated role
           '{"prompt": "intro\\n\\nHuman: a"}',          # bad dialogue: leading text
           '{"prompt": [{"role": "assistant", "content": "x"}]}',  # bad dialogue: no user turn first
           '{"prompt": [{"role": "user", "content": 3}]}']         # bad dialogue: content not text
    lines = [ln.encode() for ln in good[:2] + bad + good[2:]]
    lines.insert(3, b'{"prompt": "caf\xe9 \xff"}')  # invalid UTF-8 bytes
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")  # a trailing blank line is not a row
    with caplog.at_level(logging.INFO, logger="dlma_ray.data.records"):
        records, report = load_prompts(DataConfig(source=str(path)), seed=0)
    assert [r.prompt for r in records] == ["How do I bake bread?", "tell me a joke", "What is 2 + 2?"]
    assert report.rows_read == 17 and report.kept == 3 and report.duplicates == 0
    assert report.skipped == {"not an object": 2, "invalid json": 1, "missing field": 2, "empty": 2,
                              "wrong type": 2, "bad dialogue": 4, "undecodable line": 1}
    assert "skipped 14" in report.summary() and report.summary() in caplog.text


def test_dedup_keeps_first_and_counts(tmp_path):
    rows = [{"prompt": "a", "kind": "first"}, {"prompt": "b"}, {"prompt": " a "},
            {"prompt": [{"role": "user", "content": "a"}]}, {"prompt": "\n\nHuman: b"}]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    records, report = load_prompts(DataConfig(source=src), 0)
    assert [(r.prompt, r.kind) for r in records] == [("a", "first"), ("b", "")]
    assert report.duplicates == 3 and report.kept == 2
    records, report = load_prompts(DataConfig(source=src, dedup=False), 0)
    assert len(records) == 5 and report.duplicates == 0


def test_token_length_filter(tmp_path):
    rows = [{"prompt": "one two three"}, {"prompt": "one two three four five"}, {"prompt": "one"}]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    records, report = load_prompts(DataConfig(source=src, max_prompt_tokens=3), 0, count_tokens=words)
    assert [r.prompt for r in records] == ["one two three", "one"] and report.too_long == 1
    # Without a counter nothing is filtered.
    assert len(load_prompts(DataConfig(source=src, max_prompt_tokens=3), 0)[0]) == 3


def test_seeded_sample_is_deterministic_and_in_source_order(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"prompt": f"question {i}"} for i in range(50)])
    cfg = DataConfig(source=src, max_prompts=10)
    a, report = load_prompts(cfg, seed=1)
    b, _ = load_prompts(cfg, seed=1)
    c, _ = load_prompts(cfg, seed=2)
    assert [r.prompt_id for r in a] == [r.prompt_id for r in b] != [r.prompt_id for r in c]
    order = [int(r.prompt.split()[1]) for r in a]
    assert order == sorted(order) and len(order) == 10
    assert report.kept == 10 and report.sampled_out == 40
    assert len(load_prompts(DataConfig(source=src, max_prompts=500), 0)[0]) == 50


# ---------------------------------------------------------------- file formats and sources

ROWS = [{"prompt": "Plan a picnic.", "kind": "ordinary"}, {"prompt": "Pick a lock.", "kind": "harmful"}]


def _loaded(source: str, **kw) -> list[tuple[str, str]]:
    records, report = load_prompts(DataConfig(source=source, **kw), 0)
    assert report.rows_read == len(records)
    return [(r.prompt, r.kind) for r in records]


def test_json_and_gz_formats(tmp_path):
    expected = [("Plan a picnic.", "ordinary"), ("Pick a lock.", "harmful")]
    (tmp_path / "p.json").write_text(json.dumps(ROWS))
    assert _loaded(str(tmp_path / "p.json")) == expected
    (tmp_path / "s.json").write_text(json.dumps(["Plan a picnic.", "Pick a lock."]))
    assert _loaded(str(tmp_path / "s.json")) == [("Plan a picnic.", ""), ("Pick a lock.", "")]
    with gzip.open(tmp_path / "p.json.gz", "wt") as fh:
        json.dump(ROWS, fh)
    assert _loaded(str(tmp_path / "p.json.gz")) == expected
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in ROWS)
    assert _loaded(str(tmp_path / "p.jsonl.gz")) == expected


def test_parquet_with_chat_lists(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    chats = [[{"role": "user", "content": "Plan a picnic."}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
              {"role": "user", "content": "Pick a lock."}]]
    pq.write_table(pa.table({"chat": chats, "kind": ["ordinary", "harmful"]}), tmp_path / "p.parquet")
    assert _loaded(str(tmp_path / "p.parquet"), prompt_field="chat") == [("Plan a picnic.", "ordinary"),
                                                                         ("Pick a lock.", "harmful")]


def test_hf_saved_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert _loaded(f"hf:{tmp_path / 'ds'}") == [("Plan a picnic.", "ordinary"), ("Pick a lock.", "harmful")]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                               "test": datasets.Dataset.from_list(ROWS[1:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert _loaded(f"hf:{tmp_path / 'dd'}", split="test") == [("Pick a lock.", "harmful")]
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_prompts(DataConfig(source=f"hf:{tmp_path / 'dd'}", split="validation"), 0)


def test_unreadable_sources_raise_naming_the_source(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_prompts(DataConfig(source=missing), 0)
    (tmp_path / "p.csv").write_text("prompt\nhi\n")
    with pytest.raises(ValueError, match="p.csv.*unknown format"):
        load_prompts(DataConfig(source=str(tmp_path / "p.csv")), 0)
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="broken.json"):
        load_prompts(DataConfig(source=str(tmp_path / "broken.json")), 0)
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(ValueError, match="top-level JSON list"):
        load_prompts(DataConfig(source=str(tmp_path / "obj.json")), 0)
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="fake.jsonl.gz"):
        load_prompts(DataConfig(source=str(tmp_path / "fake.jsonl.gz")), 0)
    with pytest.raises(ValueError, match="builtin:nope"):
        load_prompts(DataConfig(source="builtin:nope"), 0)


def test_builtin_demo_sets():
    demo, report = load_prompts(DataConfig(source="builtin:demo", max_prompts=0), 0, count_tokens=words)
    assert len(demo) == 64 and report.rows_read == 64 and not report.skipped and not report.duplicates
    assert sum(r.kind == "harmful" for r in demo) == 32 and sum(r.kind == "ordinary" for r in demo) == 32
    assert max(words(r.as_chat()) for r in demo) < 40  # short enough for a small model's context
    heldout, _ = load_prompts(DataConfig(source="builtin:demo-eval", max_prompts=0), 0)
    assert len(heldout) == 24 and sum(r.kind == "harmful" for r in heldout) == 12
    assert not {r.prompt.lower() for r in demo} & {r.prompt.lower() for r in heldout}


# ---------------------------------------------------------------- preference pairs

def test_preference_pair_rows(tmp_path):
    rows = [{"chosen": "\n\nHuman: q\n\nAssistant: a\n\nHuman: q2\n\nAssistant: good",
             "rejected": "\n\nHuman: q\n\nAssistant: a\n\nHuman: q2\n\nAssistant: bad"},
            {"prompt": "Pick a lock.", "chosen": " No. ", "rejected": "Sure.", "kind": "harmful"},
            {"prompt": "\n\nHuman: Plan a picnic.\n\nAssistant:", "chosen": "Bring food.", "rejected": "No."},
            {"chosen": "\n\nHuman: q\n\nAssistant: same", "rejected": "\n\nHuman: q\n\nAssistant: same"},
            {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"},
            {"chosen": "\n\nHuman: q\n\nAssistant:", "rejected": "\n\nHuman: q\n\nAssistant: b"},
            {"chosen": "\n\nHuman: q\n\nAssistant: a"},
            {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}]
    pairs, report = load_preference_pairs(write_jsonl(tmp_path / "pairs.jsonl", rows))
    assert [(p.prompt.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("q2", "good", "bad"), ("Pick a lock.", "No.", "Sure."), ("Plan a picnic.", "Bring food.", "No."),
        ("q", "good", "bad")]
    assert pairs[0].prompt.as_chat()[:2] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert pairs[1].prompt.kind == "harmful" and pairs[0].prompt.target is None
    assert report.skipped == {"bad pair": 2, "empty": 1, "missing field": 1} and report.kept == 4
    sample, report = load_preference_pairs(str(tmp_path / "pairs.jsonl"), limit=2, seed=3)
    assert len(sample) == 2 and report.sampled_out == 2


@pytest.mark.skipif(not PAIRS_FILE.exists(), reason="shared hh-rlhf pairs not present")
def test_real_hh_rlhf_pairs():
    pairs, report = load_preference_pairs(str(PAIRS_FILE))
    assert report.rows_read == 2087
    assert report.kept + sum(report.skipped.values()) + report.duplicates == report.rows_read
    assert len(pairs) == report.kept > 2000
    for p in pairs:
        assert p.chosen and p.rejected and p.chosen != p.rejected
        assert p.prompt.as_chat()[-1]["role"] == "user"


def test_skipped_rows_are_named_by_source_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "hi"}\n\n{"prompt": oops}\n{"nope": 1}\n{"prompt": "bye"}\n')
    records, report = load_prompts(DataConfig(source=str(path), max_prompts=0), seed=0)
    assert [r.prompt for r in records] == ["hi", "bye"]
    summary = report.summary()
    assert f"{path}:3: invalid json" in summary  # the reader knows the line (blank line 2 is not a row)
    assert f"{path} row 3: missing field" in summary  # the third row read (line 4)
