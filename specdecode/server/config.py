"""What the server serves and every limit it keeps; each limit is the `specdecode serve` flag of the same name."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from specdecode.engine import NumSpeculativeTokens


def limit(default, help: str, type=None):  # noqa: A002 (argparse's names)
    """A field that is also a command-line flag."""
    return field(default=default, metadata={"help": help, "type": type or builtin_type(default)})


def builtin_type(value):
    return float if isinstance(value, float) else int


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    num_speculative_tokens: NumSpeculativeTokens = "auto"  # when a request does not say
    max_num_speculative_tokens: int = limit(16, "largest num_speculative_tokens a request may send")
    max_tokens_limit: int = limit(4096, "largest max_tokens a request may ask for")
    default_max_tokens: int = limit(256, "max_tokens of a chat request that sends none (completions: 16, as OpenAI)")
    max_prompt_tokens: int | None = limit(None, "longest prompt in tokens (None: the context length)", int)
    max_body_bytes: int = limit(1 << 20, "larger request bodies get 413")
    body_timeout: float = limit(30.0, "seconds for a request body to arrive; then 408")
    max_pending: int = limit(64, "requests queued + running; more get 429")
    max_rows: int = limit(64, "choices (n summed over requests) queued + running; more get 429")
    max_n: int = limit(8, "largest n (choices per request); at most --max-batch-rows")
    max_batch_rows: int = limit(16, "choices decoded together (one batch); more wait in the queue")
    max_queue_wait: float = limit(300.0, "seconds a request may wait for the decoder; then 429")
    request_timeout: float = limit(600.0, "seconds from arrival to the last token; then 408 or a stream error event")
    max_connections: int = limit(256, "open HTTP connections; more get 503")
    header_timeout: float = limit(10.0, "seconds for a request's headers to arrive; then the connection is closed")

    def __post_init__(self) -> None:
        if self.max_n > self.max_batch_rows:
            raise ValueError(
                f"--max-n ({self.max_n}) must be at most --max-batch-rows ({self.max_batch_rows}): "
                "a request's choices are decoded together, so a larger n could never run"
            )


LIMITS = [f for f in fields(ServerConfig) if "help" in f.metadata]
