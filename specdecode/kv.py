"""A model together with its KV cache and the token ids that cache holds.

Rolling back is cropping the cache; `sync` keeps the longest cached prefix of a token sequence,
so a rejected guess, a new prompt that shares a prefix, or a fresh prompt all take one call.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

TIMED_PASS_MAX = 64  # passes over at most this many new tokens are timed per size (prefills are not)


class CachedModel:
    """Runs a causal LM over new tokens only; `forward_s` accumulates time in its passes and
    `pass_cost(n)` is the median of the last few passes over n new tokens."""

    def __init__(self, model: PreTrainedModel, vocab_size: int) -> None:
        self.model = model
        self.vocab_size = vocab_size  # logits beyond it (padding rows) are dropped
        self.cache = DynamicCache(config=model.config)
        self.ids: list[int] = []
        self.passes = 0
        self.forward_s = 0.0
        self._pass_times: dict[int, deque[float]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def rollback(self, length: int) -> None:
        """Forget every cached position from `length` on."""
        if length == 0:
            self.cache = DynamicCache(config=self.model.config)
        elif length < len(self.ids):
            self.cache.crop(length - len(self.ids))  # transformers 5: a negative count removes
        del self.ids[length:]

    def sync(self, tokens: Sequence[int], keep_at_most: int | None = None) -> None:
        """Roll back to the longest prefix shared with `tokens` (and at most `keep_at_most`)."""
        n = min(len(self.ids), len(tokens))
        if self.ids[:n] != list(tokens[:n]):
            n = next(i for i, (a, b) in enumerate(zip(self.ids, tokens, strict=False)) if a != b)
        if keep_at_most is not None:
            n = min(n, keep_at_most)
        self.rollback(n)

    @torch.inference_mode()
    def forward(self, new_ids: Sequence[int], num_logits: int) -> torch.Tensor:
        """Append `new_ids` to the cache; return logits [num_logits, vocab_size] of the last ones."""
        start = time.perf_counter()
        input_ids = torch.tensor([list(new_ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=num_logits)
        self.ids.extend(int(t) for t in new_ids)
        seconds = time.perf_counter() - start
        self.passes += 1
        self.forward_s += seconds
        if len(new_ids) <= TIMED_PASS_MAX:
            self._pass_times.setdefault(len(new_ids), deque(maxlen=5)).append(seconds)
        return out.logits[0, -num_logits:, : self.vocab_size]

    def pass_cost(self, n: int) -> float | None:
        """Median seconds of the recent passes over n new tokens, None if there was none."""
        times = self._pass_times.get(n)
        return statistics.median(times) if times else None

    def next_logits(self, tokens: Sequence[int], extra: Sequence[int] = ()) -> torch.Tensor:
        """Logits after each of the last len(extra)+1 positions of tokens + extra: [len(extra)+1, V].

        Feeds whatever of `tokens` is not cached yet, then `extra`.
        """
        self.sync(tokens, keep_at_most=len(tokens) - 1)
        return self.forward([*tokens[len(self.ids) :], *extra], num_logits=len(extra) + 1)
