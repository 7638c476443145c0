"""How many tokens to guess: the expected-speedup formulas of docs/design.md, section 3.

Costs are relative to one target pass over one token: `draft_cost` is one draft token and
`verify_cost[n]` is one target pass over n tokens (1.0 at n = 1; on a GPU about 1.0 for small n,
on a CPU it grows with n, so measure it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from specdecode.sampling import Warp


class KPolicy(Protocol):
    """Chooses how many tokens to guess in the next step and learns from what happened."""

    probe: bool  # the last K is a probe: to be tried by one row only

    def next_k(self, rows: int = 1, unread: int = 0) -> int:
        """K for the rows of the next step that follow this policy; the step's target pass verifies
        `rows` rows, and their drafts have `unread` tokens to read before guessing. Asked once per step."""
        ...

    def observe(self, guessed: int, accepted: int) -> None: ...


def expected_tokens_per_pass(alpha: float, k: int) -> float:
    """E[tokens per target pass] with K guesses each accepted with probability alpha: (1-a^(K+1))/(1-a)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def expected_tokens(rates: float | Sequence[float], k: int) -> float:
    """E[tokens per target pass] with K guesses. `rates[i]`: the chance guess i + 1 is accepted when
    all before it were (the last rate holds beyond the list); a single alpha is the closed form."""
    if isinstance(rates, int | float):
        return expected_tokens_per_pass(rates, k)
    total, run = 1.0, 1.0
    for i in range(k):
        run *= rates[min(i, len(rates) - 1)]
        total += run
    return total


def expected_speedup(
    rates: float | Sequence[float], k: int, draft_cost: float, verify_cost: Mapping[int, float], catch_up: float = 0.0
) -> float:
    """Tokens per unit time relative to target-only decoding:
    E(K) / (K * draft_cost + catch_up [K > 0] + verify_cost[K+1] / verify_cost[1]), where `catch_up` is
    what a step that guesses pays on top of its K draft passes (the draft reading the tokens of the last
    step that it has not seen)."""
    return expected_tokens(rates, k) / (k * draft_cost + catch_up * (k > 0) + verify_cost[k + 1] / verify_cost[1])


def step_costs(cost: Callable[[int], float | None], width: int, k_max: int) -> dict[int, float | None]:
    """{K + 1: cost of verifying a step of K guess depths}, the form `expected_speedup` takes:
    a chain checks K + 1 tokens, a tree `width` wide checks width * K + 1."""
    return {k + 1: cost(width * k + 1) for k in range(k_max + 1)}


def best_k(
    rates: float | Sequence[float], draft_cost: float, verify_cost: Mapping[int, float], catch_up: float = 0.0
) -> tuple[int, float]:
    """(K, expected speedup) maximising the speedup over the K whose verify cost is known; K = 0 included."""
    candidates = [k for k in range(0, max(verify_cost)) if k + 1 in verify_cost]
    return max(
        ((k, expected_speedup(rates, k, draft_cost, verify_cost, catch_up)) for k in candidates), key=lambda x: x[1]
    )


class FixedK:
    """The same K every step."""

    probe = False

    def __init__(self, k: int) -> None:
        self.k = k

    def next_k(self, rows: int = 1, unread: int = 0) -> int:
        return self.k

    def observe(self, guessed: int, accepted: int) -> None:
        pass


class HeuristicK:
    """As `transformers` assisted generation schedules it: +2 after a fully accepted step, -1 otherwise."""

    probe = False

    def __init__(self, start: int = 4, k_max: int = 16) -> None:
        self.k, self.k_max = start, k_max

    def next_k(self, rows: int = 1, unread: int = 0) -> int:
        return self.k

    def observe(self, guessed: int, accepted: int) -> None:
        if guessed:
            self.k = min(self.k + 2, self.k_max) if accepted == guessed else max(1, self.k - 1)


class AutoK:
    """K maximising expected tokens per second, each step (docs/design.md, section 3).

    Acceptance is estimated per position: rates[i] = P(guess i + 1 accepted | all before it were),
    from the guesses examined there, decayed each time the position is examined (a memory of about
    1 / (1 - decay) examinations), and shrunk by one pseudo-observation towards the rate of the
    position before (so a position never tried inherits it). A heavier prior or a shorter memory
    biases the rates towards the prior and makes the policy guess too little. Costs are what
    `cost(n)` (a target pass over n tokens, all rows together) and `draft_cost(rows)` (a draft pass
    guessing for `rows` rows) report at the time. In a batch of B rows every row is expected to
    accept as the rates say, so K is the best for the whole pass: B * E(K) tokens for K draft passes
    (the first also reading what the draft has not seen of the last step, about one more token a
    row: costed as a draft pass over 2B tokens instead of B) and a target pass over B * (K + 1)
    tokens, against B tokens for a pass over B. What the rows' drafts have not read yet (a new prompt,
    the tokens of plain steps) costs a draft pass over it, spread over the next `CATCH_UP_STEPS`
    steps: after plain decoding, guessing must pay for it to start. As B grows and
    verification stops being cheap, K shrinks and reaches 0. K = 0 (plain
    decoding) is a choice: while it wins, a probe with K = 1 (by one row of a batch: `probe`) is made
    after 4, 8, 16, ... (at most 64) plain steps, so a draft that becomes useful again is noticed and a
    useless one costs little;
    no probe is made while guessing could not pay even if every guess were accepted (a batch so
    large that verifying guesses costs more than they bring: a probe would learn nothing and cost
    the draft's catching up with every row).

    Guessing must promise at least `min_gain` more tokens per second than plain decoding: the model
    leaves out per-step work (sampling over the vocabulary, acceptance) and a noisy cost reading
    can make a near-useless draft look profitable. (`CachedModel.pass_cost` keeps sizes measured at
    different times comparable on a machine whose pace drifts.)
    """

    PROBE_AFTER_MAX = 64  # plain steps
    CATCH_UP_STEPS = 32  # steps over which the draft's reading what it has not seen is spread

    def __init__(
        self, cost, draft_cost, k_max: int = 8, width: int = 1, decay: float = 0.97, min_gain: float = 0.03
    ) -> None:
        """`width`: guesses per depth (a tree's width); a step of depth K verifies width * K + 1 tokens."""
        self.cost, self.draft_cost, self.k_max, self.width, self.decay = cost, draft_cost, k_max, width, decay
        self.min_gain = min_gain
        self.accepted_at = [0.0] * k_max  # decayed counts per position
        self.examined_at = [0.0] * k_max
        self.plain_steps, self.probe_after = 0, 4
        self.probe = False

    @property
    def rates(self) -> list[float]:
        out, prior = [], 0.5
        for accepted, examined in zip(self.accepted_at, self.examined_at, strict=True):
            prior = (accepted + prior) / (examined + 1.0)  # one pseudo-observation at the prior
            out.append(prior)
        return out

    def next_k(self, rows: int = 1, unread: int = 0) -> int:
        curve = step_costs(lambda n: self.cost(rows * n), self.width, self.k_max)
        draft_cost = self.draft_cost(rows) / curve[1]
        catch_up = max((self.draft_cost(2 * rows) or 0.0) / curve[1] - draft_cost, 0.0)
        if unread:
            catch_up += (self.draft_cost(unread) or 0.0) / curve[1] / self.CATCH_UP_STEPS
        k, gain = best_k(self.rates, draft_cost, curve, catch_up)
        self.probe = False
        if k > 0 and gain >= 1.0 + self.min_gain:
            self.plain_steps, self.probe_after = 0, 4
            return k
        if best_k(1.0, draft_cost, curve, catch_up)[1] < 1.0 + self.min_gain:
            return 0  # no acceptance could make guessing pay at this batch size: nothing to probe
        self.plain_steps += 1
        if self.plain_steps < self.probe_after:
            return 0
        self.plain_steps, self.probe_after = 0, min(2 * self.probe_after, self.PROBE_AFTER_MAX)
        self.probe = True
        return 1

    def observe(self, guessed: int, accepted: int) -> None:
        for i in range(min(accepted + 1, guessed, self.k_max)):  # positions up to the first rejection
            self.accepted_at[i] = self.decay * self.accepted_at[i] + (i < accepted)
            self.examined_at[i] = self.decay * self.examined_at[i] + 1.0


def measure_pass_costs(model, context: Sequence[int], sizes: Sequence[int], repeats: int = 3) -> dict[int, float]:
    """Median seconds of one pass over n new tokens after `context`, for each n in `sizes`.

    `model` is a CachedModel; the passes also feed its `pass_cost`. Its cache is left holding `context`.
    """
    model.sync(context, keep_at_most=len(context))
    if len(model) < len(context):
        model.forward(context[len(model) :], num_logits=1)
    base = len(model)
    for _ in range(repeats):
        for n in sizes:
            model.forward([context[-1]] * n, num_logits=n)  # logits for every position, as verification
            model.rollback(base)
    return {n: model.pass_time(n) for n in sizes}


BATCH_PASS_SIZES = (16, 32, 64, 128)  # target passes of batches: costs between are interpolated
DRAFT_PASS_SIZES = (2, 4, 8, 16, 64)  # draft passes for this many rows, or reading this many tokens


def calibrate(target, proposer, context: Sequence[int], sizes: Sequence[int], repeats: int = 2) -> None:
    """Time target passes over each of `sizes` tokens and over batch-sized passes, and a few guesses
    (a draft model's passes over several rows too), so that `pass_cost` and `guess_cost` know them
    before the first step of the `auto` policy. A pass over n tokens of one sequence stands for one
    over n rows of a batch (the kernels compute a row the same way whatever the pass holds)."""
    measure_pass_costs(target, context[:-1] or context, sorted({*sizes, *BATCH_PASS_SIZES}), repeats)
    for _ in range(repeats + 1):
        proposer.propose(context, 3, Warp(temperature=0.0), None)
    draft = proposer
    while draft is not None and not hasattr(draft, "rollback"):  # the proposer's draft model's cache, if any
        draft = getattr(draft, "draft", None)
    if draft is not None:
        measure_pass_costs(draft, context[:-1] or context, DRAFT_PASS_SIZES, repeats)
        draft.rollback(0)
