"""The one interface between who guesses and who checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from specdecode.sampling import Warp

if TYPE_CHECKING:
    from specdecode.kv import CachedModel
    from specdecode.proposers.draft_model import DraftModelProposer
    from specdecode.rules import TokenRules


@dataclass
class Proposal:
    """A chain of K guessed tokens and, for a stochastic proposer, what they were drawn from;
    or a tree of N deterministic guesses, node i a child of node parents[i] (-1: of the last
    committed token), each node after its parent."""

    tokens: list[int]  # [K] or [N]
    probs: torch.Tensor | None  # [K, V], or None when the guesses are deterministic
    parents: list[int] | None = None  # [N] for a tree, None for a chain
    forced: int = 0  # the last `forced` tokens of a chain are a grammar's forced text, not the proposer's

    def __len__(self) -> int:
        return len(self.tokens)

    def prefixes(self) -> list[list[int]]:
        """The guesses before each position of the verify pass: [] for the position after the committed
        tokens, then for guess i the guesses on its path up to it (a chain: the first i + 1)."""
        if self.parents is None:
            return [self.tokens[:i] for i in range(len(self.tokens) + 1)]
        paths: list[list[int]] = []
        for token, parent in zip(self.tokens, self.parents, strict=True):
            paths.append([*(paths[parent] if parent >= 0 else []), token])
        return [[], *paths]

    @property
    def depth(self) -> int:
        """The number of guesses on the longest path: K for a chain."""
        if self.parents is None:
            return len(self.tokens)
        depths: list[int] = []
        for parent in self.parents:
            depths.append(1 + (depths[parent] if parent >= 0 else 0))
        return max(depths, default=0)


class Proposer(Protocol):
    """Given the committed tokens, guess the next `k`. State (caches) syncs itself to `tokens`."""

    def propose(
        self,
        tokens: Sequence[int],
        k: int,
        warp: Warp,
        generator: torch.Generator | None,
        rules: TokenRules | None = None,
    ) -> Proposal:
        """Up to k guesses after `tokens`, drawn (if drawn) under `rules` then `warp`."""
        ...

    def reset(self) -> None:
        """Forget all cached state."""
        ...

    def fork(self) -> Proposer:
        """A proposer of its own for another sequence (its own caches, the same models and costs)."""
        ...

    def guess_cost(self, rows: int = 1) -> float | None:
        """Recent seconds of one guess for each of `rows` rows (None before any guess was made)."""
        ...

    def unread(self, tokens: Sequence[int]) -> int:
        """How many of `tokens` its model has yet to read before guessing after them (0 without a model)."""
        ...

    @property
    def forward_s(self) -> float:
        """Seconds spent in model passes so far (0 for proposers without a model)."""
        ...

    @property
    def passes(self) -> int:
        """Model passes so far."""
        ...


class CountsDraftPasses:
    """For proposers that run a model through `self.draft` (a CachedModel, or a proposer that has
    one): its passes and the time in them are the proposer's."""

    draft: CachedModel | DraftModelProposer

    @property
    def forward_s(self) -> float:
        return self.draft.forward_s

    @property
    def passes(self) -> int:
        return self.draft.passes
