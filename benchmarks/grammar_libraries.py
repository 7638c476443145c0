"""The token-mask cost of the two grammar libraries vLLM uses, llguidance and xgrammar, on the same JSON
schema and tokenizer: the time to read the tokenizer, to compile the schema, and to fill the mask at
each position of one valid answer, median and max. Run it in a venv with both
(pip install torch==2.13.0 transformers llguidance xgrammar; xgrammar pulls triton):

    python benchmarks/grammar_libraries.py QWEN_1.5B_TOKENIZER_FOLDER
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import llguidance
import llguidance.hf
import llguidance.torch
import xgrammar
from schemas import PERSON
from transformers import AutoTokenizer

VOCAB = 151936  # Qwen2.5's logits
SCHEMA = PERSON
ANSWER = '{"name": "John Doe", "age": 30, "languages": ["Python", "JavaScript", "Java"]}'


def timed(make):
    start = time.perf_counter()
    value = make()
    return value, time.perf_counter() - start


def walk(fill, consume, ids: list[int]) -> list[float]:
    """Seconds to fill the mask at each position of `ids`, consuming each token after."""
    times = []
    for token in ids:
        times.append(timed(fill)[1])
        assert consume(token), "the grammar refused the answer"
    return times


def main() -> int:
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    ids = tokenizer.encode(ANSWER, add_special_tokens=False)
    rows = {}
    info, setup = timed(lambda: llguidance.hf.from_tokenizer(tokenizer, n_vocab=VOCAB))
    style = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults=style)
    matcher, compile_s = timed(lambda: llguidance.LLMatcher(info, grammar))
    bits = llguidance.torch.allocate_token_bitmask(1, VOCAB)
    fill = lambda: llguidance.torch.fill_next_token_bitmask(matcher, bits, 0)  # noqa: E731
    rows["llguidance"] = (setup, compile_s, walk(fill, matcher.consume_token, ids))
    compiler, setup = timed(
        lambda: xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=VOCAB))
    )
    compiled, compile_s = timed(
        lambda: compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False, separators=(", ", ": "))
    )
    xmatcher, bits = xgrammar.GrammarMatcher(compiled), xgrammar.allocate_token_bitmask(1, VOCAB)
    rows["xgrammar"] = (
        setup,
        compile_s,
        walk(lambda: xmatcher.fill_next_token_bitmask(bits, 0), xmatcher.accept_token, ids),
    )
    print(f"{len(ids)} positions of {ANSWER}")
    print("| library | tokenizer setup, s | schema compile, s | mask per position, median ms | max ms |")
    print("|---|---|---|---|---|")
    for name, (setup, compile_s, times) in rows.items():
        median, worst = statistics.median(times) * 1e3, max(times) * 1e3
        print(f"| {name} | {setup:.2f} | {compile_s:.3f} | {median:.3f} | {worst:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
