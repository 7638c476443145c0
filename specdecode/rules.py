"""What a request changes in a model's logits from the text before each position: logit_bias,
presence / frequency / repetition penalties, and a grammar's mask.

They apply at every position of a verify pass from the text up to that position, the guesses before
it included, and to the draft's logits the same way, so a guess is drawn from (and checked against)
the distribution the request asks for: the output is the target's with the rules applied, exactly.
The math is in pure functions (`penalize`); `TokenRules` keeps one row's counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from specdecode.proposers.base import Proposal
from specdecode.sampling import SamplingParams


def penalize(
    logits: torch.Tensor,
    counts: torch.Tensor | None,
    seen: torch.Tensor | None,
    sampling: SamplingParams,
) -> torch.Tensor:
    """logits [N, V] with logit_bias added, then the repetition penalty (divide a positive logit by it,
    multiply a negative one, for tokens `seen` [N, V] bool in the prompt or the output) and the presence
    and frequency penalties (subtract them once, and once per occurrence, for tokens in the output:
    `counts` [N, V]), as vLLM and OpenAI define them. `counts` and `seen` may be None where no penalty is set."""
    if sampling.logit_bias:
        ids = torch.tensor(list(sampling.logit_bias), device=logits.device)
        values = torch.tensor(list(sampling.logit_bias.values()), dtype=logits.dtype, device=logits.device)
        logits = logits.index_add(-1, ids, values.expand(logits.shape[0], -1))
    if sampling.repetition_penalty != 1.0:
        r = sampling.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    if sampling.frequency_penalty:
        logits = logits - sampling.frequency_penalty * counts
    if sampling.presence_penalty:
        logits = logits - sampling.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


class Grammar(Protocol):
    """A grammar's state after a row's committed tokens (`specdecode.grammar`)."""

    def allowed(self, prefixes: Sequence[Sequence[int]], vocab_size: int) -> torch.Tensor:
        """[N, V] bool: the tokens the grammar allows after the committed tokens plus each prefix."""
        ...

    def accepts(self, tokens: Sequence[int]) -> int:
        """How many of `tokens`, in order, the grammar accepts after the committed tokens."""
        ...

    def forced(self, tokens: Sequence[int]) -> list[int]:
        """The tokens the grammar forces after the committed tokens plus `tokens` (its only continuation)."""
        ...

    def commit(self, tokens: Sequence[int]) -> None: ...


class TokenRules:
    """One row's rules: the sampling settings that change logits, the counts of its tokens so far, and
    its grammar. `apply` takes logits at positions after the committed tokens plus a prefix of guesses each."""

    def __init__(self, sampling: SamplingParams, prompt: Sequence[int], vocab_size: int, grammar: Grammar | None):
        if sampling.logit_bias:
            outside = [t for t in sampling.logit_bias if t >= vocab_size]
            if outside:
                raise ValueError(f"logit_bias token ids outside the vocabulary [0, {vocab_size}): {outside[:5]}")
        self.sampling, self.vocab_size, self.grammar = sampling, vocab_size, grammar
        self.counts = torch.zeros(vocab_size)  # [V] occurrences in the output
        self.seen = torch.zeros(vocab_size, dtype=torch.bool)  # [V] in the prompt or the output
        self.seen[list(prompt)] = True

    def commit(self, tokens: Sequence[int]) -> None:
        """The row committed `tokens` (counted only where a penalty reads the counts)."""
        if self.penalized:
            ids = torch.tensor(list(tokens), dtype=torch.long)
            self.counts.index_put_((ids,), torch.ones(len(ids)), accumulate=True)
            self.seen[ids] = True
        if self.grammar is not None:
            self.grammar.commit(tokens)

    def forced(self, limit: int) -> list[int]:
        """The tokens the grammar forces right after the committed text (at most `limit`): a step's guesses
        that need no proposer."""
        return [] if self.grammar is None else self.grammar.forced(())[:limit]

    def constrain(self, guess: Proposal, limit: int) -> Proposal:
        """A chain of guesses cut where the grammar refuses it, then the tokens the grammar forces after it
        appended as deterministic guesses (no draft pass), at most `limit` guesses in all. Trees as they are
        (their nodes were drawn under the mask)."""
        if self.grammar is None or guess.parents is not None:
            return guess
        n = min(self.grammar.accepts(guess.tokens), limit)
        tokens = guess.tokens[:n]
        forced = self.grammar.forced(tokens)[: limit - n]
        probs = None if guess.probs is None else guess.probs[:n]
        if forced and probs is not None:
            one_hot = torch.zeros(len(forced), probs.shape[-1], dtype=probs.dtype, device=probs.device)
            probs = torch.cat([probs, one_hot.scatter_(-1, torch.tensor(forced, device=probs.device)[:, None], 1.0)])
        return Proposal(tokens + forced, probs, forced=len(forced))

    def apply(self, logits: torch.Tensor, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        """logits [N, V] (row i after the committed tokens plus prefixes[i]) -> the request's logits [N, V]
        (float32 or wider)."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self.sampling.changes_logits:
            counts, seen = self._counts(prefixes, logits) if self.penalized else (None, None)
            logits = penalize(logits, counts, seen, self.sampling)
        if self.grammar is not None:
            allowed = self.grammar.allowed(prefixes, logits.shape[-1]).to(logits.device)
            logits = logits.masked_fill(~allowed, -torch.inf)
        return logits

    @property
    def penalized(self) -> bool:
        """Whether a penalty is set (logit_bias alone needs no counts)."""
        s = self.sampling
        return bool(s.presence_penalty or s.frequency_penalty or s.repetition_penalty != 1.0)

    def _counts(self, prefixes: Sequence[Sequence[int]], logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output counts [N, V], seen in prompt or output [N, V]) after the committed tokens plus each prefix."""
        rows = torch.tensor([i for i, p in enumerate(prefixes) for _ in p], dtype=torch.long)
        ids = torch.tensor([t for p in prefixes for t in p], dtype=torch.long)
        counts = self.counts.to(logits.dtype).expand(len(prefixes), -1).clone()
        counts.index_put_((rows, ids), torch.ones(len(ids), dtype=logits.dtype), accumulate=True)
        seen = self.seen.expand(len(prefixes), -1).clone()
        seen[rows, ids] = True
        return counts.to(logits.device), seen.to(logits.device)
