"""The verification math: which guessed tokens the target accepts, and the token after them.

Leviathan et al. 2023 / Chen et al. 2023. For guesses x_1..x_K drawn from q_1..q_K and the
target's distributions p_1..p_{K+1} (computed in one pass), accept x_i with probability
min(1, p_i(x_i) / q_i(x_i)); at the first rejection draw from norm(max(0, p_i - q_i)) and stop;
if all K are accepted draw a bonus token from p_{K+1}. The output is distributed exactly as p.
A deterministic guess has q_i = one-hot(x_i).
"""

from __future__ import annotations

import torch

from specdecode.sampling import sample


def first_false(mask: torch.Tensor) -> int:
    """Index of the first False in a [K] bool tensor, or K when all are True."""
    rejected = (~mask).nonzero()
    return int(rejected[0, 0]) if len(rejected) else int(mask.shape[0])


def accept_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
    """Greedy target: accept while the guess equals the target's argmax, then emit its argmax.

    draft_tokens: [K] long; target_logits: [K+1, V]. Returns (number accepted, next token).
    """
    choices = target_logits.argmax(-1)  # [K+1]
    n = first_false(draft_tokens == choices[:-1])
    return n, int(choices[n])


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last dim [..., V]; p itself where p <= q everywhere."""
    r = (p - q).clamp_min(0.0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(torch.finfo(r.dtype).tiny), p)


def accept_sampled(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[int, int]:
    """Speculative sampling for one chain of guesses.

    draft_tokens: [K] long; draft_probs: [K, V] the distributions they were drawn from, or None
    for a deterministic proposer; target_probs: [K+1, V]. Returns (number accepted, next token).
    """
    k = draft_tokens.shape[0]
    index = draft_tokens.unsqueeze(-1)  # [K, 1]
    p_x = target_probs[:k].gather(-1, index).squeeze(-1)  # [K]
    q_x = torch.ones_like(p_x) if draft_probs is None else draft_probs.gather(-1, index).squeeze(-1)
    u = torch.rand(k, generator=generator, device=p_x.device, dtype=p_x.dtype)
    n = first_false(u * q_x < p_x)  # u < p/q without dividing by q
    if n == k:
        return n, int(sample(target_probs[k], generator))
    q = torch.zeros_like(target_probs[n]).scatter_(-1, index[n], 1.0) if draft_probs is None else draft_probs[n]
    return n, int(sample(residual(target_probs[n], q), generator))


# -- token trees: node i has token tokens[i] and parent parents[i] (-1 for the root); row 0 of the
# target's output is the root's position and row i + 1 node i's. Guesses are deterministic (q = one-hot).


def children_of(parents: list[int]) -> list[list[int]]:
    """children[r] for each row r: the root's children at r = 0, node i's at r = i + 1 (in order)."""
    children: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, parent in enumerate(parents):
        children[parent + 1].append(i)
    return children


def accept_tree_greedy(tokens: list[int], parents: list[int], target_logits: torch.Tensor) -> tuple[list[int], int]:
    """Greedy target: follow the child equal to the target's argmax while there is one.

    target_logits: [N+1, V]. Returns (accepted path as node indices, next token).
    """
    choices = target_logits.argmax(-1).tolist()  # [N+1]
    children = children_of(parents)
    path, row = [], 0
    while True:
        match = next((c for c in children[row] if tokens[c] == choices[row]), None)
        if match is None:
            return path, choices[row]
        path.append(match)
        row = match + 1


def accept_tree_sampled(
    tokens: list[int], parents: list[int], target_probs: torch.Tensor, generator: torch.Generator | None
) -> tuple[list[int], int]:
    """Recursive rejection over siblings (SpecInfer; docs/design.md, section 2) for deterministic guesses.

    At a node with target distribution p, try its children in order: accept child x with
    probability p(x); on rejection p <- norm(max(0, p - one-hot(x))), i.e. x removed. Descend into
    an accepted child; when all are rejected (or at a leaf) draw the next token from p.
    target_probs: [N+1, V]. Returns (accepted path as node indices, next token).
    """
    children = children_of(parents)
    path, row = [], 0
    while True:
        p = target_probs[row]
        for child in children[row]:
            x = tokens[child]
            u = torch.rand((), generator=generator, device=p.device, dtype=p.dtype)
            if u * p.sum() < p[x]:  # p is kept unnormalised: accept with p(x) / sum(p)
                path.append(child)
                break
            p = p.clone()
            p[x] = 0.0
        else:
            return path, int(sample(p, generator))
        row = path[-1] + 1
