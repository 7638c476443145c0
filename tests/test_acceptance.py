"""The acceptance rule alone, on explicit distributions: exact by a chi-square test.

Each test draws N samples with a fixed seed and rejects at a false-alarm rate of 1e-3.
A deliberately wrong rule (resample from p instead of the residual) must fail the same test.
"""

import numpy as np
import pytest
import torch
from tiny_models import chi_square_pvalue

from specdecode.acceptance import (
    accept_greedy,
    accept_sampled,
    accept_tree_greedy,
    accept_tree_sampled,
    children_of,
    first_false,
    residual,
)
from specdecode.sampling import sample

ALPHA = 1e-3
N = 10000


def random_dist(v, generator, peak=2.0):
    return torch.softmax(peak * torch.randn(v, generator=generator, dtype=torch.float64), -1)


def wrong_accept(draft_tokens, draft_probs, target_probs, generator):
    """The classic bug: on rejection draw from p instead of norm(max(0, p - q))."""
    n, _ = accept_sampled(draft_tokens, draft_probs, target_probs, generator)
    return n, int(sample(target_probs[n], generator))


def first_token_counts(rule, p, q, deterministic, seed):
    """Emitted first token over N trials: guess x ~ q (or fixed argmax q), then the rule."""
    g = torch.Generator().manual_seed(seed)
    counts = np.zeros(p.shape[-1])
    targets = torch.stack([p, p])  # [K+1=2, V]
    for _ in range(N):
        x = int(q.argmax()) if deterministic else int(sample(q, g))
        n, nxt = rule(torch.tensor([x]), None if deterministic else q.unsqueeze(0), targets, g)
        counts[x if n == 1 else nxt] += 1
    return counts


@pytest.mark.parametrize("deterministic", [False, True])
def test_first_token_is_distributed_as_p(deterministic):
    g = torch.Generator().manual_seed(0)
    p, q = random_dist(6, g), random_dist(6, g)
    counts = first_token_counts(accept_sampled, p, q, deterministic, seed=1)
    assert chi_square_pvalue(counts, p.numpy()) > ALPHA


@pytest.mark.parametrize("deterministic", [False, True])
def test_wrong_rule_is_caught(deterministic):
    g = torch.Generator().manual_seed(0)
    p, q = random_dist(6, g), random_dist(6, g)
    counts = first_token_counts(wrong_accept, p, q, deterministic, seed=1)
    assert chi_square_pvalue(counts, p.numpy()) < ALPHA


def test_acceptance_probability_is_one_minus_total_variation():
    g = torch.Generator().manual_seed(3)
    p, q = random_dist(8, g), random_dist(8, g)
    accepted = 0
    for _ in range(N):
        x = sample(q, g)
        n, _ = accept_sampled(x.reshape(1), q.unsqueeze(0), torch.stack([p, p]), g)
        accepted += n
    beta = float(torch.minimum(p, q).sum())
    se = (beta * (1 - beta) / N) ** 0.5
    assert abs(accepted / N - beta) < 4 * se  # about 6e-5 two-sided false-alarm rate


def test_all_accepted_draws_bonus_from_last_position():
    p = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    n, nxt = accept_sampled(torch.tensor([1, 2]), None, p, torch.Generator().manual_seed(0))
    assert (n, nxt) == (2, 0)


def test_residual_and_edge_cases():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    assert torch.allclose(residual(p, q), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(residual(p, p), p)  # no mass left: falls back to p
    assert first_false(torch.tensor([True, True, False, True])) == 2
    assert first_false(torch.tensor([True, True])) == 2
    assert first_false(torch.tensor([], dtype=torch.bool)) == 0


def test_greedy_accepts_matching_prefix_then_argmax():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    assert accept_greedy(torch.tensor([1, 0]), logits) == (2, 2)
    assert accept_greedy(torch.tensor([1, 2]), logits) == (1, 0)
    assert accept_greedy(torch.tensor([0, 0]), logits) == (0, 1)
    assert accept_greedy(torch.tensor([], dtype=torch.long), logits[:1]) == (0, 1)


# -- token trees: the root has children 0, 1, 2 (tokens 3, 1, 4); node 0 has children 3, 4 (tokens 0, 2)
TREE_TOKENS = [3, 1, 4, 0, 2]
TREE_PARENTS = [-1, -1, -1, 0, 0]


def test_tree_children_and_greedy_walk():
    assert children_of(TREE_PARENTS) == [[0, 1, 2], [3, 4], [], [], [], []]
    logits = torch.zeros(6, 6)
    logits[0, 3] = logits[1, 2] = logits[5, 5] = 1.0  # root -> 3 (node 0) -> 2 (node 4) -> bonus 5
    assert accept_tree_greedy(TREE_TOKENS, TREE_PARENTS, logits) == ([0, 4], 5)
    logits[0] = 0.0
    logits[0, 1] = logits[2, 0] = 1.0  # a later sibling (node 1, a leaf): bonus from its own row
    assert accept_tree_greedy(TREE_TOKENS, TREE_PARENTS, logits) == ([1], 0)
    logits[0] = 0.0
    logits[0, 5] = 1.0  # no child matches
    assert accept_tree_greedy(TREE_TOKENS, TREE_PARENTS, logits) == ([], 5)


def tree_wrong_rule(tokens, parents, target_probs, generator):
    """The bug the sibling recursion prevents: try each sibling against p unchanged, and draw
    from p (not the residual) when all are rejected."""
    children, path, row = children_of(parents), [], 0
    while True:
        p = target_probs[row]
        for child in children[row]:
            if torch.rand((), generator=generator, dtype=p.dtype) < p[tokens[child]]:
                path.append(child)
                break
        else:
            return path, int(sample(p, generator))
        row = path[-1] + 1


def tree_emitted(rule, probs, seed):
    """(first token, second token or -1) over N trials of `rule` on the fixed tree."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(N):
        path, nxt = rule(TREE_TOKENS, TREE_PARENTS, probs, g)
        emitted = [TREE_TOKENS[i] for i in path] + [nxt]
        out.append((emitted[0], emitted[1] if len(emitted) > 1 else -1))
    return out


def test_tree_recursive_rejection_is_distributed_as_p():
    """First token ~ p at the root; after the first child (token 3) the next ~ p at that node."""
    g = torch.Generator().manual_seed(5)
    probs = torch.stack([random_dist(6, g, peak=1.0) for _ in range(6)])  # [N+1 = 6, V = 6]
    emitted = tree_emitted(accept_tree_sampled, probs, seed=2)
    first = np.bincount([a for a, _ in emitted], minlength=6)
    assert chi_square_pvalue(first, probs[0].numpy()) > ALPHA
    second = np.bincount([b for a, b in emitted if a == 3], minlength=6)
    assert chi_square_pvalue(second, probs[1].numpy()) > ALPHA
    assert sum(a == 1 for a, _ in emitted) > 0 and sum(a == 4 for a, _ in emitted) > 0  # later siblings won too


def test_tree_wrong_rule_is_caught():
    g = torch.Generator().manual_seed(5)
    probs = torch.stack([random_dist(6, g, peak=1.0) for _ in range(6)])
    first = np.bincount([a for a, _ in tree_emitted(tree_wrong_rule, probs, seed=2)], minlength=6)
    assert chi_square_pvalue(first, probs[0].numpy()) < ALPHA
