"""Structured output stays exact: the output is the target's under the grammar's mask.

The reference mask is computed here with the `regex` package's partial matching (a token is allowed
iff the text with it can still grow into a match; EOS iff the text matches), independently of
llguidance. Greedy: token-identical for every proposer and K, JSON that validates against its schema.
Sampling: enumeration + chi-square at a false-alarm rate of 1e-3 (test_sampling_exact.py's method)
with a negative control (the draft's guesses checked against the unmasked target) that is caught.
"""

import itertools
import json
import string

import jsonschema
import numpy as np
import pytest
import regex
import torch
from test_sampling_exact import ALPHA, N, sampled_outputs
from tiny_models import chi_square_pvalue, make_model, make_tokenizer, perturbed_copy

import specdecode.policy
import specdecode.rules
from specdecode import SamplingParams, SpeculativeDecoder
from specdecode.grammar import GrammarSpec
from specdecode.sampling import logits_to_probs

JSON_TOKENIZER = make_tokenizer(list('{}[]":, ' + string.ascii_lowercase + string.digits + "-.\n"))
SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "tag": {"type": "string", "maxLength": 4}},
    "required": ["id", "tag"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def json_decoders():
    target = make_model("llama", len(JSON_TOKENIZER), seed=0, layers=3, init_range=0.3)
    draft = perturbed_copy(target, noise=0.01, seed=1)
    return {p: SpeculativeDecoder(target, draft, JSON_TOKENIZER, proposer=p) for p in ("draft", "ngram", "tree")}


@pytest.mark.parametrize("proposer", ["draft", "ngram", "tree"])
def test_greedy_json_schema_is_target_only_and_valid(json_decoders, proposer):
    decoder = json_decoders[proposer]
    sampling = SamplingParams(grammar=GrammarSpec.json_schema(SCHEMA))
    alone = decoder.generate("a", 60, 0, sampling)
    assert alone.finish_reason == "stop"
    jsonschema.validate(json.loads(alone.text), SCHEMA)
    for k in (1, 3, "auto"):
        assert decoder.generate("a", 60, k, sampling).token_ids == alone.token_ids, f"K={k}"
    batch = decoder.generate(["a", "b"], 60, 3, sampling)
    assert batch[0].token_ids == alone.token_ids
    jsonschema.validate(json.loads(batch[1].text), SCHEMA)


def test_forced_tokens_are_free_guesses(json_decoders):
    """Without any proposer guesses (K = 0) the grammar's forced text ({"id": ...) still comes several
    tokens per target pass, all accepted."""
    decoder = json_decoders["draft"]
    out = decoder.generate("a", 60, 0, SamplingParams(grammar=GrammarSpec.json_schema(SCHEMA)))
    assert out.stats.target_passes < len(out.token_ids) - 5
    assert out.stats.draft_passes == 0


def test_forced_tokens_need_no_proposer_and_do_not_teach_the_policy(json_decoders, monkeypatch):
    """Where the grammar forces the next tokens the draft is not run, and the K policy hears only of the
    draft's own guesses (at most K a step), never of the forced ones."""
    seen = []
    monkeypatch.setattr(specdecode.policy.FixedK, "observe", lambda self, guessed, accepted: seen.append(guessed))
    out = json_decoders["draft"].generate("a", 60, 2, SamplingParams(grammar=GrammarSpec.json_schema(SCHEMA)))
    assert out.stats.drafted > sum(seen) and max(seen) <= 2
    assert 0 in seen and out.stats.draft_passes < 2 * out.stats.target_passes


def test_json_object_and_lark(json_decoders):
    decoder = json_decoders["draft"]
    out = decoder.generate("a", 40, 3, SamplingParams(grammar=GrammarSpec("json_object")))
    assert isinstance(json.loads(out.text), dict)
    lark = 'start: "[" NUM ("," NUM)* "]"\nNUM: /[0-9]{1,3}/'
    out = decoder.generate("a", 40, 3, SamplingParams(grammar=GrammarSpec("lark", lark)))
    assert regex.fullmatch(r"\[[0-9]{1,3}(,[0-9]{1,3})*\]", out.text), out.text


@pytest.mark.parametrize(
    "spec, message",
    [
        (GrammarSpec("regex", "(ab"), "invalid regex"),
        (GrammarSpec("json_schema", '{"type": 3}'), "invalid json schema"),
        (GrammarSpec("json_schema", "{not json"), "not valid JSON"),
        (GrammarSpec("lark", "start: x"), "invalid lark"),
    ],
)
def test_bad_grammars_are_value_errors(json_decoders, spec, message):
    with pytest.raises(ValueError, match=message):
        json_decoders["draft"].generate("a", 5, 2, SamplingParams(grammar=spec))


def test_grammar_with_ignore_eos_is_refused(json_decoders):
    with pytest.raises(ValueError, match="ignore_eos"):
        json_decoders["draft"].generate("a", 5, 2, SamplingParams(grammar=GrammarSpec("json_object")), ignore_eos=True)
    with pytest.raises(ValueError, match="grammar kind"):
        GrammarSpec("yaml", "")


# -- sampling on a 6-token vocabulary: <unk> <s> </s> a b c -------------------------------------------

TOKENIZER = make_tokenizer(list("abc"))
V, EOS, NEW = len(TOKENIZER), 2, 4
PATTERN = "(ab|c|ba)+"
PROMPT = [1, 3, 4, 5, 3, 4]


def reference_allowed(text: str) -> list[bool]:
    """Per token: may it follow `text` under PATTERN (partial matching), EOS where the text matches."""
    allowed = [False] * V
    allowed[EOS] = regex.fullmatch(PATTERN, text) is not None
    for token, char in zip(range(3, V), "abc", strict=True):
        allowed[token] = regex.fullmatch(PATTERN, text + char, partial=True) is not None
    return allowed


@torch.no_grad()
def exact_distribution(model, sampling: SamplingParams) -> dict[tuple[int, ...], float]:
    """P(output) for every output of at most NEW tokens (ended by EOS or by length)."""
    out = {}
    for seq in itertools.product(range(V), repeat=NEW):
        end = seq.index(EOS) + 1 if EOS in seq else NEW
        if seq[:end] in out:
            continue
        p = 1.0
        for i in range(end):
            logits = model(torch.tensor([PROMPT + list(seq[:i])])).logits[0, -1]
            text = "".join("abc"[t - 3] for t in seq[:i])
            masked = logits.masked_fill(~torch.tensor(reference_allowed(text)), -torch.inf)
            p *= float(logits_to_probs(masked, sampling.target_warp())[seq[i]])
        out[seq[:end]] = p
    return out


def sampled_pvalue(decoder, sampling: SamplingParams, exact: dict, samples: int = N) -> float:
    """Chi-square p-value of `samples` outputs (decoded 100 at a time as the rows of a batch) against `exact`."""
    outcomes = list(exact)
    counts = np.zeros(len(outcomes) + 1)  # the last cell: outputs the grammar forbids (probability 0)
    for output in sampled_outputs(decoder, sampling, 2, samples, rows=100, ignore_eos=False, prompt=PROMPT, new=NEW):
        counts[outcomes.index(output) if output in exact else -1] += 1
    return chi_square_pvalue(counts, np.array([*(exact[o] for o in outcomes), 0.0]))


@pytest.fixture(scope="module")
def small():
    target = make_model("llama", V, seed=0, layers=2, init_range=0.2)
    sampling = SamplingParams(temperature=1.0, grammar=GrammarSpec("regex", PATTERN))
    return target, perturbed_copy(target, 0.1, 2), sampling, exact_distribution(target, sampling)


@pytest.mark.parametrize("proposer", ["draft", "ngram"])
def test_sampling_under_a_grammar_is_the_targets(small, proposer):
    target, draft, sampling, exact = small
    decoder = SpeculativeDecoder(target, draft, TOKENIZER, proposer=proposer)
    assert sampled_pvalue(decoder, sampling, exact) > ALPHA


def test_guesses_checked_against_the_unmasked_target_are_caught(small, monkeypatch):
    """Outputs the grammar forbids come out (p = 0) within 300 samples."""
    target, draft, sampling, exact = small
    apply = specdecode.rules.TokenRules.apply

    def unmasked_target(self, logits, prefixes):
        return logits.double() if len(prefixes) > 1 else apply(self, logits, prefixes)

    monkeypatch.setattr(specdecode.rules.TokenRules, "apply", unmasked_target)
    decoder = SpeculativeDecoder(target, draft, TOKENIZER)
    assert sampled_pvalue(decoder, sampling, exact, samples=300) < ALPHA
