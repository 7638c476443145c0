"""Attention that computes each query on its own, against exactly the keys it may see.

Why: greedy speculative output must equal target-only output, and in bfloat16 a one-bit change in
a cached key can flip a near-tie. Eager attention multiplies every query of a pass by all the keys
of the pass, masked ones included (as exact zeros), so a query checked among K+1 others sums over
other lengths, in other blocks, than the same query decoded alone; the rounding differs. Here each
query is one small product against its visible keys only (a slice for a causal prefix, a gather
for tree or ragged masks), so its bits depend on the query, its keys and its values and nothing
else: a prompt pass, a verify pass over K+1 tokens, a tree pass, a batch row between holes and a
one-token step agree, and so does a prompt partly cached by an earlier request.

Registered with transformers as ``"specdecode_rows"`` (attention and 4D float mask), selected by
`small_rows.use_small_rows_path`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from specdecode.kernels import extension

NAME = "specdecode_rows"


def supports(model: nn.Module) -> bool:
    """Whether `row_attention` computes this model's attention: not with soft-capped scores (Gemma 2)
    or attention sinks (gpt-oss), which it does not implement."""
    config = model.config.get_text_config(decoder=True)
    sinks = any(hasattr(module, "sinks") for module in model.modules())
    return getattr(config, "attn_logit_softcapping", None) is None and not sinks


def row_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [B, H, n, d], key/value [B, Hkv, S, d] -> ([B, n, H, d], None), each query on its own.

    attention_mask: [B, 1, n, S] additive (0 where a query may look, a large negative value elsewhere)
    or None (causal, the n queries being the last n of S positions). The work is done by the compiled
    `row_attention` (specdecode/csrc/row_attention.cpp), in float32: products of bfloat16 numbers are
    exact in it.
    """
    if kwargs.get("s_aux") is not None or kwargs.get("softcap") is not None or dropout and module.training:
        raise NotImplementedError(
            f"{type(module).__name__} uses attention sinks, soft-capping or dropout, which the row-exact "
            "attention does not implement; load the model with kernels='stock'"
        )
    see = None if attention_mask is None else attention_mask[:, 0] > torch.finfo(attention_mask.dtype).min / 2
    out = extension().row_attention(
        query.transpose(1, 2).float().contiguous(), key.float().contiguous(), value.float().contiguous(), see, scaling
    )
    return out.to(query.dtype), None


AttentionInterface.register(NAME, row_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
