"""One decoding thread that runs every admitted request together, continuously batched.

Requests wait in a bounded queue and are admitted in arrival order while their choices fit in
`max_batch_rows`; each choice is a row of one `BatchDecoder`, which takes one step for all rows at a
time: a request joins the running batch at the next step and leaves when its last row finishes.
Each step's tokens stream back to the event loop that submitted the request. A request whose client
has gone is cancelled (skipped if still queued, its rows dropped after the current step if running);
one that waited in the queue past its `start_by` time is refused without running, and one still
running at its `finish_by` time is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from specdecode.batch import BatchDecoder
from specdecode.engine import NumSpeculativeTokens, SpeculativeDecoder
from specdecode.output import StreamChunk
from specdecode.sampling import SamplingParams

log = logging.getLogger("specdecode.server")


class QueueFullError(Exception):
    """More requests (or rows) are queued and running than the server accepts."""


class QueueWaitError(Exception):
    """A job waited in the queue longer than the server allows."""


class DeadlineError(Exception):
    """A job ran past its deadline."""


@dataclass(eq=False)
class Job:
    """One request: `rows` choices of one prompt (choice i seeded sampling.seed + i).

    `start_by` and `finish_by` are `time.monotonic()` instants. Events put on `events`: ("prompt", None,
    the prompt's TokenLogprobs) first where asked, ("chunk", choice index, StreamChunk) per step, then
    ("done", None, None), or ("error", None, exception). A job of max_tokens 0 only scores its prompt.
    """

    prompt_ids: list[int]
    max_tokens: int
    k: NumSpeculativeTokens
    sampling: SamplingParams
    rows: int  # the request's n
    loop: asyncio.AbstractEventLoop
    ignore_eos: bool = False
    prompt_logprobs: int | None = None  # score the prompt first, with this many alternatives per token
    start_by: float = float("inf")
    finish_by: float = float("inf")
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    first_row: int = -1  # the batch row of choice 0 (choice i is first_row + i) once admitted

    def emit(self, kind: str, index: int | None, payload) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, index, payload))


class Worker:
    """Accepts at most `max_pending` jobs and `max_rows` choices (queued + running), and decodes at most
    `max_batch_rows` choices together on one thread."""

    def __init__(
        self,
        decoder: SpeculativeDecoder,
        max_pending: int,
        max_rows: int,
        max_batch_rows: int,
        on_tokens: Callable[[int], None],
        on_step: Callable[[list[int]], None] = lambda ks: None,
    ) -> None:
        """`on_tokens(n)` is called on the decoding thread for every n tokens generated, `on_step(ks)`
        after every step with the K of each of its rows."""
        self.decoder = decoder
        self.max_pending, self.max_rows, self.max_batch_rows = max_pending, max_rows, max_batch_rows
        self.on_tokens, self.on_step = on_tokens, on_step
        self._waiting: deque[Job] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopped = False
        self.pending = 0  # jobs queued + running
        self.pending_rows = 0
        self.running = 0  # jobs in the batch
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
            self._waiting.append(job)
            self._wake.notify()

    @property
    def alive(self) -> bool:
        """Whether the decoding thread is running."""
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        return self.pending - self.running

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        batch, jobs = self._new_batch(), []
        while True:
            with self._lock:
                while not self._stopped and not jobs and not self._waiting:
                    self._wake.wait()
                if self._stopped:
                    return
                admitted = []
                free = self.max_batch_rows - sum(job.rows for job in jobs)
                while self._waiting and self._waiting[0].rows <= free:
                    admitted.append(self._waiting.popleft())
                    free -= admitted[-1].rows
            jobs += [job for job in admitted if self._admit(job, batch)]
            if not jobs:
                continue
            try:
                stepped = batch.step()
            except Exception as err:  # reported to every running request; the worker goes on
                log.exception("generation failed")
                for job in jobs:
                    self._finish(job, ("error", None, err))
                batch, jobs = self._new_batch(), []
                continue
            self.on_step([row.k for row, _ in stepped])
            for row, committed in stepped:
                job = next(j for j in jobs if j.first_row <= row.index < j.first_row + j.rows)
                self.on_tokens(len(committed))
                if not job.cancelled.is_set():
                    logprobs = row.output.logprobs
                    logprobs = None if logprobs is None else logprobs[len(logprobs) - len(committed) :]
                    chunk = StreamChunk(row.output.delta(), committed, row.output.finish_reason, row.stats, logprobs)
                    job.emit("chunk", row.index - job.first_row, chunk)
            jobs = self._retire(jobs, batch)

    def _new_batch(self) -> BatchDecoder:
        self._next_row = 0
        return BatchDecoder(self.decoder, "auto" if self.decoder.proposer is not None else 0)

    def _admit(self, job: Job, batch: BatchDecoder) -> bool:
        """Put a queued job's choices into the batch; False if it does not run (cancelled, waited too long)."""
        if job.cancelled.is_set():
            self._finish(job, None, admitted=False)
            return False
        if time.monotonic() > job.start_by:
            error = QueueWaitError("the request waited in the queue too long; retry later")
            self._finish(job, ("error", None, error), admitted=False)
            return False
        if job.prompt_logprobs is not None:
            try:
                job.emit("prompt", None, self.decoder.score(job.prompt_ids, job.prompt_logprobs))
            except Exception as err:
                log.exception("prompt scoring failed")
                self._finish(job, ("error", None, err), admitted=False)
                return False
        if job.max_tokens == 0:
            self._finish(job, ("done", None, None), admitted=False)
            return False
        job.first_row, self._next_row = self._next_row, self._next_row + job.rows
        batch.add(job.prompt_ids, job.max_tokens, job.sampling, job.ignore_eos, job.rows, job.first_row, job.k)
        with self._lock:
            self.running += 1
        return True

    def _retire(self, jobs: list[Job], batch: BatchDecoder) -> list[Job]:
        """The jobs still running after this step; the others are finished, cancelled or past their deadline."""
        running = {row.index for row in batch.rows}
        keep = []
        for job in jobs:
            rows = set(range(job.first_row, job.first_row + job.rows)) & running
            if job.cancelled.is_set():
                batch.remove(rows)
                self._finish(job, None)
            elif not rows:
                self._finish(job, ("done", None, None))
            elif time.monotonic() > job.finish_by:
                batch.remove(rows)
                self._finish(job, ("error", None, DeadlineError("the request ran past the server's request timeout")))
            else:
                keep.append(job)
        return keep

    def _finish(self, job: Job, event: tuple | None, admitted: bool = True) -> None:
        """Send the job's last event (if any) and give its slot and rows back."""
        if event is not None:
            job.emit(*event)
        with self._lock:
            self.pending -= 1
            self.pending_rows -= job.rows
            if admitted:
                self.running -= 1
