"""Checking a config: each value against its field's type, choices and bounds, then the rules between fields.

`dlma_ray.config.tree` builds its tree with ``build_dataclass`` and adds ``cross_field_errors``; every problem is
collected and reported at once as one ``ConfigError``, each naming its key path and what is allowed. This
module does not import the tree: it reads the dataclasses it is given.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import yaml

from dlma_ray.core.dicts import config_diff  # noqa: F401 - re-exported by config.tree
from dlma_ray.core.prompts import BUILTIN_PAIRS


class ConfigError(ValueError):
    """A config problem: names the key path and the allowed values."""


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def coerce_value(value: Any, tp: Any, meta: dict, path: str, errors: list[str]) -> Any:
    """Return ``value`` as type ``tp``, or record an error naming ``path`` and what is allowed."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        errors.append(f"{path}: {value!r} is not allowed; expected {type_name(tp)}")
        return None
    if typing.get_origin(tp) is dict:  # dict[str, float]: custom Ray resources
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                  and not isinstance(v, bool) and v >= 0 for k, v in value.items()):
            errors.append(f"{path}: {value!r} is not a mapping of names to non-negative numbers, e.g. {{node2: 1}}")
            return None
        return {k: float(v) for k, v in value.items()}
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            errors.append(f"{path}: {value!r} is not a {type_name(tp)}; write it as a YAML list, e.g. [a, b]")
            return None
        return value
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `5e-7` (no dot) as a string: accept any text float() accepts.
        try:
            value = float(value)
        except ValueError:
            pass
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        errors.append(f"{path}: {value!r} is not a {type_name(tp)}")
        return None
    if tp is float:
        value = float(value)
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo or hi is not None and value > hi:
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        errors.append(f"{path}: {value!r} is out of range; expected a {type_name(tp)} {bounds}")
    return value


def build_dataclass(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{prefix or '<root>'}: expected a mapping of keys, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            errors.append(f"{path}: unknown key; allowed keys here: {', '.join(fields)}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value, path, errors)
        else:
            coerced = coerce_value(value, tp, dict(fields[key].metadata), path, errors)
            if coerced is not None:
                kwargs[key] = coerced
    return cls(**kwargs)


# Fields that may hold a URI: credentials there would be copied into state.json, the tables and the logs.
URI_FIELDS = ("run.dir", "model.path", "data.source", "eval.preference_pairs", "eval.prompts", "eval.neutral_text",
              "eval.judge_model", "eval.judge_url", "self_contrast.embedding_model")


def _check_no_credentials(cfg: Any, errors: list[str]) -> None:
    from urllib.parse import urlsplit

    for path in URI_FIELDS:
        section, key = path.split(".")
        value = str(getattr(getattr(cfg, section), key))
        if "://" not in value:
            continue
        parts = urlsplit(value)
        if parts.username or parts.password or "@" in parts.netloc:
            errors.append(f"{path}: the URI carries credentials (user:secret@host); they would be written to "
                          "state.json, the tables and the logs. Remove them and use the standard credential "
                          "chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE, ~/.aws/credentials, "
                          "an instance role; eval.judge_api_key_env for the judge endpoint)")


def engine_gpu_errors(res: Any, gen: Any, evaluates: bool) -> list[str]:
    """How engines sit on GPUs (``res``: `resources`, ``gen``: `generation`; ``evaluates``: `eval.enabled`).

    vLLM takes `gpu_memory_utilization` of the WHOLE device and sizes its KV cache from the device's free memory
    while it starts, so (a) an engine needs exactly the GPUs it shards over (a Ray actor holding fewer makes vLLM
    raise or wait forever for the rest; more sit idle), (b) two engines starting on one GPU each count the other's
    weights as their own (vLLM issue 55827: KV cache shrunk, or "No available memory for the cache blocks"), and
    (c) an engine on a fraction of a GPU must not take more of its memory than Ray lent it."""
    g, tp, util = res.gpus_per_engine, res.tensor_parallel_size, gen.gpu_memory_utilization
    if g <= 0:
        return []
    if g >= 1 or tp > 1:
        if g != tp:
            return [f"resources.gpus_per_engine: {g:g} must equal resources.tensor_parallel_size ({tp}): an engine "
                    "needs exactly the GPUs it shards the model over (vLLM raises, or waits forever, on fewer); "
                    "allowed: gpus_per_engine = tensor_parallel_size, or a fraction below 1 with "
                    "tensor_parallel_size 1"]
        return []
    errors = []
    if util > g:
        errors.append(f"generation.gpu_memory_utilization: {util:g} is above the engine's GPU share "
                      f"(resources.gpus_per_engine {g:g}); vLLM takes that fraction of the whole GPU, memory Ray "
                      f"lends to other actors: expected gpu_memory_utilization <= {g:g}")
    together = [why for why, on in (
        (f"resources.num_engines ({res.num_engines}) start together", res.num_engines > 1),
        ("eval.enabled starts the policy's and pi_0's engines together", evaluates)) if on]
    if g <= 0.5 and together:
        errors.append(f"resources.gpus_per_engine: {g:g} puts {int(1 // g)} engines on one GPU and "
                      f"{' and '.join(together)}: each engine would count the other's memory as its own (vLLM "
                      "sizes its KV cache from the GPU's free memory while it starts). Allowed: gpus_per_engine "
                      "above 0.5 (one engine per GPU), or num_engines 1 with eval.enabled false")
    return errors


def cross_field_errors(cfg: Any) -> list[str]:
    """What is wrong between fields of a built ``Config`` (each value alone has passed ``coerce_value``)."""
    errors: list[str] = []
    _check_no_credentials(cfg, errors)
    errors += engine_gpu_errors(cfg.resources, cfg.generation, cfg.eval.enabled)
    t = cfg.train
    if t.precision == "bf16" and t.zero_stage == 0:  # DeepSpeed 0.19 refuses fp32 accumulation without ZeRO
        errors.append("train.precision: bf16 needs train.zero_stage 1, 2 or 3 (without ZeRO DeepSpeed sums gradients "
                      "in bf16, which drops small contributions); allowed with zero_stage 0: fp32, fp16")
    if t.clip_low > t.clip_high:
        errors.append(f"train.clip_low: {t.clip_low} is above train.clip_high ({t.clip_high}); expected L <= U")
    if cfg.data.max_prompt_tokens >= t.max_length:
        errors.append(f"data.max_prompt_tokens: {cfg.data.max_prompt_tokens} must be below train.max_length "
                      f"({t.max_length}) to leave room for the response")
    g = cfg.generation
    if cfg.data.max_prompt_tokens + g.max_new_tokens > g.max_model_len:
        errors.append(f"generation.max_model_len: {g.max_model_len} cannot hold data.max_prompt_tokens "
                      f"({cfg.data.max_prompt_tokens}) + generation.max_new_tokens ({g.max_new_tokens}); raise it "
                      "or lower one of the two")
    if t.global_batch_size % t.micro_batch_size:
        errors.append(f"train.global_batch_size: {t.global_batch_size} is not a multiple of "
                      f"train.micro_batch_size ({t.micro_batch_size})")
    from dlma_ray.run.tracking import TRACKERS  # late import: tracking imports nothing from here

    unknown = [n for n in cfg.run.trackers if n not in TRACKERS]
    if unknown:
        errors.append(f"run.trackers: {', '.join(map(repr, unknown))} is not a tracker; allowed: "
                      f"{', '.join(TRACKERS)}")
    if t.lora_rank and not [m for m in t.lora_target_modules.split(",") if m.strip()]:
        errors.append("train.lora_target_modules: empty; name the linear layers that get LoRA adapters")
    if t.lora_rank and t.lora_dropout >= 1.0:
        errors.append(f"train.lora_dropout: {t.lora_dropout} drops every input; expected below 1")
    d = cfg.data
    for key in ("data_dir", "revision"):
        if getattr(d, key) and not d.source.startswith("hf:"):
            errors.append(f"data.{key}: {getattr(d, key)!r} applies to an `hf:` data.source only (got "
                          f"{d.source!r}); empty it, or read the dataset as hf:<name or folder>")
    p = cfg.pair
    if bool(p.positive) != bool(p.negative):
        errors.append("pair.positive / pair.negative: give both system messages of your own pair, or neither")
    if not p.positive:
        if p.name not in BUILTIN_PAIRS:
            errors.append(f"pair.name: {p.name!r} is not a built-in pair; allowed: {', '.join(BUILTIN_PAIRS)}, "
                          "or set pair.positive and pair.negative for a pair of your own")
    return errors


# ---------------------------------------------------------------- dotted overrides and differences of config dicts

def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested dict; values are parsed as YAML scalars."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected the form section.key=value, e.g. train.beta=0.2")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data
