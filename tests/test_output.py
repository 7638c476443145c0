"""Stop strings, EOS, streaming: nothing past a stop is emitted; streamed text equals the final text."""

import pytest
from tiny_models import make_model, make_tokenizer, perturbed_copy

from specdecode import SamplingParams, SpeculativeDecoder
from specdecode.output import OutputTracker

TOKENIZER = make_tokenizer()


@pytest.fixture(scope="module")
def decoder():
    target = make_model("qwen2", len(TOKENIZER), 0, layers=3, init_range=0.3)
    return SpeculativeDecoder(target, perturbed_copy(target, 0.05, 1), TOKENIZER)


def test_stop_string_cuts_text_and_tokens(decoder):
    free = decoder.generate("def f(x):", 40, 4, ignore_eos=True)
    stop = free.text[10:13]  # three characters from the middle of the greedy text
    cut = free.text.index(stop)
    out = decoder.generate("def f(x):", 40, 4, SamplingParams(stop=(stop,)), ignore_eos=True)
    assert out.finish_reason == "stop"
    assert out.text == free.text[:cut]
    assert out.token_ids == free.token_ids[: cut + len(stop)]  # one token per character: ends at the stop


@pytest.mark.parametrize("k", [0, 3])
@pytest.mark.parametrize("stop", [(), ("zz", "q")])
def test_streamed_text_equals_generated_text(decoder, k, stop):
    params = SamplingParams(temperature=1.0, seed=3, stop=stop)
    final = decoder.generate("abc", 30, k, params, ignore_eos=True)
    chunks = list(decoder.stream("abc", 30, k, params, ignore_eos=True))
    assert "".join(c.text for c in chunks) == final.text
    assert [t for c in chunks for t in c.token_ids] == final.token_ids
    assert chunks[-1].finish_reason == final.finish_reason
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].stats.new_tokens == len(final.token_ids)


def test_tracker_holds_back_a_possible_stop_start():
    tracker = OutputTracker(TOKENIZER, {2}, ("cde",), 100)
    for ch in "abc":
        tracker.append(TOKENIZER.convert_tokens_to_ids(ch))
    assert tracker.delta() == "ab"  # "c" may begin "cde"
    tracker.append(TOKENIZER.convert_tokens_to_ids("x"))
    assert tracker.delta() == "cx"
    for ch in "cde":
        finished = tracker.append(TOKENIZER.convert_tokens_to_ids(ch))
    assert finished and tracker.finish_reason == "stop"
    assert tracker.delta() == "" and tracker.text == "abcx"


def test_eos_is_kept_in_ids_not_in_text():
    tracker = OutputTracker(TOKENIZER, {2}, (), 100)
    tracker.append(TOKENIZER.convert_tokens_to_ids("a"))
    assert tracker.append(2)
    assert tracker.token_ids == [TOKENIZER.convert_tokens_to_ids("a"), 2]
    assert tracker.text == "a" and tracker.finish_reason == "stop"


def test_chat_prompt_uses_the_chat_template(decoder):
    TOKENIZER.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    try:
        assert decoder.encode([{"role": "user", "content": "abc"}]) == TOKENIZER.encode("abc\n")
    finally:
        TOKENIZER.chat_template = None
