"""Model references: the embedded default resolves offline, once, safely; paths and hub names pass through."""

import os

import pytest

from dlma_ray.model import loading as models


def test_builtin_resolves_to_a_complete_safetensors_folder(smol_dir):
    names = set(os.listdir(smol_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names), "safetensors only, no pickle"
    assert models.resolve_model_path("builtin:smollm2-135m-instruct") == smol_dir  # cached: same folder


def test_unknown_builtin_names_the_available_ones():
    with pytest.raises(ValueError, match="builtin:smollm2-135m-instruct"):
        models.resolve_model_path("builtin:gpt-9")


def test_local_paths_become_absolute_and_hub_names_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    assert models.resolve_model_path("m") == str(tmp_path / "m")
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_model_revision_pins_every_loader_to_one_snapshot(monkeypatch, tmp_path):
    """`model.revision` reaches every loader through one reference: the round's policy and reference at round 0,
    the driver's tokenizer, the evaluation's pi_0; each resolves to that revision's snapshot folder."""
    import huggingface_hub

    from dlma_ray.config.tree import load_config
    from dlma_ray.run.layout import RunLayout
    from dlma_ray.model.loading import pinned, resolve_model_path
    from dlma_ray.stages.round import Round, initial_model

    calls = []

    def snapshot_download(repo_id, revision, allow_patterns):  # no hub here: record what would be fetched
        calls.append((repo_id, revision))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    cfg = load_config(None, ["model.path=HuggingFaceTB/SmolLM2-360M-Instruct", "model.revision=a1b2c3",
                             "rounds.reference=initial", f"run.dir={tmp_path}"])
    r0, r1 = Round(cfg, RunLayout(str(tmp_path)), 0), Round(cfg, RunLayout(str(tmp_path)), 1)
    ref = "HuggingFaceTB/SmolLM2-360M-Instruct@a1b2c3"
    assert r0.policy == r0.reference == r1.reference == initial_model(cfg) == ref
    assert r1.policy == str(tmp_path / "round_0" / "policy")  # trained policies are folders: no revision
    assert resolve_model_path(ref) == str(tmp_path / "snapshot")
    assert calls == [("HuggingFaceTB/SmolLM2-360M-Instruct", "a1b2c3")]
    # without a revision, and for anything that is not a hub name, the reference is unchanged
    assert pinned("org/model", "") == "org/model" and pinned("builtin:smollm2-135m-instruct", "v1").startswith("builtin:")
    assert pinned(str(tmp_path), "v1") == str(tmp_path) and pinned("s3://b/p", "v1") == "s3://b/p"
    assert resolve_model_path("org/model") == "org/model" and len(calls) == 1
