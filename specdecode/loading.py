"""Models and tokenizers from a hub id, a local folder or a .gguf file; does a pair fit together."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be found or read; the message says what to do."""


class IncompatibleModelsError(ValueError):
    """The draft cannot propose for the target (different tokenizers, devices, ...)."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _source_kwargs(source: str) -> tuple[str, dict]:
    """(folder or hub id, extra from_pretrained kwargs) for a hub id, a folder or a .gguf file."""
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {source}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{source} is not a model folder: it has no config.json")
        return str(path), {}
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelLoadError(f"no such model folder or file: {source}")
    return source, {}


def _load(loader, source: str, what: str, **kwargs):
    where, extra = _source_kwargs(source)
    try:
        return loader.from_pretrained(where, **extra, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load the {what} {source!r}: {err}\n"
            "It is not a local model folder or .gguf file, and the Hugging Face Hub could not "
            "provide it. Without network access pass a local folder (config.json, weights, "
            "tokenizer) or a .gguf file; with HF_HUB_OFFLINE=1 only cached hub models load."
        ) from err


def load_model(
    source: str,
    dtype: str | torch.dtype = "auto",
    device: str = "cpu",
    gguf_blocks: bool = False,
    draft_4_bits: bool = False,
) -> PreTrainedModel:
    """A causal LM in eval mode from a hub id, a local folder or a .gguf file.

    `gguf_blocks`: a .gguf file's quantized weights stay in their blocks (`specdecode.gguf_blocks`, CPU,
    Llama and Qwen2 architectures; others, and machines where the kernels do not build, are dequantized);
    `draft_4_bits`: blocks of more than 4-bit codes re-quantized to 4 bits (a draft's).
    """
    if gguf_blocks and source.endswith(".gguf") and device == "cpu":
        from specdecode import gguf_blocks as blocks

        _source_kwargs(source)  # a missing file says so
        chosen = parse_dtype(dtype)
        try:
            return blocks.load_gguf(source, torch.bfloat16 if chosen == "auto" else chosen, draft_4_bits)
        except NotImplementedError as err:
            log.warning("%s: weights dequantized (%s)", source, err)
    model = _load(AutoModelForCausalLM, source, "model", dtype=parse_dtype(dtype))
    return model.to(device).eval()


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    if source.endswith(".gguf"):
        from specdecode.gguf_blocks import reusing_parse

        with reusing_parse(source, forget=True):  # the parse the model's loading made, if any
            return _load(AutoTokenizer, source, "tokenizer")
    return _load(AutoTokenizer, source, "tokenizer")


def first_layers(model: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """A draft made of the model's first `num_layers` decoder layers, embeddings and head.

    The weights are shared with `model`, not copied: the draft costs no extra memory.
    """
    config = copy.deepcopy(model.config)
    total = config.num_hidden_layers
    if not 0 < num_layers < total:
        raise ValueError(f"num_layers must be between 1 and {total - 1}, got {num_layers}")
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    with torch.device(model.device):
        draft = type(model)(config).to(model.dtype)
    own = draft.state_dict()
    draft.load_state_dict({k: v for k, v in model.state_dict().items() if k in own}, assign=True)
    draft.tie_weights()
    draft.generation_config = copy.deepcopy(model.generation_config)
    return draft.eval()


def check_same_tokenizer(target: PreTrainedTokenizerBase, draft: PreTrainedTokenizerBase) -> None:
    """Raise IncompatibleModelsError naming the first token id the two tokenizers disagree on."""
    target_vocab, draft_vocab = target.get_vocab(), draft.get_vocab()
    if target_vocab != draft_vocab:
        target_by_id = {i: t for t, i in target_vocab.items()}
        draft_by_id = {i: t for t, i in draft_vocab.items()}
        for i in range(max(len(target_by_id), len(draft_by_id))):
            if target_by_id.get(i) != draft_by_id.get(i):
                raise IncompatibleModelsError(
                    f"the draft's tokenizer differs from the target's: token id {i} is "
                    f"{target_by_id.get(i)!r} for the target but {draft_by_id.get(i)!r} for the draft "
                    f"(vocabularies of {len(target_vocab)} and {len(draft_vocab)} tokens)"
                )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if getattr(target, name) != getattr(draft, name):
            raise IncompatibleModelsError(
                f"the tokenizers' special tokens differ: {name} is {getattr(target, name)} for the "
                f"target but {getattr(draft, name)} for the draft"
            )


def logit_width(model: PreTrainedModel) -> int:
    """Number of logits the model produces per position (may exceed the tokenizer's vocabulary)."""
    head = model.get_output_embeddings()
    return getattr(head, "out_features", None) or head.weight.shape[0]


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every id that ends generation: the generation config's (all of them) and the tokenizer's."""
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def context_length(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config(decoder=True)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None
