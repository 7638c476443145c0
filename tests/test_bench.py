"""`specdecode bench`: its statistics on made-up numbers, and the whole command on tiny random models."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys

import pytest
from tiny_models import save_model_pair

from specdecode.bench.estimates import (
    bound_with_prompt,
    depth_histogram,
    median_iqr,
    pass_cost,
    speedup_interval,
    theoretical_speedup,
)
from specdecode.bench.report import PLOTS
from specdecode.bench.runner import parse_methods
from specdecode.cli import main
from specdecode.policy import expected_speedup, expected_tokens_per_pass


def test_median_and_interquartile_range():
    got = median_iqr([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (got.estimate, got.low, got.high) == (3.0, 2.0, 4.0)
    assert median_iqr([7.0]).estimate == 7.0


def test_speedup_is_the_geometric_mean_of_paired_ratios():
    got = speedup_interval([2.0, 8.0], [1.0, 1.0])  # ratios 2 and 8
    assert got.estimate == pytest.approx(4.0)
    assert got.low < 4.0 < got.high
    same = speedup_interval([3.0, 6.0, 9.0], [1.5, 3.0, 4.5])  # every pair 2x: no spread
    assert (same.estimate, same.low, same.high) == pytest.approx((2.0, 2.0, 2.0))
    assert math.isnan(speedup_interval([2.0], [1.0]).low)  # one pair: no interval
    with pytest.raises(ValueError):
        speedup_interval([1.0, 2.0], [1.0])


def test_speedup_interval_covers_the_true_speedup_95_percent_of_the_time():
    """2000 simulated benchmarks of 6 prompts, log-normal noise around a true speedup of 1.5.
    Coverage of a correct 95% interval is Binomial(2000, 0.95): 1900 +- 9.7; the bounds are 5 sd
    (false alarm < 1e-6; the seed is fixed). A normal instead of a Student-t interval covers ~91%."""
    rng = random.Random(0)
    covered = 0
    for _ in range(2000):
        base = [rng.uniform(10, 30) for _ in range(6)]
        method = [b / 1.5 * math.exp(rng.gauss(0, 0.1)) for b in base]
        i = speedup_interval(base, method)
        covered += i.low <= 1.5 <= i.high
    assert 1852 <= covered <= 1948


def test_depth_histogram_from_per_position_counts():
    # 7 passes: 2 guessed nothing, 2 one token, 2 three tokens, 1 four tokens
    assert depth_histogram([5, 3, 3, 1], 7) == {0: 2, 1: 2, 3: 2, 4: 1}
    with pytest.raises(ValueError):
        depth_histogram([1, 3], 4)


def test_pass_cost_interpolates_and_extrapolates_the_curve():
    curve = {1: 1.0, 3: 2.0, 5: 5.0}
    assert [pass_cost(curve, n) for n in (1, 2, 4, 7)] == pytest.approx([1.0, 1.5, 3.5, 8.0])


@pytest.mark.parametrize("alpha, k", [(0.8, 4), (0.5, 2), (0.0, 3)])
def test_theoretical_speedup_is_the_design_formula_for_a_fixed_k(alpha, k):
    """A chain at fixed K with acceptance alpha: the bound equals policy.expected_speedup."""
    t1, c = 0.25, 0.3  # seconds per target token; draft token cost relative to it
    curve = {n: t1 * (1 + 0.1 * (n - 1)) for n in range(1, 10)}
    tokens = expected_tokens_per_pass(alpha, k)
    got = theoretical_speedup(tokens, {k: 100}, 1, k * c * t1, curve)
    assert got == pytest.approx(expected_speedup(alpha, k, c, {n: s / t1 for n, s in curve.items()}))
    # a free draft and a flat cost curve (a GPU's): the bound is the tokens per pass
    flat = {n: t1 for n in range(1, 20)}
    assert theoretical_speedup(tokens, {k: 100}, 1, 0.0, flat) == pytest.approx(tokens)
    # a tree 2 wide checks 2K + 1 tokens per pass, so the same acceptance allows less
    assert theoretical_speedup(tokens, {k: 100}, 2, k * c * t1, curve) < got or k == 0


def test_methods_parse_with_the_baseline_first():
    names = [m.name for m in parse_methods("chain,ngram:3,tree,hf-assisted", [2, 4])]
    assert names == ["baseline", "chain K=2", "chain K=4", "ngram K=3", "tree auto", "hf-assisted"]
    for bad in ("beam", "auto:3", "chain:x"):
        with pytest.raises(ValueError):
            parse_methods(bad, [1])


@pytest.fixture(scope="module")
def long_context_models(tmp_path_factory):
    """Tiny models with room for the summarize passages (a character tokenizer makes long prompts)."""
    root = tmp_path_factory.mktemp("bench-models")
    save_model_pair(root, target_layers=2, context=2048)
    return root


def bench(*args: str) -> subprocess.CompletedProcess:
    """`specdecode bench` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "specdecode", "bench", "--no-progress", *args], capture_output=True, text=True
    )


def bench_here(capsys, *args: str) -> tuple[int, str]:
    """The same command line in this process (no interpreter start-up): (exit code, stderr)."""
    code = main(["bench", "--no-progress", *args])
    return code, capsys.readouterr().err


def test_bench_writes_every_output_and_rerenders_from_results(long_context_models, tmp_path, capsys):
    root = long_context_models
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"prompt": "def f(x):"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    out = tmp_path / "out"
    workloads = ["code", "chat", "summarize", "creative", "mine"]
    proc = bench(
        "--target", str(root / "target"), "--draft", str(root / "draft"),
        "--workloads", f"code,chat,summarize,creative,{mine}",
        "--methods", "baseline,hf-assisted,chain,auto,ngram,tree",
        "--k", "1..2", "--temperatures", "0,0.7", "--max-new-tokens", "6", "--prompts-per-workload", "1",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    methods = ["baseline", "hf-assisted", "chain K=1", "chain K=2", "auto", "ngram auto", "tree auto"]
    assert results["settings"]["methods"] == methods
    assert list(results["workloads"]) == workloads
    assert {"cpu", "torch", "transformers", "specdecode"} <= set(results["machine"])
    assert set(results["cost_curve_s"]) >= {"1", "2", "5"}
    runs = {(r["workload"], r["temperature"], r["method"]) for r in results["runs"]}
    assert runs == {(w, t, m) for w in workloads for t in (0.0, 0.7) for m in methods}
    baseline = {(r["workload"], r["temperature"]): r["token_ids"] for r in results["runs"] if r["method"] == "baseline"}
    for r in results["runs"]:
        assert r["new_tokens"] == 6 and r["wall_s"] > 0
        assert (r["stats"] is None) == (r["method"] == "hf-assisted")
        if r["temperature"] == 0:  # greedy: every method gives the baseline's tokens (float32 tiny models)
            assert r["token_ids"] == baseline[(r["workload"], 0.0)], r["method"]
    report = (out / "report.md").read_text()
    for w in workloads:
        for t in ("0", "0.7"):
            assert f"## {w}, temperature {t}\n" in report
    for m in methods:
        assert f"| {m} |" in report
    assert "| workload | T | target-only tok/s | " + " | ".join(methods[1:]) + " |" in report  # the summary
    for w in workloads:  # greedy: every method identical on the one prompt
        assert re.search(rf"\| {w} \| 0 \| [0-9.]+ \| " + " \\| ".join([r"[0-9.]+x \(1/1\)"] * 6), report), w
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in report

    for name in ("report.md", *PLOTS):
        (out / name).unlink()
    code, err = bench_here(capsys, "--from", str(out))
    assert code == 0, err
    assert (out / "report.md").read_text() == report
    assert all((out / name).is_file() for name in PLOTS)


def test_methods_that_need_a_draft_are_skipped_with_a_reason(long_context_models, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = bench_here(
        capsys,
        "--target", str(long_context_models / "target"), "--workloads", "creative", "--methods", "chain,ngram",
        "--k", "2", "--temperatures", "0", "--max-new-tokens", "4", "--prompts-per-workload", "1", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["methods"] == ["baseline", "ngram auto"]
    assert results["skipped"] == [{"method": "chain K=2", "reason": "needs a draft model (--draft or --draft-layers)"}]
    assert "Skipped: **chain K=2**: needs a draft model" in (out / "report.md").read_text()


def test_bench_refuses_bad_arguments(tmp_path, capsys):
    for args, message in (
        (["--target", "x", "--k", "0..2", "--out", str(tmp_path)], "--k needs K values >= 1"),
        (["--target", "x", "--methods", "beam", "--out", str(tmp_path)], "unknown method 'beam'"),
        (["--from", str(tmp_path / "none")], "results.json does not exist"),
    ):
        code, err = bench_here(capsys, *args)
        assert code == 2 and message in err, err


def test_report_compares_time_per_token_and_prefixes_when_a_run_stops_at_eos():
    """Made-up results: a method twice as fast per token that stopped at EOS after half the tokens."""
    from specdecode.bench.report import summarize

    def run(method, wall, tokens, prompt=0):
        return {"workload": "w", "temperature": 0.0, "method": method, "prompt_index": prompt, "repeat": 0,
                "wall_s": wall, "new_tokens": len(tokens), "token_ids": tokens, "stats": None}  # fmt: skip

    results = {
        "settings": {"methods": ["baseline", "fast"]},
        "cost_curve_s": {"1": 0.1},
        "runs": [
            run("baseline", 8.0, [1, 2, 3, 4]), run("fast", 2.0, [1, 2]),
            run("baseline", 8.0, [5, 6, 7, 8], 1), run("fast", 2.0, [5, 9], 1),
        ],
    }  # fmt: skip
    rows = {r.method: r for r in summarize(results)}
    assert rows["fast"].speedup.estimate == pytest.approx(2.0)  # 1 s a token against 2 s
    assert rows["fast"].identical == (1, 2) and rows["fast"].short == 2  # prompt 1 diverged
    assert rows["fast"].tokens_per_s.estimate == pytest.approx(1.0)


def test_report_bound_counts_the_draft_time_of_every_run():
    """Made-up results: two chain runs of K = 2, each 10 passes of 3 tokens, 1 s of draft time each;
    the row's bound is the formula of docs/design.md §3 with 0.1 s of draft per pass, not with none."""
    from specdecode.bench.report import summarize

    def run(method, stats, prompt):
        return {"workload": "w", "temperature": 0.0, "method": method, "prompt_index": prompt, "repeat": 0,
                "wall_s": 4.0, "new_tokens": 30, "token_ids": list(range(30)), "stats": stats}  # fmt: skip

    chain = {"prompt_tokens": 5, "new_tokens": 30, "drafted": 20, "accepted": 20, "rejections": 0,
             "target_passes": 10, "draft_passes": 20, "drafted_at": [10, 10], "accepted_at": [10, 10],
             "wall_s": 4.0, "target_s": 2.5, "draft_s": 1.0, "first_token_s": 0.5}  # fmt: skip
    plain = {**chain, "drafted": 0, "accepted": 0, "target_passes": 30, "draft_passes": 0, "drafted_at": [],
             "accepted_at": [], "draft_s": 0.0}  # fmt: skip
    runs = [run("baseline", plain, 0), run("chain", chain, 0), run("baseline", plain, 1), run("chain", chain, 1)]
    results = {"settings": {"methods": ["baseline", "chain"]}, "cost_curve_s": {"1": 0.2, "3": 0.3}, "runs": runs}
    rows = {r.method: r for r in summarize(results)}
    assert rows["chain"].bound == pytest.approx(3 * 0.2 / (0.1 + 0.3))


def test_bound_with_the_prompt_pass_is_amdahls_law():
    assert bound_with_prompt(3.0, 0.0) == pytest.approx(3.0)
    assert bound_with_prompt(3.0, 0.5) == pytest.approx(1.5)  # half the time cannot shrink: 1 / (0.5 + 0.5 / 3)
    assert bound_with_prompt(1.0, 0.7) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bound_with_prompt(2.0, 1.0)
