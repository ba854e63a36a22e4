"""Config tree: defaults, YAML, dotted overrides and every error path."""

import dataclasses

import pytest

from dlma_ray.config.tree import Config, ConfigError, config_diff, load_config
from dlma_ray.views.config_reference import reference_markdown


def test_defaults_run_the_embedded_model():
    cfg = load_config()
    assert cfg.model.path == "builtin:smollm2-135m-instruct"
    assert cfg.model.trust_remote_code is False
    assert (cfg.train.beta, cfg.train.gamma, cfg.train.clip_low, cfg.train.clip_high) == (0.1, 0.2, -40.0, 40.0)
    assert cfg.run.dir == "runs/demo" and cfg.rounds.count == 2


def test_every_field_is_documented():
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            assert f.metadata.get("doc"), f"{section.name}.{f.name} has no doc"
    ref = reference_markdown()
    assert "`train.gamma`" in ref and "`resources.num_engines`" in ref


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  beta: 0.5\n  method: rlcd\nrounds:\n  count: 3\n")
    cfg = load_config(str(path), ["train.beta=0.2", "run.dir=/tmp/x", "train.lr=1e-4", "pair.style=raw"])
    assert cfg.train.beta == 0.2 and cfg.train.method == "rlcd" and cfg.rounds.count == 3
    assert cfg.run.dir == "/tmp/x" and cfg.train.lr == pytest.approx(1e-4) and cfg.pair.style == "raw"


def test_int_accepted_for_float_and_stored_as_float():
    cfg = load_config(None, ["train.beta=1"])
    assert isinstance(cfg.train.beta, float)


@pytest.mark.parametrize("override, expected", [
    ("train.betta=0.1", r"train\.betta: unknown key; allowed keys here: method, beta"),
    ("trian.beta=0.1", r"trian: unknown key; allowed keys here: model, data"),
    ("train.method=ppo", r"train\.method: 'ppo' is not a method; expected one of dlma, rlcd, dpo"),
    ("train.method=self_contrast;self_contrast.num_negatives=7", r"self_contrast\.num_negatives: 7 can never be met"),
    ("train.beta=high", r"train\.beta: 'high' is not a float"),
    ("rounds.count=0", r"rounds\.count: 0 is out of range; expected a int >= 1"),
    ("train.zero_stage=4", r"train\.zero_stage: 4 is not allowed; expected one of 0, 1, 2, 3"),
    ("train.precision=bf16;train.zero_stage=0", r"train\.precision: bf16 needs train\.zero_stage 1, 2 or 3"),
    ("model.trust_remote_code=1", r"model\.trust_remote_code: 1 is not a bool"),
    ("rounds.count=2.5", r"rounds\.count: 2.5 is not a int"),
    ("data.heldout_fraction=0.9", r"data\.heldout_fraction: 0.9 is out of range; expected a float in \[0.0, 0.5\]"),
    ("train.clip_low=50", r"train\.clip_low: 50.0 is above train\.clip_high"),
    ("train.global_batch_size=7", r"train\.global_batch_size: 7 is not a multiple"),
    ("pair.name=polite", r"pair\.name: 'polite' is not a built-in pair; allowed: harmless, helpful, concise"),
    ("pair.positive=be nice", r"pair\.positive / pair\.negative: give both"),
    ("data.max_prompt_tokens=600", r"data\.max_prompt_tokens: 600 must be below train\.max_length"),
    ("train=3", r"train: expected a mapping"),
    ("no_equals_sign", r"expected the form section\.key=value"),
])
def test_error_paths_name_the_key_and_what_is_allowed(override, expected):
    """As the command line checks a config: the fields, then the method's name and its own settings."""
    from dlma_ray import methods

    with pytest.raises(ConfigError, match=expected):
        methods.check(load_config(None, override.split(";")))


def test_several_errors_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.betta=1", "rounds.count=-1"])
    assert "train.betta" in str(err.value) and "rounds.count" in str(err.value)


@pytest.mark.parametrize("overrides, expected", [
    ("resources.gpus_per_engine=1;resources.tensor_parallel_size=2",
     r"resources\.gpus_per_engine: 1 must equal resources\.tensor_parallel_size \(2\).*allowed: gpus_per_engine = "
     r"tensor_parallel_size, or a fraction below 1 with tensor_parallel_size 1"),
    ("resources.gpus_per_engine=2;resources.tensor_parallel_size=1",
     r"resources\.gpus_per_engine: 2 must equal resources\.tensor_parallel_size \(1\)"),
    ("resources.gpus_per_engine=0.5;resources.tensor_parallel_size=2",
     r"resources\.gpus_per_engine: 0\.5 must equal resources\.tensor_parallel_size \(2\)"),
    ("resources.gpus_per_engine=0.6;generation.gpu_memory_utilization=0.85;eval.enabled=false",
     r"generation\.gpu_memory_utilization: 0\.85 is above the engine's GPU share \(resources\.gpus_per_engine "
     r"0\.6\).*expected gpu_memory_utilization <= 0\.6"),
    ("resources.gpus_per_engine=0.5;generation.gpu_memory_utilization=0.4;resources.num_engines=2;eval.enabled=false",
     r"resources\.gpus_per_engine: 0\.5 puts 2 engines on one GPU and resources\.num_engines \(2\) start together.*"
     r"Allowed: gpus_per_engine above 0\.5 \(one engine per GPU\), or num_engines 1 with eval\.enabled false"),
    ("resources.gpus_per_engine=0.3;generation.gpu_memory_utilization=0.25",
     r"resources\.gpus_per_engine: 0\.3 puts 3 engines on one GPU and eval\.enabled starts the policy's and pi_0's "
     r"engines together"),
])
def test_engine_gpu_rules_name_the_keys(overrides, expected):
    """Issue 22, defect 9: an engine's GPUs, GPUs shared by engines that start together, and its memory share."""
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides.split(";"))


@pytest.mark.parametrize("overrides", [
    "resources.gpus_per_engine=2;resources.tensor_parallel_size=2",
    "resources.gpus_per_engine=1",
    "resources.gpus_per_engine=0.6;generation.gpu_memory_utilization=0.5",
    "resources.gpus_per_engine=0.5;generation.gpu_memory_utilization=0.45;eval.enabled=false",
    "resources.tensor_parallel_size=2",  # CPU engines (no GPU): not this rule's business
])
def test_engine_gpu_settings_that_work_pass(overrides):
    load_config(None, overrides.split(";"))


def test_custom_pair_is_accepted():
    cfg = load_config(None, ["pair.name=polite", "pair.positive=Be polite.", "pair.negative=Be rude."])
    assert cfg.pair.positive == "Be polite."


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    top = tmp_path / "top.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(str(top))


def test_config_diff_names_keys():
    a, b = load_config().to_dict(), load_config(None, ["train.beta=0.3"]).to_dict()
    assert config_diff(a, b) == ["train.beta: 0.1 -> 0.3"]


def test_config_reference_doc_is_current():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[3] / "docs" / "reference" / "config.md"
    from dlma_ray.views.config_reference import config_reference

    assert doc.read_text() == config_reference(), "stale: regenerate with `make references`"
