"""From results.json to report.md and PNG plots (also `specdecode bench --from DIR`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from specdecode.bench.estimates import (
    Interval,
    bound_with_prompt,
    depth_histogram,
    median_iqr,
    speedup_interval,
    theoretical_speedup,
)
from specdecode.bench.runner import BASELINE
from specdecode.stats import DecodeStats

PLOTS = ("speedup_vs_k.png", "acceptance_vs_temperature.png", "per_position_acceptance.png", "tokens_per_s.png")


@dataclass
class Row:
    """One (workload, temperature, method): its runs summarised."""

    workload: str
    temperature: float
    method: str
    runs: int
    tokens_per_s: Interval  # median and interquartile range over runs
    speedup: Interval  # geometric mean over paired runs, 95% interval
    bound: float | None  # theoretical decoding speedup from measured acceptance and costs
    prompt_share: float | None  # share of the baseline's time spent before its first token (the prompt's pass)
    stats: DecodeStats | None  # counters summed over the runs (None for transformers)
    identical: tuple[int, int] | None  # (identical to the baseline, runs); None when sampled
    short: int  # runs that made fewer tokens than the baseline (stopped at EOS)

    @property
    def bound_with_prompt(self) -> float | None:
        """The bound for the whole run, the prompt's pass included (the same for every method)."""
        if self.bound is None or self.prompt_share is None:
            return None
        return bound_with_prompt(self.bound, self.prompt_share)

    @property
    def k(self) -> int | None:
        """K of a fixed-K chain ("chain K=3"), else None."""
        head, _, k = self.method.partition(" K=")
        return int(k) if head == "chain" and k.isdigit() else None


def _find(rows: Sequence[Row], workload: str, method: str, temperature: float) -> Row | None:
    return next((r for r in rows if (r.workload, r.method, r.temperature) == (workload, method, temperature)), None)


def summarize(results: dict) -> list[Row]:
    """A row per (workload, temperature, method): workloads and temperatures in run order, methods in
    the order given (runs rotate it)."""
    curve = {int(n): s for n, s in results["cost_curve_s"].items()}
    methods = {m: i for i, m in enumerate(results["settings"]["methods"])}
    cases: dict[tuple, int] = {}  # (workload, temperature) -> its place in run order
    for r in results["runs"]:
        cases.setdefault((r["workload"], r["temperature"]), len(cases))
    groups: dict[tuple, list[dict]] = {}
    for run in sorted(results["runs"], key=lambda r: (cases[r["workload"], r["temperature"]], methods[r["method"]])):
        groups.setdefault((run["workload"], run["temperature"], run["method"]), []).append(run)
    rows = []
    for (workload, temperature, method), runs in groups.items():
        pair = {(r["prompt_index"], r["repeat"]): r for r in groups[(workload, temperature, BASELINE)]}
        base = [pair[(r["prompt_index"], r["repeat"])] for r in runs]
        stats = None
        if runs[0]["stats"] is not None:
            stats = DecodeStats()
            for r in runs:
                stats.add(_stats(r["stats"]))
            stats.draft_s = sum(r["stats"]["draft_s"] for r in runs)  # `add` counts tokens and passes, not time
        rows.append(
            Row(
                workload,
                temperature,
                method,
                len(runs),
                median_iqr([r["new_tokens"] / r["wall_s"] for r in runs]),
                speedup_interval([_per_token(b) for b in base], [_per_token(r) for r in runs]),
                _bound(stats, curve) if stats is not None and method != BASELINE else None,
                _prompt_share(base),
                stats,
                (sum(map(_same, runs, base)), len(runs)) if temperature == 0 else None,
                sum(r["new_tokens"] < b["new_tokens"] for r, b in zip(runs, base, strict=True)),
            )
        )
    return rows


def _prompt_share(base: Sequence[dict]) -> float | None:
    """Mean share of the baseline runs' time until their first token: the prompt's pass (and one step)."""
    if any(b["stats"] is None for b in base):
        return None
    return sum(b["stats"]["first_token_s"] / b["wall_s"] for b in base) / len(base)


def _per_token(run: dict) -> float:
    """Seconds per generated token: the speedup compares these, so a run that stopped early still counts fairly."""
    return run["wall_s"] / max(run["new_tokens"], 1)


def _same(run: dict, base: dict) -> bool:
    """Greedy output equal to the baseline's (over its own length when it stopped early at EOS)."""
    return bool(run["token_ids"]) and run["token_ids"] == base["token_ids"][: len(run["token_ids"])]


def _stats(d: dict) -> DecodeStats:
    s = DecodeStats()
    for name in ("prompt_tokens", "new_tokens", "drafted", "accepted", "rejections", "target_passes", "draft_passes"):
        setattr(s, name, d[name])
    s.drafted_at, s.accepted_at = list(d["drafted_at"]), list(d["accepted_at"])
    s.wall_s, s.target_s, s.draft_s = d["wall_s"], d["target_s"], d["draft_s"]
    return s


def _bound(stats: DecodeStats, curve: dict[int, float]) -> float | None:
    if not stats.target_passes:
        return None
    depth_total = sum(stats.drafted_at)
    width = stats.drafted / depth_total if depth_total else 1.0  # tokens checked per guess depth
    depths = depth_histogram(stats.drafted_at, stats.target_passes)
    draft_s = stats.draft_s / stats.target_passes
    return theoretical_speedup(stats.mean_acceptance_length, depths, width, draft_s, curve)


def _fmt_interval(i: Interval, fmt: str = ".2f", suffix: str = "") -> str:
    if math.isnan(i.low):
        return f"{i.estimate:{fmt}}{suffix}"
    return f"{i.estimate:{fmt}}{suffix} [{i.low:{fmt}}, {i.high:{fmt}}]"


def render_markdown(results: dict, rows: Sequence[Row]) -> str:
    settings, machine, models = results["settings"], results["machine"], results["models"]
    curve = {int(n): s for n, s in results["cost_curve_s"].items()}
    lines = [
        "# specdecode bench report",
        "",
        f"Command: `{results['command']}`" if results.get("command") else "",
        "",
        "Every run's raw numbers: [results.json](results.json).",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
        + f"; Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"specdecode {machine['specdecode']}.",
        "",
        "Models: " + ", ".join(f"{role} `{name}`" for role, name in models.items() if name) + ".",
        "",
        f"Settings: {settings['max_new_tokens']} new tokens"
        + (" (EOS ignored, so every method makes the same number)" if settings["ignore_eos"] else "")
        + f", {settings['repeat']} repetition(s), temperatures "
        + ", ".join(f"{t:g}" for t in settings["temperatures"])
        + ", workloads "
        + ", ".join(f"{w} ({n} prompts)" for w, n in results["workloads"].items())
        + ".",
        "",
        "How to read it: runs are interleaved (every method on a prompt before the next prompt). "
        "tok/s is the median over runs [interquartile range]. Speedup is over target-only decoding "
        "(`baseline`, the same weights and kernels) on the same prompt, temperature and repetition: the "
        "geometric mean of the paired ratios of time per token with a 95% Student-t interval; times "
        "include the prompt's pass, the same for every method. The decoding bound is the speedup the "
        "measured acceptance allows with the measured costs (tokens per target pass x t(1) / (draft time per "
        "pass + t(tokens checked)), docs/design.md §3); the whole-run bound adds the prompt's pass, which no method "
        "shortens (its share of the baseline's time is in the baseline row): 1 / (share + (1 - share) / "
        "bound). Speedup / bound (whole run) shows how much the rest (sampling, bookkeeping, noise) took. "
        "Acceptance = accepted / drafted guesses; mean acceptance length = tokens "
        "per target pass; per-position acceptance = accepted / drafted at guess 1, 2, ...",
        "",
        "Target pass cost here (the measured curve), relative to one token:",
        "",
        "| n tokens | " + " | ".join(str(n) for n in sorted(curve)) + " |",
        "|---|" + "---|" * len(curve),
        "| ms | " + " | ".join(f"{1000 * curve[n]:.0f}" for n in sorted(curve)) + " |",
        "| x t(1) | " + " | ".join(f"{curve[n] / curve[1]:.2f}" for n in sorted(curve)) + " |",
    ]
    lines += ["", *summary_table(rows)]
    for skip in results["skipped"]:
        what = skip.get("method") or f"{skip['workload']} prompt {skip['prompt'] + 1}"
        lines += ["", f"Skipped: **{what}**: {skip['reason']}."]
    if any(t > 0 for t in settings["temperatures"]):
        lines += [
            "",
            "At temperature > 0 the identity column does not apply (outputs are samples; exactness in "
            "distribution is what tests/test_sampling_exact.py checks).",
        ]
    for workload in results["workloads"]:
        for temperature in settings["temperatures"]:
            group = [r for r in rows if r.workload == workload and r.temperature == temperature]
            if not group:
                continue
            lines += [
                "",
                f"## {workload}, temperature {temperature:g}",
                "",
                "| method | tok/s | speedup [95% CI] | bound: decoding / whole run | speedup / bound | acceptance "
                "| mean acc. length "
                "| target passes/token | per-position acceptance | identical |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in group:
                s = r.stats
                spec = s is not None and r.method != BASELINE
                per_position = " ".join(f"{a:.2f}" for a in s.per_position_acceptance[:8]) if spec else "-"
                bound = f"{r.bound:.2f}x / {r.bound_with_prompt:.2f}x" if r.bound_with_prompt else "-"
                if r.method == BASELINE and r.prompt_share is not None:
                    bound = f"(prompt pass: {r.prompt_share:.0%} of the time)"
                same = f"{r.identical[0]}/{r.identical[1]}" if r.identical else "n/a"
                same += f" ({r.short} stopped at EOS)" if r.short else ""
                same = "reference" if r.method == BASELINE else same
                lines.append(
                    f"| {r.method} | {_fmt_interval(r.tokens_per_s)} | {_fmt_interval(r.speedup, suffix='x')} "
                    f"| {bound} | {f'{r.speedup.estimate / r.bound_with_prompt:.0%}' if r.bound_with_prompt else '-'} "
                    f"| {f'{s.acceptance_rate:.1%}' if spec else '-'} "
                    f"| {f'{s.mean_acceptance_length:.2f}' if spec else '-'} "
                    f"| {f'{s.target_passes_per_token:.3f}' if s else '-'} | {per_position} "
                    f"| {same} |"
                )
    lines += ["", "## Plots", ""] + [f"![{p[:-4]}]({p})" for p in PLOTS]
    return "\n".join(lines) + "\n"


def summary_table(rows: Sequence[Row]) -> list[str]:
    """One line per (workload, temperature): the baseline's tok/s and every other method's speedup
    (greedy: with how many of its outputs are identical to the baseline's)."""
    methods = list(dict.fromkeys(r.method for r in rows if r.method != BASELINE))
    lines = [
        "Speedup over target-only decoding (geometric mean over prompts; greedy: outputs identical to "
        "target-only / runs):",
        "",
        "| workload | T | target-only tok/s | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for workload, temperature in dict.fromkeys((r.workload, r.temperature) for r in rows):
        base = _find(rows, workload, BASELINE, temperature)
        cells = []
        for method in methods:
            r = _find(rows, workload, method, temperature)
            same = f" ({r.identical[0]}/{r.identical[1]})" if r is not None and r.identical else ""
            cells.append(f"{r.speedup.estimate:.2f}x{same}" if r is not None else "-")
        tok_s = f"{base.tokens_per_s.estimate:.1f}" if base is not None else "-"
        lines.append(f"| {workload} | {temperature:g} | {tok_s} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict, rows: Sequence[Row], out: Path) -> list[Path]:
    """Write the four PNG plots into `out`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temperatures = results["settings"]["temperatures"]
    workloads = list(results["workloads"])
    spec_methods = list(dict.fromkeys(r.method for r in rows if r.stats is not None and r.method != BASELINE))
    paths = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)

    fig, axes = plt.subplots(1, len(temperatures), figsize=(5 * len(temperatures), 3.8), squeeze=False)
    for ax, t in zip(axes[0], temperatures, strict=True):
        for w in workloads:
            pts = sorted((r.k, r.speedup.estimate) for r in rows if r.workload == w and r.temperature == t and r.k)
            if pts:
                ax.plot([0] + [k for k, _ in pts], [1.0] + [s for _, s in pts], marker="o", label=w)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set(title=f"chain speedup vs K, T={t:g}", xlabel="K (0 = target-only)", ylabel="speedup")
        _legend(ax, fontsize=8)
    save(fig, PLOTS[0])

    fig, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 3.6), squeeze=False)
    for ax, w in zip(axes[0], workloads, strict=True):
        for m in spec_methods:
            pts = [(r.temperature, r.stats.acceptance_rate) for r in rows if r.workload == w and r.method == m]
            if pts:
                ax.plot(*zip(*sorted(pts), strict=True), marker="o", label=m)
        ax.set(title=w, xlabel="temperature", ylabel="acceptance rate", ylim=(0, 1))
        _legend(ax, fontsize=7)
    save(fig, PLOTS[1])

    fig, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 3.6), squeeze=False)
    for ax, w in zip(axes[0], workloads, strict=True):
        for m in spec_methods:
            for t, style in zip(temperatures, ("-", "--", ":", "-."), strict=False):
                row = _find(rows, w, m, t)
                if row and row.stats.drafted_at:
                    rates = row.stats.per_position_acceptance
                    ax.plot(range(1, len(rates) + 1), rates, style, marker=".", label=f"{m} T={t:g}")
        ax.set(title=w, xlabel="guess position", ylabel="acceptance", ylim=(0, 1))
        _legend(ax, fontsize=6)
    save(fig, PLOTS[2])

    methods = list(dict.fromkeys(r.method for r in rows))
    fig, axes = plt.subplots(
        len(temperatures),
        1,
        figsize=(max(6, 1.2 * len(methods) * len(workloads) / 2), 3.4 * len(temperatures)),
        squeeze=False,
    )
    width = 0.8 / len(methods)
    for ax, t in zip(axes[:, 0], temperatures, strict=True):
        for j, m in enumerate(methods):
            got = [
                next((r for r in rows if r.workload == w and r.method == m and r.temperature == t), None)
                for w in workloads
            ]
            xs = [i + j * width for i, r in enumerate(got) if r]
            tps = [r.tokens_per_s for r in got if r]
            err = [[i.estimate - i.low for i in tps], [i.high - i.estimate for i in tps]]
            ax.bar(xs, [i.estimate for i in tps], width, yerr=err, label=m, capsize=2)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], workloads)
        ax.set(title=f"tokens/s (median, IQR), T={t:g}", ylabel="tokens/s")
        _legend(ax, fontsize=7, ncol=2)
    save(fig, PLOTS[3])
    return paths


def _legend(ax, **options) -> None:
    """A legend, or a note that the panel has nothing to show (e.g. no fixed-K chain was run)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)
    else:
        ax.text(0.5, 0.5, "no runs for this panel", ha="center", va="center", transform=ax.transAxes)


def render(out: Path) -> Path:
    """Read out/results.json; write out/report.md and the plots. Returns the report's path."""
    path = Path(out) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `specdecode bench --out {out}` first")
    results = json.loads(path.read_text())
    rows = summarize(results)
    plot(results, rows, Path(out))
    report = Path(out) / "report.md"
    report.write_text(render_markdown(results, rows))
    return report
