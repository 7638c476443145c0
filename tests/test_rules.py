"""logit_bias, presence / frequency / repetition penalties and logprobs stay exact under speculation.

The reference is written here from the definitions, one position at a time over the whole text
(`reference_logits`), independently of `specdecode.rules`; the repetition penalty is also checked
against `transformers`. Greedy: token-identical for every proposer, K and batches (float64).
Sampling: the enumeration + chi-square method of test_sampling_exact.py (false-alarm rate 1e-3),
with a negative control: penalties computed without the earlier guesses of a pass are caught.
"""

import itertools

import numpy as np
import pytest
import torch
from test_sampling_exact import ALPHA, NEW, PROMPT, V, sampled_counts
from test_sampling_exact import TOKENIZER as SMALL_TOKENIZER
from tiny_models import chi_square_pvalue, make_model, make_tokenizer, perturbed_copy

from specdecode import SamplingParams, SpeculativeDecoder
from specdecode.proposers import Proposal
from specdecode.rules import penalize
from specdecode.sampling import logits_to_probs

TOKENIZER = make_tokenizer()
PENALTIES = dict(presence_penalty=0.6, frequency_penalty=0.9, repetition_penalty=1.4, logit_bias={5: 2.0, 9: -3.0})


@torch.no_grad()
def reference_logits(model, prompt: list[int], generated: list[int], sampling: SamplingParams) -> torch.Tensor:
    """The request's logits [V] after prompt + generated, from the definitions (OpenAI, vLLM, transformers)."""
    logits = model(torch.tensor([prompt + generated])).logits[0, -1].clone()
    for token, value in (sampling.logit_bias or {}).items():
        logits[token] += value
    r = sampling.repetition_penalty
    for token in set(prompt + generated):
        logits[token] = logits[token] / r if logits[token] > 0 else logits[token] * r
    for token in set(generated):
        logits[token] -= sampling.presence_penalty + sampling.frequency_penalty * generated.count(token)
    return logits


def test_penalize_matches_the_definitions():
    torch.manual_seed(0)
    logits = torch.randn(3, 12, dtype=torch.float64)
    sampling = SamplingParams(**PENALTIES)
    counts = torch.zeros(3, 12, dtype=torch.float64)
    counts[1, 4], counts[2, 4], counts[2, 7] = 1, 2, 1
    seen = counts > 0
    seen[:, 0] = True  # in the prompt
    out = penalize(logits, counts, seen, sampling)
    expected = logits.clone()
    expected[:, 5] += 2.0
    expected[:, 9] -= 3.0
    for i, j in seen.nonzero().tolist():
        expected[i, j] = expected[i, j] / 1.4 if expected[i, j] > 0 else expected[i, j] * 1.4
    expected = expected - 0.9 * counts - 0.6 * seen.logical_and(counts > 0).double()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.fixture(scope="module")
def decoders():
    target = make_model("llama", len(TOKENIZER), seed=0, layers=3, init_range=0.3)
    draft = perturbed_copy(target, noise=0.01, seed=1)
    return {
        proposer: SpeculativeDecoder(target, draft, TOKENIZER, proposer=proposer)
        for proposer in ("draft", "ngram", "tree", "ngram+draft")
    }


@pytest.mark.parametrize("proposer", ["draft", "ngram", "tree", "ngram+draft"])
def test_greedy_with_penalties_is_the_reference(decoders, proposer):
    decoder = decoders[proposer]
    sampling = SamplingParams(**PENALTIES)
    prompt = decoder.encode("print(1, 2) = 3\nfor i in range(10):")
    expected: list[int] = []
    for _ in range(30):
        expected.append(int(reference_logits(decoder.target.model, prompt, expected, sampling).argmax()))
    for k in (0, 1, 3, "auto"):
        out = decoder.generate(prompt, 30, k, sampling, ignore_eos=True)
        assert out.token_ids == expected, f"K={k}"
    plain = decoder.generate(prompt, 30, 0, SamplingParams(), ignore_eos=True)
    assert plain.token_ids != expected  # the penalties change this output: the test can fail
    batch = decoder.generate([prompt, prompt[:5]], 30, 3, sampling, ignore_eos=True)
    assert batch[0].token_ids == expected


def test_repetition_penalty_as_transformers(decoders):
    decoder = decoders["draft"]
    prompt = decoder.encode("the quick brown fox jumps")
    out = decoder.generate(prompt, 25, 4, SamplingParams(repetition_penalty=1.3), ignore_eos=True)
    model = decoder.target.model
    eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, None
    try:
        hf = model.generate(torch.tensor([prompt]), max_new_tokens=25, do_sample=False, repetition_penalty=1.3)
    finally:
        model.generation_config.eos_token_id = eos
    assert out.token_ids == hf[0, len(prompt) :].tolist()


@pytest.mark.parametrize("proposer", ["draft", "tree"])
def test_logprobs_equal_target_only_and_the_reference(decoders, proposer):
    """Every token's logprob and top alternatives, after the first of a step too, in generate, batches
    (n > 1) and streams, equal target-only decoding's; greedy's top-1 is the chosen token."""
    decoder = decoders[proposer]
    sampling = SamplingParams(logprobs=3, **PENALTIES)
    prompt = decoder.encode("def f(x):")
    alone = decoder.generate(prompt, 20, 0, sampling, ignore_eos=True)
    fast = decoder.generate(prompt, 20, 4, sampling, ignore_eos=True)
    assert fast.token_ids == alone.token_ids and fast.stats.accepted > 5
    streamed = [e for chunk in decoder.stream(prompt, 20, 4, sampling, ignore_eos=True) for e in chunk.logprobs]
    batch = decoder.generate(prompt, 20, 4, sampling, ignore_eos=True, n=2)
    for entries in (fast.logprobs, streamed, batch[0].logprobs, batch[1].logprobs):
        assert len(entries) == 20
        for a, b in zip(alone.logprobs, entries, strict=True):
            assert a.token == b.token and [t for t, _ in a.top] == [t for t, _ in b.top]
            assert b.logprob == pytest.approx(a.logprob, abs=1e-12)
    for i, entry in enumerate(fast.logprobs):
        ref = torch.log_softmax(reference_logits(decoder.target.model, prompt, fast.token_ids[:i], sampling), -1)
        assert entry.logprob == pytest.approx(float(ref[entry.token]), abs=1e-12)
        assert entry.top[0][0] == entry.token and len(entry.top) == 3
    assert decoder.generate(prompt, 5, 4, SamplingParams(logprobs=0)).logprobs[0].top == []
    assert decoder.generate(prompt, 5, 4).logprobs is None


def test_logprobs_bit_for_bit_on_the_compiled_small_rows_path():
    """A float32 target on the small-rows kernels, run compiled: a verify pass gives each token the bits
    of one-token decoding, so speculative logprobs equal target-only ones exactly."""
    from specdecode.compiled_decoder import attach
    from specdecode.small_rows import use_small_rows_path

    target = make_model("llama", len(TOKENIZER), 0, layers=2, dtype=torch.float32, init_range=0.3)
    draft = perturbed_copy(target, noise=0.01, seed=1)
    use_small_rows_path(target)
    assert attach(target)
    decoder = SpeculativeDecoder(target, draft, TOKENIZER)
    sampling = SamplingParams(logprobs=5, frequency_penalty=0.5)
    alone = decoder.generate("def f(x):", 24, 0, sampling, ignore_eos=True)
    fast = decoder.generate("def f(x):", 24, 4, sampling, ignore_eos=True)
    assert fast.stats.accepted > 5
    assert fast.logprobs == alone.logprobs


def test_bad_rules_are_value_errors(decoders):
    decoder = decoders["draft"]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decoder.generate("a", 3, 2, SamplingParams(logit_bias={len(TOKENIZER): 1.0}))
    for bad in (dict(logit_bias={1: 101.0}), dict(presence_penalty=2.5), dict(repetition_penalty=0.0),
                dict(logprobs=21), dict(logprobs=-1), dict(logit_bias={-1: 1.0})):  # fmt: skip
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    assert SamplingParams(logit_bias={"7": 1}).logit_bias == {7: 1.0}  # JSON's string keys


# -- sampling: the distribution of 3-token continuations on a 6-token vocabulary ----------------------

# samples decoded together as the rows of a batch (each row its own seed: as alone, test_batch.py); trees on a
# model's modules take a pass per row in a batch, so they run one at a time
ROWS = 100
SMALL_PENALTIES = dict(presence_penalty=0.8, frequency_penalty=1.2, repetition_penalty=1.5, logit_bias={4: 1.0})


@pytest.fixture(scope="module")
def small():
    target = make_model("llama", V, seed=0, layers=2, init_range=0.2)
    return target, perturbed_copy(target, 0.1, 2)


def exact_distribution(model, sampling: SamplingParams) -> np.ndarray:
    warp, out = sampling.target_warp(), []
    for seq in itertools.product(range(V), repeat=NEW):
        p = 1.0
        for i in range(NEW):
            logits = reference_logits(model, PROMPT, list(seq[:i]), sampling)
            p *= float(logits_to_probs(logits, warp)[seq[i]])
        out.append(p)
    return np.array(out)


SAMPLING_CASES = {  # rules, proposer
    "penalties + logit_bias, draft": (SMALL_PENALTIES, "draft"),
    "penalties + logit_bias, tree": (SMALL_PENALTIES, "tree"),
    "logit_bias only, draft": (dict(logit_bias={3: 1.5, 5: -2.0}), "draft"),
    "presence and frequency only, draft": (dict(presence_penalty=1.5, frequency_penalty=-0.5), "draft"),
}


@pytest.mark.parametrize("case", SAMPLING_CASES)
def test_sampling_with_rules_is_the_targets(small, case):
    rules, proposer = SAMPLING_CASES[case]
    sampling = SamplingParams(temperature=1.0, **rules)
    decoder = SpeculativeDecoder(*small, SMALL_TOKENIZER, proposer=proposer)
    counts = sampled_counts(decoder, sampling, 2, rows=ROWS if proposer == "draft" else 1)
    assert chi_square_pvalue(counts, exact_distribution(small[0], sampling)) > ALPHA


def test_penalties_without_the_earlier_guesses_are_caught(small, monkeypatch):
    """Caught at p ~ 1e-12 with 300 samples."""
    monkeypatch.setattr(Proposal, "prefixes", lambda self: [[] for _ in range(len(self) + 1)])
    sampling = SamplingParams(temperature=1.0, **SMALL_PENALTIES)
    decoder = SpeculativeDecoder(*small, SMALL_TOKENIZER)
    counts = sampled_counts(decoder, sampling, 2, samples=300, rows=ROWS)
    assert chi_square_pvalue(counts, exact_distribution(small[0], sampling)) < ALPHA
