"""The one interface between who guesses and who checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from specdecode.sampling import Warp


@dataclass
class Proposal:
    """A chain of K guessed tokens and, for a stochastic proposer, what they were drawn from."""

    tokens: list[int]  # [K]
    probs: torch.Tensor | None  # [K, V], or None when the guesses are deterministic

    def __len__(self) -> int:
        return len(self.tokens)


class Proposer(Protocol):
    """Given the committed tokens, guess the next `k`. State (caches) syncs itself to `tokens`."""

    def propose(self, tokens: Sequence[int], k: int, warp: Warp, generator: torch.Generator | None) -> Proposal: ...

    def reset(self) -> None:
        """Forget all cached state."""
        ...

    def guess_cost(self) -> float | None:
        """Recent seconds per guessed token (None before any guess was made)."""
        ...

    @property
    def forward_s(self) -> float:
        """Seconds spent in model passes so far (0 for proposers without a model)."""
        ...

    @property
    def passes(self) -> int:
        """Model passes so far."""
        ...
