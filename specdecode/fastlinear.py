"""A verification path whose cost for 2..16 tokens is close to the one-token cost, on a CPU.

Stock `F.linear` over a few rows costs 2-3x one row on this kind of CPU (the matrix code, not the
memory, sets the cost; see docs/benchmarks.md). `small_rows_linear` (csrc/small_rows_linear.cpp,
built on first use with the machine's compiler, AVX-512 or AVX2) reads each weight row once for
all rows, widening bfloat16 weights to float32 in registers. `use_fast_linear(model)` routes
projections through it, 16 rows a call: bfloat16, int8 and int4 weights for any number of rows (a
batch's verification, a prefill), float32 weights up to 16 rows. The split comes from one
hand-run, one-thread timing of an 8960x1536 projection (bfloat16, 64 rows: 53 ms in blocks
against 73 ms for PyTorch; float32: PyTorch 3x faster), not yet from `benchmarks/linear_kernels.py`
at the machine's thread count. The weights are the model's own tensors: no copy, no extra memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from specdecode import row_attention

log = logging.getLogger(__name__)
MAX_ROWS = 16  # rows per kernel call
INT4_GROUP = 32  # int4 weights: one scale per this many inputs (as in csrc)
QUANTIZATIONS = ("none", "int8", "int4")
_enabled = True
SOURCE = Path(__file__).parent / "csrc" / "small_rows_linear.cpp"


@cache
def extension():
    """The compiled kernel module (built once per machine, cached by torch), or None if it cannot be built."""
    from torch.utils.cpp_extension import load

    try:
        return load(
            name="specdecode_small_rows_linear",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as err:  # no compiler, no AVX2: stock kernels still give exact results
        log.warning("fast verification kernel unavailable (%s); using stock PyTorch kernels", err)
        return None


def small_rows_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """[n, in] @ [out, in]^T (* scale per output) (+ bias) for n <= 16 rows -> [n, out], in x's dtype.

    weight: float32, bfloat16, int8 with a float32 `scale` [out], or int4 as `quantize_int4` packs it
    (uint8 [out, in / 2] with `scale` [out, in / 32]).
    """
    return extension().small_rows_linear(x, weight, bias, scale)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: (q [out, in] int8, scale [out] float32), weight ~ q * scale."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per group of 32 inputs: (packed uint8 [out, in / 2], scale [out, in / 32] float32).

    Value i of a row is q[i] * scale[i // 32], q in [-7, 7], stored as q + 8 in a nibble: each 16 values
    take 8 bytes, byte k holding value k (low nibble) and value k + 8 (high nibble). in % 32 == 0.
    """
    out, size = weight.shape
    if size % INT4_GROUP:
        raise ValueError(f"int4 needs in_features divisible by {INT4_GROUP}, got {size}")
    groups = weight.detach().float().reshape(out, size // INT4_GROUP, INT4_GROUP)
    scale = (groups.abs().amax(dim=2) / 7.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = (torch.round(groups / scale[..., None]).clamp(-7, 7) + 8).to(torch.uint8).reshape(out, size // 16, 2, 8)
    return (q[:, :, 0] | q[:, :, 1] << 4).reshape(out, size // 2), scale


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 matrix [out, in] that `quantize_int4`'s (packed, scale) stand for."""
    out = packed.shape[0]
    blocks = packed.reshape(out, -1, 1, 8)
    q = torch.cat([blocks & 0x0F, blocks >> 4], dim=2).reshape(out, -1, INT4_GROUP).float() - 8.0
    return (q * scale[..., None]).reshape(out, -1)


@contextmanager
def stock_kernels() -> Iterator[None]:
    """Inside this block FastLinear runs PyTorch's own `F.linear` (to compare both on one model)."""
    global _enabled
    saved, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = saved


class FastLinear(nn.Module):
    """Drop-in for nn.Linear: bfloat16 and quantized weights go through `small_rows_linear` for any
    number of rows, 16 rows a call (each row's result the same bits whatever the rows around it);
    float32 weights for at most 16 rows, where PyTorch's GEMM is faster beyond.

    `quantization` "int8" stores the weight as per-row int8, "int4" as int4 in groups of 32 (int8
    where in_features is not a multiple of 32): for a draft only, where it changes speed, not output.
    """

    def __init__(self, linear: nn.Linear, quantization: str = "none") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        if quantization == "int4" and self.in_features % INT4_GROUP:
            quantization = "int8"
        if quantization == "none":
            self.weight, self.scale = linear.weight, None  # the same Parameter: shared, not copied
            return
        q, scale = (quantize_int4 if quantization == "int4" else quantize_int8)(linear.weight)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight as a [out, in] matrix of `dtype` (dequantized if stored quantized)."""
        if self.weight.dtype == torch.uint8:
            return dequantize_int4(self.weight, self.scale).to(dtype)
        if self.scale is not None:
            return (self.weight.float() * self.scale[:, None]).to(dtype)
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        stock_wins = rows > MAX_ROWS and self.weight.dtype == torch.float32  # PyTorch's float32 GEMM (measured)
        if not _enabled or stock_wins or torch.is_grad_enabled() and self.weight.requires_grad:
            return F.linear(x, self.dense_weight(x.dtype), self.bias)
        flat = x.reshape(rows, self.in_features)
        chunks = [small_rows_linear(chunk, self.weight, self.bias, self.scale) for chunk in flat.split(MAX_ROWS)]
        y = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return y.reshape(*x.shape[:-1], self.out_features)


def use_fast_linear(model: nn.Module, quantization: str = "none") -> int:
    """Replace every float32/bfloat16 nn.Linear on the CPU in `model` by FastLinear; returns how many.

    `quantization` "int8" or "int4" also quantizes their weights (for a draft model; see FastLinear).
    Returns 0 (and changes nothing) when the kernel cannot be built on this machine.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if extension() is None:
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) in (nn.Linear, FastLinear)
        and child.weight.device.type == "cpu"
        and child.weight.dtype in (torch.float32, torch.bfloat16)
        and child.weight.is_contiguous()
    ]
    for parent, name, child in targets:
        setattr(parent, name, FastLinear(child, quantization))
    return len(targets)


def use_small_rows_path(model: nn.Module, quantization: str = "none") -> int:
    """The CPU verification path: `use_fast_linear`, and row-exact attention (`row_attention`).

    Both compute each token's row the same way whatever the number of tokens in the pass, so a
    verify pass over K+1 tokens caches the bits that K+1 one-token steps would (tested bit for bit
    in bfloat16, `tests/test_fastlinear.py`): greedy speculative output equals target-only output
    through the same path. Stock attention (SDPA, eager) rounds a query differently among others,
    which in bfloat16 flips near-ties. A model whose attention the row-exact one does not cover
    (soft-capping, sinks) keeps its own, with a warning. Returns the number of projections replaced.
    """
    replaced = use_fast_linear(model, quantization)
    if replaced and hasattr(model, "set_attn_implementation"):
        if row_attention.supports(model):
            model.set_attn_implementation(row_attention.NAME)
        else:
            log.warning(
                "%s: attention with soft-capping or sinks keeps its own implementation; in bfloat16 a "
                "verify pass may round differently from one-token steps (use float32 for exact greedy identity)",
                type(model).__name__,
            )
    return replaced
