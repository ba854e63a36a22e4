"""Reward and cost models as answer judges: safe-rlhf's score models and HF sequence-classification heads.

    LlamaForScore        safe-rlhf's score model (Beaver-7B reward / cost) rebuilt on transformers' LlamaModel:
                         a `score_head` linear layer over the last hidden state; the score of a sequence is the
                         head's output at its last non-pad token (safe-rlhf's "end score")
    is_score_model       whether a folder's config.json is a safe-rlhf score model
    load_judge_model     a folder -> (model, tokenizer, kind): "score" or "classification"; safetensors only,
                         never remote code
    safe_rlhf_text       one dialogue as safe-rlhf trained its score models on it
    answer_scores        each (dialogue, answer)'s score under either kind
    reward_model_scores  an HF sequence-classification reward model's score of (dialogue, answer)

safe-rlhf's checkpoints: `model.*` (a LlamaModel), `score_head.weight` (and `score_head.bias` when the
config's `bias` is true), `normalizer.{mean,var,count}`; config keys `score_dim` (1), `bias`, `score_type`
("reward", "cost" or "critic"), `do_normalize`, `normalizer_type`, `mean`, `var`. A cost model scores
harm: lower is better (the caller flips the sign: dlma_ray.evaluation.headtohead.score_verdicts).
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel, LlamaPreTrainedModel

from dlma_ray.core.prompts import dialogue_text

SCORE_ARCHITECTURES = ("LlamaForScore", "LlamaModelForScore")


class LlamaForScore(LlamaPreTrainedModel):
    """safe-rlhf's `LlamaForScore`: the same weight names, so its safetensors load as they are."""

    _keys_to_ignore_on_load_missing = [r"lm_head\.weight"]

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        dim = int(getattr(config, "score_dim", 1) or 1)
        self.score_head = nn.Linear(config.hidden_size, dim, bias=bool(getattr(config, "bias", False)))
        # safe-rlhf keeps its running statistics as buffers; normalising is monotone per dimension (a positive
        # scale, or a shift too for rewards), so it never changes a verdict, but a score read alone matches.
        self.register_buffer("normalizer_mean", torch.as_tensor(getattr(config, "mean", None) or [0.0] * dim))
        self.register_buffer("normalizer_var", torch.as_tensor(getattr(config, "var", None) or [1.0] * dim))
        self.post_init()

    def end_scores(self, input_ids, attention_mask) -> torch.Tensor:
        """(batch, score_dim) scores at each row's last real token; left or right padding alike."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                            use_cache=False).last_hidden_state
        # The last position the mask keeps, wherever the padding sits.
        idx = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        end = (attention_mask.bool() * (idx + 1)).argmax(-1)
        scores = self.score_head(hidden[torch.arange(len(end), device=end.device), end]).float()
        if getattr(self.config, "do_normalize", False):
            std = self.normalizer_var.float().sqrt() + 1e-8
            shift = self.normalizer_mean.float() if getattr(self.config, "score_type", "reward") == "reward" else 0.0
            scores = (scores - shift) / std
        return scores


def read_config(path: str) -> dict:
    with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
        return json.load(fh)


def is_score_model(path: str) -> bool:
    cfg = read_config(path)
    return bool(set(cfg.get("architectures") or []) & set(SCORE_ARCHITECTURES)) or "score_type" in cfg


def score_type(path: str) -> str:
    """"reward", "cost" or "critic" as the folder's config says ("reward" for a classification head)."""
    return read_config(path).get("score_type", "reward") if is_score_model(path) else "reward"


def safetensors_state(path: str) -> dict:
    """Every tensor of a folder's safetensors weights, one file or sharded (by its index); no pickle."""
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(os.path.join(path, name)))
    return state


def load_score_model(path: str, dtype: torch.dtype = torch.float32) -> LlamaForScore:
    """A safe-rlhf score model from its folder (safetensors, one file or sharded), in eval mode."""
    config = LlamaConfig.from_pretrained(path)
    with torch.device("meta"):
        model = LlamaForScore(config)
    state = safetensors_state(path)
    renamed = {"normalizer.mean": "normalizer_mean", "normalizer.var": "normalizer_var"}
    state = {renamed.get(k, k): v for k, v in state.items() if k != "normalizer.count"}
    for name in ("normalizer_mean", "normalizer_var"):
        state.setdefault(name, getattr(model, name).new_tensor(
            getattr(config, "mean" if name.endswith("mean") else "var", None)
            or [0.0 if name.endswith("mean") else 1.0] * model.score_head.out_features, device="cpu"))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"{path} is not a LlamaForScore checkpoint: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    # Buffers not in the file (rotary frequencies) were made on the meta device: make them again for real.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.to(dtype).eval()


def load_judge_model(path: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, kind) for a reward/cost model folder; kind "score" (safe-rlhf) or "classification"."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if is_score_model(path):
        return load_score_model(path, dtype), tok, "score"
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False, use_safetensors=True,
                                                               dtype=dtype).eval()
    return model, tok, "classification"


def safe_rlhf_text(messages, answer: str, eos: str) -> str:
    """safe-rlhf's training format: "BEGINNING OF CONVERSATION: USER: q ASSISTANT:a" then the EOS text;
    earlier assistant turns end in EOS too; a system message is put before the first user turn's text."""
    out, system = ["BEGINNING OF CONVERSATION: "], ""
    for m in messages:
        if m["role"] == "system":
            system += m["content"].strip() + " "
        elif m["role"] == "user":
            out.append(f"USER: {system}{m['content']} ")
            system = ""
        else:
            out.append(f"ASSISTANT:{m['content']}{eos} ")
    return "".join(out) + f"ASSISTANT:{answer}{eos}"


@torch.no_grad()
def answer_scores(model, tokenizer, kind: str, chats, answers: list[str], batch_size: int = 8,
                  max_length: int = 2048) -> list[float]:
    """Each (dialogue, answer)'s score: a score model's end score (dimension 0), or a classification head's
    (``reward_model_scores``)."""
    if kind != "score":
        return reward_model_scores(model, tokenizer, chats, answers, batch_size)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"  # a cut keeps the answer's end, where the score is read
    texts = [safe_rlhf_text(c, a, tokenizer.eos_token or "") for c, a in zip(chats, answers)]
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length).to(device)
        out += model.end_scores(enc["input_ids"], enc["attention_mask"])[:, 0].tolist()
    return out


@torch.no_grad()
def reward_model_scores(model, tokenizer, chats, answers: list[str], batch_size: int = 8) -> list[float]:
    """Scalar score of each (dialogue, answer) under an HF sequence-classification reward model.

    One label: its logit. Several: last minus first (label 1 = "preferred" in two-label models).
    The text is the reward model's own chat template when it has one, else "Human: / Assistant:".
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # HF's classification heads pool the last token that is not the config's pad id, at positions counted from
    # the first column: only right padding with the tokenizer's own pad id gives each row its unpadded score.
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    texts = []
    for chat, answer in zip(chats, answers):
        full = list(chat) + [{"role": "assistant", "content": answer}]
        texts.append(tokenizer.apply_chat_template(full, tokenize=False) if getattr(tokenizer, "chat_template", None)
                     else dialogue_text(full))
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=min(getattr(tokenizer, "model_max_length", 4096), 4096)).to(device)
        logits = model(**enc).logits.float()
        out += (logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1] - logits[:, 0]).tolist()
    return out

