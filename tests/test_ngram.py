"""N-gram prompt lookup: the lookup itself, and exact greedy output through the engine."""

import pytest
import torch
from tiny_models import make_model, make_tokenizer, perturbed_copy

from specdecode import SpeculativeDecoder
from specdecode.proposers.ngram import ngram_lookup

TOKENIZER = make_tokenizer()


@pytest.mark.parametrize(
    "tokens, k, n_max, n_min, expected",
    [
        ([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3], 4, 3, 1, [7, 8, 1, 2]),  # latest earlier occurrence
        ([1, 2, 3, 9, 2, 3, 8, 7, 2, 3], 2, 3, 1, [8, 7]),  # "2 3" (n=2): no earlier "7 2 3"
        ([1, 2, 3, 9, 2, 3, 8, 7, 2, 3], 2, 3, 3, []),  # n_min=3: nothing
        ([5, 6, 7], 4, 3, 1, []),
        ([4, 4], 3, 2, 1, [4]),  # fewer than k tokens follow
        ([7], 3, 2, 1, []),
    ],
)
def test_lookup(tokens, k, n_max, n_min, expected):
    assert ngram_lookup(torch.tensor(tokens), k, n_max, n_min) == expected


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("proposer", ["ngram", "ngram+draft"])
def test_greedy_identical_with_lookup(arch, proposer):
    target = make_model(arch, len(TOKENIZER), 0, layers=2, init_range=0.3)
    dec = SpeculativeDecoder(target, perturbed_copy(target, 0.05, 1), TOKENIZER, proposer=proposer)
    prompt = "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return"
    plain = dec.generate(prompt, 40, num_speculative_tokens=0, ignore_eos=True)
    for k in (1, 3, 8, "heuristic", "auto"):
        out = dec.generate(prompt, 40, num_speculative_tokens=k, ignore_eos=True)
        assert out.token_ids == plain.token_ids, f"K={k}"
    assert out.stats.drafted > 0


def test_ngram_needs_no_draft():
    dec = SpeculativeDecoder(make_model("llama", len(TOKENIZER), 0), None, TOKENIZER, proposer="ngram")
    out = dec.generate("abcabcabcabc", 10, num_speculative_tokens=3, ignore_eos=True)
    assert len(out.token_ids) == 10 and out.stats.draft_passes == 0


def test_unknown_proposer():
    with pytest.raises(ValueError, match="unknown proposer"):
        SpeculativeDecoder(make_model("llama", len(TOKENIZER), 0), None, TOKENIZER, proposer="magic")
