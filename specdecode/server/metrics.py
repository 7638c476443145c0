"""Prometheus metrics for `/metrics`, named after vLLM's where the idea is the same."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from specdecode.stats import DecodeStats


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("specdecode_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("specdecode_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter(
            "specdecode_generation_tokens", "Tokens generated (also for requests cancelled later)", registry=r
        )
        self.drafts = Counter("specdecode_spec_decode_num_drafts", "Target passes that checked guesses", registry=r)
        self.draft_tokens = Counter("specdecode_spec_decode_num_draft_tokens", "Tokens guessed", registry=r)
        self.accepted_tokens = Counter("specdecode_spec_decode_num_accepted_tokens", "Guesses accepted", registry=r)
        self.accepted_per_pos = Counter(
            "specdecode_spec_decode_num_accepted_tokens_per_pos",
            "Guesses accepted at each position (0 = the first guess of a step)",
            ["position"],
            registry=r,
        )
        self.acceptance_rate = Gauge(
            "specdecode_spec_decode_acceptance_rate", "Accepted / drafted tokens since start", registry=r
        )
        self.mean_acceptance_length = Gauge(
            "specdecode_spec_decode_mean_acceptance_length", "Tokens per target pass since start", registry=r
        )
        self.latency = Histogram("specdecode_e2e_request_latency_seconds", "Request latency", registry=r)
        self.batch_rows = Histogram(
            "specdecode_batch_rows",
            "Rows (choices) in each step's target pass",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.step_k = Histogram(
            "specdecode_spec_decode_num_speculative_tokens",
            "K chosen for each row of each step (0: plain decoding)",
            buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16),
            registry=r,
        )
        self.first_token = Histogram("specdecode_time_to_first_token_seconds", "Time to first token", registry=r)
        self._totals = DecodeStats()

    def watch_queue(self, running, waiting) -> None:
        """`running` and `waiting`: callables giving the current number of requests."""
        Gauge("specdecode_num_requests_running", "Requests being decoded", registry=self.registry).set_function(running)
        Gauge("specdecode_num_requests_waiting", "Requests queued", registry=self.registry).set_function(waiting)

    def record_step(self, ks: list[int]) -> None:
        """One step of the batch: the K of each of its rows."""
        self.batch_rows.observe(len(ks))
        for k in ks:
            self.step_k.observe(k)

    def record_generation(self, stats: DecodeStats) -> None:
        """One finished choice (prompt tokens are counted once per request, by the caller)."""
        self.drafts.inc(stats.drafted_at[0] if stats.drafted_at else 0)
        self.draft_tokens.inc(stats.drafted)
        self.accepted_tokens.inc(stats.accepted)
        for position, accepted in enumerate(stats.accepted_at):
            self.accepted_per_pos.labels(position=str(position)).inc(accepted)
        self._totals.add(stats)
        self.acceptance_rate.set(self._totals.acceptance_rate)
        self.mean_acceptance_length.set(self._totals.mean_acceptance_length)
