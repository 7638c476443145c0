"""Run the benchmark: every method on the same prompts, interleaved, after a warm-up; raw numbers out."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig

from specdecode.bench import workloads
from specdecode.bench.machine import describe
from specdecode.engine import SpeculativeDecoder
from specdecode.policy import measure_pass_costs
from specdecode.sampling import SamplingParams

BASELINE = "baseline"
METHOD_NAMES = ("baseline", "hf-assisted", "chain", "auto", "heuristic", "ngram", "tree", "ngram+draft")
WARMUP_TOKENS = 16


@dataclass(frozen=True)
class Method:
    """One way to generate: `proposer` None with k = 0 is target-only decoding; `hf` is transformers."""

    name: str
    proposer: str | None = None
    k: int | str = 0
    hf: bool = False

    @property
    def needs_draft(self) -> bool:
        return self.hf or self.proposer in ("draft", "tree", "ngram+draft")


def parse_methods(spec: str, ks: Sequence[int]) -> list[Method]:
    """ "baseline,hf-assisted,chain,auto,ngram,tree" -> methods, the baseline first. `chain` runs at every K
    in `ks`; `ngram` and `tree` use the auto policy; `chain:K`, `ngram:K`, `tree:K` fix K (a tree's depth)."""
    methods = [Method(BASELINE)]
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, _, fixed = item.partition(":")
        if name not in METHOD_NAMES or (fixed and name not in ("chain", "ngram", "tree")):
            raise ValueError(
                f"unknown method {item!r}; choose from {', '.join(METHOD_NAMES)} (or chain:K, ngram:K, tree:K)"
            )
        if fixed and not fixed.isdigit():
            raise ValueError(f"{item!r}: K must be a non-negative integer")
        if name == "hf-assisted":
            new = [Method("hf-assisted", hf=True)]
        elif name == "chain":
            new = [Method(f"chain K={k}", "draft", k) for k in ([int(fixed)] if fixed else ks)]
        elif name in ("auto", "heuristic"):
            new = [Method(name, "draft", name)]
        elif name != BASELINE:
            new = [Method(f"{name} K={fixed}", name, int(fixed)) if fixed else Method(f"{name} auto", name, "auto")]
        else:
            new = []
        methods += [m for m in new if m not in methods]
    return methods


@dataclass
class BenchConfig:
    workloads: list[str]
    methods: list[Method]
    temperatures: list[float]
    max_new_tokens: int = 128
    prompts_per_workload: int = 5
    repeat: int = 1
    ignore_eos: bool = True
    seed: int = 0
    tree_width: int = 2


def run_bench(
    target,
    draft,
    tokenizer,
    config: BenchConfig,
    *,
    models: dict,
    command: str = "",
    progress: bool = True,
) -> dict:
    """Run every (repetition, workload, prompt, temperature, method) in that nesting order, so that the
    methods alternate on each prompt; return everything for results.json."""
    if not config.methods or config.methods[0].name != BASELINE:
        raise ValueError("the baseline must be the first method (parse_methods puts it there)")
    methods = [m for m in config.methods if draft is not None or not m.needs_draft]
    skipped = [
        {"method": m.name, "reason": "needs a draft model (--draft or --draft-layers)"}
        for m in config.methods
        if m not in methods
    ]
    decoders = {
        m.proposer: SpeculativeDecoder(target, draft, tokenizer, proposer=m.proposer, tree_width=config.tree_width)
        for m in methods
        if m.proposer is not None
    }
    plain = SpeculativeDecoder(target, None, tokenizer)
    prompts: dict[str, list] = {}
    for spec in config.workloads:
        name = Path(spec).stem if spec.endswith(".jsonl") else spec  # a user's file is named for its stem
        prompts[name] = []
        for i, prompt in enumerate(workloads.load(spec, config.prompts_per_workload, len(tokenizer))):
            try:
                plain.check_request(len(plain.encode(prompt)), config.max_new_tokens, 0)
                prompts[name].append(prompt)
            except ValueError as err:
                skipped.append({"workload": name, "prompt": i, "reason": str(err)})
        if len(prompts[name]) < config.prompts_per_workload:
            print(
                f"note: workload {name}: {len(prompts[name])} usable prompts of {config.prompts_per_workload}",
                file=sys.stderr,
            )
    prompts = {name: ps for name, ps in prompts.items() if ps}
    if not prompts:
        raise ValueError("no workload has a prompt that fits: " + "; ".join(s["reason"] for s in skipped))

    def run(method: Method, prompt, temperature: float, seed: int, max_new_tokens: int) -> dict:
        if method.hf:
            return _run_transformers(target, draft, plain.encode(prompt), temperature, seed, max_new_tokens, config)
        dec = decoders[method.proposer] if method.proposer else plain
        dec.reset()  # every run pays its own prompt pass
        sampling = SamplingParams(temperature=temperature, seed=seed)
        r = dec.generate(prompt, max_new_tokens, method.k, sampling, ignore_eos=config.ignore_eos)
        return {"wall_s": r.stats.wall_s, "token_ids": r.token_ids, "stats": r.stats.to_dict()}

    first = next(iter(prompts.values()))[0]
    for method in methods:  # warm-up: allocations, thread pools, each auto decoder's cost calibration
        run(method, first, 0.0, 0, min(WARMUP_TOKENS, config.max_new_tokens))
    sizes = sorted({1, *range(2, 10), *(config.tree_width * d + 1 for d in range(1, 9))})
    curve = measure_pass_costs(plain.target, plain.encode(first), sizes)

    runs, turn = [], -1
    total = config.repeat * sum(len(ps) for ps in prompts.values()) * len(config.temperatures) * len(methods)
    with tqdm(total=total, desc="bench", unit="run", file=sys.stderr, disable=not progress) as bar:
        for rep in range(config.repeat):
            for workload, ps in prompts.items():
                for i, prompt in enumerate(ps):
                    for temperature in config.temperatures:
                        seed = config.seed + 1000 * rep + i
                        turn = (turn + 1) % len(methods)  # rotate the order: no method always runs last
                        for method in methods[turn:] + methods[:turn]:
                            bar.set_postfix_str(f"{workload} #{i + 1} T={temperature:g} {method.name}")
                            r = run(method, prompt, temperature, seed, config.max_new_tokens)
                            runs.append(
                                {
                                    "workload": workload,
                                    "prompt_index": i,
                                    "repeat": rep,
                                    "temperature": temperature,
                                    "method": method.name,
                                    "new_tokens": len(r["token_ids"]),
                                    **r,
                                }
                            )
                            bar.update()
    return {
        "command": command,
        "machine": describe(),
        "models": models,
        "settings": {**asdict(config), "methods": [m.name for m in methods]},
        "methods": {m.name: asdict(m) for m in methods},
        "skipped": skipped,
        "workloads": {name: len(ps) for name, ps in prompts.items()},
        "cost_curve_s": curve,
        "runs": runs,
    }


def _run_transformers(target, draft, ids: list[int], temperature: float, seed: int, max_new_tokens: int, config):
    """`transformers` assisted generation (its default schedule), with the sampler set to plain temperature."""
    generation = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        pad_token_id=_pad_id(target.generation_config),
    )
    torch.manual_seed(seed)
    inputs = torch.tensor([ids], device=target.device)
    with _without_eos(target, draft) if config.ignore_eos else nullcontext():
        start = time.perf_counter()
        out = target.generate(inputs, generation_config=generation, assistant_model=draft)
        wall = time.perf_counter() - start
    return {"wall_s": wall, "token_ids": out[0, len(ids) :].tolist(), "stats": None}


@contextmanager
def _without_eos(*models) -> Iterator[None]:
    """`generate` takes unset fields of a GenerationConfig from the model's, EOS included: unset it there."""
    saved = [m.generation_config.eos_token_id for m in models]
    for m in models:
        m.generation_config.eos_token_id = None
    try:
        yield
    finally:
        for m, eos in zip(models, saved, strict=True):
            m.generation_config.eos_token_id = eos


def _pad_id(generation: GenerationConfig) -> int | None:
    if generation.pad_token_id is not None:
        return generation.pad_token_id
    eos = generation.eos_token_id
    return eos[0] if isinstance(eos, list) else eos
