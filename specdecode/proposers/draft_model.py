"""Guesses from a small draft model run autoregressively with its own KV cache."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from specdecode.kv import CachedModel
from specdecode.proposers.base import CountsDraftPasses, Proposal
from specdecode.sampling import Warp, check_finite, logits_to_probs, sample


def draw(logits: torch.Tensor, warp: Warp, generator: torch.Generator | None) -> tuple[int, torch.Tensor | None]:
    """One draft guess from logits [V]: (token, the distribution it was drawn from; None when greedy)."""
    check_finite(logits, "draft model")
    if warp.greedy:
        return int(logits.argmax()), None
    probs = logits_to_probs(logits, warp)
    return int(sample(probs, generator)), probs


class DraftModelProposer(CountsDraftPasses):
    """K draft passes of one token each; the K-th guess is never fed back (saves a pass)."""

    def __init__(self, model: PreTrainedModel, vocab_size: int) -> None:
        self.draft = CachedModel(model, vocab_size)

    def reset(self) -> None:
        self.draft.rollback(0)

    def guess_cost(self) -> float | None:
        return self.draft.pass_cost(1)

    def propose(self, tokens: Sequence[int], k: int, warp: Warp, generator: torch.Generator | None) -> Proposal:
        guesses: list[int] = []
        dists: list[torch.Tensor] = []
        logits = self.draft.next_logits(tokens)[-1]  # [V]
        for i in range(k):
            token, probs = draw(logits, warp, generator)
            guesses.append(token)
            if probs is not None:
                dists.append(probs)
            if i + 1 < k:
                logits = self.draft.forward(guesses[-1:], num_logits=1)[-1]
        return Proposal(guesses, torch.stack(dists) if dists else None)
