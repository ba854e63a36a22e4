"""Context distillation: supervised fine-tuning on y+ (the answer under the positive prompt) after the plain
context. No reference model: the score stage only checks lengths."""

from __future__ import annotations

from dlma_ray.methods.base import Method, float_column, register


@register
class ContextDistillation(Method):
    name = "context_distillation"
    order = 40
    scoring = "none"
    summary = "SFT on y+ after the plain context (the rejected side is unused)"

    def loss(self, model, tokenizer, rows, train, device):
        from dlma_ray.core.losses import sft_loss
        from dlma_ray.model.logprobs import encode_response, pad_id, response_logprobs, side_ids

        enc = [encode_response(tokenizer, str(c), r, train["max_length"]) for c, r in
               zip(rows["plain_context"], side_ids(tokenizer, rows, "chosen"))]
        tokens = float_column([len(r) for _, r in enc], device)
        logp = response_logprobs(model, enc, pad_id(tokenizer), device, train.get("packing", True))
        loss = sft_loss(logp, tokens)
        return loss, {"loss": loss.detach(), "tokens_per_response": tokens.mean(), "logps_chosen": logp.detach().mean()}
