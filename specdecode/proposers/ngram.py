"""Prompt lookup: guess that the text continues as it did after the last earlier occurrence of its tail."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specdecode.proposers.base import CountsDraftPasses, Proposal
from specdecode.sampling import Warp


def ngram_lookup(tokens: torch.Tensor, k: int, n_max: int, n_min: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the last n tokens, n = n_max..n_min.

    tokens: [L] long. Vectorised over positions: O(L * n) tensor work, no Python loop over L.
    """
    length = tokens.shape[0]
    for n in range(min(n_max, length - 1), n_min - 1, -1):
        windows = tokens[: length - 1].unfold(0, n, 1)  # [L-n, n]: every earlier n-gram, not the tail itself
        hits = (windows == tokens[length - n :]).all(-1).nonzero()
        if len(hits):
            start = int(hits[-1, 0]) + n
            return tokens[start : start + k].tolist()
    return []


class NgramProposer:
    """Deterministic guesses from the prompt and the text so far (q = one-hot): no model, no cache."""

    def __init__(self, n_max: int = 4, n_min: int = 1) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {n_min} and {n_max}")
        self.n_max, self.n_min = n_max, n_min
        self.forward_s, self.passes = 0.0, 0

    def reset(self) -> None:
        pass

    def fork(self) -> NgramProposer:
        return self

    def guess_cost(self, rows: int = 1) -> float:
        return 0.0  # a lookup costs well under a millisecond, nothing next to a model pass

    def unread(self, tokens: Sequence[int]) -> int:
        return 0

    def propose(
        self, tokens: Sequence[int], k: int, warp: Warp, generator: torch.Generator | None, rules=None
    ) -> Proposal:
        """Lookup guesses (`rules` do not change them; the step cuts a chain where a grammar refuses it)."""
        return Proposal(ngram_lookup(torch.tensor(tokens), k, self.n_max, self.n_min), None)


class NgramThenDraftProposer(CountsDraftPasses):
    """N-gram lookup first; the draft model where the lookup finds nothing."""

    def __init__(self, ngram: NgramProposer, draft) -> None:
        self.ngram, self.draft = ngram, draft
        self.draft_share = 1.0  # recent fraction of steps the draft served (decayed)

    def reset(self) -> None:
        self.draft.reset()

    def fork(self) -> NgramThenDraftProposer:
        return NgramThenDraftProposer(self.ngram, self.draft.fork())

    def guess_cost(self, rows: int = 1) -> float:
        """The draft's cost per guess times the share of recent steps it served (lookups are free)."""
        return self.draft_share * (self.draft.guess_cost(rows) or 0.0)

    def unread(self, tokens: Sequence[int]) -> int:
        """What the draft has not read, weighted by the share of steps it serves."""
        return round(self.draft_share * self.draft.unread(tokens))

    def propose(
        self, tokens: Sequence[int], k: int, warp: Warp, generator: torch.Generator | None, rules=None
    ) -> Proposal:
        guess = self.ngram.propose(tokens, k, warp, generator)
        self.draft_share = 0.9 * self.draft_share + 0.1 * (not len(guess))
        return guess if len(guess) else self.draft.propose(tokens, k, warp, generator, rules)
