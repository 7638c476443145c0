"""What every subcommand shares: the examples, the model arguments, loading the decoder."""

from __future__ import annotations

import argparse
import sys

from specdecode.engine import DRAFT_DECODERS, GGUF_MODES, KERNELS, PROPOSERS, TARGET_DECODERS, SpeculativeDecoder
from specdecode.loading import DTYPES
from specdecode.small_rows import QUANTIZATIONS

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


def add_load_args(p: argparse.ArgumentParser, target_required: bool = True) -> None:
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


def add_model_args(p: argparse.ArgumentParser) -> None:
    add_load_args(p)
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


def subcommand(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand with the examples and the model arguments every subcommand takes."""
    parser = sub.add_parser(name, help=help, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    return parser


def decoder_options(args: argparse.Namespace) -> dict:
    """`SpeculativeDecoder.from_pretrained`'s arguments from the model flags."""
    return dict(
        target=args.target,
        draft=args.draft,
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


def load_decoder(args: argparse.Namespace) -> SpeculativeDecoder:
    print("loading models ...", file=sys.stderr, flush=True)
    return SpeculativeDecoder.from_pretrained(**decoder_options(args))
