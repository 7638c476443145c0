"""The loop: propose K tokens -> verify them in one target pass -> accept -> commit."""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from specdecode import compiled_decoder
from specdecode.batch import BatchResult, generate_batch
from specdecode.gguf_blocks import has_blocks
from specdecode.grammar import Grammars
from specdecode.kv import CachedModel
from specdecode.loading import (
    IncompatibleModelsError,
    check_same_tokenizer,
    context_length,
    eos_token_ids,
    first_layers,
    load_model,
    load_tokenizer,
    logit_width,
)
from specdecode.logprobs import TokenLogprob, token_logprobs
from specdecode.output import GenerationResult, OutputTracker, StreamChunk
from specdecode.policy import AutoK, FixedK, HeuristicK, KPolicy, calibrate
from specdecode.proposers import (
    DraftModelProposer,
    NgramProposer,
    NgramThenDraftProposer,
    Proposer,
    TreeProposer,
)
from specdecode.rules import TokenRules
from specdecode.sampling import MAX_LOGPROBS, SamplingParams, check_text, make_generator
from specdecode.small_rows import QUANTIZATIONS, use_small_rows_path
from specdecode.stats import DecodeStats
from specdecode.step import Row, step

Prompt = str | Sequence[int] | Sequence[dict]
NumSpeculativeTokens = int | str  # K >= 0, "auto" or "heuristic"
AUTO_K_MAX = 8
AUTO_TREE_NODES_MAX = 16  # "auto" grows a tree of width w to depth at most 16 // w


def checked_sampling(sampling: SamplingParams | None, ignore_eos: bool) -> SamplingParams:
    """The sampling settings of a call (the defaults for None); TypeError for arguments of the wrong type."""
    if not isinstance(ignore_eos, bool):
        raise TypeError(f"ignore_eos must be True or False, got {ignore_eos!r}")
    if sampling is None:
        return SamplingParams()
    if not isinstance(sampling, SamplingParams):
        raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
    return sampling


def is_batch(prompt) -> bool:
    """A list of prompts (strings, token-id lists or chats), not one prompt (a string, ids or a chat)."""
    return (
        isinstance(prompt, list | tuple) and len(prompt) > 0 and all(isinstance(p, str | list | tuple) for p in prompt)
    )


log = logging.getLogger(__name__)
PROPOSERS = ("draft", "ngram", "tree", "ngram+draft")
KERNELS = ("auto", "small-rows", "stock")
DRAFT_DECODERS = ("compiled", "modules")
TARGET_DECODERS = ("auto", "compiled", "modules")
GGUF_MODES = ("auto", "blocks", "dequantize")
# A guess reads the draft's weights once: int8 halves what bfloat16 reads and, unlike int4, needs no
# unpacking in the inner loop.
AUTO_DRAFT_QUANTIZATION = "int8"


def make_proposer(
    name: str | Proposer,
    draft: PreTrainedModel | None,
    vocab_size: int,
    ngram_max: int,
    ngram_min: int,
    tree_width: int,
) -> Proposer | None:
    """The proposer called `name` (None for "draft" without a draft model: plain decoding only)."""
    if not isinstance(name, str):
        return name
    if name not in PROPOSERS:
        raise ValueError(f"unknown proposer {name!r}; choose one of {', '.join(PROPOSERS)}")
    if name == "ngram":
        return NgramProposer(ngram_max, ngram_min)
    if draft is None:
        if name != "draft":
            raise ValueError(f"the {name} proposer needs a draft model")
        return None
    model_proposer = DraftModelProposer(draft, vocab_size)
    if name == "draft":
        return model_proposer
    if name == "tree":
        return TreeProposer(model_proposer, tree_width)
    return NgramThenDraftProposer(NgramProposer(ngram_max, ngram_min), model_proposer)


class SpeculativeDecoder:
    """Exact speculative decoding: the output is the target's, token for token when greedy,
    in distribution when sampling. Not thread-safe: one generation at a time per instance."""

    def __init__(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        draft_tokenizer: PreTrainedTokenizerBase | None = None,
        proposer: str | Proposer = "draft",
        ngram_max: int = 4,
        ngram_min: int = 1,
        tree_width: int = 2,
    ) -> None:
        """`proposer`: "draft" (the draft model), "ngram" (prompt lookup, no draft needed), "tree"
        (a draft token tree `tree_width` wide; K is its depth), "ngram+draft" (lookup first, the
        draft where it finds nothing), or a Proposer object."""
        if tokenizer is None:
            raise ValueError("a tokenizer is required (the target's)")
        if draft_tokenizer is not None:
            check_same_tokenizer(tokenizer, draft_tokenizer)
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        for who, model in (("target", target), ("draft", draft)):
            if model is not None and logit_width(model) < self.vocab_size:
                raise IncompatibleModelsError(
                    f"the {who} produces {logit_width(model)} logits per position but the tokenizer "
                    f"has {self.vocab_size} tokens: they do not belong together"
                )
        if draft is not None and draft.device != target.device:
            raise IncompatibleModelsError(
                f"draft and target are on different devices ({draft.device} vs {target.device}); "
                "move both to one device"
            )
        self.target = CachedModel(target, self.vocab_size)
        self.proposer = make_proposer(proposer, draft, self.vocab_size, ngram_max, ngram_min, tree_width)
        self._auto: AutoK | None = None  # the "auto" policy, kept from call to call
        self._grammars: Grammars | None = None  # built at the first request with a grammar
        self.eos_ids = eos_token_ids(target, tokenizer)
        lengths = [n for n in (context_length(target), draft and context_length(draft)) if n]
        self.max_context = min(lengths) if lengths else None

    @classmethod
    def from_pretrained(
        cls,
        target: str,
        draft: str | None = None,
        *,
        dtype: str | torch.dtype = "auto",
        draft_dtype: str | torch.dtype | None = None,
        draft_layers: int | None = None,
        device: str = "cpu",
        kernels: str = "auto",
        quantization: str = "none",
        gguf: str = "auto",
        target_decoder: str = "auto",
        draft_quantization: str = "auto",
        draft_decoder: str = "compiled",
        **options,
    ) -> SpeculativeDecoder:
        """Load from hub ids, local folders or .gguf files.

        `draft_layers=N` (instead of `draft`) makes the draft from the target's first N layers.
        `kernels`: "auto" (the default: on a CPU, the small-rows verification path of
        `specdecode.small_rows` when it builds here, else PyTorch's), "small-rows" or "stock".
        `quantization`: "none" (default), "int8" (per output row) or "int4" (groups of 32): the target's
        projection weights quantized at load, on the small-rows kernels. This changes the model: the output
        is the quantized model's (exactly, as always), not the original's.
        `gguf`: "auto" (the default: "blocks" on the small-rows path, else "dequantize"), "blocks" (a .gguf
        file's quantized weights computed in their own blocks, none re-quantized: `specdecode.gguf_blocks`;
        Llama and Qwen2 architectures) or "dequantize" (to `dtype`).
        `target_decoder`: "auto" (the default: "compiled" for a target in GGUF blocks or quantized,
        "modules" otherwise), "compiled" (the target's layers run from C++, `specdecode.compiled_decoder`;
        a verify pass still gives each token the bits of one-token decoding) or "modules".
        `draft_quantization`: "none", "int8", "int4", or "auto" (the default: `AUTO_DRAFT_QUANTIZATION`,
        the fastest measured here, where the draft runs on the small-rows kernels with float32 or
        bfloat16 weights; else unquantized). A GGUF draft in blocks: "auto" and "int4" re-quantize its
        blocks of more than 4-bit codes to 4 bits (`gguf_blocks.to_4_bits`: cheaper guesses, same output).
        `draft_decoder`: "compiled" (the default: a Llama-family draft on the small-rows kernels runs
        through `specdecode.compiled_decoder`, about twice as fast a guess; other drafts through their
        modules) or "modules".
        Other keyword arguments (`proposer`, `ngram_max`, `ngram_min`, `tree_width`) go to the constructor.
        """
        choices = {
            "kernels": (kernels, KERNELS),
            "draft_decoder": (draft_decoder, DRAFT_DECODERS),
            "target_decoder": (target_decoder, TARGET_DECODERS),
            "gguf": (gguf, GGUF_MODES),
            "quantization": (quantization, QUANTIZATIONS),
            "draft_quantization": (draft_quantization, ("auto", *QUANTIZATIONS)),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        fast = kernels == "small-rows" or kernels == "auto" and device == "cpu"
        blocks = gguf == "blocks" or gguf == "auto" and fast
        target_model = load_model(target, dtype, device, gguf_blocks=blocks)
        tokenizer = load_tokenizer(target)
        if draft is not None and draft_layers is not None:
            raise ValueError("pass either a draft model or draft_layers, not both")
        draft_tokenizer = None
        if draft_layers is not None:
            draft_model = first_layers(target_model, draft_layers)
        elif draft is not None:
            four_bits = blocks and draft_quantization in ("auto", "int4")
            draft_model = load_model(draft, draft_dtype or dtype, device, gguf_blocks=blocks, draft_4_bits=four_bits)
            draft_tokenizer = load_tokenizer(draft)
        else:
            draft_model = None
        fast = fast and target_model.device.type == "cpu"
        chosen = draft_quantization != "auto"
        if not chosen:
            draft_quantization = AUTO_DRAFT_QUANTIZATION if fast and draft_model is not None else "none"
        quantized = draft_quantization != "none"
        if chosen and quantized and draft_model is None:
            raise ValueError(f"draft_quantization={draft_quantization!r} needs a draft model")
        if quantization != "none" and has_blocks(target_model):
            raise ValueError(
                f"quantization={quantization!r} applies to Hugging Face checkpoints; a GGUF file keeps its own blocks"
            )
        if quantization != "none" and not fast:
            raise ValueError(f"quantization={quantization!r} needs the small-rows kernels (kernels='small-rows')")
        if fast and use_small_rows_path(target_model, quantization) == 0 and quantization != "none":
            raise RuntimeError(f"a {quantization} target needs the small-rows kernel; it cannot be built here")
        use_draft_path = draft_model is not None and (fast or quantized)
        replaced = use_small_rows_path(draft_model, draft_quantization) if use_draft_path else 0
        if chosen and quantized and replaced == 0 and not has_blocks(draft_model):
            raise RuntimeError(f"a {draft_quantization} draft needs the small-rows kernel; it cannot be built here")
        if (replaced or has_blocks(draft_model)) and draft_decoder == "compiled":
            compiled_decoder.attach(draft_model)
        if target_decoder == "auto":
            target_decoder = "compiled" if has_blocks(target_model) or quantization != "none" else "modules"
        if target_decoder == "compiled" and not compiled_decoder.attach(target_model):
            log.warning("the target runs through its modules: %s", compiled_decoder.unsupported(target_model))
        return cls(target_model, draft_model, tokenizer, draft_tokenizer=draft_tokenizer, **options)

    # -- public API ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Drop the KV caches. Between calls they are kept, so a shared prompt prefix is reused.
        (What the `auto` policy learnt, acceptance and costs, is kept too.)"""
        self.target.rollback(0)
        if self.proposer is not None:
            self.proposer.reset()

    def score(self, prompt: Prompt, top: int = 0) -> list[TokenLogprob]:
        """The target's log-probability of each prompt token after the ones before it (tokens 1.., so one
        entry fewer than the prompt's tokens), with its `top` most likely alternatives: prompt scoring as
        evaluation harnesses use it (one target pass over the prompt, in a cache of its own)."""
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_LOGPROBS:
            raise ValueError(f"top must be an integer in [0, {MAX_LOGPROBS}], got {top!r}")
        ids = self.encode(prompt)
        if self.max_context is not None and len(ids) > self.max_context:
            raise ValueError(f"the prompt ({len(ids)} tokens) exceeds the context length of {self.max_context} tokens")
        logits = self.target.fork().forward(ids, num_logits=len(ids))  # [L, V]
        return token_logprobs(logits[:-1], ids[1:], top)

    def encode(self, prompt: Prompt) -> list[int]:
        """A string, token ids (ints, or a 1-D integer tensor), or a chat ([{"role", "content"}]) ->
        prompt token ids. Anything else is a TypeError; ids outside the vocabulary, text that is not
        valid Unicode, or a chat the model's template refuses are a ValueError."""
        if isinstance(prompt, torch.Tensor) and prompt.ndim == 1 and not prompt.is_floating_point():
            prompt = prompt.tolist()
        if isinstance(prompt, str):
            check_text("the prompt", prompt)
            ids = self.tokenizer.encode(prompt) if prompt else []
        elif isinstance(prompt, list | tuple) and prompt and all(isinstance(m, dict) for m in prompt):
            ids = self.tokenizer.encode(self._chat_text(list(prompt)), add_special_tokens=False)
        elif isinstance(prompt, list | tuple):
            wrong = [t for t in prompt if not isinstance(t, numbers.Integral) or isinstance(t, bool)]
            if wrong:
                raise TypeError(f"prompt token ids must be integers, got {type(wrong[0]).__name__} {wrong[0]!r}")
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompt token ids outside the vocabulary [0, {self.vocab_size}): {bad[:5]}")
        else:
            raise TypeError(
                "prompt must be a string, a list of token ids or a chat (a list of {'role', 'content'} dicts), "
                f"got {type(prompt).__name__}"
            )
        if not ids:
            raise ValueError("the prompt is empty")
        return ids

    def _chat_text(self, messages: list[dict]) -> str:
        """The chat as the model's template writes it, ready for the assistant's reply."""
        from jinja2 import TemplateError

        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"chat message {i} needs a string 'role'")
            if isinstance(message.get("content"), str):
                check_text(f"chat message {i}", message["content"])
        if self.tokenizer.chat_template is None:
            raise ValueError("the model has no chat template: send a string prompt")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as err:
            raise ValueError(f"the model's chat template refuses these messages: {err}") from None

    def generate(
        self,
        prompt: Prompt | Sequence[Prompt],
        max_new_tokens: int = 128,
        num_speculative_tokens: NumSpeculativeTokens = 4,
        sampling: SamplingParams | None = None,
        ignore_eos: bool = False,
        n: int = 1,
    ) -> GenerationResult | BatchResult:
        """Generate up to `max_new_tokens`.

        `num_speculative_tokens`: K guesses per step; 0 is plain target decoding; "auto" picks K each
        step from measured costs and acceptance (K = 0 included), remembering both from call to
        call (`reset` keeps them); "heuristic" is +2 / -1 per step.

        A list of prompts, or n > 1, decodes a batch (`specdecode.batch`) and returns a BatchResult:
        one GenerationResult per row (prompt p, sample c at index p * n + c, seeded seed + p * n + c).
        """
        if n != 1 or is_batch(prompt):
            prompts = list(prompt) if is_batch(prompt) else [prompt]
            k, sampling = num_speculative_tokens, checked_sampling(sampling, ignore_eos)
            return generate_batch(self, prompts, max_new_tokens, k, sampling, ignore_eos, n)
        *_, (_, output, stats) = self._run(prompt, max_new_tokens, num_speculative_tokens, sampling, ignore_eos)
        return GenerationResult(output.text, output.token_ids, output.finish_reason, stats, output.logprobs)

    def stream(
        self,
        prompt: Prompt,
        max_new_tokens: int = 128,
        num_speculative_tokens: NumSpeculativeTokens = 4,
        sampling: SamplingParams | None = None,
        ignore_eos: bool = False,
    ) -> Iterator[StreamChunk]:
        """Like `generate`, yielding the text as it is accepted, one chunk per target pass."""
        for accepted, output, stats in self._run(prompt, max_new_tokens, num_speculative_tokens, sampling, ignore_eos):
            logprobs = None if output.logprobs is None else output.logprobs[len(output) - len(accepted) :]
            yield StreamChunk(output.delta(), accepted, output.finish_reason, stats, logprobs)

    def _run(
        self,
        prompt: Prompt,
        max_new_tokens: int,
        k: NumSpeculativeTokens,
        sampling: SamplingParams | None,
        ignore_eos: bool,
    ) -> Iterator[tuple[list[int], OutputTracker, DecodeStats]]:
        """Validate, then run `_decode`, keeping the statistics current after every pass."""
        sampling = checked_sampling(sampling, ignore_eos)
        if is_batch(prompt):
            raise ValueError("stream takes one prompt; decode several with generate([...])")
        prompt_ids = self.encode(prompt)
        self.check_request(len(prompt_ids), max_new_tokens, k)
        rules = self.rules(sampling, prompt_ids, ignore_eos)
        eos = () if ignore_eos else self.eos_ids
        output = OutputTracker(self.tokenizer, eos, sampling.stop, max_new_tokens, sampling.logprobs is not None)
        stats = DecodeStats(prompt_tokens=len(prompt_ids))
        target_s0, draft_s0, draft_passes0 = self.target.forward_s, *self._draft_counters()
        start = time.perf_counter()
        policy = self._policy(k, prompt_ids)
        for accepted in self._decode(prompt_ids, policy, sampling, output, stats, rules):
            draft_s, draft_passes = self._draft_counters()
            stats.new_tokens = len(output)
            stats.wall_s = time.perf_counter() - start
            stats.first_token_s = stats.first_token_s or stats.wall_s
            stats.target_s = self.target.forward_s - target_s0
            stats.draft_s = draft_s - draft_s0
            stats.draft_passes = draft_passes - draft_passes0
            yield accepted, output, stats

    # -- the algorithm ------------------------------------------------------------------------

    def _decode(
        self,
        prompt_ids: list[int],
        policy: KPolicy,
        sampling: SamplingParams,
        output: OutputTracker,
        stats: DecodeStats,
        rules: TokenRules | None,
    ) -> Iterator[list[int]]:
        """Speculative decoding (`specdecode.step`, a batch of one); yields the tokens committed by each pass."""
        generator = make_generator(sampling.seed, self.target.device)
        row = Row(list(prompt_ids), output, sampling, generator, policy, stats, self.target, self.proposer, rules)
        while not output.finished:
            yield step([row])[0]

    # -- helpers ------------------------------------------------------------------------------

    def grammars(self) -> Grammars:
        """The grammar compiler for this tokenizer (built at the first call: about a second; needs llguidance)."""
        if self._grammars is None:
            self._grammars = Grammars(self.tokenizer, self.vocab_size, self.eos_ids)
        return self._grammars

    def rules(self, sampling: SamplingParams, prompt_ids: list[int], ignore_eos: bool) -> TokenRules | None:
        """A row's rules (`specdecode.rules`), None where the request changes no logits; ValueError for
        logit_bias ids outside the vocabulary or an invalid grammar."""
        if not sampling.changes_logits and sampling.grammar is None:
            return None
        grammar = None
        if sampling.grammar is not None:
            if ignore_eos:
                raise ValueError("a grammar ends the output with EOS where it is complete: drop ignore_eos")
            grammar = self.grammars().matcher(sampling.grammar)
        return TokenRules(sampling, prompt_ids, self.vocab_size, grammar)

    def check_request(self, prompt_len: int, max_new_tokens: int, k: NumSpeculativeTokens) -> None:
        """Raise ValueError for a request that cannot run: bad max_new_tokens or K, or context overflow."""
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if k not in ("auto", "heuristic") and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
            raise ValueError(f"num_speculative_tokens must be an integer >= 0, 'auto' or 'heuristic', got {k!r}")
        if k != 0 and self.proposer is None:
            raise ValueError("num_speculative_tokens > 0 needs a draft model (or another proposer)")
        if self.max_context is not None and prompt_len + max_new_tokens > self.max_context:
            raise ValueError(
                f"the prompt ({prompt_len} tokens) plus max_new_tokens ({max_new_tokens}) exceeds "
                f"the context length of {self.max_context} tokens"
            )

    def _policy(self, k: NumSpeculativeTokens, prompt_ids: list[int]) -> KPolicy:
        if k == "heuristic":
            return HeuristicK()
        if k != "auto":
            return FixedK(k)
        if self._auto is not None:
            return self._auto
        width = getattr(self.proposer, "width", 1)  # guesses per depth: a tree's width
        k_max = min(AUTO_K_MAX, max(1, AUTO_TREE_NODES_MAX // width))
        sizes = [width * k + 1 for k in range(k_max + 1)]
        if self.proposer.guess_cost() is None or any(self.target.pass_time(n) is None for n in sizes):
            calibrate(self.target, self.proposer, prompt_ids, sizes)  # once per decoder
        self._auto = AutoK(self.target.pass_cost, self.proposer.guess_cost, k_max, width)
        return self._auto

    def _draft_counters(self) -> tuple[float, int]:
        """(seconds in proposer passes, proposer passes) so far."""
        return (self.proposer.forward_s, self.proposer.passes) if self.proposer else (0.0, 0)
