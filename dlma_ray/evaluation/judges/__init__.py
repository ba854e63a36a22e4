"""Judges, one file each, in one registry (`judge`: the `Judge` base class and `register`): what labels a method's pairs, what evaluation compares
answers with (`eval.judge`), what `dlma-ray judge` / `compare` take (`--judge`). Importing this package imports every
module of its folder, so a decorated class (`@register`) is all a new judge needs.

    self_reward    R from the policy's contrastive log-probs (DLMA)        pair_logprobs  prefer
    distillation   C under pi_0 per answer                                 pair_logprobs  score
    ab             RLAIF: (A) or (B) from the letters' next-token probs    policy         prefer
    five_point     Self-Rewarding's additive 5-point rubric, in text       policy         score
    reward_model   a reward model's score                                  score_model    score
    cost_model     a cost model's score (lower wins)                       score_model    score
    openai         an OpenAI-compatible endpoint, both orders              endpoint       prefer

The judging is plain functions in each module (no Ray); workers call them where the model already is.
"""

import importlib
import pkgutil

from dlma_ray.evaluation.judges.judge import Judge, JudgeError, check_judge, get, names, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "judge":
        importlib.import_module(f"{__name__}.{_module.name}")

# The functions callers import from the package, wherever their module is.
from dlma_ray.core.prompts import dialogue_text  # noqa: E402
from dlma_ray.evaluation.judges.ab import (  # noqa: E402
    ab_preference, judge_prompt, judge_text, letter_token_ids, preference_for_chosen, rlaif_judge, rlaif_summary)
from dlma_ray.evaluation.judges.endpoint import api_key, openai_choice, openai_margins, openai_picks  # noqa: E402

__all__ = ["Judge", "JudgeError", "ab_preference", "api_key", "check_judge", "dialogue_text", "get", "judge_prompt",
           "judge_text", "letter_token_ids", "names", "openai_choice", "openai_margins", "openai_picks",
           "preference_for_chosen", "register", "rlaif_judge", "rlaif_summary"]
