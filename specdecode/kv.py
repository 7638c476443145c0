"""A model together with its KV cache and the token ids that cache holds.

Rolling back is cropping the cache; `sync` keeps the longest cached prefix of a token sequence,
so a rejected guess, a new prompt that shares a prefix, or a fresh prompt all take one call.

The cache may also end in a token tree: `forward(..., parents=...)` appends nodes that each see
the sequence before the tree and their own ancestors only (a tree attention mask, position ids by
depth); `keep_path` then keeps one root-to-node path, whichever branch it is, and drops the rest.

Several sequences of one model (rows of a batch) are `fork`s of one CachedModel, each with its own
cache; `forward_together` and `next_logits_together` run them in one pass (one call of the compiled
decoder, every row's bits as in a pass of its own) and count it once on their shared `PassClock`.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from specdecode.compiled_decoder import FACTORY
from specdecode.pass_costs import PassCosts, device_pace

TIMED_PASS_MAX = 512  # passes over at most this many new tokens (all rows) are timed per size


class PassClock:
    """The passes of one model, over however many rows: their count, seconds, the recent times per
    number of new tokens and the drift-aware cost estimate (`specdecode.pass_costs`)."""

    def __init__(self, device_type: str) -> None:
        self.passes, self.seconds = 0, 0.0
        self.times: dict[int, deque[float]] = {}
        self.costs = PassCosts(device_pace(device_type))

    def record(self, n: int, seconds: float) -> None:
        """A pass over n new tokens (all rows together) took `seconds`."""
        self.passes += 1
        self.seconds += seconds
        if n <= TIMED_PASS_MAX:
            self.times.setdefault(n, deque(maxlen=5)).append(seconds)
            self.costs.observe(n, seconds)


class TimedModel:
    """What a model's caches share, one row or many (`CachedModel`, `ragged_kv.RaggedCachedModel`): the
    model and its `PassClock`, which counts and times every pass."""

    model: PreTrainedModel
    clock: PassClock

    @property
    def passes(self) -> int:
        return self.clock.passes

    @property
    def forward_s(self) -> float:
        return self.clock.seconds

    @property
    def device(self) -> torch.device:
        return self.model.device


class CachedModel(TimedModel):
    """Runs a causal LM over new tokens only; `forward_s` accumulates time in its passes,
    `pass_time(n)` is the median of the last few passes over n new tokens (a measurement) and
    `pass_cost(n)` their drift-aware estimate now (for the `auto` policy; `specdecode.pass_costs`).

    A model given a compiled decoder (`specdecode.compiled_decoder.attach`, drafts) runs through it,
    with the decoder's own cache, instead of its modules."""

    def __init__(self, model: PreTrainedModel, vocab_size: int, clock: PassClock | None = None) -> None:
        self.model = model
        self.vocab_size = vocab_size  # logits beyond it (padding rows) are dropped
        make_decoder = getattr(model, FACTORY, None)
        self.decoder = make_decoder() if make_decoder is not None else None
        self.cache = DynamicCache(config=model.config)
        self.ids: list[int] = []
        self.tree_start: int | None = None  # cache positions from here on are tree nodes
        self._tree: dict[int, tuple[int, int]] = {}  # node position -> (parent position, position id)
        self.clock = clock or PassClock(self.device.type)

    def fork(self) -> CachedModel:
        """An empty cache for another sequence of the same model, counted on the same clock."""
        return CachedModel(self.model, self.vocab_size, self.clock)

    def __len__(self) -> int:
        return len(self.ids)

    def rollback(self, length: int) -> None:
        """Forget every cached position from `length` on."""
        if self.decoder is not None:
            self.decoder.crop(length)
        elif length == 0:
            self.cache = DynamicCache(config=self.model.config)
        elif length < len(self.ids):
            self.cache.crop(length - len(self.ids))  # transformers 5: a negative count removes
        del self.ids[length:]
        if self.tree_start is not None and length <= self.tree_start:
            self.tree_start = None
        self._tree = {pos: node for pos, node in self._tree.items() if pos < length}

    def keep_path(self, path: Sequence[int]) -> None:
        """Keep the tree nodes `path` (indices from the first node; the first a child of the tree's
        root, each next one a child of the one before) and drop every other node."""
        start = self.tree_start
        if start is None:
            raise RuntimeError("keep_path needs a token tree in the cache")
        positions = [start + i for i in path]
        index = torch.tensor(positions, dtype=torch.long, device=self.device)
        if self.decoder is not None:
            self.decoder.keep(start, index)
        else:
            for layer in self.cache.layers:
                if getattr(layer, "keys", None) is not None and layer.keys.numel():
                    keys, values = layer.keys, layer.values
                    layer.keys = torch.cat([keys[..., :start, :], keys.index_select(-2, index)], dim=-2)
                    layer.values = torch.cat([values[..., :start, :], values.index_select(-2, index)], dim=-2)
        self.ids = self.ids[:start] + [self.ids[p] for p in positions]
        self.tree_start, self._tree = None, {}

    def unread(self, tokens: Sequence[int]) -> int:
        """How many of `tokens` are past the longest prefix of them the cache holds (tree nodes aside)."""
        cached = self.ids if self.tree_start is None else self.ids[: self.tree_start]
        return len(tokens) - shared_prefix(cached, tokens)

    def sync(self, tokens: Sequence[int], keep_at_most: int | None = None) -> None:
        """Roll back to the longest prefix shared with `tokens` (and at most `keep_at_most`)."""
        if self.tree_start is not None:  # tree nodes are not a sequence: drop them
            self.rollback(self.tree_start)
        n = len(tokens) - self.unread(tokens)
        if keep_at_most is not None:
            n = min(n, keep_at_most)
        self.rollback(n)

    @torch.inference_mode()
    def forward(self, new_ids: Sequence[int], num_logits: int, parents: Sequence[int] | None = None) -> torch.Tensor:
        """Append `new_ids` to the cache; return logits [num_logits, vocab_size] of the last ones.

        With `parents`, the last len(parents) new tokens are tree nodes: parents[i] is the cache
        position of node i's parent (the token before the tree or an earlier node, cached or new).
        """
        return forward_together([self], [new_ids], [num_logits], [parents])[0]

    def _modules_forward(self, new_ids: Sequence[int], num_logits: int, parents: Sequence[int] | None) -> torch.Tensor:
        """A pass of the model's modules over new_ids -> logits [num_logits, V+] (not yet recorded)."""
        tree = self._tree_inputs(len(new_ids) - len(parents), parents) if parents is not None else {}
        input_ids = torch.tensor([list(new_ids)], dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=input_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=num_logits, **tree
        )
        return out.logits[0, -num_logits:]

    def _compiled_inputs(
        self, new_ids: Sequence[int], parents: Sequence[int] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The compiled decoder's inputs for new_ids: ids [n], positions [n], see [n, len + n] or None."""
        ids = torch.tensor(list(new_ids), dtype=torch.long)
        if parents is None:
            return ids, torch.arange(len(self.ids), len(self.ids) + len(ids)), None
        tree = self._tree_inputs(len(new_ids) - len(parents), parents)
        return ids, tree["position_ids"][0], tree["attention_mask"][0, 0] == 0

    def _tree_inputs(self, num_linear: int, parents: Sequence[int]) -> dict[str, torch.Tensor]:
        """Attention mask [1, 1, n, L + n] (0 where a query may look, the dtype's minimum elsewhere)
        and position ids [1, n] for `num_linear` sequence tokens then len(parents) tree nodes after
        L cached positions. Records the nodes."""
        length, n = len(self.ids), num_linear + len(parents)
        for i, parent in enumerate(parents, start=num_linear):
            if not 0 <= parent < length + i:
                raise ValueError(f"a tree node's parent must be an earlier position, got {parent} at {length + i}")
        if self.tree_start is None:
            self.tree_start = length + num_linear
        elif num_linear:
            raise RuntimeError("sequence tokens cannot follow tree nodes")
        dtype = self.model.dtype
        mask = torch.full((n, length + n), torch.finfo(dtype).min, dtype=dtype, device=self.device)
        position_ids = list(range(length, length + num_linear))
        for i in range(num_linear):
            mask[i, : length + i + 1] = 0.0
        for i, parent in enumerate(parents, start=num_linear):
            node, seen = parent, [length + i]
            while node >= self.tree_start:  # climb to the root; the sequence up to it is seen whole
                seen.append(node)
                node = self._tree[node][0]
            mask[i, : node + 1] = 0.0
            mask[i, seen] = 0.0
            depth = self._tree[parent][1] + 1 if parent >= self.tree_start else parent + 1
            self._tree[length + i] = (parent, depth)
            position_ids.append(depth)
        positions = torch.tensor([position_ids], dtype=torch.long, device=self.device)
        return {"attention_mask": mask[None, None], "position_ids": positions}

    def pass_time(self, n: int) -> float | None:
        """Median seconds of the recent passes over n new tokens, None if there was none."""
        times = self.clock.times.get(n)
        return statistics.median(times) if times else None

    def pass_cost(self, n: int) -> float | None:
        """Estimated seconds of a pass over n new tokens at the machine's current pace, None before one."""
        return self.clock.costs.cost(n)

    def next_logits(
        self, tokens: Sequence[int], extra: Sequence[int] = (), tree: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Logits after the last token of `tokens` and after each of `extra`: [len(extra)+1, V]
        (`next_logits_together` for one sequence)."""
        return next_logits_together([self], [tokens], [extra], [tree])[0]


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of a and b."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):  # the usual case, at C speed
        return n
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)


def forward_together(
    caches: Sequence[CachedModel],
    new_ids: Sequence[Sequence[int]],
    num_logits: Sequence[int],
    parents: Sequence[Sequence[int] | None],
) -> list[torch.Tensor]:
    """`CachedModel.forward` for several forks of one cache in one pass: new_ids[b] appended to caches[b],
    logits [num_logits[b], V] each. A compiled decoder runs all rows in one call (each row's bits as in
    a pass of its own); a model's modules run one pass per cache. `parents[b]` as in `forward`."""
    for cache, tree in zip(caches, parents, strict=True):
        if tree is None and cache.tree_start is not None:
            raise RuntimeError("keep_path or roll back the token tree before appending a sequence")
    clock = caches[0].clock
    if any(cache.clock is not clock for cache in caches):
        raise ValueError("forward_together takes forks of one cache")
    start = time.perf_counter()
    if caches[0].decoder is not None:
        inputs = [cache._compiled_inputs(ids, tree) for cache, ids, tree in zip(caches, new_ids, parents, strict=True)]
        ids, positions, see = (list(column) for column in zip(*inputs, strict=True))
        logits = type(caches[0].decoder).forward_batch(
            [cache.decoder for cache in caches], ids, positions, see, list(num_logits)
        )
    else:
        logits = [
            cache._modules_forward(ids, n, tree)
            for cache, ids, n, tree in zip(caches, new_ids, num_logits, parents, strict=True)
        ]
    for cache, ids in zip(caches, new_ids, strict=True):
        cache.ids.extend(int(t) for t in ids)
    clock.record(sum(len(ids) for ids in new_ids), time.perf_counter() - start)
    return [rows[:, : cache.vocab_size] for cache, rows in zip(caches, logits, strict=True)]


def next_logits_together(
    caches: Sequence[CachedModel],
    tokens: Sequence[Sequence[int]],
    extras: Sequence[Sequence[int]],
    trees: Sequence[Sequence[int] | None],
) -> list[torch.Tensor]:
    """Per fork b: the logits after the last token of tokens[b] and after each of extras[b],
    [len(extras[b]) + 1, V], in one pass for all rows (two where a row has a prompt to read first).

    Each row feeds whatever of its tokens is not cached yet, then its extras: a chain, or with
    trees[b] a token tree where trees[b][i] is the index in extras[b] of node i's parent (-1: the
    last of tokens[b]). An uncached stretch of more than one token (a prompt) gets a pass of its own,
    exactly as decoding without guesses feeds it: matrix kernels round differently for a different
    number of rows, so a prefill that also carried the guesses would cache other bits.
    """
    tails, parents = [], []
    for cache, seq, tree in zip(caches, tokens, trees, strict=True):
        cache.sync(seq, keep_at_most=len(seq) - 1)
        tails.append(list(seq[len(cache.ids) :]))
        parents.append(None if tree is None else [len(seq) + j if j >= 0 else len(seq) - 1 for j in tree])
    prefill = [b for b, (tail, extra) in enumerate(zip(tails, extras, strict=True)) if len(tail) > 1 and extra]
    first = {}
    if prefill:
        rows = [caches[b] for b in prefill]
        first = dict(
            zip(
                prefill,
                forward_together(rows, [tails[b] for b in prefill], [1] * len(prefill), [None] * len(prefill)),
                strict=True,
            )
        )
    feeds = [
        list(extra) if b in first else [*tail, *extra]
        for b, (tail, extra) in enumerate(zip(tails, extras, strict=True))
    ]
    counts = [len(extra) + (b not in first) for b, extra in enumerate(extras)]
    logits = forward_together(caches, feeds, counts, parents)
    return [torch.cat([first[b], rows]) if b in first else rows for b, rows in enumerate(logits)]
