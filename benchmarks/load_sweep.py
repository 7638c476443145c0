"""Servers under load, driven by guidellm (PyPI, what vLLM's users run): C concurrent streaming clients.

Each server is started here in turn on a free loopback port, warmed up, and driven by one
`guidellm run` per workload and concurrency level (profile `concurrent`, C streams; greedy, exactly
--max-tokens tokens per request: `ignore_eos`). Workloads: code (HumanEval prompts completed on
/v1/completions) and chat (MT-bench first turns on /v1/chat/completions). For specdecode servers the
K chosen per step and the rows per batch are read from /metrics before and after each level.

Servers (--servers, any of):
  auto           `specdecode serve -k auto` (this checkout: continuous batching, speculation)
  k0             `specdecode serve -k 0` (the same batching server, speculation off)
  one-at-a-time  `specdecode serve -k auto` from --old-tree, a checkout of the commit before the
                 batching worker (one request at a time); only at --old-levels
  ray-1          `specdecode serve -k auto --ray --replicas 1 --replica-cpus 2` (Ray Serve's overhead)
  ray-2          `specdecode serve -k auto --ray --replicas 2 --replica-cpus 1` (two replicas, a thread each)
  llama          llama.cpp's `llama-server -np 8` (parallel slots) on the target GGUF (--no-repack)
  llama-draft    the same with `--model-draft` (its speculative decoding, --spec-type draft-simple)

Writes docs/results/<name>.{json,md} (one row per server, workload and C) and <name>.png; guidellm's
own reports go to --raw-dir.

    python benchmarks/load_sweep.py --target T.gguf --draft D.gguf --tokenizer QWEN_1.5B_FOLDER \\
        --guidellm /path/to/venv/bin/guidellm --llama-server /path/to/llama-server --old-tree /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from common import RESULTS, free_port, humaneval_prompts, rotated, running_server

from specdecode.bench.machine import cpu_name
from specdecode.bench.workloads import chat

KEY = "load-sweep"
REQUESTS = {1: 3, 2: 4, 4: 8, 8: 8, 16: 16}  # per level: at least one round of every stream, two at C <= 4
ENDPOINTS = {"code": "/v1/completions", "chat": "/v1/chat/completions"}
RAY_SERVERS = {"ray-1": ("1", "2"), "ray-2": ("2", "1")}  # replicas, CPUs of each
SPECDECODE_SERVERS = ("auto", "k0", "one-at-a-time", *RAY_SERVERS)
ONE_METRICS = tuple(s for s in SPECDECODE_SERVERS if s != "ray-2")  # ray-2's /metrics: one replica's requests


def server_command(name: str, args: argparse.Namespace, port: int) -> tuple[list[str], str | None]:
    """(command line, working directory) of server `name`."""
    if name in SPECDECODE_SERVERS:
        k = "0" if name == "k0" else "auto"
        command = [sys.executable, "-m", "specdecode", "serve", "--target", args.target, "--draft", args.draft]
        command += ["-k", k, "--port", str(port), "--api-key", KEY, "--served-model-name", "model"]
        if name in RAY_SERVERS:
            replicas, cpus = RAY_SERVERS[name]
            command += ["--ray", "--replicas", replicas, "--replica-cpus", cpus]
        return command, args.old_tree if name == "one-at-a-time" else None
    command = [args.llama_server, "-m", args.target, "-np", "8", "-c", "8192", "-t", str(args.threads)]
    command += ["--port", str(port), "--api-key", KEY, "--alias", "model", "--no-webui"]
    command += ["--no-repack"]  # its repacked (AMX) weights crash this build on Sapphire Rapids at load
    if name == "llama-draft":
        command += ["--model-draft", args.draft, "--spec-type", "draft-simple"]
    return command, None


@contextmanager
def running(name: str, args: argparse.Namespace, log_path: Path):
    """A started server: yields its base URL; stopped on exit."""
    port = free_port()
    command, cwd = server_command(name, args, port)
    with running_server(command, port, log_path, cwd) as base:
        yield base


def post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(request, timeout=600).read())


def metrics(base: str) -> dict[str, float]:
    """The server's Prometheus samples without labels (specdecode servers): name -> value."""
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = urllib.request.urlopen(request, timeout=30).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}


def mean_of(before: dict, after: dict, histogram: str) -> float | None:
    """The mean of a histogram's observations between two scrapes."""
    count = after.get(f"{histogram}_count", 0) - before.get(f"{histogram}_count", 0)
    return (after[f"{histogram}_sum"] - before.get(f"{histogram}_sum", 0)) / count if count else None


def guidellm(args: argparse.Namespace, base: str, workload: str, prompts: Path, streams: int, out: Path) -> dict:
    """One guidellm level; its summary (tokens/s, time to first token, per-request speed)."""
    backend = (
        f"kind=openai_http,target={base},model=model,request_format={ENDPOINTS[workload]},api_key={KEY},"
        f"max_tokens={args.max_tokens},extras.body.ignore_eos=true,extras.body.temperature=0"
    )
    command = [args.guidellm, "run", "--backend", backend, "--data", f"kind=json_file,path={prompts}"]
    command += ["--tokenizer", f"kind=huggingface_auto,model={args.tokenizer}"]
    command += ["--profile", f"kind=concurrent,streams={streams}"]
    command += ["--constraint", f"kind=max_requests,count={REQUESTS[streams]}"]
    command += ["--output", f"kind=json,path={out}", "--disable-progress", "--disable-console"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    bench = json.loads(out.read_text())["benchmarks"][0]
    m, done = bench["metrics"], bench["requests"]["successful"]
    ttft = m["time_to_first_token_ms"]["successful"]["percentiles"]
    return {
        "completed": m["request_totals"]["successful"],
        "errored": m["request_totals"]["errored"] + m["request_totals"]["incomplete"],
        "tokens_per_s": m["output_tokens_per_second"]["successful"]["mean"],
        "ttft_p50_s": ttft["p50"] / 1000,
        "ttft_p95_s": ttft["p95"] / 1000,
        "request_tokens_per_s": sorted(r["output_tokens_per_second"] for r in done)[len(done) // 2] if done else None,
        "output_tokens": sum(r["output_tokens"] for r in done),
    }


def write_prompts(folder: Path, count: int) -> dict[str, Path]:
    files = {"code": humaneval_prompts(count), "chat": [c[0]["content"] for c in chat(count)]}
    paths = {}
    for workload, prompts in files.items():
        paths[workload] = folder / f"{workload}.jsonl"
        paths[workload].write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return paths


def medians(rows: list[dict]) -> list[dict]:
    """One row per server, workload and C: the median of each number over the repeats."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["server"], row["workload"], row["c"]), []).append(row)
    merged = []
    for group in groups.values():
        row = dict(group[0], repeats=len(group))
        for key, value in group[0].items():
            values = [r[key] for r in group]
            if isinstance(value, int | float) and None not in values and len(set(values)) > 1:
                row[key] = statistics.median(values)
        merged.append(row)
    return merged


def render(rows: list[dict], machine: str, command: str) -> str:
    servers = list(dict.fromkeys(r["server"] for r in rows))
    lines = [f"Machine: {machine}; {rows[0]['max_tokens']} greedy tokens per request (ignore_eos).", ""]
    lines += [f"Medians of {rows[0]['repeats']} runs per server, the servers' order rotated from run to run.", ""]
    lines += [f"`{command}`", ""]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        lines += [f"### {workload}", "", "| C | " + " | ".join(servers) + " |", "|---|" + "---|" * len(servers)]
        for c in sorted({r["c"] for r in rows if r["workload"] == workload}):
            cells = []
            for server in servers:
                r = next((r for r in rows if (r["server"], r["workload"], r["c"]) == (server, workload, c)), None)
                if r is None:
                    cells.append("")
                    continue
                k = "" if r.get("mean_k") is None else f", K {r['mean_k']:.1f}"
                cells.append(
                    f"{r['tokens_per_s']:.1f} tok/s (TTFT {r['ttft_p50_s']:.2f} / {r['ttft_p95_s']:.2f} s; "
                    f"{r['request_tokens_per_s']:.1f} per request{k})"
                    + (f" {r['errored']} failed" if r["errored"] else "")
                )
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for server in dict.fromkeys(r["server"] for r in rows):
            points = sorted(
                (r["c"], r["tokens_per_s"]) for r in rows if (r["server"], r["workload"]) == (server, workload)
            )
            ax.plot(*zip(*points, strict=True), marker="o", label=server)
        ax.set(title=workload, xlabel="concurrent clients", ylabel="tokens/s (all requests)", xscale="log")
        ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="the target GGUF (llama-server needs a GGUF)")
    ap.add_argument("--draft", required=True)
    ap.add_argument("--tokenizer", required=True, help="a local tokenizer folder for guidellm (no hub)")
    ap.add_argument("--guidellm", default="guidellm")
    ap.add_argument("--llama-server", help="the llama-server binary (servers llama, llama-draft)")
    ap.add_argument("--old-tree", help="a checkout of the one-at-a-time server's commit")
    ap.add_argument("--servers", default="auto,k0,one-at-a-time,llama,llama-draft")
    ap.add_argument("--workloads", default="code,chat")
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--old-levels", default="1,8", help="levels of the one-at-a-time server (its speed is flat)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--raw-dir", default=tempfile.gettempdir() + "/load_sweep")
    ap.add_argument("--name", default="load")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every server, their order rotated; medians")
    args = ap.parse_args()
    raw = Path(args.raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    prompts = write_prompts(raw, max(REQUESTS.values()))
    rows: list[dict] = []
    for repeat in range(args.repeats):
        for server in rotated(args.servers.split(","), repeat):
            levels = args.old_levels if server == "one-at-a-time" else args.levels
            with running(server, args, raw / f"{server}-{repeat}.log") as base:
                for workload in args.workloads.split(","):
                    warm = {"model": "model", "max_tokens": 8, "temperature": 0}
                    prompt = json.loads(prompts[workload].read_text().splitlines()[0])["prompt"]
                    if workload == "code":
                        post(base, "/v1/completions", {**warm, "prompt": prompt})
                    else:
                        post(base, "/v1/chat/completions", {**warm, "messages": [{"role": "user", "content": prompt}]})
                    for c in [int(c) for c in levels.split(",")]:
                        before = metrics(base) if server in ONE_METRICS else {}
                        row = guidellm(
                            args, base, workload, prompts[workload], c, raw / f"{server}-{workload}-{c}-{repeat}.json"
                        )
                        after = metrics(base) if server in ONE_METRICS else {}
                        k = mean_of(before, after, "specdecode_spec_decode_num_speculative_tokens")
                        batch = mean_of(before, after, "specdecode_batch_rows")
                        row.update(server=server, workload=workload, c=c, max_tokens=args.max_tokens, mean_k=k)
                        row["repeat"] = repeat
                        row["mean_batch_rows"] = batch
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    command = "python benchmarks/load_sweep.py " + " ".join(sys.argv[1:])
    machine = f"{cpu_name()}, {args.threads} threads"
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"machine": machine, "command": command, "rows": rows}, indent=1)
    )
    (RESULTS / f"{args.name}.md").write_text(render(medians(rows), machine, command))
    plot(medians(rows), RESULTS / f"{args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
