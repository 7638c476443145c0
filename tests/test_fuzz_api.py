"""Property-based tests (hypothesis) of the Python API and the server's request models: whatever a
caller passes, the result is an answer or a ValueError / TypeError naming what is wrong, never
another exception from deep inside, and the decoder keeps working.

CI runs a bounded number of examples; a long run: SPECDECODE_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_api.py
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tiny_models import CHARS, make_model, make_tokenizer

from specdecode import GenerationResult, SamplingParams, SpeculativeDecoder
from specdecode.server.protocol import ChatRequest, CompletionRequest

EXAMPLES = int(os.environ.get("SPECDECODE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
OUTCOMES = {"answered": 0, "refused": 0}
TOKENIZER = make_tokenizer()
V = len(TOKENIZER)

numbers = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none()
)
anything = st.one_of(numbers, st.text(max_size=8), st.lists(st.integers(-5, 60), max_size=4), st.binary(max_size=4))
sampling_kwargs = st.dictionaries(
    st.sampled_from(["temperature", "top_k", "top_p", "min_p", "seed", "stop", "draft_temperature", "draft_top_k"]),
    st.one_of(anything, st.lists(st.text(max_size=3), max_size=5)),
)
prompts = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-3, V + 3), st.floats(), st.booleans()), max_size=6),
    st.lists(st.text(max_size=4), max_size=3),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", 5]), "content": anything})),
    numbers,
)


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """Valid three times in four, so that a quarter of the calls get through to generation."""
    return st.sampled_from([valid, valid, valid, invalid]).flatmap(lambda strategy: strategy)


valid_prompts = st.one_of(
    st.text(alphabet=CHARS, min_size=1, max_size=12),
    st.lists(st.integers(0, V - 1), min_size=1, max_size=8),
    st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.text(CHARS, max_size=6)}), min_size=1),
)
valid_sampling = st.builds(
    SamplingParams,
    temperature=st.sampled_from([0.0, 1e-300, 0.5, 1.0, 2.0]),
    top_k=st.integers(0, V + 5),
    top_p=st.sampled_from([1e-300, 0.3, 1.0]),
    min_p=st.sampled_from([0.0, 0.2, 1.0]),
    seed=st.one_of(st.none(), st.integers(0, 2**64 - 3)),
    stop=st.lists(st.text(CHARS, min_size=1, max_size=2), max_size=2),
)


@pytest.fixture(scope="module")
def decoder():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    target = make_model("llama", V, 0, dtype=torch.float32, context=64)
    return SpeculativeDecoder(target, make_model("llama", V, 1, 1, torch.float32, context=64), tokenizer)


@FUZZ
@given(sampling_kwargs)
def test_sampling_params_are_built_or_refused_clearly(kwargs):
    try:
        SamplingParams(**kwargs)
    except (ValueError, TypeError) as err:
        assert any(name in str(err) for name in kwargs), err


@FUZZ
@given(
    prompt=mostly(valid_prompts, prompts),
    max_new_tokens=mostly(st.integers(1, 6), st.one_of(st.integers(-2, 0), st.booleans(), st.floats(0, 6), st.none())),
    k=mostly(st.one_of(st.integers(0, 5), st.sampled_from(["auto", "heuristic"])), st.one_of(numbers, st.text())),
    n=mostly(st.integers(1, 2), st.one_of(st.integers(-1, 0), st.floats(1, 2))),
    sampling=mostly(st.one_of(st.none(), valid_sampling), sampling_kwargs.map(lambda kw: _built(kw))),
)
def test_generate_answers_or_refuses_clearly(decoder, prompt, max_new_tokens, k, n, sampling):
    try:
        out = decoder.generate(prompt, max_new_tokens, num_speculative_tokens=k, sampling=sampling, n=n)
    except (ValueError, TypeError):
        OUTCOMES["refused"] += 1
    else:
        OUTCOMES["answered"] += 1
        results = out if isinstance(out, list) else [out]
        assert all(isinstance(r, GenerationResult) and len(r.token_ids) <= max_new_tokens for r in results)


def test_the_decoder_still_works_after_the_fuzzing(decoder):
    print(f"\ngenerate fuzzing: {OUTCOMES['answered']} calls answered, {OUTCOMES['refused']} refused clearly")
    assert OUTCOMES["answered"] >= EXAMPLES // 10, OUTCOMES  # the fuzzing reached generation, not only refusals
    decoder.reset()
    fresh = SpeculativeDecoder(decoder.target.model, decoder.proposer.draft.model, decoder.tokenizer)
    assert decoder.generate("abc", 8).token_ids == fresh.generate("abc", 8).token_ids


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)
request_fields = st.sampled_from(
    ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream",
     "stream_options", "top_k", "min_p", "num_speculative_tokens", "logprobs", "echo"]
)  # fmt: skip


@FUZZ
@given(st.dictionaries(request_fields, json_values, max_size=8))
def test_request_models_validate_or_refuse_with_a_validation_error(body):
    for model in (CompletionRequest, ChatRequest):
        with contextlib.suppress(ValidationError):
            model.model_validate(body, strict=True)


def _built(kwargs: dict) -> SamplingParams | dict:
    """SamplingParams from `kwargs` when they are valid, else the raw dict (a wrong type for `sampling`)."""
    try:
        return SamplingParams(**kwargs)
    except (ValueError, TypeError):
        return kwargs
