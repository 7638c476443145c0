"""Speculative decoding for many sequences at once: every row guesses, one target pass checks all
rows, each row accepts its own number of guesses.

Per step, for the rows still running (K guesses each, fewer near a row's max_new_tokens):
  1. propose: the draft model for all rows in K batched passes (or n-gram lookup per row);
  2. verify: one target pass over every row's uncached tokens and guesses (ragged: holes masked);
  3. accept per row with its own sampler and random generator, exactly as a row alone would;
  4. commit per row; finished rows leave the caches, new rows may join before the next step.
Rows are independent: row b's output is what `SpeculativeDecoder.generate` gives for its prompt and
seed alone (token for token up to floating-point rounding of the batched matrix products).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from specdecode.engine import GenerationResult, Prompt, SpeculativeDecoder, accept_chain, commit, make_generator
from specdecode.output import OutputTracker
from specdecode.proposers import DraftModelProposer, NgramProposer, Proposal
from specdecode.proposers.draft_model import draw
from specdecode.ragged_kv import RaggedCachedModel
from specdecode.sampling import SEED_RANGE, SamplingParams, Warp, check_finite
from specdecode.stats import DecodeStats


class BatchResult(list):
    """One GenerationResult per row, in the order asked; `stats` sums the rows' counters (its
    target_passes are row passes, so acceptance lengths stay per row) over the batch's wall time;
    target and draft seconds and passes are the batch's, shared by its rows; `batched_passes` is
    the number of target passes the batch made."""

    stats: DecodeStats
    batched_passes: int


@dataclass
class _Row:
    index: int  # position in the caller's list
    tokens: list[int]  # prompt + committed tokens
    output: OutputTracker
    sampling: SamplingParams
    generator: torch.Generator
    stats: DecodeStats
    target_warp: Warp = field(init=False)
    draft_warp: Warp = field(init=False)

    def __post_init__(self) -> None:
        self.target_warp, self.draft_warp = self.sampling.target_warp(), self.sampling.draft_warp()


class _BatchedDraft:
    """The draft model over a ragged batch: K passes of one token per row after catching up."""

    def __init__(self, draft: RaggedCachedModel) -> None:
        self.draft = draft

    def propose(self, rows: Sequence[_Row], ks: Sequence[int]) -> list[Proposal]:
        logits = self.draft.forward(self.draft.sync([r.tokens for r in rows]), num_logits=1)[:, -1]  # [B, V]
        guesses: list[list[int]] = [[] for _ in rows]
        dists: list[list[torch.Tensor]] = [[] for _ in rows]
        for i in range(max(ks, default=0)):
            for b, (row, k) in enumerate(zip(rows, ks, strict=True)):
                if i < k:  # a row draws exactly as many guesses as alone: its random stream stays its own
                    token, probs = draw(logits[b], row.draft_warp, row.generator)
                    guesses[b].append(token)
                    dists[b] += [] if probs is None else [probs]
            if i + 1 < max(ks):
                feed = [g[-1:] if i + 1 < k else [] for g, k in zip(guesses, ks, strict=True)]
                logits = self.draft.forward(feed, num_logits=1)[:, -1]
        return [Proposal(g, torch.stack(d) if d else None) for g, d in zip(guesses, dists, strict=True)]


class BatchDecoder:
    """Rows decoded together with one K; `add` rows at any time between `step`s (continuous batching)."""

    def __init__(self, dec: SpeculativeDecoder, num_speculative_tokens: int = 4) -> None:
        k = num_speculative_tokens
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"batches take an integer num_speculative_tokens >= 0 ('auto' is per sequence), got {k!r}")
        proposer = dec.proposer
        if k and not isinstance(proposer, DraftModelProposer | NgramProposer):
            raise ValueError("batches support the draft and ngram proposers (not trees or ngram+draft)")
        self.dec, self.k = dec, k
        self.target = RaggedCachedModel(dec.target.model, dec.vocab_size)
        self.draft = (
            _BatchedDraft(RaggedCachedModel(proposer.draft.model, dec.vocab_size))
            if k and isinstance(proposer, DraftModelProposer)
            else None
        )
        self.rows: list[_Row] = []  # running rows, in cache order
        self.done: list[_Row] = []
        self.start = time.perf_counter()

    def add(
        self,
        prompt: Prompt,
        max_new_tokens: int,
        sampling: SamplingParams,
        ignore_eos: bool = False,
        copies: int = 1,
        index: int = 0,
    ) -> None:
        """Add `copies` rows for one prompt (copy c seeded with sampling.seed + c), numbered from `index`.
        The prompt is run once and its cache shared by the copies."""
        ids = self.dec.encode(prompt)
        self.dec.check_request(len(ids), max_new_tokens, self.k)
        eos = () if ignore_eos else self.dec.eos_ids
        for c in range(copies):
            seed = None if sampling.seed is None else sampling.seed + c
            self.rows.append(
                _Row(
                    index + c,
                    list(ids),
                    OutputTracker(self.dec.tokenizer, eos, sampling.stop, max_new_tokens),
                    sampling,
                    make_generator(seed, self.target.model.device),
                    DecodeStats(prompt_tokens=len(ids)),
                )
            )
        caches = [self.target] + ([self.draft.draft] if self.draft else [])
        for cache in caches:
            first = cache.rows
            cache.add_rows(1)
            if copies > 1 and len(ids) > 1:  # prefill once, then share it
                cache.forward([[] for _ in range(first)] + [ids[:-1]], num_logits=1)
            cache.select([*range(first), *[first] * copies])

    @property
    def finished(self) -> bool:
        return not self.rows

    def step(self) -> None:
        """One speculative step for every running row."""
        rows = self.rows
        ks = [min(self.k, r.output.max_new_tokens - len(r.output) - 1) for r in rows]
        # 1. propose
        if self.draft is not None and any(ks):
            guesses = self.draft.propose(rows, ks)
        else:
            ngram = self.dec.proposer
            guesses = [
                ngram.propose(r.tokens, k, r.draft_warp, r.generator) if k else Proposal([], None)
                for r, k in zip(rows, ks, strict=True)
            ]
        # 2. verify: one target pass for all rows -> per row [guesses + 1, V]
        logits = self.target.next_logits([r.tokens for r in rows], [g.tokens for g in guesses])
        # 3. accept and 4. commit, per row
        now = time.perf_counter() - self.start
        for row, guess, row_logits in zip(rows, guesses, logits, strict=True):
            check_finite(row_logits, "target model")
            accepted, next_token = accept_chain(guess, row_logits, row.sampling.greedy, row.target_warp, row.generator)
            row.stats.record_step(len(guess), len(accepted))
            commit([*accepted, next_token], row.tokens, row.output)
            row.stats.new_tokens = len(row.output)
            row.stats.first_token_s = row.stats.first_token_s or now
            row.stats.wall_s = now
        keep = [i for i, r in enumerate(rows) if not r.output.finished]
        self.done += [r for r in rows if r.output.finished]
        if len(keep) < len(rows):  # finished rows leave the batch
            self.rows = [rows[i] for i in keep]
            for cache in [self.target] + ([self.draft.draft] if self.draft else []):
                cache.select(keep)

    def run(self) -> BatchResult:
        """Step until every row is finished; the results in the order the rows were added."""
        while not self.finished:
            self.step()
        total = DecodeStats()
        target_s, draft_s = self.target.forward_s, self.draft.draft.forward_s if self.draft else 0.0
        results = BatchResult()
        draft_passes = self.draft.draft.passes if self.draft else 0
        for row in sorted(self.done, key=lambda r: r.index):
            row.stats.target_s, row.stats.draft_s, row.stats.draft_passes = target_s, draft_s, draft_passes
            total.add(row.stats)
            results.append(GenerationResult(row.output.text, row.output.token_ids, row.output.finish_reason, row.stats))
        total.wall_s, total.target_s, total.draft_s = time.perf_counter() - self.start, target_s, draft_s
        total.draft_passes = draft_passes
        total.first_token_s = min((r.stats.first_token_s for r in self.done), default=0.0)
        results.stats, results.batched_passes = total, self.target.passes
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
    if dec.target.decoder is not None:  # a compiled target's cache holds one sequence: rows one after another
        seed = (lambda row: None) if sampling.seed is None else (lambda row: sampling.seed + row)
        rows = [(ids, replace(sampling, seed=seed(p * n + c))) for p, ids in enumerate(encoded) for c in range(n)]
        return _one_at_a_time(
            rows, lambda ids, params: dec.generate(ids, max_new_tokens, num_speculative_tokens, params, ignore_eos)
        )
    batch = BatchDecoder(dec, num_speculative_tokens)
    for p, ids in enumerate(encoded):
        seed = None if sampling.seed is None else sampling.seed + p * n
        batch.add(ids, max_new_tokens, replace(sampling, seed=seed), ignore_eos, copies=n, index=p * n)
    return batch.run()


def _one_at_a_time(
    rows: list[tuple[list[int], SamplingParams]], decode: Callable[[list[int], SamplingParams], GenerationResult]
) -> BatchResult:
    """Each row (prompt ids, its sampling) decoded alone, in order, as a BatchResult."""
    start = time.perf_counter()
    results = BatchResult(decode(ids, params) for ids, params in rows)
    total = DecodeStats()
    for row in results:
        total.add(row.stats)
    total.wall_s = time.perf_counter() - start
    results.stats, results.batched_passes = total, total.target_passes
    return results
