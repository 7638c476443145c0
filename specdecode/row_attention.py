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
`fastlinear.use_small_rows_path`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

NAME = "specdecode_rows"


def supports(model: nn.Module) -> bool:
    """Whether `row_attention` computes this model's attention: not with soft-capped scores (Gemma 2)
    or attention sinks (gpt-oss), which it does not implement."""
    config = model.config.get_text_config(decoder=True)
    sinks = any(hasattr(module, "sinks") for module in model.modules())
    return getattr(config, "attn_logit_softcapping", None) is None and not sinks


def visible_keys(mask: torch.Tensor | None, batch: int, queries: int, keys: int) -> list[list[slice | torch.Tensor]]:
    """For each row b and query i, the keys it sees: a slice when they are a prefix, else indices.

    mask: [B, 1, n, S] additive (0 where a query may look, a large negative value elsewhere) or
    None (causal, the n queries being the last n of S positions).
    """
    if mask is None:
        return [[slice(0, keys - queries + i + 1) for i in range(queries)] for _ in range(batch)]
    see = mask[:, 0] > torch.finfo(mask.dtype).min / 2  # [B, n, S]
    counts = see.sum(-1).tolist()
    prefix = (see.cumsum(-1) == torch.arange(1, keys + 1, device=see.device)).sum(-1).tolist()
    return [
        [
            slice(0, counts[b][i]) if prefix[b][i] == counts[b][i] else see[b, i].nonzero().squeeze(1)
            for i in range(queries)
        ]
        for b in range(batch)
    ]


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
    """query [B, H, n, d], key/value [B, Hkv, S, d] -> ([B, n, H, d], None), one query at a time."""
    if kwargs.get("s_aux") is not None or kwargs.get("softcap") is not None or dropout and module.training:
        raise NotImplementedError(
            f"{type(module).__name__} uses attention sinks, soft-capping or dropout, which the row-exact "
            "attention does not implement; load the model with kernels='stock'"
        )
    batch, heads, n, dim = query.shape
    kv_heads = key.shape[1]
    # float32 throughout: products of bfloat16 numbers are exact in it, and its matrix code is the fast one here
    queries = query.transpose(1, 2).float().contiguous().view(batch, n, kv_heads, heads // kv_heads, dim)
    keys_t, values = key.float().transpose(2, 3), value.float()  # [B, Hkv, d, S], [B, Hkv, S, d]
    out = torch.empty(batch, n, kv_heads, heads // kv_heads, dim, device=query.device)
    for b, rows in enumerate(visible_keys(attention_mask, batch, n, key.shape[2])):
        for i, seen in enumerate(rows):
            if isinstance(seen, slice):
                k_t, v = keys_t[b, :, :, seen], values[b, :, seen]
            else:
                k_t, v = keys_t[b].index_select(2, seen), values[b].index_select(1, seen)
            weights = torch.softmax(torch.matmul(queries[b, i], k_t).mul_(scaling), dim=-1)  # [Hkv, groups, L]
            torch.matmul(weights, v, out=out[b, i])
    return out.view(batch, n, heads, dim).to(query.dtype), None


AttentionInterface.register(NAME, row_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
