"""Token trees from a draft model: several guesses per position, verified in one target pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from specdecode.proposers.base import CountsDraftPasses, Proposal
from specdecode.proposers.draft_model import DraftModelProposer
from specdecode.sampling import Warp, check_finite, logits_to_probs

if TYPE_CHECKING:
    from specdecode.rules import TokenRules


def path_tokens(nodes: list[int], parents: list[int], i: int) -> list[int]:
    """The tokens from the root down to node i (none for i = -1, the root)."""
    path = []
    while i >= 0:
        path.append(nodes[i])
        i = parents[i]
    return path[::-1]


def log_probs(logits: torch.Tensor, warp: Warp) -> torch.Tensor:
    """The draft's log-probabilities [..., V] under `warp` (truncated tokens at -inf; greedy: temperature 1)."""
    if warp.greedy:
        return torch.log_softmax(logits.double(), -1)
    return logits_to_probs(logits.double(), warp).log()


class TreeProposer(CountsDraftPasses):
    """A beam of the `width` most probable paths, grown one depth per draft pass (as EAGLE-2 grows
    its tree by the draft's confidence): at each depth, every node of the previous one offers its
    `width` most probable next tokens and the `width` with the highest path probability are kept.
    K = depth gives width * K nodes from K draft passes. Guesses are deterministic (q = one-hot);
    `width=1` is the greedy chain.
    """

    def __init__(self, draft: DraftModelProposer, width: int = 2) -> None:
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"tree width must be a positive integer, got {width!r}")
        self.draft, self.width = draft, width

    def reset(self) -> None:
        self.draft.reset()

    def fork(self) -> TreeProposer:
        return TreeProposer(self.draft.fork(), self.width)

    def guess_cost(self, rows: int = 1) -> float | None:
        """Seconds of one depth: a draft pass over `width` nodes of each row."""
        return self.draft.draft.pass_cost(rows * self.width)

    def unread(self, tokens: Sequence[int]) -> int:
        return self.draft.unread(tokens)

    def propose(
        self,
        tokens: Sequence[int],
        k: int,
        warp: Warp,
        generator: torch.Generator | None,
        rules: TokenRules | None = None,
    ) -> Proposal:
        cache = self.draft.draft
        logits = cache.next_logits(tokens)[-1:]  # [1, V]: the root's
        base = len(cache)  # nodes are fed in order, node i at cache position base + i
        nodes: list[int] = []
        parents: list[int] = []
        frontier, scores = [-1], torch.zeros(1, dtype=torch.float64)  # node indices and path log-probs
        for depth in range(k):
            check_finite(logits, "draft model")
            if rules is not None:
                logits = rules.apply(logits, [path_tokens(nodes, parents, i) for i in frontier])
            paths = scores[:, None] + log_probs(logits, warp)  # [frontier, V]
            best = paths.flatten().topk(min(self.width, paths.numel()))
            keep = best.values > -torch.inf  # a truncating warp may leave fewer than `width`
            rows, token_ids = best.indices[keep] // paths.shape[1], best.indices[keep] % paths.shape[1]
            if not len(rows):
                break
            new = list(range(len(nodes), len(nodes) + len(rows)))
            parents += [frontier[r] for r in rows.tolist()]
            nodes += token_ids.tolist()
            frontier, scores = new, best.values[keep]
            if depth + 1 < k:
                positions = [base + parents[i] if parents[i] >= 0 else base - 1 for i in new]
                logits = cache.forward([nodes[i] for i in new], num_logits=len(new), parents=positions)
        cache.rollback(base)  # the accepted path is fed again next step, with the target's token
        return Proposal(nodes, None, parents)
