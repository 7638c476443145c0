"""Bad input gets a clear error, never a wrong answer, and the decoder keeps working after it."""

import pytest
import torch
from tiny_models import CHARS, make_model, make_tokenizer

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
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


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
