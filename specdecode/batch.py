"""Speculative decoding for many sequences at once: `specdecode.step` over rows that join and leave.

Rows are independent: row b's output is what `SpeculativeDecoder.generate` gives for its prompt and
seed alone. Two ways to hold the rows' caches:
  - each row its own fork of the target's (and proposer's) caches (`step.OwnCaches`): a compiled
    target runs every row in one call, each row's bits as alone, so greedy rows are token-identical
    to decoding alone; every proposer and K policy works. A target run through its modules does
    this only where the ragged cache cannot (trees, ngram+draft): one pass per row.
  - one ragged cache for all rows of a target run through its modules (`specdecode.ragged_kv`):
    one batched pass, rows token-identical up to the rounding of batched matrix products; chains
    from the draft model (`_BatchedDraft`) or n-gram lookup.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from specdecode.kv import CachedModel, shared_prefix
from specdecode.output import GenerationResult, OutputTracker
from specdecode.proposers import DraftModelProposer, NgramProposer, Proposal, Proposer
from specdecode.proposers.draft_model import draw
from specdecode.ragged_kv import RaggedCachedModel
from specdecode.sampling import SEED_RANGE, SamplingParams, make_generator
from specdecode.stats import DecodeStats
from specdecode.step import OWN_CACHES, OWN_PROPOSERS, Row, step

if TYPE_CHECKING:
    from specdecode.engine import NumSpeculativeTokens, Prompt, SpeculativeDecoder

SPARE_ROWS = 16  # finished rows whose caches the next rows reuse (a prefix they share is not read again)


class BatchResult(list):
    """One GenerationResult per row, in the order asked; `stats` sums the rows' counters (its
    target_passes are row passes, so acceptance lengths stay per row) over the batch's wall time;
    target and draft seconds and passes are the batch's, shared by its rows; `batched_passes` is
    the number of target passes the batch made."""

    stats: DecodeStats
    batched_passes: int


class RaggedVerifier:
    """Every row verified in one ragged cache of the target's modules, in one pass (chains only)."""

    def __init__(self, cache: RaggedCachedModel) -> None:
        self.cache = cache

    def next_logits(self, rows: Sequence[Row], guesses: Sequence[Proposal]) -> list[torch.Tensor]:
        return self.cache.next_logits([row.tokens for row in rows], [g.tokens for g in guesses])

    def keep_path(self, b: int, row: Row, path: list[int]) -> None:
        raise RuntimeError("a ragged batch holds chains, not token trees")


class _BatchedDraft:
    """The draft model over a ragged batch: K passes of one token per row after catching up."""

    def __init__(self, draft: RaggedCachedModel) -> None:
        self.draft = draft

    def unread(self, rows: Sequence[Row]) -> list[int]:
        return [len(row.tokens) - shared_prefix(ids, row.tokens) for row, ids in zip(rows, self.draft.ids, strict=True)]

    def propose(self, rows: Sequence[Row], ks: Sequence[int]) -> list[Proposal]:
        if not any(ks):
            return [Proposal([], None) for _ in rows]
        logits = self.draft.forward(self.draft.sync([r.tokens for r in rows]), num_logits=1)[:, -1]  # [B, V]
        guesses: list[list[int]] = [[] for _ in rows]
        dists: list[list[torch.Tensor]] = [[] for _ in rows]
        for i in range(max(ks, default=0)):
            for b, (row, k) in enumerate(zip(rows, ks, strict=True)):
                if i < k:  # a row draws exactly as many guesses as alone: its random stream stays its own
                    token, probs = draw(logits[b], row.draft_warp, row.generator, row.rules, guesses[b])
                    guesses[b].append(token)
                    dists[b] += [] if probs is None else [probs]
            if i + 1 < max(ks):
                feed = [g[-1:] if i + 1 < k else [] for g, k in zip(guesses, ks, strict=True)]
                logits = self.draft.forward(feed, num_logits=1)[:, -1]
        return [Proposal(g, torch.stack(d) if d else None) for g, d in zip(guesses, dists, strict=True)]


class BatchDecoder:
    """Rows decoded together; `add` rows at any time between `step`s (continuous batching)."""

    def __init__(self, dec: SpeculativeDecoder, num_speculative_tokens: NumSpeculativeTokens = 4) -> None:
        self.dec, self.k = dec, num_speculative_tokens
        dec.check_request(1, 1, num_speculative_tokens)
        proposer = dec.proposer
        chains = proposer is None or isinstance(proposer, DraftModelProposer | NgramProposer)
        self.own_caches = dec.target.decoder is not None or not chains
        # a compiled draft guesses for each row what it would alone, in its own fork (shared passes)
        self.own_proposers = proposer is not None and (
            self.own_caches or getattr(getattr(proposer, "draft", None), "decoder", None) is not None
        )
        if self.own_caches:
            self.verifier, self.proposing, self.ragged = OWN_CACHES, OWN_PROPOSERS, []
        else:
            target = RaggedCachedModel(dec.target.model, dec.vocab_size, clock=dec.target.clock)
            draft = isinstance(proposer, DraftModelProposer) and num_speculative_tokens != 0 and not self.own_proposers
            self.draft = None
            if draft:
                draft_cache = RaggedCachedModel(proposer.draft.model, dec.vocab_size, clock=proposer.draft.clock)
                self.draft = _BatchedDraft(draft_cache)
            self.verifier = RaggedVerifier(target)
            self.proposing = self.draft or OWN_PROPOSERS
            self.ragged = [target] + ([self.draft.draft] if self.draft else [])
        self.rows: list[Row] = []  # running rows, in cache order
        self._spare: list[Row] = []  # finished rows, for their caches
        self.start = time.perf_counter()
        self._counters0 = self._counters()

    def add(
        self,
        prompt: Prompt,
        max_new_tokens: int,
        sampling: SamplingParams,
        ignore_eos: bool = False,
        copies: int = 1,
        index: int = 0,
        num_speculative_tokens: NumSpeculativeTokens | None = None,
    ) -> None:
        """Add `copies` rows for one prompt (copy c seeded with sampling.seed + c), numbered from `index`,
        with their own K (default: the batch's). In a ragged cache the prompt is read once and its cache
        shared by the copies."""
        dec = self.dec
        ids = dec.encode(prompt)
        k = self.k if num_speculative_tokens is None else num_speculative_tokens
        dec.check_request(len(ids), max_new_tokens, k)
        eos = () if ignore_eos else dec.eos_ids
        for c in range(copies):
            seed = None if sampling.seed is None else sampling.seed + c
            target, proposer = self._caches(ids)
            self.rows.append(
                Row(
                    list(ids),
                    OutputTracker(dec.tokenizer, eos, sampling.stop, max_new_tokens, sampling.logprobs is not None),
                    replace(sampling, seed=seed),
                    make_generator(seed, dec.target.device),
                    dec._policy(k, ids),
                    DecodeStats(prompt_tokens=len(ids)),
                    target=target,
                    proposer=proposer,
                    rules=dec.rules(sampling, ids, ignore_eos),
                    index=index + c,
                )
            )
        for cache in self.ragged:
            first = cache.rows
            cache.add_rows(1)
            if copies > 1 and len(ids) > 1:  # prefill once, then share it
                cache.forward([[] for _ in range(first)] + [ids[:-1]], num_logits=1)
            cache.select([*range(first), *[first] * copies])

    @property
    def finished(self) -> bool:
        return not self.rows

    def step(self) -> list[tuple[Row, list[int]]]:
        """One speculative step for every running row: (row, the tokens it committed) each; finished
        rows leave the batch."""
        rows = self.rows
        committed = step(rows, self.verifier, self.proposing)
        now = time.perf_counter()
        for row in rows:
            row.stats.new_tokens = len(row.output)
            row.stats.first_token_s = row.stats.first_token_s or now - row.started
            row.stats.wall_s = now - row.started
        self._keep([i for i, row in enumerate(rows) if not row.output.finished])
        return list(zip(rows, committed, strict=True))

    def remove(self, indices: set[int]) -> None:
        """Drop the running rows numbered `indices` (their client has gone)."""
        self._keep([i for i, row in enumerate(self.rows) if row.index not in indices])

    def _caches(self, ids: list[int]) -> tuple[CachedModel | None, Proposer | None]:
        """A new row's target cache and proposer: those of the finished row sharing the longest prefix
        with `ids`, or new forks."""
        dec = self.dec
        if self._spare and (self.own_caches or self.own_proposers):
            best = max(self._spare, key=lambda row: shared_prefix(row.tokens, ids))
            self._spare.remove(best)
            return best.target, best.proposer
        target = dec.target.fork() if self.own_caches else None
        return target, dec.proposer.fork() if self.own_proposers else dec.proposer

    def _keep(self, keep: list[int]) -> None:
        if len(keep) < len(self.rows):
            kept = set(keep)
            self._spare = [*self._spare, *(row for i, row in enumerate(self.rows) if i not in kept)][-SPARE_ROWS:]
            self.rows = [self.rows[i] for i in keep]
            for cache in self.ragged:
                cache.select(keep)

    def _counters(self) -> tuple[float, float, int, int]:
        """(target seconds, draft seconds, draft passes, target passes) so far (ragged caches count on the
        clocks of the decoder's own)."""
        draft_s, draft_passes = self.dec._draft_counters()
        return self.dec.target.forward_s, draft_s, draft_passes, self.dec.target.passes

    def run(self) -> BatchResult:
        """Step until every row is finished; the results in the order the rows were added."""
        done = [row for row in self.rows if row.output.finished]
        while not self.finished:
            done += [row for row, _ in self.step() if row.output.finished]
        target_s, draft_s, draft_passes, target_passes = (
            now - then for now, then in zip(self._counters(), self._counters0, strict=True)
        )
        total = DecodeStats()
        results = BatchResult()
        for row in sorted(done, key=lambda r: r.index):
            row.stats.target_s, row.stats.draft_s, row.stats.draft_passes = target_s, draft_s, draft_passes
            total.add(row.stats)
            out = row.output
            results.append(GenerationResult(out.text, out.token_ids, out.finish_reason, row.stats, out.logprobs))
        total.wall_s, total.target_s, total.draft_s = time.perf_counter() - self.start, target_s, draft_s
        total.draft_passes = draft_passes
        total.first_token_s = min((r.stats.first_token_s for r in done), default=0.0)
        results.stats, results.batched_passes = total, target_passes
        return results


def generate_batch(
    dec: SpeculativeDecoder,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    num_speculative_tokens: int,
    sampling: SamplingParams,
    ignore_eos: bool,
    n: int,
) -> BatchResult:
    """`n` samples of each prompt (row p * n + c: prompt p, seed sampling.seed + p * n + c), decoded together."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not prompts:
        raise ValueError("the batch has no prompts")
    if sampling.seed is not None and sampling.seed + len(prompts) * n > SEED_RANGE[1]:
        raise ValueError(f"seed + rows must stay below 2**64 (row r is seeded seed + r), got seed {sampling.seed}")
    encoded = [dec.encode(prompt) for prompt in prompts]
    for ids in encoded:  # every prompt checked before any work
        dec.check_request(len(ids), max_new_tokens, num_speculative_tokens)
    batch = BatchDecoder(dec, num_speculative_tokens)
    for p, ids in enumerate(encoded):
        seed = None if sampling.seed is None else sampling.seed + p * n
        batch.add(ids, max_new_tokens, replace(sampling, seed=seed), ignore_eos, copies=n, index=p * n)
    return batch.run()
