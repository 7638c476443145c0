"""A verification path whose cost for 2..16 tokens is close to the one-token cost, on a CPU.

Stock `F.linear` over a few rows costs 2-3x one row on this kind of CPU (the matrix code, not the
memory, sets the cost; see docs/benchmarks.md). `small_rows_linear` (csrc/small_rows_linear.cpp,
built on first use with the machine's compiler, AVX-512 or AVX2) reads each weight row once for
all rows, widening bfloat16 weights to float32 in registers. `use_fast_linear(model)` routes
projections through it, 16 rows a call: bfloat16 and int8 weights for any number of rows (a
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

    weight: float32, bfloat16, or int8 with a float32 `scale` [out].
    """
    return extension().small_rows_linear(x, weight, bias, scale)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: (q [out, in] int8, scale [out] float32), weight ~ q * scale."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


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
    """Drop-in for nn.Linear: bfloat16 and int8 weights go through `small_rows_linear` for any number
    of rows, 16 rows a call (each row's result the same bits whatever the rows around it); float32
    weights for at most 16 rows, where PyTorch's GEMM is faster beyond.

    With `int8=True` the weight is stored as per-row int8 (a draft only: it changes speed, not output).
    """

    def __init__(self, linear: nn.Linear, int8: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        if int8:
            q, scale = quantize_int8(linear.weight)
            self.register_buffer("weight", q)
            self.register_buffer("scale", scale)
        else:
            self.weight, self.scale = linear.weight, None  # the same Parameter: shared, not copied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        stock_wins = rows > MAX_ROWS and self.weight.dtype == torch.float32  # PyTorch's float32 GEMM (measured)
        if not _enabled or stock_wins or torch.is_grad_enabled() and self.weight.requires_grad:
            weight = self.weight if self.scale is None else (self.weight.float() * self.scale[:, None]).to(x.dtype)
            return F.linear(x, weight, self.bias)
        flat = x.reshape(rows, self.in_features)
        chunks = [small_rows_linear(chunk, self.weight, self.bias, self.scale) for chunk in flat.split(MAX_ROWS)]
        y = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return y.reshape(*x.shape[:-1], self.out_features)


def use_fast_linear(model: nn.Module, int8: bool = False) -> int:
    """Replace every float32/bfloat16 nn.Linear on the CPU in `model` by FastLinear; returns how many.

    `int8=True` also stores their weights as per-row int8 (for a draft model). Returns 0 (and changes
    nothing) when the kernel cannot be built on this machine.
    """
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
        setattr(parent, name, FastLinear(child, int8))
    return len(targets)


def use_small_rows_path(model: nn.Module, int8: bool = False) -> int:
    """The CPU verification path: `use_fast_linear`, and row-exact attention (`row_attention`).

    Both compute each token's row the same way whatever the number of tokens in the pass, so a
    verify pass over K+1 tokens caches the bits that K+1 one-token steps would (tested bit for bit
    in bfloat16, `tests/test_fastlinear.py`): greedy speculative output equals target-only output
    through the same path. Stock attention (SDPA, eager) rounds a query differently among others,
    which in bfloat16 flips near-ties. A model whose attention the row-exact one does not cover
    (soft-capping, sinks) keeps its own, with a warning. Returns the number of projections replaced.
    """
    replaced = use_fast_linear(model, int8)
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
