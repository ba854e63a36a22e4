"""A tiny, randomly initialised causal LM on a real tokenizer, for tests and benchmarks."""

from __future__ import annotations


def make_tiny_model(tokenizer_source, out_dir: str, seed: int = 0, layers: int = 2) -> str:
    """Write a small Llama (hidden 128, head dim 64) with ``tokenizer_source``'s tokenizer to ``out_dir``
    (a folder or hub id, or a tokenizer object such as tests/families.py builds)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = (AutoTokenizer.from_pretrained(tokenizer_source) if isinstance(tokenizer_source, str)
                 else tokenizer_source)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
