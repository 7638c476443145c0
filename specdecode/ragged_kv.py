"""A model with one KV cache for a batch of rows of different lengths.

Every row owns the same cache slots, but a slot holds a token of a row only where `valid[row, slot]`
is set: the left padding of a short prompt and the guesses a row rejected are holes that no query
sees (an attention mask over the cache), and each row's position ids count only its own tokens. So
row b computes what it would alone, whatever the others accept. Slots at the end that no row uses
are cropped, and when holes fill more than half of the cache it is compacted. Rows can leave
(`select`) and join (`add_rows`) between passes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from specdecode.kv import PassClock, TimedModel, shared_prefix

FILLER = 0  # token id fed in a hole (its outputs are never read)


class RaggedCachedModel(TimedModel):
    """`ids[b]` are the tokens row b has in the cache, in order. Its passes are counted and timed on a
    `PassClock` (give it the model's `CachedModel.clock` so that the `auto` policy's costs see them)."""

    def __init__(self, model: PreTrainedModel, vocab_size: int, rows: int = 0, clock: PassClock | None = None) -> None:
        self.model, self.vocab_size = model, vocab_size
        self.cache = DynamicCache(config=model.config)
        self.valid = torch.zeros(rows, 0, dtype=torch.bool, device=model.device)  # [B, S]
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.clock = clock or PassClock(model.device.type)

    @property
    def rows(self) -> int:
        return len(self.ids)

    def _layers(self):
        return [layer for layer in self.cache.layers if getattr(layer, "keys", None) is not None and layer.keys.numel()]

    @torch.inference_mode()
    def select(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (indices, repeats allowed: a row repeated shares its cached prefix), in that order."""
        if not rows:  # an empty batch starts afresh (a cache of no rows cannot grow new ones)
            self.cache = DynamicCache(config=self.model.config)
            self.valid, self.ids = self.valid.new_zeros(0, 0), []
            return
        index = torch.tensor(list(rows), dtype=torch.long, device=self.valid.device)
        for layer in self._layers():
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        self.valid = self.valid.index_select(0, index)
        self.ids = [list(self.ids[r]) for r in rows]

    @torch.inference_mode()
    def add_rows(self, n: int) -> None:
        """Append n empty rows (every existing slot a hole for them)."""
        for layer in self._layers():
            shape = (n, *layer.keys.shape[1:])
            layer.keys = torch.cat([layer.keys, layer.keys.new_zeros(shape)])
            layer.values = torch.cat([layer.values, layer.values.new_zeros(shape)])
        self.valid = torch.cat([self.valid, self.valid.new_zeros(n, self.valid.shape[1])])
        self.ids += [[] for _ in range(n)]

    @torch.inference_mode()
    def truncate(self, lengths: Sequence[int]) -> None:
        """Keep the first lengths[b] tokens of each row; the slots of the rest become holes."""
        for b, length in enumerate(lengths):
            if length < len(self.ids[b]):
                slots = self.valid[b].nonzero().squeeze(-1)
                self.valid[b, slots[length:]] = False
                del self.ids[b][length:]
        used = self.valid.any(0).nonzero()
        keep = int(used[-1]) + 1 if len(used) else 0
        if keep < self.valid.shape[1]:
            if keep == 0:
                self.cache = DynamicCache(config=self.model.config)
            else:
                self.cache.crop(keep - self.valid.shape[1])
            self.valid = self.valid[:, :keep]
        if self.ids and self.valid.shape[1] > 2 * max(len(ids) for ids in self.ids):
            self.compact()

    @torch.inference_mode()
    def compact(self) -> None:
        """Drop the holes: each row's tokens move, in order, to the end of a cache as long as the
        longest row (shorter rows left-padded with holes)."""
        width = max(len(ids) for ids in self.ids)
        # a stable sort of the 0/1 flags puts each row's holes first and its tokens last, both in order
        order = torch.sort(self.valid.to(torch.int8), dim=1, stable=True).indices[:, self.valid.shape[1] - width :]
        for layer in self._layers():
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
        self.valid = self.valid.gather(1, order)

    def sync(self, tokens: Sequence[Sequence[int]]) -> list[list[int]]:
        """Keep each row's longest cached prefix of tokens[b], leaving at least its last token uncached;
        return the uncached tails."""
        lengths = [
            min(shared_prefix(cached, want), len(want) - 1) for cached, want in zip(self.ids, tokens, strict=True)
        ]
        self.truncate(lengths)
        return [list(want[n:]) for want, n in zip(tokens, lengths, strict=True)]

    @torch.inference_mode()
    def forward(self, new: Sequence[Sequence[int]], num_logits: int) -> torch.Tensor:
        """Append new[b] to row b (rows may get different counts, none at all included); return the
        logits of the last `num_logits` slots [B, num_logits, vocab_size]: row b's last len(new[b])
        tokens are at the end, holes (garbage) before them."""
        start = time.perf_counter()
        width, cached = max(len(n) for n in new), self.valid.shape[1]
        fresh = torch.zeros(self.rows, width, dtype=torch.bool, device=self.valid.device)
        ids = torch.full((self.rows, width), FILLER, dtype=torch.long, device=self.valid.device)
        for b, tokens in enumerate(new):
            if tokens:
                fresh[b, width - len(tokens) :] = True
                ids[b, width - len(tokens) :] = torch.tensor(list(tokens))
        valid = torch.cat([self.valid, fresh], dim=1)  # [B, S + W]
        causal = torch.ones(width, cached + width, dtype=torch.bool, device=valid.device).tril(cached)
        see = causal[None] & valid[:, None, :]  # [B, W, S + W]
        see[:, torch.arange(width), cached + torch.arange(width)] = True  # a hole sees itself: no empty softmax
        dtype = self.model.dtype
        mask = torch.zeros(see.shape, dtype=dtype, device=valid.device).masked_fill_(~see, torch.finfo(dtype).min)
        positions = (valid.cumsum(1)[:, cached:] - 1).clamp(min=0)  # tokens of the row before each slot
        out = self.model(
            input_ids=ids,
            attention_mask=mask[:, None],
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=num_logits,
        )
        self.valid = valid
        for row, tokens in zip(self.ids, new, strict=True):
            row.extend(int(t) for t in tokens)
        self.clock.record(sum(len(tokens) for tokens in new), time.perf_counter() - start)
        return out.logits[:, -num_logits:, : self.vocab_size]

    def next_logits(self, tokens: Sequence[Sequence[int]], extra: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Per row, logits after the last of tokens[b] and after each of extra[b]: [len(extra[b]) + 1, V].

        As `CachedModel.next_logits`: feeds the uncached tails, then the guesses; tails longer than
        one token (prompts) get a pass of their own when there are guesses.
        """
        tails = self.sync(tokens)
        if any(len(t) > 1 for t in tails) and any(extra):
            first = self.forward(tails, num_logits=1)
            rest = self.forward(extra, num_logits=max(len(e) for e in extra))
            return [torch.cat([first[b], rest[b, rest.shape[1] - len(e) :]]) for b, e in enumerate(extra)]
        logits = self.forward([[*t, *e] for t, e in zip(tails, extra, strict=True)], 1 + max(len(e) for e in extra))
        return [logits[b, logits.shape[1] - len(e) - 1 :] for b, e in enumerate(extra)]
