"""The presets of jobs/configs (the papers as their authors ran them, and ours) load, and load with the
embedded-model overlay; the data fields they need (an hf: dataset's folder and revision, a word limit, no
de-duplication) do what their docs say. The presets' end-to-end runs ride existing tests: tests/e2e/test_methods.py
(rlcd, context distillation, self-contrast), tests/e2e/test_lora_round.py (the three DLMA presets) and
tests/e2e/test_rlaif.py, test_self_rewarding.py and test_spin.py."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from dlma_ray import methods
from dlma_ray.config.tree import ConfigError, DataConfig, load_config
from dlma_ray.data.records import load_prompts
from dlma_ray.stages.prompt_rows import numbered_repeats

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
OVERLAY = str(REPO / "jobs" / "configs" / "embedded-overlay.yaml")
PAPERS = [p for p in CONFIGS if "-paper-" in p.name]
# The iterative papers' presets run more than one round; every other paper preset runs one.
ROUNDS = {"self-rewarding-paper-7b.yaml": 2, "spin-paper-ultrachat-7b.yaml": 4}
# The presets whose end-to-end run is a test file of its own (each names its preset with `preset("<name>")`).
LABELLED = {"rlaif-paper-pku-7b.yaml": "test_rlaif.py", "self-rewarding-paper-7b.yaml": "test_self_rewarding.py",
            "spin-paper-ultrachat-7b.yaml": "test_spin.py"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_alone_and_with_the_embedded_overlay(path):
    for files in ([str(path)], [str(path), OVERLAY]):
        cfg = load_config(files)
        methods.check(cfg)
    # The overlay keeps what makes the preset that preset, and makes the rest local and small.
    alone = load_config(str(path))
    assert (cfg.train.method, cfg.pair.name, cfg.pair.style, cfg.train.beta, cfg.train.gamma, cfg.data.dedup) == (
        alone.train.method, alone.pair.name, alone.pair.style, alone.train.beta, alone.train.gamma, alone.data.dedup)
    assert cfg.model.path.startswith("builtin:") and cfg.data.source == "builtin:demo" and not cfg.data.revision
    assert cfg.resources.gpus_per_engine == 0 and not cfg.resources.use_gpu_for_training
    assert cfg.train.precision == "fp32" and cfg.generation.dtype == "float32"


@pytest.mark.parametrize("path", PAPERS, ids=[p.name for p in PAPERS])
def test_paper_presets_pin_their_data_and_say_what_they_match(path):
    cfg = load_config(str(path))
    text = path.read_text()
    assert "MATCHES" in text and "DEPARTS" in text or "NOT VERIFIED" in text
    assert cfg.rounds.count == ROUNDS.get(path.name, 1) and cfg.rounds.reference == "round_start"
    assert cfg.train.beta == 0.1 and cfg.model.path != "meta-llama/Llama-2-7b-chat-hf"
    if path.name.startswith(("dlma-", "rlcd-", "context-", "rlaif-")):
        assert cfg.data.revision and cfg.model.revision and cfg.pair.style == "raw" and not cfg.data.dedup
        assert (cfg.train.clip_low, cfg.train.clip_high, cfg.train.lr, cfg.train.warmup_steps) == (-40, 40, 5e-7, 150)
        assert (cfg.train.optimizer, cfg.train.global_batch_size, cfg.train.max_length) == ("rmsprop", 64, 512)
        assert (cfg.generation.top_k, cfg.generation.max_new_tokens, cfg.data.heldout_fraction) == (50, 200, 0.05)
    if "hh-" in path.name and path.name.startswith("dlma-"):
        kind = "helpful" if "helpful" in path.name else "harmless"
        # The release scored helpful data with the harmless pair: here the data's own pair scores it.
        assert cfg.data.data_dir == f"{kind}-base" and cfg.pair.name == kind and cfg.data.max_prompt_words == 600
    if path.name.startswith("self-contrast-"):
        sc = cfg.self_contrast
        assert (sc.num_samples, sc.keep_fraction, sc.embedding_model) == (32, 0.75, "WhereIsAI/UAE-Large-V1")
        assert (cfg.generation.top_k, cfg.generation.seed, cfg.train.global_batch_size) == (-1, 42, 128)
        assert (cfg.train.optimizer, cfg.train.lr_schedule, cfg.train.lr) == ("adamw", "cosine", 5e-7)
    if path.name.startswith("rlaif-"):
        # RLCD's row but labelled by the policy: the rlcd preset's settings, RLCD's contrastive answers and principles.
        rlcd = load_config(str(path.with_name("rlcd-paper-pku-7b.yaml")))
        for section in ("model", "data", "pair", "generation", "scoring"):
            assert getattr(cfg, section) == getattr(rlcd, section), section
        assert vars(cfg.train) == {**vars(rlcd.train), "method": "rlaif"}
        assert (cfg.rlaif.pairs, cfg.rlaif.instruction, cfg.rlaif.both_orders) == ("contrastive", "harmless", True)
    if path.name.startswith("self-rewarding-"):
        sr = cfg.self_rewarding
        assert cfg.train.method == "self_rewarding" and cfg.model.revision
        assert (sr.num_samples, sr.temperature, sr.top_p, sr.num_judgements) == (4, 0.7, 0.9, 3)
        assert (sr.min_valid_judgements, sr.constrained_score, cfg.train.epochs) == (2, False, 1)
        assert (sr.length_control, sr.meta_judge) == (0.0, False)  # neither is in the paper
        assert 1e-7 <= cfg.train.lr <= 3e-7 and cfg.train.lr_schedule == "linear"
    if path.name.startswith("spin-"):
        assert (cfg.train.method, cfg.model.path) == ("spin", "alignment-handbook/zephyr-7b-sft-full")
        assert cfg.model.revision == "ac6e600eefcce74f5e8bae1035d4f66019e93190"
        assert (cfg.data.source, cfg.data.prompt_field, cfg.data.max_prompts) == ("hf:UCLA-AGI/SPIN_iter0", "real",
                                                                                   50000)
        assert (cfg.train.epochs, cfg.train.optimizer, cfg.train.lr, cfg.train.lr_schedule) == (3, "rmsprop", 5e-7,
                                                                                                "linear")
        assert (cfg.train.global_batch_size, cfg.train.max_length, cfg.generation.max_new_tokens) == (64, 1024, 256)
        # The released configs train iteration t on iterations t-1 and t (config_iter{1,2,3}.yaml).
        assert (cfg.spin.history_rounds, cfg.spin.loss) == (1, "sigmoid")


def test_later_config_files_go_over_earlier_ones_key_by_key(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({"train": {"beta": 0.3, "gamma": 0.5}, "data": {"max_prompts": 7}}))
    b.write_text(yaml.safe_dump({"train": {"beta": 0.2}}))
    cfg = load_config([str(a), str(b)], ["data.max_prompts=9"])
    assert (cfg.train.beta, cfg.train.gamma, cfg.data.max_prompts) == (0.2, 0.5, 9)
    assert load_config(str(a)).train.beta == 0.3  # one path as before


def test_dataset_folder_and_revision_only_with_an_hf_source():
    assert (DataConfig().data_dir, DataConfig().revision, DataConfig().max_prompt_words) == ("", "", 0)
    for key in ("data_dir", "revision"):
        with pytest.raises(ConfigError, match=f"data.{key}: 'x' applies to an `hf:` data.source only"):
            load_config(None, [f"data.{key}=x"])
    with pytest.raises(ConfigError, match="data.max_prompt_words: -1 is out of range"):
        load_config(None, ["data.max_prompt_words=-1"])
    assert load_config(None, ["data.source=hf:Anthropic/hh-rlhf", "data.data_dir=harmless-base"]).data.data_dir


def _hh_repo(root: Path) -> Path:
    """A local folder laid out as Anthropic/hh-rlhf: one gzipped jsonl per subset folder."""
    for sub, words in (("harmless-base", ["stop"] * 3), ("helpful-base", ["help"] * 2)):
        (root / sub).mkdir(parents=True)
        rows = [{"chosen": f"\n\nHuman: {w} {i} " + "word " * (i * 5) + f"\n\nAssistant: ok {i}",
                 "rejected": f"\n\nHuman: {w} {i} " + "word " * (i * 5) + "\n\nAssistant: no"}
                for i, w in enumerate(words)]
        with gzip.open(root / sub / "train.jsonl.gz", "wt") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    return root


def test_an_hf_folder_reads_only_its_data_dir_and_words_are_limited(tmp_path):
    repo = _hh_repo(tmp_path / "hh")
    cfg = DataConfig(source=f"hf:{repo}", data_dir="harmless-base", prompt_field="chosen", max_prompts=0)
    records, report = load_prompts(cfg, 0)
    assert [r.prompt.split()[0] for r in records] == ["stop"] * 3 and records[0].target == "ok 0"
    # Words of every turn together: "stop i" + 5i words -> 2, 7, 12 words; a limit of 7 keeps two, counted.
    records, report = load_prompts(DataConfig(**{**vars(cfg), "max_prompt_words": 7}), 0)
    assert len(records) == 2 and report.too_long == 1


def test_without_dedup_each_repeat_is_a_row_of_its_own(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("a", "b", "a", "a")))
    records, report = load_prompts(DataConfig(source=str(src), dedup=False, max_prompts=0), 0)
    ids = [r.prompt_id for r in records]
    assert len(records) == 4 and report.duplicates == 0
    rows = numbered_repeats(ids)
    assert rows == [ids[0], ids[1], f"{ids[0]}~1", f"{ids[0]}~2"] and len(set(rows)) == 4


def test_the_command_line_takes_config_twice(capsys):
    from dlma_ray.cli import main

    preset = str(REPO / "jobs" / "configs" / "dlma-paper-hh-helpful-7b.yaml")
    assert main(["config", "--config", preset, "--config", OVERLAY, "train.lr=1e-3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["pair"]["name"], cfg["pair"]["style"], cfg["model"]["path"]) == ("helpful", "raw",
                                                                                "builtin:smollm2-135m-instruct")
    assert (cfg["train"]["optimizer"], cfg["train"]["lr"], cfg["data"]["max_prompt_words"]) == ("rmsprop", 1e-3, 600)


def _overlaid(path: Path) -> dict:
    import dataclasses

    return dataclasses.asdict(load_config([str(path), OVERLAY]))


def test_every_paper_preset_goes_generate_score_train_in_make_test():
    """Each paper preset is started by an end-to-end test (a file under tests/ names it with the overlay), or
    resolves with the overlay to exactly the config of one that is: self-contrast-paper-ultrachat differs from the hh-rlhf preset
    only in the model and data the overlay replaces, so that run is its run."""
    tests = [p for p in (REPO / "tests").rglob("*.py") if p.name not in ("test_presets.py", "test_plan.py")]
    assert all(REPO / "tests" / "e2e" / f in tests for f in LABELLED.values())  # tests/e2e/ is searched too
    text = "\n".join(p.read_text(encoding="utf-8") for p in tests)
    started = [p for p in PAPERS if p.name in text or p.stem in text]
    assert len(started) >= 9, [p.name for p in started]
    missing = [n for n, f in LABELLED.items()
               if f'preset("{n}")' not in (REPO / "tests" / "e2e" / f).read_text(encoding="utf-8")]
    assert missing == [], f"each of {list(LABELLED.values())} runs its preset"
    for path in PAPERS:
        if path not in started:
            twins = [s.name for s in started if _overlaid(s) == _overlaid(path)]
            assert twins, f"{path.name}: no end-to-end test runs it or a preset that resolves to its overlaid config"
