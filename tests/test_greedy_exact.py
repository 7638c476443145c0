"""Greedy speculative decoding is token-identical to target-only greedy decoding (float64)."""

import pytest
import torch
from tiny_models import ARCHS, make_model, make_tokenizer, perturbed_copy

import specdecode.step
from specdecode import SpeculativeDecoder
from specdecode.acceptance import accept_tree_greedy

PROMPTS = ["def f(x):", "a", "print(1, 2) = 3\nfor i in range(10):", "the quick brown fox jumps"]
TOKENIZER = make_tokenizer()


@pytest.fixture(scope="module", params=ARCHS)
def decoder(request):
    target = make_model(request.param, len(TOKENIZER), seed=0, layers=3, init_range=0.3)
    draft = perturbed_copy(target, noise=0.05, seed=1)
    return SpeculativeDecoder(target, draft, TOKENIZER)


def hf_greedy(model, prompt_ids, max_new_tokens):
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_identical_to_target_only_and_transformers(decoder, prompt):
    baseline = decoder.generate(prompt, max_new_tokens=40, num_speculative_tokens=0, ignore_eos=True)
    assert baseline.token_ids == hf_greedy_ignoring_eos(decoder, prompt, 40)
    for k in (1, 2, 4, 8, "heuristic", "auto"):
        out = decoder.generate(prompt, max_new_tokens=40, num_speculative_tokens=k, ignore_eos=True)
        assert out.token_ids == baseline.token_ids, f"K={k}"
        assert out.text == baseline.text
        if isinstance(k, int):  # "auto" may rightly decline to guess: these tiny drafts cost as much as the target
            assert out.stats.accepted > 0  # the draft was right at least sometimes: runs were accepted
            assert out.stats.target_passes < baseline.stats.target_passes


def hf_greedy_ignoring_eos(decoder, prompt, n):
    model = decoder.target.model
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        return hf_greedy(model, decoder.encode(prompt), n)
    finally:
        model.generation_config.eos_token_id = eos


def test_eos_inside_an_accepted_run_stops_there(decoder):
    """Make the 6th greedy token the EOS id: every K must stop right there, as transformers does."""
    prompt = PROMPTS[2]
    free = decoder.generate(prompt, max_new_tokens=30, num_speculative_tokens=0, ignore_eos=True)
    eos = free.token_ids[5]
    first = free.token_ids.index(eos)  # it may occur earlier
    model = decoder.target.model
    saved, saved_ids = model.generation_config.eos_token_id, decoder.eos_ids
    model.generation_config.eos_token_id, decoder.eos_ids = eos, {eos}
    try:
        expected = hf_greedy(model, decoder.encode(prompt), 30)
        assert expected == free.token_ids[: first + 1]
        for k in (1, 2, 4, 8):
            out = decoder.generate(prompt, max_new_tokens=30, num_speculative_tokens=k)
            assert out.token_ids == expected, f"K={k}"
            assert out.finish_reason == "stop"
            assert out.stats.new_tokens == first + 1
    finally:
        model.generation_config.eos_token_id, decoder.eos_ids = saved, saved_ids


def test_max_new_tokens_is_never_exceeded(decoder):
    for n in (1, 2, 3, 7):
        out = decoder.generate(PROMPTS[0], max_new_tokens=n, num_speculative_tokens=8, ignore_eos=True)
        assert len(out.token_ids) == n
        assert out.finish_reason == "length"


@pytest.mark.parametrize("width", [2, 3])
def test_tree_proposer_is_identical_and_takes_other_branches(decoder, width, monkeypatch):
    """Trees verified in one pass give the target's greedy tokens, also when a later branch wins."""
    tree = SpeculativeDecoder(
        decoder.target.model, decoder.proposer.draft.model, TOKENIZER, proposer="tree", tree_width=width
    )
    paths = []

    def spy(tokens, parents, logits):
        path, nxt = accept_tree_greedy(tokens, parents, logits)
        paths.append(path)
        return path, nxt

    monkeypatch.setattr(specdecode.step, "accept_tree_greedy", spy)
    for prompt in PROMPTS:
        baseline = decoder.generate(prompt, max_new_tokens=40, num_speculative_tokens=0, ignore_eos=True)
        for k in (1, 5, "auto"):
            out = tree.generate(prompt, max_new_tokens=40, num_speculative_tokens=k, ignore_eos=True)
            assert out.token_ids == baseline.token_ids, f"K={k}"
    assert any(path and path[0] != 0 for path in paths)  # a branch other than the draft's first choice won
