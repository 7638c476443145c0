"""What happened in one generation: guesses, acceptance per position, passes and time."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DecodeStats:
    """Counters for one generation. Metric names follow vLLM's.

    acceptance_rate = accepted / drafted; mean_acceptance_length = tokens per target pass,
    the bonus token included (1 + accepted / target passes).
    """

    prompt_tokens: int = 0
    new_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    rejections: int = 0  # passes where a guess was rejected
    target_passes: int = 0
    draft_passes: int = 0
    drafted_at: list[int] = field(default_factory=list)  # [position] guesses made there
    accepted_at: list[int] = field(default_factory=list)  # [position] guesses accepted there
    wall_s: float = 0.0
    target_s: float = 0.0  # inside the target's forward passes
    draft_s: float = 0.0  # inside the proposer's forward passes
    first_token_s: float = 0.0

    def record_step(self, guessed: int, accepted: int, drafted: int | None = None) -> None:
        """One target pass that checked `guessed` positions and accepted the first `accepted`.

        A tree checks `drafted` tokens over `guessed` depths; a chain drafted = guessed.
        """
        self.target_passes += 1
        self.drafted += guessed if drafted is None else drafted
        self.accepted += accepted
        self.rejections += accepted < guessed
        grow = guessed - len(self.drafted_at)
        if grow > 0:
            self.drafted_at += [0] * grow
            self.accepted_at += [0] * grow
        for i in range(guessed):
            self.drafted_at[i] += 1
            self.accepted_at[i] += i < accepted

    def add(self, other: DecodeStats) -> None:
        """Count `other`'s tokens, guesses and passes (per position too) into these totals."""
        for name in (
            "prompt_tokens",
            "new_tokens",
            "drafted",
            "accepted",
            "rejections",
            "target_passes",
            "draft_passes",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        grow = len(other.drafted_at) - len(self.drafted_at)
        if grow > 0:
            self.drafted_at += [0] * grow
            self.accepted_at += [0] * grow
        for i, (d, a) in enumerate(zip(other.drafted_at, other.accepted_at, strict=True)):
            self.drafted_at[i] += d
            self.accepted_at[i] += a

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def token_acceptance(self) -> float:
        """Estimated chance that one guess is accepted given all before it were: the alpha of the formulas
        of docs/design.md, section 3 (guesses after a rejection are never examined, so they are not counted)."""
        examined = self.accepted + self.rejections
        return self.accepted / examined if examined else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        return 1.0 + self.accepted / self.target_passes if self.target_passes else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at, strict=True)]

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def target_passes_per_token(self) -> float:
        return self.target_passes / self.new_tokens if self.new_tokens else 0.0

    @property
    def overhead_s(self) -> float:
        """Time outside the two models' forward passes: sampling, acceptance, bookkeeping."""
        return max(0.0, self.wall_s - self.target_s - self.draft_s)

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in (
            "acceptance_rate",
            "token_acceptance",
            "mean_acceptance_length",
            "per_position_acceptance",
            "tokens_per_s",
            "target_passes_per_token",
            "overhead_s",
        ):
            out[name] = getattr(self, name)
        return out

    def summary(self) -> str:
        """One line for people."""
        return (
            f"{self.new_tokens} tokens in {self.wall_s:.2f}s ({self.tokens_per_s:.2f} tok/s); "
            f"acceptance {self.acceptance_rate:.1%} ({self.accepted}/{self.drafted}), "
            f"mean acceptance length {self.mean_acceptance_length:.2f}, "
            f"{self.target_passes} target passes, {self.draft_passes} draft passes"
        )
