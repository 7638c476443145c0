"""specdecode against llama.cpp on the same GGUF files, one stream, greedy, EOS ignored.

llama.cpp: `llama-completion` (plain decoding) and `llama-speculative-simple` (its speculative decoding with
the draft file, `--spec-type draft-simple`, its default draft length); specdecode: the same files in their
quantized blocks, target-only, fixed K and `auto` (the draft model, or n-gram lookup without a draft).
Per prompt (HumanEval), methods in an order rotated by one each prompt: decode tokens/s (new tokens over the
time after the prompt's pass) and end-to-end seconds (prompt included; model loading excluded). Medians over
prompts, ratios against llama.cpp plain. Every specdecode run's tokens are checked against its target-only
run; agreement with llama.cpp's tokens (same weights, other arithmetic) is reported, not required.

  python benchmarks/gguf_speed.py --llama-bin PATH/build/bin --target T.gguf [--draft D.gguf] --prompts 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, humaneval_prompts, rotated

from specdecode import SpeculativeDecoder
from specdecode.bench.machine import cpu_name


def run_llama(binary: Path, args: list[str], prompt: str, env: dict) -> tuple[str, float, float, dict]:
    """(output text, prompt seconds, decode tokens/s, extra numbers) from one llama.cpp run. The prompt goes as
    an argument: read from a file (-f), llama.cpp drops its final newline."""
    done = subprocess.run(
        [str(binary), *args, "-p", prompt],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode:
        raise RuntimeError(f"{binary.name} failed ({done.returncode}): {done.stderr[-2000:]}")
    log = done.stderr
    extra: dict = {}
    if binary.name == "llama-completion":
        prompt_ms = float(re.search(r"prompt eval time =\s+([\d.]+) ms", log).group(1))
        eval_ms, runs = re.search(r"\beval time =\s+([\d.]+) ms /\s+(\d+) runs", log).groups()
        tokens_per_s = int(runs) / (float(eval_ms) / 1000)
        text = done.stdout[len(prompt) :] if done.stdout.startswith(prompt) else done.stdout
    else:
        prompt_s = float(re.search(r"encoded\s+\d+ tokens in\s+([\d.]+) seconds", log).group(1))
        tokens_per_s = float(re.search(r"decoded\s+\d+ tokens in\s+[\d.]+ seconds, speed:\s+([\d.]+)", log).group(1))
        prompt_ms = prompt_s * 1000
        extra["accept"] = float(re.search(r"accept\s+=\s+([\d.]+)%", log).group(1)) / 100
        text = done.stdout.split("\n\n", 1)[-1] if "\n\n" in done.stdout else done.stdout
        text = text[len(prompt) :] if text.startswith(prompt) else text
    return text, prompt_ms / 1000, tokens_per_s, extra


MEMORY_PROBE = """
import ctypes, gc, sys
import torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM
from specdecode import gguf_blocks
from specdecode.kernels import extension
extension()
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096
def settle():
    gguf_blocks._last_parse.clear()  # the file's parse, kept for its tokenizer
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
first = gguf_blocks.load_gguf(sys.argv[1])  # one-time costs (modules imported on first use) out of the measure
del first
settle()
before = rss()
model = gguf_blocks.load_gguf(sys.argv[1])
settle()
print(before, rss())
"""


def resident_bytes(path: str) -> tuple[int, int]:
    """Resident memory of a process before and after loading the GGUF model in blocks (a first load, not
    measured, pays the one-time costs: modules imported on first use)."""
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, path], capture_output=True, text=True, check=True)
    before, after = done.stdout.split()[-2:]
    return int(before), int(after)


def tokens_in_common(text: str, ids: list[int], tokenizer) -> int:
    """How many of `ids` (specdecode's tokens) lie inside the longest common prefix of their text and `text`."""
    ours = tokenizer.decode(ids)
    chars = next((i for i, (a, b) in enumerate(zip(ours, text, strict=False)) if a != b), min(len(ours), len(text)))
    return next((t for t in range(len(ids) + 1) if len(tokenizer.decode(ids[:t])) > chars), len(ids) + 1) - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bin", type=Path, required=True, help="llama.cpp's build/bin folder")
    ap.add_argument("--llama-lib", help="a folder put first on LD_LIBRARY_PATH for llama.cpp (another ggml build)")
    ap.add_argument("--llama-args", default="", help="extra arguments for every llama.cpp run")
    ap.add_argument("--target", required=True, help="target .gguf")
    ap.add_argument("--draft", help="draft .gguf (else n-gram lookup)")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ks", default="4,6", help="fixed K values for specdecode")
    ap.add_argument("--name", default="gguf_speed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = dict(os.environ)
    if args.llama_lib:
        env["LD_LIBRARY_PATH"] = f"{args.llama_lib}:{env.get('LD_LIBRARY_PATH', '')}"
    n = args.max_new_tokens
    common = [
        "-m",
        args.target,
        "-n",
        str(n),
        "-t",
        str(args.threads),
        "--temp",
        "0",
        "--ignore-eos",
        *args.llama_args.split(),
    ]
    llama = {"llama.cpp plain": (args.llama_bin / "llama-completion", [*common, "-no-cnv", "--no-display-prompt"])}
    if args.draft:
        llama["llama.cpp speculative"] = (
            args.llama_bin / "llama-speculative-simple",
            [*common, "-md", args.draft, "--spec-type", "draft-simple", "-td", str(args.threads)],
        )
    before, after = resident_bytes(args.target)
    memory = {"file_mb": os.path.getsize(args.target) / 1e6, "loaded_mb": (after - before) / 1e6}
    print(f"memory: {memory}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proposer = {} if args.draft else {"proposer": "ngram"}
    dec = SpeculativeDecoder.from_pretrained(args.target, args.draft, **proposer)
    load_s = time.perf_counter() - start
    ks: list = [0, *[int(k) for k in args.ks.split(",")], "auto"]
    methods = [*llama, *[f"specdecode K={k}" if k else "specdecode target-only" for k in ks]]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    prompts = humaneval_prompts(args.prompts)
    for i, prompt in enumerate(prompts):
        order = rotated(methods, i)
        tokens: dict[str, list[int]] = {}
        for method in order:
            if method in llama:
                text, prompt_s, tps, extra = run_llama(*llama[method], prompt, env)
                ids = text
                row = {"decode_tok_s": tps, "e2e_s": prompt_s + n / tps, **extra}
            else:
                k = ks[methods.index(method) - len(llama)]
                dec.reset()  # no prompt cached from the previous method
                out = dec.generate(prompt, n, num_speculative_tokens=k, ignore_eos=True)
                s = out.stats
                ids = out.token_ids
                row = {
                    "decode_tok_s": (s.new_tokens - 1) / (s.wall_s - s.first_token_s),
                    "e2e_s": s.wall_s,
                    "accept": s.acceptance_rate,
                    "mean_accept_len": s.mean_acceptance_length,
                }
            tokens[method] = ids
            row["prompt"] = i
            runs[method].append(row)
            print(
                f"prompt {i} {method}: {row['decode_tok_s']:.1f} tok/s, {row['e2e_s']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
        base = tokens["specdecode target-only"]
        for method in methods:
            ours = tokens[method]
            same = ours == base if isinstance(ours, list) else False
            runs[method][-1]["identical"] = same
            text = ours if isinstance(ours, str) else dec.tokenizer.decode(ours)
            runs[method][-1]["agree_prefix"] = tokens_in_common(text, base, dec.tokenizer)
    plain = statistics.median(r["decode_tok_s"] for r in runs["llama.cpp plain"])
    summary = {}
    for method in methods:
        rows = runs[method]
        tps = statistics.median(r["decode_tok_s"] for r in rows)
        summary[method] = {
            "decode_tok_s": tps,
            "vs_llama_plain": tps / plain,
            "e2e_s": statistics.median(r["e2e_s"] for r in rows),
            "identical": sum(r["identical"] for r in rows),
            "agree_prefix": [r["agree_prefix"] for r in rows],
            "accept": statistics.median(r["accept"] for r in rows) if "accept" in rows[0] else None,
        }
    command = "python benchmarks/gguf_speed.py " + " ".join(sys.argv[1:])
    result = {
        "command": command,
        "cpu": cpu_name(),
        "threads": args.threads,
        "max_new_tokens": n,
        "prompts": len(prompts),
        "load_s": load_s,
        "memory": memory,
        "summary": summary,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"`{command}`",
        "",
        f"{cpu_name()}, {args.threads} threads, {len(prompts)} HumanEval prompts, {n} new tokens, greedy, EOS "
        f"ignored; specdecode loaded in {load_s:.0f} s; the target in blocks adds {memory['loaded_mb']:.0f} MB "
        f"resident for a {memory['file_mb']:.0f} MB file ({memory['loaded_mb'] / memory['file_mb']:.2f}x). "
        "Medians over prompts; identical: tokens equal to specdecode's target-only run (llama.cpp: compared, "
        "not required, its arithmetic differs).",
        "",
        "| method | decode tok/s | x llama.cpp plain | end to end s | acceptance | identical "
        "| tokens as target-only before a difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, s in summary.items():
        accept = "" if s["accept"] is None else f"{s['accept']:.0%}"
        lines.append(
            f"| {method} | {s['decode_tok_s']:.1f} | {s['vs_llama_plain']:.2f}x | {s['e2e_s']:.2f} | "
            f"{accept} | {s['identical']}/{len(prompts)} | {s['agree_prefix']} |"
        )
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
