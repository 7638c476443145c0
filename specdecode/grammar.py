"""Structured output: a grammar (a JSON schema, any JSON object, a regular expression or a Lark grammar)
as a mask on the tokens a model may choose, through llguidance (PyPI's `llguidance`).

The mask applies to the target's logits at every position of a verify pass and to the draft's guesses
(`specdecode.rules`); a chain of guesses is cut where the grammar refuses it, and where the grammar
forces a continuation its tokens are added as guesses that cost no draft pass (`TokenRules.constrain`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

KINDS = ("json_object", "json_schema", "regex", "lark")
# JSON as json.dumps writes it: ", " and ": " between items, no other whitespace (so no runs of blanks, and
# more text forced); a schema's "x-guidance" options override it (llguidance's JSON options)
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class GrammarSpec:
    """What the output must match: `kind` one of KINDS; `text` the JSON schema (as JSON text), the regular
    expression or the Lark grammar ("" for json_object: any JSON object)."""

    kind: Literal["json_object", "json_schema", "regex", "lark"]
    text: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"grammar kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"grammar text must be a string, got {type(self.text).__name__}")

    @classmethod
    def json_schema(cls, schema: dict | str) -> GrammarSpec:
        return cls("json_schema", schema if isinstance(schema, str) else json.dumps(schema))


def _llguidance():
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch
    except ImportError:
        raise ImportError(
            "structured output needs llguidance: pip install 'specdecode[grammar]' (or pip install llguidance)"
        ) from None
    return llguidance


class Grammars:
    """Compiles GrammarSpecs for one tokenizer (its llguidance view is built once, about a second)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_ids: Collection[int]) -> None:
        llg = _llguidance()
        self.vocab_size, self.eos_ids = vocab_size, sorted(eos_ids)
        self.forced_guesses = True  # False: no forced tokens as free guesses (to measure what they bring)
        eos = self.eos_ids or None
        try:
            self.tokenizer = llg.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        except ValueError:  # a tokenizer llguidance cannot read from its JSON: give it each token's bytes
            self.tokenizer = llg.LLTokenizer(llg.TokenizerWrapper(_ByteTokens(tokenizer, vocab_size)), eos_token=eos)

    def compile(self, spec: GrammarSpec) -> str:
        """The llguidance grammar of `spec`; ValueError saying what is wrong with an invalid one."""
        llg = _llguidance()
        if spec.kind in ("json_object", "json_schema"):
            try:
                schema = json.loads(spec.text) if spec.kind == "json_schema" else {"type": "object"}
            except json.JSONDecodeError as err:
                raise ValueError(f"the JSON schema is not valid JSON: {err}") from None
            if not isinstance(schema, dict):
                raise ValueError("a JSON schema must be a JSON object")
            grammar = llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE)
        elif spec.kind == "regex":
            grammar = llg.LLMatcher.grammar_from_regex(spec.text)
        else:
            grammar = llg.LLMatcher.grammar_from_lark(spec.text)
        error = llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error and not error.startswith("WARNING"):
            raise ValueError(f"invalid {spec.kind.replace('_', ' ')}: {error}")
        return grammar

    def matcher(self, spec: GrammarSpec) -> GrammarState:
        return GrammarState(self, self.compile(spec))


class GrammarState:
    """One row's grammar after its committed tokens (`specdecode.rules.Grammar`)."""

    def __init__(self, grammars: Grammars, grammar: str) -> None:
        llg = _llguidance()
        self.grammars = grammars
        self.matcher = llg.LLMatcher(grammars.tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(f"invalid grammar: {self.matcher.get_error()}")

    def allowed(self, prefixes: Sequence[Sequence[int]], vocab_size: int) -> torch.Tensor:
        """[N, vocab_size] bool; a position where the grammar allows nothing (past its end) allows EOS."""
        llg = _llguidance()
        bits = llg.torch.allocate_token_bitmask(len(prefixes), self.grammars.vocab_size)  # [N, ceil(V / 32)] int32
        for i, prefix in enumerate(prefixes):
            consumed = self.matcher.try_consume_tokens(list(prefix))
            llg.torch.fill_next_token_bitmask(self.matcher, bits, i)
            self.matcher.rollback(consumed)
            if consumed < len(prefix):
                bits[i] = 0
        shifts = torch.arange(32, dtype=torch.int32)
        allowed = ((bits.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)[:, : self.grammars.vocab_size]
        if vocab_size > allowed.shape[1]:
            allowed = torch.nn.functional.pad(allowed, (0, vocab_size - allowed.shape[1]))
        empty = ~allowed.any(-1)
        if empty.any() and self.grammars.eos_ids:
            allowed[empty.nonzero()[:, :1], torch.tensor(self.grammars.eos_ids)] = True
        return allowed

    def accepts(self, tokens: Sequence[int]) -> int:
        return self.matcher.validate_tokens(list(tokens))

    def forced(self, tokens: Sequence[int]) -> list[int]:
        if not self.grammars.forced_guesses:
            return []
        consumed = self.matcher.try_consume_tokens(list(tokens))
        forced = self.matcher.compute_ff_tokens() if consumed == len(tokens) else []
        self.matcher.rollback(consumed)
        return forced

    def commit(self, tokens: Sequence[int]) -> None:
        self.matcher.try_consume_tokens(list(tokens))


class _ByteTokens:
    """A tokenizer as llguidance's TokenizerWrapper reads it: each token's bytes (special tokens marked
    with a 0xff byte), and text -> ids."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        special = set(tokenizer.all_special_ids)
        self.tokenizer = tokenizer
        self.eos_token_id, self.bos_token_id = tokenizer.eos_token_id, tokenizer.bos_token_id
        self.special_token_ids = sorted(special)
        self.tokens = [
            b"\xff" + tokenizer.convert_ids_to_tokens(i).encode() if i in special else tokenizer.decode([i]).encode()
            for i in range(vocab_size)
        ]

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)
