"""From logits to probabilities (temperature, top-k, top-p, min-p) and seeded sampling.

Everything here is a pure function of its arguments, so the math is tested alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch


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
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())
    draft_temperature: float | None = None
    draft_top_k: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        _check_temperature("temperature", self.temperature)
        _check_top_k("top_k", self.top_k)
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.min_p, (int, float)) and 0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if self.draft_temperature is not None:
            _check_temperature("draft_temperature", self.draft_temperature)
        if self.draft_top_k is not None:
            _check_top_k("draft_top_k", self.draft_top_k)
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

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


def _check_temperature(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 = greedy), got {value!r}")


def _check_top_k(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (0 = off), got {value!r}")


def check_finite(logits: torch.Tensor, who: str = "model") -> None:
    """Raise NonFiniteLogitsError unless every row [..., V] is usable for sampling."""
    if bool(torch.isfinite(logits).all()):
        return
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
    logits = logits / warp.temperature
    if 0 < warp.top_k < logits.shape[-1]:
        kth = torch.topk(logits, warp.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if warp.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # [..., V]
        drop_sorted = mass_before >= warp.top_p  # the first token is always kept
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    if warp.min_p > 0.0:
        probs = probs.masked_fill(probs < warp.min_p * probs.amax(-1, keepdim=True), 0.0)
    return probs / probs.sum(-1, keepdim=True)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token id per row: [..., V] probabilities -> [...] long."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
