"""One decoding thread that serves a bounded queue of jobs, one at a time.

The decoder is not thread-safe and has no batch engine yet, so requests are decoded in turn, in
arrival order; each job streams its chunks back to the event loop that submitted it. A job whose
client has gone is cancelled: skipped if still queued, stopped after the current target pass if
running, and its slot is freed either way. A job that waited in the queue past its `start_by`
time is refused without running, and one still running at its `finish_by` time is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from specdecode.engine import NumSpeculativeTokens, SpeculativeDecoder
from specdecode.sampling import SamplingParams

log = logging.getLogger("specdecode.server")


class QueueFullError(Exception):
    """More requests (or rows) are queued and running than the server accepts."""


class QueueWaitError(Exception):
    """A job waited in the queue longer than the server allows."""


class DeadlineError(Exception):
    """A job ran past its deadline."""


@dataclass
class Job:
    """One request: `len(samplings)` choices of one prompt, decoded one after another.

    `start_by` and `finish_by` are `time.monotonic()` instants. Events put on `events`: ("chunk",
    choice index, StreamChunk) per target pass, then ("done", None, None), or ("error", None, exception).
    """

    prompt_ids: list[int]
    max_tokens: int
    k: NumSpeculativeTokens
    samplings: list[SamplingParams]
    loop: asyncio.AbstractEventLoop
    start_by: float = float("inf")
    finish_by: float = float("inf")
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, index: int | None, payload) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, index, payload))

    @property
    def rows(self) -> int:
        return len(self.samplings)


class Worker:
    """Accepts at most `max_pending` jobs and `max_rows` choices (queued + running) and decodes them
    on one thread."""

    def __init__(
        self, decoder: SpeculativeDecoder, max_pending: int, max_rows: int, on_tokens: Callable[[int], None]
    ) -> None:
        """`on_tokens(n)` is called on the decoding thread for every n tokens generated."""
        self.decoder = decoder
        self.max_pending, self.max_rows = max_pending, max_rows
        self.on_tokens = on_tokens
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self.pending = 0  # jobs queued + running
        self.pending_rows = 0
        self.running = 0
        self._thread = threading.Thread(target=self._serve, name="specdecode-decoder", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job, or raise QueueFullError."""
        with self._lock:
            if self.pending >= self.max_pending:
                raise QueueFullError(f"the server is busy: {self.pending} requests queued or running")
            if self.pending_rows + job.rows > self.max_rows:
                raise QueueFullError(
                    f"the server is busy: {self.pending_rows} choices queued or running, "
                    f"room for {self.max_rows - self.pending_rows} more and this request asks for {job.rows}"
                )
            self.pending += 1
            self.pending_rows += job.rows
        self._jobs.put(job)

    @property
    def waiting(self) -> int:
        return self.pending - self.running

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self.running = 1
            try:
                if job.cancelled.is_set():
                    pass
                elif time.monotonic() > job.start_by:
                    job.emit("error", None, QueueWaitError("the request waited in the queue too long; retry later"))
                else:
                    self._run(job)
                    job.emit("done", None, None)
            except DeadlineError as err:
                job.emit("error", None, err)
            except Exception as err:  # reported to the request; the worker goes on
                log.exception("generation failed")
                job.emit("error", None, err)
            finally:
                with self._lock:
                    self.pending -= 1
                    self.pending_rows -= job.rows
                    self.running = 0

    def _run(self, job: Job) -> None:
        for index, sampling in enumerate(job.samplings):
            for chunk in self.decoder.stream(job.prompt_ids, job.max_tokens, job.k, sampling):
                self.on_tokens(len(chunk.token_ids))
                if job.cancelled.is_set():
                    return
                job.emit("chunk", index, chunk)
                if time.monotonic() > job.finish_by and chunk.finish_reason is None:
                    raise DeadlineError("the request ran past the server's request timeout")
