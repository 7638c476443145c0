"""Load test for `specdecode serve`: C concurrent streaming chat clients, N requests each level.

Starts the server itself on a free loopback port (or uses `--base-url`, which must be a loopback
address), sends every request with the official `openai` client (streaming, usage included), and
reports per concurrency level: p50/p95 latency, p50/p95 time to first token, tokens/s over the
level's wall time, and failed or incomplete requests (a request is complete when its stream
ends with a finish_reason and its usage matches the text's chunks). Bounded: at most `--requests`
per level and `--time-limit-s` per level. Writes docs/results/<name>.{json,md}.

    python benchmarks/load_test.py --target ~/.cache/specdecode-models/smollm2-135m-instruct \\
        --draft-layers 8 --concurrency 1,4,16 --requests 16 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlparse

import openai
from core_speed import cpu_name, write_results

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain in three sentences what a KV cache is.",
    "Give me five names for a lighthouse keeper's cat.",
    "Summarise the plot of a story about a robot who learns to paint.",
    "What is the difference between a list and a tuple in Python?",
    "Write a haiku about the sea at night.",
]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "specdecode", "serve", "--target", args.target, "--port", str(port)]
    command += ["--api-key", args.api_key, "--served-model-name", "model", "-k", args.k, "--dtype", args.dtype]
    command += ["--draft-layers", str(args.draft_layers)] if args.draft_layers else ["--draft", args.draft]
    log = open(args.server_log, "w")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            return proc, base + "/v1"
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"the server exited; see {args.server_log}")
            time.sleep(1)
    proc.kill()
    sys.exit("the server did not start within 10 minutes")


async def one_request(client: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    first = None
    text, finish, used = "", None, None
    try:
        stream = await client.chat.completions.create(
            model="model",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                used = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content:
                    first = first or time.perf_counter() - start
                    text += choice.delta.content
                finish = choice.finish_reason or finish
    except Exception as err:  # counted and reported, never hidden
        return {"ok": False, "error": f"{type(err).__name__}: {err}", "latency_s": time.perf_counter() - start}
    complete = finish in ("stop", "length") and used is not None and (used > 0) == bool(text)
    return {
        "ok": complete,
        "error": None if complete else f"incomplete: finish={finish} usage={used}",
        "latency_s": time.perf_counter() - start,
        "ttft_s": first,
        "completion_tokens": used or 0,
    }


async def run_level(base_url: str, key: str, concurrency: int, requests: int, max_tokens: int, limit_s: float):
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=limit_s)
    todo = iter(range(requests))
    results: list[dict] = []

    async def client_loop() -> None:
        for i in todo:
            results.append(await one_request(client, PROMPTS[i % len(PROMPTS)], max_tokens))

    start = time.perf_counter()
    with contextlib.suppress(TimeoutError):  # the bound on time: what finished is reported, the rest not sent
        await asyncio.wait_for(asyncio.gather(*(client_loop() for _ in range(concurrency))), limit_s)
    wall = time.perf_counter() - start
    await client.close()
    return results, wall


def server_metrics(base_url: str, key: str) -> dict[str, float]:
    """The server's Prometheus samples without labels: name -> value."""
    request = urllib.request.Request(
        base_url.removesuffix("/v1") + "/metrics", headers={"Authorization": f"Bearer {key}"}
    )
    text = urllib.request.urlopen(request, timeout=30).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="start a server for this model (else --base-url)")
    ap.add_argument("--draft")
    ap.add_argument("--draft-layers", type=int)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("-k", default="auto")
    ap.add_argument("--base-url", help="an already running server, e.g. http://127.0.0.1:8000/v1 (loopback only)")
    ap.add_argument("--api-key", default=os.environ.get("SPECDECODE_API_KEY", "load-test"))
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--time-limit-s", type=float, default=900, help="per concurrency level")
    ap.add_argument("--server-log", default="/tmp/specdecode-load-test-server.log")
    ap.add_argument("--name", default="load_test", help="output file stem under docs/results/")
    args = ap.parse_args()
    proc = None
    if args.base_url:
        host = urlparse(args.base_url).hostname or ""
        if host != "localhost" and not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
            sys.exit("the load test only talks to a server on this machine (a loopback address)")
        base_url = args.base_url
    elif args.target:
        proc, base_url = start_server(args)
    else:
        sys.exit("give --target (start a server) or --base-url (a running one)")
    levels = []
    try:
        asyncio.run(run_level(base_url, args.api_key, 1, 1, 8, args.time_limit_s))  # warm-up
        for c in (int(x) for x in args.concurrency.split(",")):
            results, wall = asyncio.run(
                run_level(base_url, args.api_key, c, args.requests, args.max_tokens, args.time_limit_s)
            )
            ok = [r for r in results if r["ok"]]
            level = {
                "concurrency": c,
                "sent": len(results),
                "requested": args.requests,
                "failed": len(results) - len(ok),
                "errors": sorted({r["error"] for r in results if r["error"]}),
                "wall_s": wall,
                "tokens_per_s": sum(r["completion_tokens"] for r in ok) / wall,
                "latency_p50_s": percentile([r["latency_s"] for r in ok], 50) if ok else None,
                "latency_p95_s": percentile([r["latency_s"] for r in ok], 95) if ok else None,
                "ttft_p50_s": percentile([r["ttft_s"] for r in ok if r["ttft_s"]], 50) if ok else None,
                "ttft_p95_s": percentile([r["ttft_s"] for r in ok if r["ttft_s"]], 95) if ok else None,
                "results": results,
            }
            levels.append(level)
            print(
                f"C={c}: {len(ok)}/{args.requests} complete, {level['failed']} failed, "
                f"{level['tokens_per_s']:.1f} tok/s, p50/p95 latency {level['latency_p50_s']:.2f}/"
                f"{level['latency_p95_s']:.2f}s, p50/p95 TTFT {level['ttft_p50_s']:.2f}/{level['ttft_p95_s']:.2f}s",
                flush=True,
            )
        spec = server_metrics(base_url, args.api_key)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    if args.target:
        draft = f"draft = first {args.draft_layers} layers" if args.draft_layers else f"draft {args.draft}"
        server = f"{args.target} ({draft}, {args.dtype}, K={args.k})"
    else:
        server = f"{args.base_url} (started by hand)"
    lines = [
        f"{cpu_name()}; server: {server}; {args.requests} streaming chat requests per level, max_tokens "
        f"{args.max_tokens}, greedy.",
        "",
        "| concurrency | complete | failed | tokens/s | latency p50 / p95 (s) | time to first token p50 / p95 (s) |",
        "|---|---|---|---|---|---|",
    ]
    spec_line = (
        f"Speculation over the whole run (server metrics): {spec['specdecode_spec_decode_num_draft_tokens_total']:.0f} "
        f"tokens guessed, {spec['specdecode_spec_decode_num_accepted_tokens_total']:.0f} accepted (acceptance rate "
        f"{spec['specdecode_spec_decode_acceptance_rate']:.1%}), mean acceptance length "
        f"{spec['specdecode_spec_decode_mean_acceptance_length']:.2f}, "
        f"{spec['specdecode_generation_tokens_total']:.0f} tokens generated in "
        f"{spec['specdecode_spec_decode_num_drafts_total']:.0f} target passes."
    )
    for lv in levels:
        lines.append(
            f"| {lv['concurrency']} | {lv['sent'] - lv['failed']}/{lv['requested']} | {lv['failed']} "
            f"| {lv['tokens_per_s']:.1f} | {lv['latency_p50_s']:.2f} / {lv['latency_p95_s']:.2f} "
            f"| {lv['ttft_p50_s']:.2f} / {lv['ttft_p95_s']:.2f} |"
        )
    lines += ["", spec_line]
    write_results(args.name, {"settings": vars(args), "levels": levels, "server_metrics": spec}, lines)


if __name__ == "__main__":
    main()
