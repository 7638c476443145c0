"""A model's forward pass run from C++ (`csrc/decoder.cpp`), for Llama-family models.

Why: on a CPU a small model spends as long launching PyTorch's small operations as reading its
weights (the 0.5B Qwen2.5 draft with int8 weights: about 23 of 55 ms a token outside the
projections, a millisecond a layer of norms, rotary positions, cache concatenation and dtype
copies). The compiled decoder runs the same layers (RMSNorm, rotary positions, grouped-query
attention, SiLU-gated MLP) in one call, in float32 activations, through the same small-rows
projections and row attention, with its own KV cache.

It rounds differently from the model's own forward pass (float32 activations). For a draft that changes
which guesses are made, never the output. A target run through it (GGUF blocks, quantized targets) is
decoded by it alone, prompt, verify passes and one-token steps alike, and each token's row is computed
the same way whatever else the pass holds (small-rows and block kernels, row attention, per-row norms),
so greedy speculative output equals its target-only output. The rows of a batch, each with its own
decoder and cache, run in one call (`Decoder.forward_batch`, `kv.forward_together`). `CachedModel` runs a
model through it when `attach` has given the model one.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from specdecode.gguf_blocks import BlockEmbedding, BlockLinear
from specdecode.kernels import extension
from specdecode.small_rows import SmallRowsLinear

log = logging.getLogger(__name__)
MODEL_TYPES = ("llama", "qwen2", "mistral")
STATIC_ROPE = ("default", "linear", "llama3")  # rotary types whose frequencies do not change with length
FACTORY = "specdecode_compiled_decoder"  # the model attribute that makes a new decoder (see CachedModel)


def unsupported(model: nn.Module) -> str | None:
    """Why the compiled decoder cannot run `model`, or None if it can."""
    config = model.config
    core = getattr(model, "model", None)
    if config.model_type not in MODEL_TYPES or core is None:
        return f"model type {config.model_type!r} (supported: {', '.join(MODEL_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()) or (
        config.model_type == "mistral" and getattr(config, "sliding_window", None)
    ):
        return "sliding-window attention"
    rotary = getattr(core, "rotary_emb", None)
    if rotary is None or getattr(rotary, "rope_type", "default") not in STATIC_ROPE:
        return f"rotary type {getattr(rotary, 'rope_type', None)!r}"
    linears = [model.lm_head] + [
        getattr(module, name)
        for layer in core.layers
        for module, names in (
            (layer.self_attn, "q_proj k_proj v_proj o_proj"),
            (layer.mlp, "gate_proj up_proj down_proj"),
        )
        for name in names.split()
    ]
    if not all(isinstance(linear, (SmallRowsLinear, BlockLinear)) for linear in linears):
        return "projections not on the small-rows or block kernels"
    return None


def build(model: nn.Module):
    """A new compiled decoder (empty KV cache) sharing `model`'s weights."""
    config, core = model.config, model.model
    attention = core.layers[0].self_attn
    embed = core.embed_tokens
    decoder = extension().Decoder(
        embed.weight.detach() if isinstance(embed, nn.Embedding) else torch.empty(0),
        core.norm.weight.detach(),
        core.rotary_emb.inv_freq,
        float(core.rotary_emb.attention_scaling),
        config.num_attention_heads,
        config.num_key_value_heads,
        attention.head_dim,
        float(attention.scaling),
        float(core.norm.variance_epsilon),
    )
    if isinstance(embed, BlockEmbedding):
        decoder.set_block_embedding(embed.blocks)

    def add(linear: nn.Module) -> None:
        if isinstance(linear, BlockLinear):
            decoder.add_block_projection(linear.blocks, linear.bias)
        else:
            decoder.add_projection(linear.weight, linear.bias, linear.scale, linear.out_features)

    for layer in core.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            add(linear)
        decoder.add_layer(layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach())
    add(model.lm_head)
    return decoder


def attach(model: nn.Module) -> bool:
    """Give `model` (on the small-rows or block kernels) the compiled decoder if it can run it; whether it did."""
    reason = unsupported(model)
    if reason is not None:
        log.info("model runs through PyTorch modules: the compiled decoder does not support %s", reason)
        return False
    setattr(model, FACTORY, lambda: build(model))
    return True
