"""Guesses from a small draft model run autoregressively with its own KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from specdecode.kv import CachedModel, forward_together, next_logits_together
from specdecode.proposers.base import CountsDraftPasses, Proposal
from specdecode.sampling import Warp, check_finite, logits_to_probs, sample

if TYPE_CHECKING:
    from specdecode.rules import TokenRules


def draw(
    logits: torch.Tensor,
    warp: Warp,
    generator: torch.Generator | None,
    rules: TokenRules | None = None,
    guessed: Sequence[int] = (),
) -> tuple[int, torch.Tensor | None]:
    """One draft guess from logits [V] after the row's tokens and `guessed`: (token, the distribution it was
    drawn from; None when greedy), under the row's `rules` then `warp`."""
    check_finite(logits, "draft model")
    if rules is not None:
        logits = rules.apply(logits[None], [guessed])[0]
    if warp.greedy:
        return int(logits.argmax()), None
    probs = logits_to_probs(logits, warp)
    return int(sample(probs, generator)), probs


class DraftModelProposer(CountsDraftPasses):
    """K draft passes of one token each; the K-th guess is never fed back (saves a pass)."""

    def __init__(self, model: PreTrainedModel, vocab_size: int, cache: CachedModel | None = None) -> None:
        self.draft = cache if cache is not None else CachedModel(model, vocab_size)

    def reset(self) -> None:
        self.draft.rollback(0)

    def fork(self) -> DraftModelProposer:
        return DraftModelProposer(self.draft.model, self.draft.vocab_size, self.draft.fork())

    def guess_cost(self, rows: int = 1) -> float | None:
        return self.draft.pass_cost(rows)

    def unread(self, tokens: Sequence[int]) -> int:
        return self.draft.unread(tokens)

    def propose(
        self,
        tokens: Sequence[int],
        k: int,
        warp: Warp,
        generator: torch.Generator | None,
        rules: TokenRules | None = None,
    ) -> Proposal:
        return propose_together([self], [tokens], [k], [warp], [generator], [rules])[0]


def propose_together(
    proposers: Sequence[DraftModelProposer],
    tokens: Sequence[Sequence[int]],
    ks: Sequence[int],
    warps: Sequence[Warp],
    generators: Sequence[torch.Generator | None],
    rules: Sequence[TokenRules | None],
) -> list[Proposal]:
    """Each fork b guesses ks[b] tokens after tokens[b], every draft pass shared by the rows still
    guessing; row b draws exactly what it would alone (its own generator, its own row's bits)."""
    caches = [p.draft for p in proposers]
    logits = [rows[-1] for rows in next_logits_together(caches, tokens, [[]] * len(caches), [None] * len(caches))]
    guesses: list[list[int]] = [[] for _ in proposers]
    dists: list[list[torch.Tensor]] = [[] for _ in proposers]
    for i in range(max(ks, default=0)):
        for b, k in enumerate(ks):
            if i < k:
                token, probs = draw(logits[b], warps[b], generators[b], rules[b], guesses[b])
                guesses[b].append(token)
                dists[b] += [] if probs is None else [probs]
        more = [b for b, k in enumerate(ks) if i + 1 < k]  # the K-th guess is never fed back
        if more:
            fed = forward_together(
                [caches[b] for b in more], [guesses[b][-1:] for b in more], [1] * len(more), [None] * len(more)
            )
            for b, rows in zip(more, fed, strict=True):
                logits[b] = rows[-1]
    return [Proposal(g, torch.stack(d) if d else None) for g, d in zip(guesses, dists, strict=True)]
