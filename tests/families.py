"""Tiny stand-ins of real model families: each family's chat template, BOS / EOS / end-of-turn tokens and BOS
behaviour, on a BPE tokenizer trained here on a few kB (`tokenizers`), with a tiny random Llama on top.

    tok = build_tokenizer(FAMILIES["llama2"])          # a transformers tokenizer, in memory
    path = make_family_model(FAMILIES["llama2"], dir)  # tokenizer + tiny model + generation_config, saved

What is real: the chat template strings (verbatim; each cites where it was read), which tokens are special, which
family's tokenizer puts BOS before a text (HF tokenizer.json post-processor: Llama-2, Llama-3, Mistral, Gemma),
the EOS and the token that ends an assistant turn. What is not: the vocabulary (a few hundred merges) and the
weights. Llama-2 / Mistral / Gemma are SentencePiece models, here a BPE with the same `▁` pre-tokenizer;
Llama-3 / Qwen2.5 are byte-level BPEs, here too.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

# meta-llama/Llama-2-*-chat-hf tokenizer_config.json chat_template, as listed in llama.cpp's
# tests/test-chat-template.cpp and in mistral.rs's chat template tests ("meta-llama/Llama-2-13b-chat-hf")
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# meta-llama/Meta-Llama-3-8B-Instruct (current revision, with the add_generation_prompt guard), as embedded in
# its GGUF: huggingface/huggingface.js packages/ollama-utils/src/chat-template-automap.ts, "library/llama3:8b"
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# mistralai/Mistral-7B-Instruct-v0.2 (same as Mixtral-8x7B-Instruct-v0.1): llama.cpp tests/test-chat-template.cpp
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Qwen/Qwen2.5-*-Instruct tokenizer_config.json chat_template (the tools branch included), as reproduced in public
# code found by the `search` tool (corpus "code", "qwen2_5" chat template)
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

# google/gemma-2-2b-it (gemma-7b-it has the same): llama.cpp models/templates/google-gemma-2-2b-it.jinja.
# Gemma-3-it writes the same BOS and turn markers (and folds a system message into the first user turn itself).
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    chat_template: str
    specials: tuple[str, ...]  # every control token, in id order (the first ones get the ids the real model has)
    bos: str | None
    eos: str
    end_of_turn: str  # the token that ends an assistant turn (what the model samples to stop)
    adds_bos: bool  # the tokenizer puts BOS before every text encoded with special tokens
    pre_tokenizer: str  # "metaspace" (SentencePiece `▁`, dummy prefix), "gemma" (`▁`, none), "bytelevel"
    unk: str | None = None
    pad: str | None = None


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama2", LLAMA2_TEMPLATE, ("<unk>", "<s>", "</s>"), "<s>", "</s>", "</s>", True, "metaspace",
           unk="<unk>"),
    Family("llama3", LLAMA3_TEMPLATE, ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                       "<|end_header_id|>", "<|eot_id|>"),
           "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", True, "bytelevel"),
    Family("mistral", MISTRAL_TEMPLATE, ("<unk>", "<s>", "</s>"), "<s>", "</s>", "</s>", True, "metaspace",
           unk="<unk>"),
    Family("qwen2.5", QWEN25_TEMPLATE, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>",
           "<|im_end|>", False, "bytelevel", pad="<|endoftext|>"),
    Family("gemma2", GEMMA2_TEMPLATE, ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
           "<bos>", "<eos>", "<end_of_turn>", True, "gemma", unk="<unk>", pad="<pad>"),
)}

_WORDS = ("you are an assistant your responses answers are helpful harmless honest short precise long vague "
          "law-abiding ethical inoffensive illegal unethical toxic giving a response question tell me more about "
          "the weather today how do i cook rice what is capital of france paris explain why sky blue thank "
          "please sure here it can not help with that one two three system user model instruction reply").split()


def corpus(n_lines: int = 120) -> list[str]:
    """A few kB of text: the pairs' vocabulary in varied sentences, punctuation and digits."""
    lines = []
    for i in range(n_lines):
        words = [_WORDS[(i * 7 + j * 13) % len(_WORDS)] for j in range(6 + i % 9)]
        lines.append(" ".join(words).capitalize() + (", " if i % 3 else ". ") + f"({i % 10}) " +
                     ["Why?", "Yes!", "OK:", "No - no.", "'quoted'"][i % 5])
    return lines


def build_tokenizer(family: Family, vocab_size: int = 600):
    """A transformers tokenizer with the family's template, special tokens and BOS behaviour."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=family.unk))
    if family.pre_tokenizer == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        scheme = "first" if family.pre_tokenizer == "metaspace" else "never"
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme, split=False)
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=scheme, split=False)
        alphabet = list(string.printable.strip()) + ["\u2581", "\n"]  # "\n": byte fallback in the real ones
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(family.specials),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    if family.adds_bos:
        bos_id = tok.token_to_id(family.bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{family.bos} $A", pair=f"{family.bos} $A $B:1",
                                                           special_tokens=[(family.bos, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=family.bos, eos_token=family.eos,
                                   unk_token=family.unk, pad_token=family.pad, chat_template=family.chat_template)


def make_family_model(family: Family, out_dir: str, seed: int = 0, layers: int = 1) -> str:
    """The family's tokenizer with a tiny random Llama (dlma_ray.model.tiny.make_tiny_model) saved to ``out_dir``;
    its generation_config stops at the end-of-turn token as the real model's does."""
    from dlma_ray.model.tiny import make_tiny_model

    tok = build_tokenizer(family)
    make_tiny_model(tok, out_dir, seed=seed, layers=layers)
    import json
    from pathlib import Path

    stops = sorted({tok.convert_tokens_to_ids(family.eos), tok.convert_tokens_to_ids(family.end_of_turn)})
    config = Path(out_dir, "generation_config.json")
    gen = json.loads(config.read_text()) if config.exists() else {}
    gen.update(eos_token_id=stops if len(stops) > 1 else stops[0],
               bos_token_id=tok.bos_token_id)
    config.write_text(json.dumps(gen, indent=2))
    return out_dir
