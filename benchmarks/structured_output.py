"""Schema-constrained generation on the real pair: tokens/s with and without the grammar's forced tokens
as free guesses, with speculation (`auto`) and without (K = 0), next to unconstrained decoding.

Chat prompts ask for JSON of one of five schemas (two prompts each); greedy, every mode on every prompt,
modes in rotated order, the prompt already in both caches (the times are decoding's, not the prompt's).
Checks: the constrained outputs of all modes are identical (greedy, one grammar), and each parses and
validates against its schema.

    python benchmarks/structured_output.py --target T.gguf --draft D.gguf
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jsonschema
from common import rotated, write_results
from schemas import REQUESTS

from specdecode import SamplingParams, SpeculativeDecoder
from specdecode.bench.machine import cpu_name
from specdecode.grammar import GrammarSpec

MODES = {  # name -> (K, grammar on, forced tokens as guesses)
    "unconstrained, auto": ("auto", False, False),
    "unconstrained, K=0": (0, False, False),
    "schema, auto + forced": ("auto", True, True),
    "schema, auto": ("auto", True, False),
    "schema, K=0 + forced": (0, True, True),
    "schema, K=0": (0, True, False),
}


def messages(schema: dict, subject: str) -> list[dict]:
    ask = f"Describe {subject} as JSON matching this schema:\n{json.dumps(schema)}\nAnswer with the JSON only."
    return [{"role": "user", "content": ask}]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--name", default="structured_output")
    args = ap.parse_args()
    dec = SpeculativeDecoder.from_pretrained(args.target, args.draft)
    grammars = dec.grammars()
    dec.generate(messages(*REQUESTS[0]), 16, "auto")  # warm-up (and `auto`'s calibration)
    runs = []
    for i, (schema, subject) in enumerate(REQUESTS):
        dec.generate(messages(schema, subject), 2, 1)  # both caches read the prompt: the modes time decoding
        for mode in rotated(list(MODES), i):
            k, constrained, forced = MODES[mode]
            grammars.forced_guesses = forced
            sampling = SamplingParams(grammar=GrammarSpec.json_schema(schema) if constrained else None)
            start = time.perf_counter()
            out = dec.generate(messages(schema, subject), args.max_new_tokens, k, sampling)
            seconds = time.perf_counter() - start
            valid = None
            if constrained:
                try:
                    jsonschema.validate(json.loads(out.text), schema)
                    valid = True
                except (ValueError, jsonschema.ValidationError):
                    valid = False
            runs.append({"request": i, "mode": mode, "tokens": len(out.token_ids), "seconds": seconds,
                         "target_passes": out.stats.target_passes, "accepted": out.stats.accepted,
                         "finish_reason": out.finish_reason, "valid": valid, "token_ids": out.token_ids})  # fmt: skip
            print(f"{i} {mode}: {len(out.token_ids) / seconds:.1f} tok/s valid={valid}", file=sys.stderr, flush=True)
    outputs = {m: [r["token_ids"] for r in sorted(runs, key=lambda r: r["request"]) if r["mode"] == m] for m in MODES}
    constrained = [m for m in MODES if MODES[m][1]]
    identical = all(outputs[m] == outputs[constrained[0]] for m in constrained)
    same_free = outputs["unconstrained, auto"] == outputs["unconstrained, K=0"]
    rate = {m: statistics.median(r["tokens"] / r["seconds"] for r in runs if r["mode"] == m) for m in MODES}
    totals = {m: [(r["tokens"], r["target_passes"]) for r in runs if r["mode"] == m] for m in MODES}
    passes = {m: sum(t for t, _ in totals[m]) / sum(p for _, p in totals[m]) for m in MODES}
    valid = sum(bool(r["valid"]) for r in runs if r["mode"] == "schema, auto + forced")
    command = f"python benchmarks/structured_output.py --target {args.target} --draft {args.draft}"
    lines = [
        f"Machine: {cpu_name()}, {len(REQUESTS)} chat requests for JSON of 5 schemas, greedy, up to "
        f"{args.max_new_tokens} tokens. Command: `{command}`",
        "",
        "| mode | median tok/s | x unconstrained K=0 | tokens per target pass |",
        "|---|---|---|---|",
        *(f"| {m} | {rate[m]:.1f} | {rate[m] / rate['unconstrained, K=0']:.2f}x | {passes[m]:.2f} |" for m in MODES),
        "",
        f"Constrained outputs identical across the four schema modes: {'yes' if identical else 'NO'}; "
        f"unconstrained auto identical to K=0: {'yes' if same_free else 'NO'}; "
        f"valid JSON for its schema: {valid}/{len(REQUESTS)}.",
    ]
    write_results(args.name, {"machine": cpu_name(), "command": command, "runs": runs}, lines)
    return 0 if identical and same_free and valid == len(REQUESTS) else 1


if __name__ == "__main__":
    sys.exit(main())
