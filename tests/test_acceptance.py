"""The acceptance rule alone, on explicit distributions: exact by a chi-square test.

Each test draws N samples with a fixed seed and rejects at a false-alarm rate of 1e-3.
A deliberately wrong rule (resample from p instead of the residual) must fail the same test.
"""

import numpy as np
import pytest
import torch
from tiny_models import chi_square_pvalue

from specdecode.acceptance import accept_greedy, accept_sampled, first_false, residual
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
