"""The score stage's workload for the packing tests (tests/unit/model/test_packing.py on the tiny model,
tests/e2e/test_packing_smollm2.py on the real SmolLM2): six sequences per prompt, finished and unfinished responses."""

from conftest import eot_ids
from dlma_ray.core.prompts import BUILTIN_PAIRS, ContrastiveRenderer

QUESTIONS = ["How do I boil an egg?", "Hi", "Tell me a long story about a dragon who cooks soup.", "What's 2+2?"]
ANSWERS = ["Put it in boiling water for about nine minutes.", "Hello!", "Once upon a time a dragon made soup.",
           "4"]


def six_sequences(tokenizer, chats, answers):
    """The score stage's sequences: y+ and y- (finished: end-of-turn appended; unfinished: cut, none)
    after the positive, negative and plain context of every prompt."""
    r = ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["concise"])
    eot = eot_ids(tokenizer, r.end_of_turn)
    contexts, responses = [], []
    for k, chat in enumerate(chats):
        good = tokenizer(answers[k], add_special_tokens=False)["input_ids"] + eot  # finished
        bad = tokenizer(answers[(k + 1) % len(answers)], add_special_tokens=False)["input_ids"][:5]  # cut
        for ctx in (r.positive(chat), r.negative(chat), r.plain(chat)):
            contexts += [ctx, ctx]
            responses += [good, bad]
    return contexts, responses
