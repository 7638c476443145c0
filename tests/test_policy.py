"""The speedup formulas and the statistics, on made-up numbers."""

import pytest

from specdecode.policy import (
    AutoK,
    HeuristicK,
    best_k,
    expected_speedup,
    expected_tokens,
    expected_tokens_per_pass,
)
from specdecode.stats import DecodeStats


def test_expected_tokens_per_pass():
    assert expected_tokens_per_pass(0.5, 3) == pytest.approx(1.875)
    assert expected_tokens_per_pass(1.0, 4) == 5.0
    assert expected_tokens_per_pass(0.0, 4) == 1.0
    with pytest.raises(ValueError):
        expected_tokens_per_pass(1.2, 1)


def test_expected_speedup_and_best_k():
    free = {n: 1.0 for n in range(1, 10)}  # a GPU: verification costs as much as one token
    assert expected_speedup(0.8, 4, 0.0, free) == pytest.approx((1 - 0.8**5) / 0.2)
    assert best_k(0.8, 0.0, free)[0] == 8  # free guesses: guess as many as allowed
    costly = {1: 1.0, 2: 2.0, 3: 2.9, 4: 2.9, 5: 2.9}  # a CPU: verification is not free
    assert best_k(0.3, 0.2, costly) == (0, 1.0)  # a useless draft: plain decoding wins
    k, s = best_k(0.95, 0.05, costly)
    assert k == 4 and s == pytest.approx(expected_speedup(0.95, 4, 0.05, costly))


def test_stats_from_made_up_steps():
    s = DecodeStats()
    for guessed, accepted in [(4, 4), (4, 1), (4, 0), (2, 2)]:
        s.record_step(guessed, accepted)
    s.new_tokens, s.wall_s, s.target_s, s.draft_s = 11, 2.0, 1.2, 0.7
    assert s.drafted == 14 and s.accepted == 7 and s.rejections == 2
    assert s.acceptance_rate == pytest.approx(0.5)
    assert s.token_acceptance == pytest.approx(7 / 9)
    assert s.mean_acceptance_length == pytest.approx(1 + 7 / 4)
    assert s.per_position_acceptance == pytest.approx([3 / 4, 2 / 4, 1 / 3, 1 / 3])
    assert s.target_passes_per_token == pytest.approx(4 / 11)
    assert s.tokens_per_s == pytest.approx(5.5)
    assert s.overhead_s == pytest.approx(0.1)
    assert s.to_dict()["mean_acceptance_length"] == pytest.approx(2.75)


def test_heuristic_schedule():
    policy = HeuristicK(start=4, k_max=8)
    for guessed, accepted, expected in [(4, 4, 6), (6, 6, 8), (8, 8, 8), (8, 3, 7), (7, 0, 6)]:
        policy.observe(guessed, accepted)
        assert policy.next_k() == expected
    for _ in range(10):
        policy.observe(policy.next_k(), 0)
    assert policy.next_k() == 1


def test_auto_guesses_many_when_verification_is_free_and_guesses_are_good():
    policy = AutoK(cost=lambda n: 1.0, draft_cost=lambda: 0.05, k_max=8)
    for _ in range(20):
        policy.observe(8, 8)
    assert policy.next_k() == 8


def test_auto_falls_back_to_plain_decoding_and_probes_with_backoff():
    cpu_curve = {1: 1.0, 2: 2.0, 3: 2.9, 4: 2.9, 5: 2.9}
    policy = AutoK(cost=cpu_curve.get, draft_cost=lambda: 0.4, k_max=4)
    for _ in range(5):
        policy.observe(4, 0)  # a useless draft
    ks = [policy.next_k() for _ in range(4 + 8 + 16)]
    assert ks.count(1) == 3 and ks.count(0) == 25  # probes after 4, 8 and 16 plain steps
    assert [i for i, k in enumerate(ks) if k] == [3, 11, 27]


def test_auto_re_measures_a_stale_one_token_cost():
    """A useless draft, and one slow reading of the one-token pass (1.3 against a true 1.0) that
    makes guessing one token look 20% faster than plain decoding (truly 8% slower). The plain
    steps the policy makes to re-measure replace the reading and it falls back; without them it
    would guess every step."""
    import statistics

    readings = [1.3] * 3  # the one-token pass times the model has seen; its cost is their recent median
    policy = AutoK(
        cost=lambda n: statistics.median(readings[-5:]) if n == 1 else 1.05, draft_cost=lambda: 0.05, k_max=1
    )
    ks = []
    for _ in range(200):
        k = policy.next_k()
        ks.append(k)
        if k == 0:
            readings.append(1.0)
        policy.observe(k, 0)
    assert ks[:10].count(1) >= 8  # guessing at first: the slow reading says it pays
    assert sum(ks[-100:]) <= 5  # then plain decoding with rare probes


def test_auto_asks_a_margin_before_guessing():
    """A draft that the model says is 1.5% faster than plain decoding is not used (`min_gain` 3%)."""
    policies = [AutoK(cost=None, draft_cost=lambda: 0.1, k_max=1, min_gain=m) for m in (0.03, 0.0)]
    for policy in policies:
        for step in range(300):
            policy.observe(1, int(step % 10 < 3))  # about 30% accepted
    rate = policies[0].rates[0]
    costs = {1: 1.0, 2: (1.0 + rate) / 1.015 - 0.1}  # so that expected_speedup(K = 1) = 1.015
    for policy in policies:
        policy.cost = costs.get
    assert expected_speedup(policies[0].rates, 1, 0.1, costs) == pytest.approx(1.015)
    assert [policies[0].next_k() for _ in range(3)] == [0, 0, 0]
    assert policies[1].next_k() == 1


def test_auto_follows_measured_costs():
    cpu_curve = {1: 1.0, 2: 2.0, 3: 2.9, 4: 2.9, 5: 2.9}
    policy = AutoK(cost=cpu_curve.get, draft_cost=lambda: 0.1, k_max=4)
    for _ in range(30):
        policy.observe(4, 4)
    k = policy.next_k()
    assert k == best_k(policy.rates, 0.1, cpu_curve)[0] == 4


def test_auto_learns_acceptance_per_position():
    """Bursty acceptance: every other step rejects the first guess, the others accept all six.
    The truth is 0.5 * 1 + 0.5 * 7 = 4 tokens a pass; one alpha (6/7 of guesses examined were
    accepted) would predict 4.6, the per-position rates see the real pattern."""
    policy = AutoK(cost=lambda n: 1.0 + 0.05 * n, draft_cost=lambda: 0.1, k_max=6)
    for step in range(60):
        policy.observe(6, 6 if step % 2 else 0)
    rates = policy.rates
    assert 0.3 < rates[0] < 0.7 and all(r > 0.85 for r in rates[1:])
    assert policy.next_k() == 6
    assert expected_tokens(rates, 6) == pytest.approx(4.0, abs=0.3)
    assert expected_tokens_per_pass(6 / 7, 6) > 4.5


def test_expected_tokens_with_rates():
    assert expected_tokens(0.5, 3) == pytest.approx(expected_tokens_per_pass(0.5, 3))
    assert expected_tokens([0.5, 1.0], 3) == pytest.approx(1 + 0.5 + 0.5 + 0.5)  # the last rate repeats
    assert expected_tokens([0.0, 1.0], 5) == 1.0


def test_auto_rates_are_not_biased_towards_the_prior():
    """Each guess right with probability 0.9: the first position's rate, averaged over a long run,
    follows the observed frequency within 0.03 (a heavy prior with a short memory sits 0.07 lower,
    as the previous policy did, and under-guesses)."""
    import random

    rng = random.Random(0)
    policy = AutoK(cost=lambda n: 1.0 + 0.05 * n, draft_cost=lambda: 0.1, k_max=8)
    seen, hits = [], []
    for step in range(400):
        accepted = next((i for i in range(8) if rng.random() >= 0.9), 8)
        policy.observe(8, accepted)
        if step >= 100:
            seen.append(policy.rates[0])
            hits.append(accepted > 0)
    assert abs(sum(seen) / len(seen) - sum(hits) / len(hits)) < 0.03


def test_stats_add_sums_counters_and_positions():
    a, b = DecodeStats(), DecodeStats()
    a.record_step(2, 2)
    b.record_step(4, 1)
    b.record_step(4, 4)
    a.add(b)
    assert (a.drafted, a.accepted, a.rejections, a.target_passes) == (10, 7, 1, 3)
    assert a.drafted_at == [3, 3, 2, 2] and a.accepted_at == [3, 2, 1, 1]
