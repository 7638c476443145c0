"""Batches: every row is what it would be alone (float64), sampled rows have the target's
distribution, and rows do not share random numbers."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats
from test_sampling_exact import ALPHA, NEW, PROMPT, V, exact_distribution
from tiny_models import ARCHS, chi_square_pvalue, make_model, make_tokenizer, perturbed_copy

import specdecode.batch
import specdecode.ragged_kv
from specdecode import SamplingParams, SpeculativeDecoder
from specdecode.batch import BatchDecoder
from specdecode.policy import HeuristicK
from specdecode.step import choose_k

TOKENIZER = make_tokenizer()
PROMPTS = ["def f(x):", "a", "print(1, 2) = 3\nfor i in range(10):", "the quick brown fox jumps"]  # 9, 1, 36, 25 tokens


@pytest.fixture(scope="module", params=ARCHS)
def models(request):
    target = make_model(request.param, len(TOKENIZER), seed=0, layers=3, init_range=0.3)
    return target, perturbed_copy(target, noise=0.05, seed=1)


def alone(dec, prompt, **kw):
    dec.reset()
    return dec.generate(prompt, **kw)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_greedy_rows_are_identical_to_each_prompt_alone(models, k):
    """Prompts of 1 to 36 tokens (left padding), and a stop string that ends some rows early."""
    dec = SpeculativeDecoder(*models, TOKENIZER)
    free = alone(dec, PROMPTS[0], max_new_tokens=24, num_speculative_tokens=0, ignore_eos=True)
    stop = free.text[6:8]  # appears early in row 0; other rows may or may not produce it
    params = SamplingParams(stop=(stop,))
    expected = [alone(dec, p, max_new_tokens=24, num_speculative_tokens=0, sampling=params) for p in PROMPTS]
    assert expected[0].finish_reason == "stop" and len(expected[0].token_ids) < 24
    got = dec.generate(PROMPTS, max_new_tokens=24, num_speculative_tokens=k, sampling=params)
    assert len(got) == len(PROMPTS)
    for want, row in zip(expected, got, strict=True):
        assert (row.token_ids, row.text, row.finish_reason) == (want.token_ids, want.text, want.finish_reason)
    assert got.stats.new_tokens == sum(len(r.token_ids) for r in got)
    if k:
        assert got.stats.accepted == sum(r.stats.accepted for r in got) > 0


def test_sampled_rows_are_each_prompts_own_seeded_samples(models):
    """Row p * n + c is the single-sequence sample of prompt p with seed + p * n + c: a row that drew
    from another row's random numbers, or from a shared stream, would come out different."""
    dec = SpeculativeDecoder(*models, TOKENIZER)
    params = SamplingParams(temperature=1.0, top_k=20, seed=11)
    got = dec.generate(PROMPTS[:3], max_new_tokens=16, num_speculative_tokens=3, sampling=params, n=3)
    assert len(got) == 9
    for i, row in enumerate(got):
        seeded = SamplingParams(temperature=1.0, top_k=20, seed=11 + i)
        want = alone(dec, PROMPTS[i // 3], max_new_tokens=16, num_speculative_tokens=3, sampling=seeded)
        assert row.token_ids == want.token_ids, f"row {i}"
    assert len({tuple(r.token_ids) for r in got}) > 3  # the copies of a prompt differ


def test_rows_stay_exact_when_the_cache_drops_its_holes(monkeypatch):
    """Rows that accept different numbers of guesses leave holes; once they fill half the cache it
    is compacted, and every row still matches its prompt alone (greedy and seeded samples)."""
    compactions = []
    compact = specdecode.ragged_kv.RaggedCachedModel.compact
    monkeypatch.setattr(
        specdecode.ragged_kv.RaggedCachedModel, "compact", lambda self: compactions.append(1) or compact(self)
    )
    target = make_model("gpt2", len(TOKENIZER), seed=0, layers=3, init_range=0.3)
    dec = SpeculativeDecoder(target, perturbed_copy(target, noise=0.05, seed=1), TOKENIZER)
    for temperature in (0.0, 1.0):
        got = dec.generate(PROMPTS, 60, 4, SamplingParams(temperature=temperature, seed=3), ignore_eos=True)
        for i, row in enumerate(got):
            seeded = SamplingParams(temperature=temperature, seed=3 + i)
            want = alone(dec, PROMPTS[i], max_new_tokens=60, num_speculative_tokens=4, sampling=seeded, ignore_eos=True)
            assert row.token_ids == want.token_ids
    assert compactions


def test_ngram_rows_and_a_row_that_joins_later(models):
    dec = SpeculativeDecoder(models[0], None, TOKENIZER, proposer="ngram")
    expected = [alone(dec, p, max_new_tokens=20, num_speculative_tokens=0, ignore_eos=True) for p in PROMPTS]
    batch = BatchDecoder(dec, num_speculative_tokens=4)
    batch.add(PROMPTS[2], 20, SamplingParams(), ignore_eos=True, index=3)
    batch.add(PROMPTS[0], 20, SamplingParams(), ignore_eos=True, index=0)
    batch.step()
    batch.step()
    batch.add(PROMPTS[3], 20, SamplingParams(), ignore_eos=True, index=4)  # joins a running batch
    batch.step()
    batch.add(PROMPTS[1], 20, SamplingParams(), ignore_eos=True, copies=2, index=1)
    got = batch.run()
    assert [r.token_ids for r in got] == [expected[i].token_ids for i in (0, 1, 1, 2, 3)]


@pytest.mark.parametrize("proposer", ["draft", "tree", "ngram+draft"])
@pytest.mark.parametrize("k", [2, "auto", "heuristic"])
def test_every_proposer_and_k_policy_in_batches(models, proposer, k):
    """Greedy rows of every proposer (trees and ngram+draft in caches of their own) under every K
    policy are token-identical to each prompt alone (float64)."""
    dec = SpeculativeDecoder(*models, TOKENIZER, proposer=proposer)
    expected = [alone(dec, p, max_new_tokens=16, num_speculative_tokens=0, ignore_eos=True) for p in PROMPTS]
    if k == "auto":  # guesses and verification that cost nothing, so that `auto` guesses (whatever the timings)
        policy = dec._policy(k, dec.encode(PROMPTS[0]))
        policy.cost, policy.draft_cost = (lambda n: 1.0), (lambda rows: 0.0)
    got = dec.generate(PROMPTS, max_new_tokens=16, num_speculative_tokens=k, ignore_eos=True)
    assert [r.token_ids for r in got] == [e.token_ids for e in expected]
    assert got.stats.drafted > 0


def test_batches_refuse_what_cannot_run(models):
    dec = SpeculativeDecoder(*models, TOKENIZER)
    with pytest.raises(ValueError, match="stream takes one prompt"):
        next(dec.stream(PROMPTS))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        dec.generate(PROMPTS[0], n=0)
    with pytest.raises(ValueError, match="context length"):
        dec.generate([PROMPTS[0], "x" * 300], max_new_tokens=8)
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        dec.generate(PROMPTS, num_speculative_tokens="sometimes")


# -- sampling through batches: distribution and independence --------------------------------------

BATCHES, ROWS = 30, 50  # 1500 samples


@pytest.fixture(scope="module")
def small():
    tokenizer = make_tokenizer(list("abc"))
    target = make_model("llama", V, seed=0, layers=2, init_range=0.2)
    return SpeculativeDecoder(target, perturbed_copy(target, 0.1, 2), tokenizer)


def batch_samples(dec, params: SamplingParams, k: int | str = 2) -> np.ndarray:
    """[BATCHES, ROWS, NEW] token ids: BATCHES batches of ROWS samples of PROMPT (seeds apart)."""
    out = []
    for b in range(BATCHES):
        run = SamplingParams(**{**params.__dict__, "seed": b * ROWS})
        got = dec.generate(PROMPT, max_new_tokens=NEW, num_speculative_tokens=k, sampling=run, ignore_eos=True, n=ROWS)
        out.append([r.token_ids for r in got])
    return np.array(out)


def independence_pvalue(samples: np.ndarray) -> float:
    """Chi-square test of independence between the first tokens of rows 2i and 2i + 1 of each batch."""
    table = np.zeros((V, V))
    for batch in samples:
        for a, b in zip(batch[0::2, 0], batch[1::2, 0], strict=True):
            table[a, b] += 1
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    return stats.chi2_contingency(table)[1]


@pytest.mark.parametrize("k", [2, "auto"])
def test_batch_samples_have_the_targets_distribution_and_rows_are_independent(small, k):
    """Pearson chi-square against the enumerated distribution (false alarm 1e-3, fixed seeds), and
    a chi-square test of independence between paired rows (false alarm 1e-3); K fixed or `auto`."""
    params = SamplingParams(temperature=1.0)
    samples = batch_samples(small, params, k)
    counts = np.zeros(V**NEW)
    for seq in samples.reshape(-1, NEW):
        counts[np.ravel_multi_index(seq, (V,) * NEW)] += 1
    assert chi_square_pvalue(counts, exact_distribution(small.target.model, params)) > ALPHA
    assert independence_pvalue(samples) > ALPHA


def test_rows_sharing_random_numbers_are_caught(small, monkeypatch):
    """Negative control: the rows of a batch seeded alike (the same random numbers) fail the independence test."""
    real = specdecode.batch.make_generator
    monkeypatch.setattr(specdecode.batch, "make_generator", lambda seed, device: real(seed // ROWS, device))
    samples = batch_samples(small, SamplingParams(temperature=1.0))
    assert independence_pvalue(samples) < ALPHA


class CountingPolicy(HeuristicK):
    """K = 2, a probe every other step; counts how often it is asked."""

    def __init__(self):
        super().__init__(start=2)
        self.asked = 0

    def next_k(self, rows=1, unread=0):
        self.asked, self.unread = self.asked + 1, unread
        self.probe = self.asked % 2 == 0
        return 1 if self.probe else 2


def test_a_shared_policy_is_asked_once_per_step_and_probes_with_its_newest_row():
    rows = [SimpleNamespace(policy=CountingPolicy()) for _ in range(1)]
    shared = CountingPolicy()
    rows += [SimpleNamespace(policy=shared) for _ in range(3)]
    assert choose_k(rows, [0] * 4) == [2, 2, 2, 2]
    assert choose_k(rows, [1, 2, 3, 4]) == [1, 0, 0, 1]  # the probe: the newest row of each policy
    assert shared.asked == 2 and rows[0].policy.asked == 2
    assert shared.unread == 2 + 3 + 4 and rows[0].policy.unread == 1  # what its own rows' drafts have not read
