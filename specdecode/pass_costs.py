"""What a model's pass over n new tokens costs now, for the `auto` policy, on a machine whose pace drifts.

The speed of this kind of machine moves by tens of percent within minutes (other load, turbo,
heat). A policy that compares a size measured now with a size measured minutes ago (one-token
passes while it decodes plainly, K + 1-token passes while it guesses) is then misled: a useless
draft can look profitable and stay chosen. So a cost is modelled as pace * shape[n]: every pass, of
any size and any model on the device, moves the device's shared pace quickly (`PACE_RATE`), and
its own model's shape at its size slowly (`SHAPE_RATE`). Sizes not measured for a while move with
the machine as the measured ones do, and the ratios the policy compares stay those measured
side by side. An error is clipped to a factor of 2 (a pause of the process is not a new pace).
"""

from __future__ import annotations

import math

PACE_RATE, SHAPE_RATE = 0.3, 0.02  # log-space steps towards each new reading
MAX_ERROR = math.log(2.0)


class Pace:
    """A device's current pace: seconds per unit of shape (one per device in a process)."""

    def __init__(self) -> None:
        self.value: float | None = None


_PACES: dict[str, Pace] = {}


def device_pace(device_type: str) -> Pace:
    """The pace shared by every model of this process on `device_type` ("cpu", "cuda", ...)."""
    return _PACES.setdefault(device_type, Pace())


class PassCosts:
    """One model's drift-aware pass costs: `observe(n, seconds)` after each pass, `cost(n)` in seconds."""

    def __init__(self, pace: Pace) -> None:
        self.pace = pace
        self.shape: dict[int, float] = {}

    def observe(self, n: int, seconds: float) -> None:
        if self.pace.value is None:
            self.pace.value = max(seconds, 1e-9)
        shape = self.shape.get(n)
        if shape is None:
            self.shape[n] = seconds / self.pace.value
            return
        error = max(-MAX_ERROR, min(MAX_ERROR, math.log(max(seconds, 1e-9) / (self.pace.value * shape))))
        self.pace.value *= math.exp(PACE_RATE * error)
        self.shape[n] = shape * math.exp(SHAPE_RATE * error)

    def cost(self, n: int) -> float | None:
        """Estimated seconds of a pass over n new tokens now; None before one was seen. A size not
        measured yet is interpolated linearly between the nearest measured ones (beyond them, along
        the last two; with one, proportionally to n)."""
        if self.pace.value is None or not self.shape:
            return None
        shape = self.shape.get(n)
        if shape is None:
            shape = interpolate(self.shape, n)
        return self.pace.value * shape


def interpolate(points: dict[int, float], n: int) -> float:
    """The piecewise-linear curve through `points` {size: value} at n (extended along its end segments)."""
    sizes = sorted(points)
    if len(sizes) == 1:
        return points[sizes[0]] * n / sizes[0]
    above = next((i for i, size in enumerate(sizes) if size > n), len(sizes) - 1)
    low, high = sizes[max(above - 1, 0)], sizes[max(above, 1)]
    slope = (points[high] - points[low]) / (high - low)
    return max(points[low] + slope * (n - low), 1e-12)
