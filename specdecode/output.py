"""The generated tokens and their text (EOS ids, stop strings, max_new_tokens, streaming deltas), and the results."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from specdecode.logprobs import TokenLogprob
from specdecode.stats import DecodeStats


class OutputTracker:
    """Takes accepted tokens one at a time and says when generation must stop.

    Never keeps a token after a stop: EOS ends the output (the EOS id is kept in token_ids, not
    in text); a stop string ends it at the token that completed it, the text cut before it.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        eos_ids: Collection[int],
        stop: tuple[str, ...],
        max_new_tokens: int,
        logprobs: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.stop = stop
        self.max_new_tokens = max_new_tokens
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if logprobs else None  # one per token, when asked for
        self.finish_reason: str | None = None
        self._text: str | None = ""
        self._stop_at: int | None = None  # character index where a stop string begins
        self._streamed = 0  # characters already handed out by `delta`

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        return self._text if self._stop_at is None else self._text[: self._stop_at]

    def append(self, token: int) -> bool:
        """Add one token; True when the output is finished."""
        self.token_ids.append(token)
        self._text = None
        if token in self.eos_ids or self.stop and self._find_stop():
            self.finish_reason = "stop"
        elif len(self.token_ids) >= self.max_new_tokens:
            self.finish_reason = "length"
        return self.finished

    def _find_stop(self) -> bool:
        text = self.text
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self._stop_at = min(hits)
        return bool(hits)

    def delta(self) -> str:
        """Text not handed out yet that is safe to show: no half character, no possible stop start."""
        text = self.text
        end = len(text)
        if not self.finished:
            while end > self._streamed and text[end - 1] == "\ufffd":  # incomplete UTF-8
                end -= 1
            safe = end
            for s in self.stop:  # hold back a suffix that may grow into a stop string
                for n in range(min(len(s) - 1, end), 0, -1):
                    if text[end - n : end] == s[:n]:
                        safe = min(safe, end - n)
                        break
            end = safe
        end = max(end, self._streamed)
        piece, self._streamed = text[self._streamed : end], end
        return piece


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # the new tokens only (an EOS that ended generation included)
    finish_reason: str  # "stop" | "length"
    stats: DecodeStats
    logprobs: list[TokenLogprob] | None = None  # one per token of token_ids, when asked for


@dataclass
class StreamChunk:
    text: str  # new text since the previous chunk
    token_ids: list[int]  # tokens accepted in this step
    finish_reason: str | None  # set on the last chunk
    stats: DecodeStats
    logprobs: list[TokenLogprob] | None = None  # one per token of token_ids, when asked for
