"""Bad input gets a clear error, never a wrong answer, and the decoder keeps working after it."""

import numpy as np
import pytest
import torch
from tiny_models import CHARS, STRICT_CHAT_TEMPLATE, make_model, make_tokenizer

from specdecode import IncompatibleModelsError, NonFiniteLogitsError, SamplingParams, SpeculativeDecoder

TOKENIZER = make_tokenizer()
V = len(TOKENIZER)


@pytest.fixture(scope="module")
def decoder():
    return SpeculativeDecoder(make_model("llama", V, 0), make_model("llama", V, 1, layers=1), TOKENIZER)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"draft_temperature": -1.0}, "draft_temperature"),
        ({"draft_top_k": -2}, "draft_top_k"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["a\ud800"]}, "stop holds a lone UTF-16 surrogate"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": 1.5},
        {"seed": True},
        {"top_k": 2.0},
        {"temperature": True},
        {"top_p": "0.5"},
        {"stop": 5},
        {"stop": ["a", None]},
    ],
)
def test_sampling_params_of_the_wrong_type_name_the_argument(kwargs):
    (name,) = kwargs
    with pytest.raises(TypeError, match=f"^{name} must be"):
        SamplingParams(**kwargs)


def test_sampling_params_take_none_for_no_stop_strings_and_the_whole_seed_range():
    assert SamplingParams(stop=None).stop == () and SamplingParams(stop="x").stop == ("x",)
    assert SamplingParams(seed=0).seed == 0 and SamplingParams(seed=2**64 - 1).seed == 2**64 - 1


@pytest.mark.parametrize(
    "prompt, kwargs, match",
    [
        ("", {}, "empty"),
        ([], {}, "empty"),
        ([5, V + 3], {}, "outside the vocabulary"),
        ("abc", {"max_new_tokens": 0}, "max_new_tokens"),
        ("abc", {"num_speculative_tokens": -1}, "num_speculative_tokens"),
        ("a" * 250, {"max_new_tokens": 10}, "context length of 256"),
    ],
)
def test_bad_requests(decoder, prompt, kwargs, match):
    before = decoder.generate("abc", 10)
    with pytest.raises(ValueError, match=match):
        decoder.generate(prompt, **kwargs)
    assert decoder.generate("abc", 10).token_ids == before.token_ids  # nothing lost


@pytest.mark.parametrize(
    "prompt, kwargs, match",
    [
        ([5.0, 6.0], {}, "prompt token ids must be integers, got float"),
        ([True, 5], {}, "prompt token ids must be integers, got bool"),
        (3.5, {}, "prompt must be a string"),
        (None, {}, "prompt must be a string"),
        (torch.tensor([5.0, 6.0]), {}, "prompt must be a string"),
        ("abc", {"sampling": {"temperature": 1.0}}, "sampling must be a SamplingParams"),
        ("abc", {"ignore_eos": "yes"}, "ignore_eos"),
    ],
)
def test_arguments_of_the_wrong_type_name_the_argument(decoder, prompt, kwargs, match):
    with pytest.raises(TypeError, match=match):
        decoder.generate(prompt, 5, **kwargs)


@pytest.mark.parametrize(
    "prompt, kwargs, match",
    [
        ("a\udc00b", {}, "the prompt holds a lone UTF-16 surrogate at position 1"),
        ("abc", {"max_new_tokens": True}, "max_new_tokens"),
        (["ab", "cd"], {"sampling": SamplingParams(seed=2**64 - 1)}, "2\\*\\*64"),
        ("ab", {"n": 2, "sampling": SamplingParams(seed=2**64 - 1)}, "2\\*\\*64"),
    ],
)
def test_values_that_cannot_reach_torch_are_refused(decoder, prompt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        decoder.generate(prompt, **({"max_new_tokens": 5} | kwargs))


def test_integer_token_ids_of_any_integer_type(decoder):
    want = decoder.generate([5, 6, 7], 5).token_ids
    assert decoder.generate(torch.tensor([5, 6, 7]), 5).token_ids == want
    assert decoder.generate([np.int64(5), np.int32(6), 7], 5).token_ids == want


def test_a_chat_the_template_refuses_is_a_value_error(decoder):
    TOKENIZER.chat_template = STRICT_CHAT_TEMPLATE
    try:
        ok = [{"role": role, "content": "ab"} for role in ("user", "assistant", "user")]
        assert decoder.generate(ok, 3).token_ids
        with pytest.raises(ValueError, match="chat template refuses these messages: roles must alternate"):
            decoder.generate([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], 3)
        with pytest.raises(ValueError, match="a string 'role'"):
            decoder.generate([{"content": "a"}], 3)
    finally:
        TOKENIZER.chat_template = None


def test_temperature_and_top_p_too_small_for_the_dtype_sample_the_argmax():
    """1e-300 is 0 in float32: the warp must tend to greedy, not divide by zero (NaN)."""
    target, draft = make_model("llama", V, 0, dtype=torch.float32), make_model("llama", V, 1, 1, torch.float32)
    decoder = SpeculativeDecoder(target, draft, TOKENIZER)
    greedy = decoder.generate("abc", 8, num_speculative_tokens=2).token_ids
    for tiny in (SamplingParams(temperature=1e-300, seed=0), SamplingParams(temperature=0.7, top_p=1e-300, seed=0)):
        assert decoder.generate("abc", 8, num_speculative_tokens=2, sampling=tiny).token_ids == greedy


def test_speculation_without_a_draft():
    dec = SpeculativeDecoder(make_model("llama", V, 0), None, TOKENIZER)
    with pytest.raises(ValueError, match="needs a draft"):
        dec.generate("abc", 5, num_speculative_tokens=2)
    assert len(dec.generate("abc", 5, num_speculative_tokens=0, ignore_eos=True).token_ids) == 5


@pytest.mark.parametrize("broken", ["target", "draft"])
def test_nan_logits(broken):
    target, draft = make_model("llama", V, 0), make_model("llama", V, 1)
    with torch.no_grad():
        (target if broken == "target" else draft).lm_head.weight[3, 0] = float("nan")
    dec = SpeculativeDecoder(target, draft, TOKENIZER)
    with pytest.raises(NonFiniteLogitsError, match=f"{broken} model produced NaN"):
        dec.generate("abc", 5, num_speculative_tokens=2, sampling=SamplingParams(temperature=1.0, seed=0))


def test_check_finite_decides_on_every_value():
    """The one-reduction fast path: finite logits whose sum overflows pass; one NaN, +inf, or a row of
    -inf among finite values is caught; -inf in part of a row (a mask) passes."""
    from specdecode.sampling import check_finite

    check_finite(torch.full((2, 8), 3e38))  # the sum is inf, every value finite
    check_finite(torch.tensor([[0.0, float("-inf"), 1.0]]))
    for bad, why in ((float("nan"), "NaN"), (float("inf"), "[+]inf")):
        logits = torch.zeros(3, 5)
        logits[1, 2] = bad
        with pytest.raises(NonFiniteLogitsError, match=why):
            check_finite(logits)
    with pytest.raises(NonFiniteLogitsError):
        check_finite(torch.tensor([[0.0, 1.0], [float("-inf"), float("-inf")]]))


def test_models_on_different_devices():
    draft = make_model("llama", V, 1).to("meta")
    with pytest.raises(IncompatibleModelsError, match="different devices"):
        SpeculativeDecoder(make_model("llama", V, 0), draft, TOKENIZER)


def test_different_tokenizers_name_the_first_differing_token():
    other = make_tokenizer(CHARS[:10] + ["X"] + CHARS[11:])
    with pytest.raises(IncompatibleModelsError, match=r"token id 13 is 'k' for the target but 'X' for the draft"):
        SpeculativeDecoder(make_model("llama", V, 0), make_model("llama", V, 1), TOKENIZER, draft_tokenizer=other)


def test_model_smaller_than_tokenizer():
    with pytest.raises(IncompatibleModelsError, match="logits per position"):
        SpeculativeDecoder(make_model("llama", V - 5, 0), None, TOKENIZER)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_padding_ids_are_never_sampled(temperature):
    """Model vocabulary padded past the tokenizer (as Qwen's 151936 vs 151665): padding must not win."""
    target, draft = make_model("llama", V + 16, 0), make_model("llama", V + 16, 1)
    with torch.no_grad():
        for m in (target, draft):
            m.lm_head.weight[V:] = 50.0  # padding rows would dominate every distribution
    dec = SpeculativeDecoder(target, draft, TOKENIZER)
    out = dec.generate("abc", 30, 3, SamplingParams(temperature=temperature, seed=0), ignore_eos=True)
    assert len(out.token_ids) == 30 and max(out.token_ids) < V
