"""The speedup formulas and the statistics, on made-up numbers."""

import random
import statistics

import pytest

from specdecode.pass_costs import PACE_RATE, Pace, PassCosts
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
    policy = AutoK(cost=lambda n: 1.0, draft_cost=lambda rows: rows * 0.05, k_max=8)
    for _ in range(20):
        policy.observe(8, 8)
    assert policy.next_k() == 8


def test_auto_falls_back_to_plain_decoding_and_probes_with_backoff():
    cpu_curve = {1: 1.0, 2: 2.0, 3: 2.9, 4: 2.9, 5: 2.9}
    policy = AutoK(cost=cpu_curve.get, draft_cost=lambda rows: rows * 0.1, k_max=4)
    for _ in range(5):
        policy.observe(4, 0)  # a useless draft
    ks = [policy.next_k() for _ in range(4 + 8 + 16)]
    assert ks.count(1) == 3 and ks.count(0) == 25  # probes after 4, 8 and 16 plain steps
    assert [i for i, k in enumerate(ks) if k] == [3, 11, 27]


class MedianCosts:
    """Each size's median of its last 5 readings: what the policy read before `pass_costs`."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}

    def observe(self, n: int, seconds: float) -> None:
        self.times.setdefault(n, []).append(seconds)

    def cost(self, n: int) -> float | None:
        return statistics.median(self.times[n][-5:]) if n in self.times else None


def guesses_on_a_drifting_machine(target, draft) -> int:
    """Steps out of 300 that guess, with a useless draft (0.16 of a target pass, never right) on a
    machine whose pace swings between 1.0 and 1.3 every 10 steps (+-5% noise, seeded). A pass over
    n tokens costs 1 + 0.05 (n - 1) times the pace."""
    rng = random.Random(0)
    policy = AutoK(cost=target.cost, draft_cost=draft.cost, k_max=4)
    for _ in range(3):  # calibration, at the normal pace
        for n in range(1, 6):
            target.observe(n, 1 + 0.05 * (n - 1))
        draft.observe(1, 0.16)
    guessing = 0
    for step in range(300):
        pace = (1.3 if step // 10 % 2 else 1.0) * (1 + 0.05 * rng.uniform(-1, 1))
        k = policy.next_k()
        for _ in range(k):
            draft.observe(1, 0.16 * pace)
        target.observe(k + 1, (1 + 0.05 * k) * pace)
        policy.observe(k, 0)
        guessing += k > 0
    return guessing


def test_auto_stays_plain_with_a_useless_draft_on_a_drifting_machine():
    """Plain decoding reads only one-token passes: with each size's own recent median, a slow
    one-token reading against an older, faster 2-token one makes a guess look cheaper than it is,
    and the policy guesses again at every slow spell (30 steps). With the costs at the shared pace
    it guesses in its first steps (the prior) and at its probes only (9)."""
    pace = Pace()
    assert guesses_on_a_drifting_machine(PassCosts(pace), PassCosts(pace)) <= 10
    assert guesses_on_a_drifting_machine(MedianCosts(), MedianCosts()) >= 20  # negative control


def test_pass_costs_move_every_size_with_the_machine_and_keep_their_ratios():
    pace = Pace()
    target, draft = PassCosts(pace), PassCosts(pace)
    for _ in range(3):
        target.observe(1, 1.0)
        target.observe(2, 1.05)
        draft.observe(1, 0.2)
    for _ in range(30):  # the machine slows by 1.3; only one-token target passes are seen
        target.observe(1, 1.3)
    assert target.cost(1) == pytest.approx(1.3, rel=0.03)
    assert target.cost(2) / target.cost(1) == pytest.approx(1.05, rel=0.02)
    assert draft.cost(1) / target.cost(1) == pytest.approx(0.2, rel=0.02)
    for _ in range(30):  # back to normal; only 2-token passes are seen
        target.observe(2, 1.05)
    assert target.cost(1) == pytest.approx(1.0, rel=0.05)  # each shape took a few % of the swings
    before = pace.value
    target.observe(2, 1000.0)  # a pause of the process: the pace moves by at most 2 ** PACE_RATE
    assert pace.value / before == pytest.approx(2**PACE_RATE)


def test_auto_asks_a_margin_before_guessing():
    """A draft that the model says is 1.5% faster than plain decoding is not used (`min_gain` 3%)."""
    policies = [AutoK(cost=None, draft_cost=lambda rows: 0.1, k_max=1, min_gain=m) for m in (0.03, 0.0)]
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
    policy = AutoK(cost=cpu_curve.get, draft_cost=lambda rows: rows * 0.1, k_max=4)
    for _ in range(30):
        policy.observe(4, 4)
    k = policy.next_k()
    assert k == best_k(policy.rates, 0.1, cpu_curve)[0] == 4


def test_auto_learns_acceptance_per_position():
    """Bursty acceptance: every other step rejects the first guess, the others accept all six.
    The truth is 0.5 * 1 + 0.5 * 7 = 4 tokens a pass; one alpha (6/7 of guesses examined were
    accepted) would predict 4.6, the per-position rates see the real pattern."""
    policy = AutoK(cost=lambda n: 1.0 + 0.05 * n, draft_cost=lambda rows: rows * 0.1, k_max=6)
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
    policy = AutoK(cost=lambda n: 1.0 + 0.05 * n, draft_cost=lambda rows: rows * 0.1, k_max=8)
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


def test_auto_shrinks_k_as_the_batch_grows_and_verification_stops_being_cheap():
    """A CPU-like target (a pass costs 1 + 0.05 per token beyond the first), a draft pass 0.1 + 0.01 a
    row, guesses accepted with probability 0.7: one row guesses several tokens, K shrinks as rows are
    added, and 32 rows, whose plain pass already costs what verifying many guesses of one row does,
    guess none."""
    policy = AutoK(cost=lambda n: 1.0 + 0.05 * (n - 1), draft_cost=lambda rows: 0.1 + 0.01 * rows, k_max=8)
    rng = random.Random(0)
    for _ in range(300):
        accepted = 0
        while accepted < 8 and rng.random() < 0.7:
            accepted += 1
        policy.observe(8, accepted)
    ks = [policy.next_k(rows) for rows in (1, 2, 4, 8, 16, 32)]
    assert ks[0] >= 3 and ks == sorted(ks, reverse=True) and ks[-1] == 0, ks


def test_pass_costs_interpolate_sizes_not_measured():
    costs = PassCosts(Pace())
    for n, seconds in ((1, 1.0), (4, 1.6), (8, 2.0)):
        costs.observe(n, seconds)
    assert costs.cost(2) == pytest.approx(1.2) and costs.cost(6) == pytest.approx(1.8)
    assert costs.cost(16) == pytest.approx(2.8)  # along the last segment


def test_auto_does_not_probe_where_no_acceptance_could_pay():
    """32 rows, for which a guess costs more than a plain pass whatever is accepted: K stays 0 and no
    probe is made (it would make every row's draft catch up for nothing); one row probes."""
    policy = AutoK(cost=lambda n: 1.0 + 0.05 * (n - 1), draft_cost=lambda rows: 0.5 + 0.05 * rows, k_max=8)
    for _ in range(20):
        policy.observe(8, 0)  # a useless draft, so that one row plain-decodes too
    assert [policy.next_k(32) for _ in range(200)] == [0] * 200
    assert [policy.next_k(1) for _ in range(4)] == [0, 0, 0, 1] and policy.probe


def test_auto_waits_for_a_gain_that_pays_for_the_drafts_catching_up():
    """A gain of about 5% is taken when the draft is in step, not when it has 2000 tokens to read
    first; a large gain is taken either way."""
    policy = AutoK(cost=lambda n: 1.0 + 0.9 * (n - 1), draft_cost=lambda n: 0.005 * n, k_max=1)
    for _ in range(300):
        policy.observe(1, 1)
    assert policy.next_k(1, unread=0) == 1 and policy.next_k(1, unread=2000) == 0
    policy.cost = lambda n: 1.0
    assert policy.next_k(1, unread=2000) == 1
