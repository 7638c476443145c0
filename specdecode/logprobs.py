"""Log-probabilities of chosen tokens and their most likely alternatives, from the target's logits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class TokenLogprob:
    """One token's log-probability under the target (after the request's `specdecode.rules`, before
    temperature and truncation) and the `top` most likely tokens at its position, most likely first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], top: int) -> list[TokenLogprob]:
    """logits [N, V] at the positions of `tokens` [N] -> one TokenLogprob each, with `top` alternatives."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)  # [N, V]
    chosen = logprobs[torch.arange(len(tokens)), torch.tensor(list(tokens), dtype=torch.long)].tolist()
    best = torch.topk(logprobs, top, dim=-1) if top else None
    return [
        TokenLogprob(
            token,
            value,
            [] if best is None else list(zip(best.indices[i].tolist(), best.values[i].tolist(), strict=True)),
        )
        for i, (token, value) in enumerate(zip(tokens, chosen, strict=True))
    ]
