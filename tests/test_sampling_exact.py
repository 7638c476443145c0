"""Speculative sampling through the whole engine has exactly the target's distribution.

On a 6-token vocabulary the target's distribution over all 6^3 three-token continuations is
enumerated exactly; N speculative samples (seeds 0..N-1, fixed) are compared to it by a Pearson
chi-square test at a false-alarm rate of 1e-3. A wrong acceptance rule must fail the same test.
"""

import itertools

import numpy as np
import pytest
import torch
from test_acceptance import tree_wrong_rule, wrong_accept
from tiny_models import chi_square_pvalue, make_model, make_tokenizer, perturbed_copy

import specdecode.step
from specdecode import SamplingParams, SpeculativeDecoder
from specdecode.sampling import logits_to_probs

ALPHA = 1e-3
N = 1000  # wrong rules fail at p ~ 1e-20 with this many samples (test_wrong_*_is_caught)
PROMPT = [1, 3, 4, 5, 3, 4, 5, 3]  # repeats, so n-gram lookup finds guesses
NEW = 3
TOKENIZER = make_tokenizer(list("abc"))
V = len(TOKENIZER)  # 6


@pytest.fixture(scope="module")
def models():
    target = make_model("llama", V, seed=0, layers=2, init_range=0.2)
    return target, make_model("llama", V, seed=1, layers=1, init_range=0.2), perturbed_copy(target, 0.1, 2)


@torch.no_grad()
def exact_distribution(model, params: SamplingParams) -> np.ndarray:
    """P(continuation) for every continuation in itertools.product order: [V**NEW]."""
    warp = params.target_warp()
    out = []
    for seq in itertools.product(range(V), repeat=NEW):
        ids = torch.tensor([PROMPT + list(seq)])
        probs = logits_to_probs(model(ids).logits[0, len(PROMPT) - 1 : -1], warp)  # [NEW, V]
        out.append(float(probs[torch.arange(NEW), torch.tensor(seq)].prod()))
    return np.array(out)


def sampled_outputs(
    decoder, params: SamplingParams, k: int, samples: int = N, rows: int = 1, ignore_eos: bool = True,
    prompt: list[int] = PROMPT, new: int = NEW,
) -> list[tuple[int, ...]]:  # fmt: skip
    """The outputs of `samples` generations of `new` tokens after `prompt`, seeded 0..samples-1: one at a
    time, or `rows` at a time as the rows of a batch (row c of a batch seeded from seed + c)."""
    outputs = []
    for seed in range(0, samples, rows):
        run = SamplingParams(**{**params.__dict__, "seed": seed})
        one = dict(max_new_tokens=new, num_speculative_tokens=k, sampling=run, ignore_eos=ignore_eos)
        results = [decoder.generate(prompt, **one)] if rows == 1 else decoder.generate(prompt, **one, n=rows)
        outputs += [tuple(r.token_ids) for r in results]
    return outputs


def sampled_counts(decoder, params: SamplingParams, k: int, samples: int = N, rows: int = 1) -> np.ndarray:
    counts = np.zeros(V**NEW)
    for output in sampled_outputs(decoder, params, k, samples, rows):
        counts[np.ravel_multi_index(output, (V,) * NEW)] += 1
    return counts


CASES = {  # sampling, draft (index into `models`), K, proposer
    "plain, unrelated draft": (SamplingParams(temperature=1.0), 1, 2, "draft"),
    "top-k + top-p, close draft": (SamplingParams(temperature=0.8, top_k=4, top_p=0.9), 2, 3, "draft"),
    "hotter top-k draft": (
        SamplingParams(temperature=1.0, draft_temperature=1.8, draft_top_k=3),
        1,
        2,
        "draft",
    ),
    "greedy draft, sampled min-p target": (
        SamplingParams(temperature=0.7, min_p=0.05, draft_temperature=0.0),
        2,
        2,
        "draft",
    ),
    "n-gram lookup": (SamplingParams(temperature=1.0), 1, 2, "ngram"),
    "heuristic K, close draft": (SamplingParams(temperature=0.9), 2, "heuristic", "draft"),
    "tree of width 2, close draft": (SamplingParams(temperature=1.0), 2, 2, "tree"),
    "tree of width 2, top-p target": (SamplingParams(temperature=0.8, top_p=0.9), 1, 3, "tree"),
}

# decoded 100 at a time as the rows of a batch (each row as alone: test_batch.py), which covers batched
# sampling too; the trees one at a time (their batches take longer)
AS_BATCH_ROWS = {
    "plain, unrelated draft", "top-k + top-p, close draft", "hotter top-k draft",
    "greedy draft, sampled min-p target", "n-gram lookup", "heuristic K, close draft",
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_distribution_is_the_targets(models, case):
    params, draft_index, k, proposer = CASES[case]
    target = models[0]
    decoder = SpeculativeDecoder(target, models[draft_index], TOKENIZER, proposer=proposer)
    counts = sampled_counts(decoder, params, k, rows=100 if case in AS_BATCH_ROWS else 1)
    assert chi_square_pvalue(counts, exact_distribution(target, params)) > ALPHA


def test_wrong_acceptance_rule_is_caught(models, monkeypatch):
    monkeypatch.setattr(specdecode.step, "accept_sampled", wrong_accept)
    params, draft_index, k, _ = CASES["plain, unrelated draft"]
    decoder = SpeculativeDecoder(models[0], models[draft_index], TOKENIZER)
    counts = sampled_counts(decoder, params, k, rows=100)
    assert chi_square_pvalue(counts, exact_distribution(models[0], params)) < ALPHA


def test_wrong_tree_rule_is_caught(models, monkeypatch):
    monkeypatch.setattr(specdecode.step, "accept_tree_sampled", tree_wrong_rule)
    params, draft_index, k, proposer = CASES["tree of width 2, close draft"]
    decoder = SpeculativeDecoder(models[0], models[draft_index], TOKENIZER, proposer=proposer)
    counts = sampled_counts(decoder, params, k, samples=700)  # caught at p ~ 1e-17
    assert chi_square_pvalue(counts, exact_distribution(models[0], params)) < ALPHA


def test_same_seed_same_output(models):
    decoder = SpeculativeDecoder(models[0], models[1], TOKENIZER)
    params = SamplingParams(temperature=1.0, seed=7)
    runs = [decoder.generate(PROMPT, 20, 3, params, ignore_eos=True).token_ids for _ in range(2)]
    assert runs[0] == runs[1]
    other = decoder.generate(PROMPT, 20, 3, SamplingParams(temperature=1.0, seed=8), ignore_eos=True)
    assert other.token_ids != runs[0]
