"""The speculative decoding step, written once for one sequence or a batch of them (docs/design.md).

For every row still running, each step:
  1. propose: K guesses (the row's K policy; fewer near its max_new_tokens), rows with a draft
     model sharing its passes;
  2. verify: one target pass over every row's uncached tokens and guesses -> per row [guesses + 1, V];
  3. accept: per row, a prefix of its chain or a path of its tree, and the token after it, with the
     row's own sampling and random generator, exactly as the row alone would, from the target's
     logits under the row's rules (logit_bias, penalties, grammar: `specdecode.rules`) at each
     position, the guesses before it included;
  4. commit: per row, one token at a time, so nothing past a stop is emitted (with their
     log-probabilities where the row asks for them).
A row's output is the target's whatever the other rows do: its guesses, its cache and its random
stream are its own, and the passes they share compute each row as a pass of its own would
(compiled decoder), or up to the rounding of batched matrix products (a model's modules).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from specdecode.acceptance import accept_greedy, accept_sampled, accept_tree_greedy, accept_tree_sampled
from specdecode.kv import CachedModel, next_logits_together
from specdecode.logprobs import token_logprobs
from specdecode.output import OutputTracker
from specdecode.policy import KPolicy
from specdecode.proposers import DraftModelProposer, Proposal, Proposer
from specdecode.proposers.draft_model import propose_together
from specdecode.rules import TokenRules
from specdecode.sampling import SamplingParams, Warp, check_finite, logits_to_probs
from specdecode.stats import DecodeStats


@dataclass
class Row:
    """One sequence being decoded, with its own target cache and proposer where it has them."""

    tokens: list[int]  # prompt + committed tokens
    output: OutputTracker
    sampling: SamplingParams
    generator: torch.Generator
    policy: KPolicy
    stats: DecodeStats
    target: CachedModel | None = None  # a fork of the target's cache (see `OwnCaches`)
    proposer: Proposer | None = None  # None: no guesses (K = 0 only)
    rules: TokenRules | None = None  # None: the model's logits as they are
    index: int = 0  # the caller's number for it
    k: int = 0  # the K of its last step
    started: float = field(default_factory=time.perf_counter)
    target_warp: Warp = field(init=False)
    draft_warp: Warp = field(init=False)

    def __post_init__(self) -> None:
        self.target_warp, self.draft_warp = self.sampling.target_warp(), self.sampling.draft_warp()


class Verifier(Protocol):
    """The target's side of a step for a list of rows."""

    def next_logits(self, rows: Sequence[Row], guesses: Sequence[Proposal]) -> list[torch.Tensor]:
        """Per row, the target's logits after its last token and after each guess: [len(guess) + 1, V]."""
        ...

    def keep_path(self, b: int, row: Row, path: list[int]) -> None:
        """Keep the accepted path of row b's token tree in its cache."""
        ...


class OwnCaches:
    """Every row verified in its own cache (`Row.target`, forks of one CachedModel), all in one pass."""

    def next_logits(self, rows: Sequence[Row], guesses: Sequence[Proposal]) -> list[torch.Tensor]:
        return next_logits_together(
            [row.target for row in rows], [row.tokens for row in rows], [g.tokens for g in guesses],
            [g.parents for g in guesses],
        )  # fmt: skip

    def keep_path(self, b: int, row: Row, path: list[int]) -> None:
        row.target.keep_path(path)


class Proposing(Protocol):
    """The proposers' side of a step for a list of rows."""

    def propose(self, rows: Sequence[Row], ks: Sequence[int]) -> list[Proposal]:
        """Per row, ks[b] guesses after its tokens."""
        ...

    def unread(self, rows: Sequence[Row]) -> list[int]:
        """Per row, the tokens its draft model has yet to read before it can guess (0 without one)."""
        ...


class OwnProposers:
    """Each row's guesses from its own proposer (`Row.proposer`); rows guessing with a draft model
    share its passes."""

    def propose(self, rows: Sequence[Row], ks: Sequence[int]) -> list[Proposal]:
        guesses = [Proposal([], None) for _ in rows]
        drafted = [
            b
            for b, (row, k) in enumerate(zip(rows, ks, strict=True))
            if k and isinstance(row.proposer, DraftModelProposer)
        ]
        if drafted:
            batch = [rows[b] for b in drafted]
            proposals = propose_together(
                [row.proposer for row in batch], [row.tokens for row in batch], [ks[b] for b in drafted],
                [row.draft_warp for row in batch], [row.generator for row in batch], [row.rules for row in batch],
            )  # fmt: skip
            for b, proposal in zip(drafted, proposals, strict=True):
                guesses[b] = proposal
        for b, (row, k) in enumerate(zip(rows, ks, strict=True)):
            if k and b not in drafted:
                guesses[b] = row.proposer.propose(row.tokens, k, row.draft_warp, row.generator, row.rules)
        return guesses

    def unread(self, rows: Sequence[Row]) -> list[int]:
        return [0 if row.proposer is None else row.proposer.unread(row.tokens) for row in rows]


OWN_CACHES, OWN_PROPOSERS = OwnCaches(), OwnProposers()


def step(
    rows: Sequence[Row],
    verifier: Verifier = OWN_CACHES,
    proposing: Proposing = OWN_PROPOSERS,
) -> list[list[int]]:
    """One speculative step for every row; returns the tokens each row committed."""
    # 1. propose: K from each row's policy, at most as many guesses as the row can still emit after this pass;
    #    where a grammar forces the next tokens they are the row's guesses (no proposer), else the proposer's
    #    guesses are cut where the grammar refuses them and the tokens it forces after them are added
    room = [row.output.max_new_tokens - len(row.output) - 1 for row in rows]
    forced = [[] if row.rules is None else row.rules.forced(n) for row, n in zip(rows, room, strict=True)]
    chosen = choose_k(rows, proposing.unread(rows))
    ks = [0 if f else min(k, n) for f, k, n in zip(forced, chosen, room, strict=True)]
    for row, k in zip(rows, ks, strict=True):
        row.k = k
    guesses = [
        Proposal(f, None, forced=len(f)) if f else guess if row.rules is None else row.rules.constrain(guess, n)
        for row, f, n, guess in zip(rows, forced, room, proposing.propose(rows, ks), strict=True)
    ]
    # 2. verify: one target pass over every row's uncached tokens and guesses
    logits = verifier.next_logits(rows, guesses)
    committed = []
    for b, (row, guess, row_logits) in enumerate(zip(rows, guesses, logits, strict=True)):
        check_finite(row_logits, "target model")
        if row.rules is not None:
            row_logits = row.rules.apply(row_logits, guess.prefixes())
        # 3. accept guesses (a prefix of the chain, a path of the tree) and draw the token after
        accepted, next_token, path = accept(guess, row_logits, row)
        if path is not None:
            verifier.keep_path(b, row, path)
        row.stats.record_step(guess.depth, len(accepted), drafted=len(guess))
        row.policy.observe(guess.depth - guess.forced, min(len(accepted), guess.depth - guess.forced))
        # 4. commit, one token at a time, so nothing past a stop is emitted
        new = commit([*accepted, next_token], row.tokens, row.output)
        if row.rules is not None:
            row.rules.commit(new)
        if row.output.logprobs is not None:
            positions = list(range(len(accepted) + 1)) if path is None else [0, *(i + 1 for i in path)]
            row.output.logprobs += token_logprobs(row_logits[positions[: len(new)]], new, row.sampling.logprobs)
        committed.append(new)
    return committed


def choose_k(rows: Sequence[Row], unread: Sequence[int]) -> list[int]:
    """Each row's K for the next pass over len(rows) rows (in the order they joined): every policy (rows
    may share one) asked once per step, so that a shared policy counts steps, not rows, and told what
    its rows' drafts have yet to read; a probe is tried by the newest of its rows only (its draft has
    the least to catch up on)."""
    behind: dict[int, int] = {}
    for row, n in zip(rows, unread, strict=True):
        behind[id(row.policy)] = behind.get(id(row.policy), 0) + n
    ks = [0] * len(rows)
    chosen: dict[int, int] = {}
    for b in reversed(range(len(rows))):
        policy = rows[b].policy
        if id(policy) not in chosen:
            chosen[id(policy)] = ks[b] = policy.next_k(len(rows), behind[id(policy)])
        elif not policy.probe:
            ks[b] = chosen[id(policy)]
    return ks


def accept(guess: Proposal, logits: torch.Tensor, row: Row) -> tuple[list[int], int, list[int] | None]:
    """(accepted guesses, next token, the accepted tree path or None for a chain) from the target's
    logits [len(guess) + 1, V]."""
    greedy, warp, generator = row.sampling.greedy, row.target_warp, row.generator
    if guess.parents is not None:
        if greedy:
            path, next_token = accept_tree_greedy(guess.tokens, guess.parents, logits)
        else:
            path, next_token = accept_tree_sampled(
                guess.tokens, guess.parents, logits_to_probs(logits, warp), generator
            )
        return [guess.tokens[i] for i in path], next_token, path
    guessed = torch.tensor(guess.tokens, dtype=torch.long, device=logits.device)
    if greedy:
        n, next_token = accept_greedy(guessed, logits)
    else:
        n, next_token = accept_sampled(guessed, guess.probs, logits_to_probs(logits, warp), generator)
    return guess.tokens[:n], next_token, None


def commit(new_tokens: Sequence[int], tokens: list[int], output: OutputTracker) -> list[int]:
    """Append new tokens to `tokens` and `output` one at a time, stopping at the first that ends the output;
    return those appended."""
    committed = []
    for token in new_tokens:
        tokens.append(token)
        committed.append(token)
        if output.append(token):
            break
    return committed
