"""`specdecode bench`: methods side by side on real workloads; results.json, report.md, plots."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specdecode.cli.common import EXAMPLES, add_load_args, load_decoder


def add_parser(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmark methods side by side on real workloads; results.json, report.md and plots",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_load_args(bench, target_required=False)
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


def run(args: argparse.Namespace) -> int:
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
    dec = load_decoder(args)
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
