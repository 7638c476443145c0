"""Tiny random models (Llama, GPT-2, Qwen2) and a real character tokenizer, built in code."""

from __future__ import annotations

import string

import numpy as np
import torch
from scipy import stats
from tokenizers import Tokenizer, decoders, models
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SPECIALS = ["<unk>", "<s>", "</s>"]
CHARS = list(string.ascii_lowercase + " .,:()=\n" + string.digits)  # 44 characters
ARCHS = ("llama", "gpt2", "qwen2")


def make_tokenizer(chars: list[str] = CHARS) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: ids 0-2 are <unk> <s> </s>, then one id per character."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def make_model(
    arch: str,
    vocab_size: int,
    seed: int,
    layers: int = 2,
    dtype: torch.dtype | str = torch.float64,
    init_range: float = 0.02,
    context: int = 256,
):
    """A randomly initialised causal LM; larger `init_range` gives peakier distributions."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, initializer_range=init_range)
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=context,
            **common,
        )
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=context, **common)
        model = GPT2LMHeadModel(config)
    elif arch == "qwen2":
        config = Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=context,
            **common,
        )
        model = Qwen2ForCausalLM(config)
    else:
        raise ValueError(arch)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    return model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype).eval()


# like many real templates, this one refuses a system message after the first and roles that do not alternate
STRICT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' and not loop.first %}{{ raise_exception('a system message must come first') }}"
    "{% elif not loop.first and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
    "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
)


def save_model_pair(root, target_layers: int = 3, context: int = 256):
    """A tiny Llama target and 1-layer draft saved as real Hugging Face folders (config, safetensors,
    tokenizer with a chat template) under root/target and root/draft; returns the two paths."""
    tokenizer = make_tokenizer()
    tokenizer.chat_template = STRICT_CHAT_TEMPLATE
    for name, seed, layers in (("target", 0, target_layers), ("draft", 1, 1)):
        model = make_model("llama", len(tokenizer), seed, layers, "float32", init_range=0.3, context=context)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "target", root / "draft"


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of observed `counts` against `probs`.

    Cells with expected count below `min_expected` are pooled into one cell, as the test needs.
    """
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    expected = probs * counts.sum()
    small = expected < min_expected
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    assert keep.sum() >= 2, "a chi-square test needs at least two outcomes of non-zero probability"
    if (obs[~keep] > 0).any():  # an outcome of probability zero happened
        return 0.0
    return float(stats.chisquare(obs[keep], exp[keep]).pvalue)


def perturbed_copy(model, noise: float, seed: int):
    """A draft that mostly agrees with `model`: its weights plus Gaussian noise of scale `noise`."""
    import copy

    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(noise * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return draft
