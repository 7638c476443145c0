"""`specdecode generate`: text from a prompt, a batch of prompts or n samples."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specdecode.cli.common import load_decoder, num_speculative_tokens, subcommand
from specdecode.engine import SpeculativeDecoder
from specdecode.grammar import GrammarSpec
from specdecode.logprobs import TokenLogprob
from specdecode.sampling import SamplingParams


def add_parser(sub) -> None:
    gen = subcommand(sub, "generate", "generate text")
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
    gen.add_argument("--presence-penalty", type=float, default=0.0, help="OpenAI's, in [-2, 2] (output tokens)")
    gen.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI's, in [-2, 2] (output tokens)")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help="as transformers' (> 0, 1 = off)")
    gen.add_argument(
        "--logit-bias", action="append", default=[], metavar="ID=VALUE", help="add VALUE in [-100, 100] to token ID"
    )
    gen.add_argument(
        "--logprobs",
        type=int,
        metavar="K",
        help="report each token's log-probability and its K most likely alternatives (stderr; in --json output)",
    )
    shape = gen.add_mutually_exclusive_group()
    shape.add_argument("--json-object", action="store_true", help="the output is a JSON object")
    shape.add_argument("--json-schema", metavar="SCHEMA", help="JSON matching SCHEMA (a file or JSON text)")
    shape.add_argument("--regex", help="the output matches this regular expression")
    shape.add_argument("--grammar", type=Path, metavar="FILE", help="the output matches the Lark grammar in FILE")
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


def read_prompt(args: argparse.Namespace):
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


def logit_bias(text: str) -> tuple[int, float]:
    token, _, value = text.partition("=")
    try:
        return int(token), float(value)
    except ValueError:
        raise ValueError(f"--logit-bias takes ID=VALUE (e.g. 13=-100), got {text!r}") from None


def grammar(args: argparse.Namespace) -> GrammarSpec | None:
    """The grammar the output options ask for, if any."""
    if args.json_object:
        return GrammarSpec("json_object")
    if args.json_schema is not None:
        path = Path(args.json_schema)
        return GrammarSpec("json_schema", path.read_text() if path.is_file() else args.json_schema)
    if args.regex is not None:
        return GrammarSpec("regex", args.regex)
    if args.grammar is not None:
        return GrammarSpec("lark", args.grammar.read_text())
    return None


def logprobs_report(dec: SpeculativeDecoder, entries: list[TokenLogprob]) -> list[dict]:
    text = dec.tokenizer.decode
    return [
        {"token": e.token, "text": text([e.token]), "logprob": e.logprob,
         "top": [{"token": t, "text": text([t]), "logprob": v} for t, v in e.top]}
        for e in entries
    ]  # fmt: skip


def print_logprobs(report: list[dict]) -> None:
    for e in report:
        top = "  ".join(f"{t['text']!r} {t['logprob']:.3f}" for t in e["top"])
        print(f"{e['text']!r:>16} {e['logprob']:8.3f}   {top}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.tree_depth is not None:
        if args.proposer != "tree":
            raise ValueError("--tree-depth needs --proposer tree")
        args.num_speculative_tokens = args.tree_depth
    prompt = read_prompt(args)
    sampling = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        stop=tuple(args.stop),
        draft_temperature=args.draft_temperature,
        draft_top_k=args.draft_top_k,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        repetition_penalty=args.repetition_penalty,
        logit_bias=dict(map(logit_bias, args.logit_bias)),
        logprobs=args.logprobs,
        grammar=grammar(args),
    )
    dec = load_decoder(args)
    if args.batch or args.n != 1:
        return generate_batch(args, dec, prompt if args.batch else [prompt], sampling)
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
    logprobs: list[TokenLogprob] = []
    if args.stream and not args.json:
        token_ids: list[int] = []
        for chunk in dec.stream(prompt, **run):
            print(chunk.text, end="", flush=True)
            token_ids += chunk.token_ids
            logprobs += chunk.logprobs or []
        print()
        stats, report = chunk.stats, {"token_ids": token_ids, "finish_reason": chunk.finish_reason}
    else:
        result = dec.generate(prompt, **run)
        stats, token_ids, logprobs = result.stats, result.token_ids, result.logprobs or []
        report = {"text": result.text, "token_ids": token_ids, "finish_reason": result.finish_reason}
    report["stats"] = stats.to_dict()
    if args.logprobs is not None:
        report["logprobs"] = logprobs_report(dec, logprobs)
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
    if args.logprobs is not None:
        print_logprobs(report["logprobs"])
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


def generate_batch(args: argparse.Namespace, dec: SpeculativeDecoder, prompts: list, sampling: SamplingParams) -> int:
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
            | ({} if r.logprobs is None else {"logprobs": logprobs_report(dec, r.logprobs)})
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
