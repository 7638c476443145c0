"""From logits to probabilities (temperature, top-k, top-p, min-p) and seeded sampling.

Everything here is a pure function of its arguments, so the math is tested alone.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace

import torch

from specdecode.grammar import GrammarSpec

SEED_RANGE = (0, 2**64)  # seeds a torch.Generator takes: [0, 2**64)
MAX_LOGPROBS = 20  # the most alternatives per token `logprobs` may ask for (OpenAI's limit)


class NonFiniteLogitsError(ValueError):
    """A model produced NaN or +inf logits, or a row with no finite logit at all."""


@dataclass(frozen=True)
class Warp:
    """How one model's logits become the distribution a token is drawn from."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class SamplingParams:
    """What the user asks for. `temperature=0` is greedy decoding (the default).

    `draft_temperature` and `draft_top_k` warp only the proposer's guesses: they change how
    often guesses are accepted (speed), never the distribution of the output.

    `logit_bias` (token id -> value in [-100, 100], added to the logit), `presence_penalty` and
    `frequency_penalty` (OpenAI's, in [-2, 2], over the generated tokens) and `repetition_penalty`
    (> 0, as in `transformers`, over the prompt and the generated tokens) change the model: the output
    is that of the target with them applied at every position (`specdecode.rules`), exactly.
    `logprobs=k` reports each generated token's log-probability and the k most likely alternatives
    (0 <= k <= 20) under the target after those rules, before temperature and truncation.
    `grammar` (`specdecode.grammar.GrammarSpec`: a JSON schema, any JSON object, a regex, a Lark grammar)
    masks every token the output may not continue with; the output ends with EOS where the grammar is complete.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())
    draft_temperature: float | None = None
    draft_top_k: int | None = None
    logit_bias: dict[int, float] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    grammar: GrammarSpec | None = None

    def __post_init__(self) -> None:
        """Raise ValueError (TypeError for a wrong type) naming the argument that is not acceptable."""
        object.__setattr__(self, "stop", _stop_strings(self.stop))
        _check_temperature("temperature", self.temperature)
        _check_top_k("top_k", self.top_k)
        _check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        _check_number("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if self.draft_temperature is not None:
            _check_temperature("draft_temperature", self.draft_temperature)
        if self.draft_top_k is not None:
            _check_top_k("draft_top_k", self.draft_top_k)
        if self.seed is not None:
            _check_integer("seed", self.seed)
            if not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
                raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")
        for name in ("presence_penalty", "frequency_penalty"):
            _check_number(name, getattr(self, name))
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)!r}")
        _check_number("repetition_penalty", self.repetition_penalty)
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be finite and > 0 (1 = off), got {self.repetition_penalty!r}")
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        if self.grammar is not None and not isinstance(self.grammar, GrammarSpec):
            raise TypeError(f"grammar must be a GrammarSpec, got {type(self.grammar).__name__}")
        if self.logprobs is not None:
            _check_integer("logprobs", self.logprobs)
            if not 0 <= self.logprobs <= MAX_LOGPROBS:
                raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def changes_logits(self) -> bool:
        """Whether logit_bias or a penalty is set (`specdecode.rules`)."""
        return bool(self.logit_bias) or any(
            (self.presence_penalty, self.frequency_penalty, self.repetition_penalty != 1.0)
        )

    def target_warp(self) -> Warp:
        return Warp(float(self.temperature), self.top_k, float(self.top_p), float(self.min_p))

    def draft_warp(self) -> Warp:
        """The target's warp with the draft-side overrides applied."""
        warp = self.target_warp()
        if self.draft_temperature is not None:
            warp = replace(warp, temperature=float(self.draft_temperature))
        if self.draft_top_k is not None:
            warp = replace(warp, top_k=self.draft_top_k)
        return warp


def _check_integer(name: str, value) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")


def _check_number(name: str, value) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")


def _check_temperature(name: str, value: float) -> None:
    _check_number(name, value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 = greedy), got {value!r}")


def _check_top_k(name: str, value: int) -> None:
    _check_integer(name, value)
    if value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (0 = off), got {value!r}")


def _logit_bias(bias) -> dict[int, float] | None:
    """`logit_bias` checked: token ids >= 0 (as ints, or strings of them as in JSON) to values in [-100, 100]."""
    if bias is None or bias == {}:
        return None
    if not isinstance(bias, dict):
        raise TypeError(f"logit_bias must be a dict of token id -> value, got {type(bias).__name__}")
    checked = {}
    for token, value in bias.items():
        if isinstance(token, str) and token.isdecimal():
            token = int(token)
        _check_integer("a logit_bias token id", token)
        if token < 0:
            raise ValueError(f"logit_bias token ids must be >= 0, got {token}")
        _check_number(f"logit_bias[{token}]", value)
        if not -100.0 <= value <= 100.0:
            raise ValueError(f"logit_bias values must be in [-100, 100], got {value!r} for token {token}")
        checked[int(token)] = float(value)
    return checked


def _stop_strings(stop) -> tuple[str, ...]:
    """`stop` (None, a string or strings) as a tuple of non-empty strings of valid text."""
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, list | tuple) or not all(isinstance(s, str) for s in stops):
        raise TypeError(f"stop must be a string or a list of strings, got {stop!r}")
    for s in stops:
        if not s:
            raise ValueError("stop strings must not be empty")
        check_text("stop", s)
    return tuple(stops)


def check_text(name: str, text: str) -> None:
    """Raise ValueError if `text` is not valid Unicode text (it holds a lone UTF-16 surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name} holds a lone UTF-16 surrogate at position {err.start}, which is not text") from None


def check_finite(logits: torch.Tensor, who: str = "model") -> None:
    """Raise NonFiniteLogitsError unless every row [..., V] is usable for sampling."""
    if bool(torch.isfinite(logits.sum())) or bool(torch.isfinite(logits).all()):
        return  # usually one reduction: a NaN or an infinity makes the sum non-finite (an overflow falls through)
    if bool(torch.isnan(logits).any()):
        raise NonFiniteLogitsError(f"the {who} produced NaN logits (check the weights and dtype)")
    if bool(torch.isposinf(logits).any()):
        raise NonFiniteLogitsError(f"the {who} produced +inf logits (check the weights and dtype)")
    if bool(torch.isneginf(logits).all(dim=-1).any()):
        raise NonFiniteLogitsError(f"the {who} produced a row of logits that are all -inf")


def logits_to_probs(logits: torch.Tensor, warp: Warp) -> torch.Tensor:
    """[..., V] logits -> [..., V] probabilities under `warp` (one-hot argmax when greedy).

    Order as in `transformers`: temperature, top-k, then top-p and min-p on the softmax.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if warp.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    # shifted to <= 0 and the temperature kept representable: a tiny temperature tends to greedy, never to NaN
    temperature = max(warp.temperature, torch.finfo(logits.dtype).tiny)
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    if 0 < warp.top_k < logits.shape[-1]:
        kth = torch.topk(logits, warp.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if warp.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # [..., V]
        drop_sorted = mass_before >= warp.top_p
        drop_sorted[..., 0] = False  # the most likely token is always kept (also when top_p rounds to 0)
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    if warp.min_p > 0.0:
        probs = probs.masked_fill(probs < warp.min_p * probs.amax(-1, keepdim=True), 0.0)
    return probs / probs.sum(-1, keepdim=True)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token id per row: [..., V] probabilities -> [...] long."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator seeded with `seed`, or from fresh entropy when it is None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator
