"""A verification path whose cost for 2..16 tokens is close to the one-token cost, on a CPU.

Stock `F.linear` over a few rows costs 2-3x one row on a CPU (the matrix code, not the memory, sets
the cost). `small_rows_linear` (csrc/small_rows_linear.cpp,
built on first use with the machine's compiler, AVX-512 or AVX2) reads the weights packed in panels
of PW outputs (`pack`): one contiguous load gives PW outputs' weights for one input, widened to
float32 in registers and multiplied by each row's input, so each weight is read once for all rows
and the inputs stay in L1 (bfloat16 rows against bfloat16 weights, where the CPU has AVX512_BF16:
two inputs a step through its bfloat16 dot product). `use_small_rows_linears(model)` routes every
projection through it, for any number of rows.
The packed weights replace the layer's own (a tied output projection keeps the embedding too); the
parameters left (embeddings, norms) are copied out of the checkpoint's memory map (`_release_checkpoint`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from specdecode import row_attention
from specdecode.kernels import extension

log = logging.getLogger(__name__)
INT4_GROUP = 32  # int4 weights: one scale per this many inputs (as in csrc)
QUANTIZATIONS = ("none", "int8", "int4")


def small_rows_linear(
    x: torch.Tensor, packed: torch.Tensor, out: int, bias: torch.Tensor | None = None, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """x [n, in] @ W^T (* scale per output) (+ bias) -> [n, out], in x's dtype, for (packed, scale) = `pack(W, ...)`."""
    return extension().small_rows_linear(x, packed, out, bias, scale)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: (q [out, in] int8, scale [out] float32), weight ~ q * scale."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per group of 32 inputs: (q [out, in] int8 in [-7, 7], scale [out, in / 32] float32),
    weight[o, i] ~ q[o, i] * scale[o, i // 32]. in % 32 == 0."""
    out, size = weight.shape
    if size % INT4_GROUP:
        raise ValueError(f"int4 needs in_features divisible by {INT4_GROUP}, got {size}")
    groups = weight.detach().float().reshape(out, size // INT4_GROUP, INT4_GROUP)
    scale = (groups.abs().amax(dim=2) / 7.0).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(groups / scale[..., None]).clamp(-7, 7).to(torch.int8).reshape(out, size), scale


def to_panels(matrix: torch.Tensor) -> torch.Tensor:
    """[out, in] -> [panels, in, PW], zero rows past `out`: the kernel reads PW outputs' weights for input i
    in one contiguous load (PW = 16: one 512-bit vector with AVX-512, two 256-bit ones with AVX2)."""
    width = extension().panel_width()
    out, size = matrix.shape
    padded = matrix.new_zeros(-(-out // width) * width, size)
    padded[:out] = matrix
    return padded.reshape(-1, width, size).transpose(1, 2).contiguous()


def from_panels(panels: torch.Tensor, out: int) -> torch.Tensor:
    """`to_panels`' inverse: [panels, in, PW] -> [out, in]."""
    return panels.transpose(1, 2).reshape(-1, panels.shape[1])[:out]


def pack(weight: torch.Tensor, quantization: str = "none") -> tuple[torch.Tensor, torch.Tensor | None]:
    """A [out, in] float weight as the kernel reads it: (panels, scale).

    "none": the weight's own dtype in panels, no scale. "int8": int8 panels, scale [panels * PW].
    "int4": two outputs a byte, each as q + 8 (within each vector of W outputs, byte k holds output k in
    its low nibble and output k + W / 2 in its high one) [panels, in, PW / 2] uint8, scale
    [panels, in / 32, PW].
    """
    if quantization == "none":
        return to_panels(weight.detach()), None
    if quantization == "int8":
        q, scale = quantize_int8(weight)
        return to_panels(q), to_panels(scale[:, None]).flatten()
    q, scale = quantize_int4(weight)
    lanes = extension().vector_width()
    values = (to_panels(q) + 8).to(torch.uint8)
    pairs = values.reshape(*values.shape[:2], -1, 2, lanes // 2)
    return (pairs[..., 0, :] | pairs[..., 1, :] << 4).flatten(2), to_panels(scale)


def unpack(packed: torch.Tensor, scale: torch.Tensor | None, out: int) -> torch.Tensor:
    """The float32 [out, in] matrix that `pack`'s (packed, scale) stand for."""
    if packed.dtype == torch.uint8:
        lanes = extension().vector_width()
        bytes_ = packed.reshape(*packed.shape[:2], -1, 1, lanes // 2)
        q = torch.cat([bytes_ & 0x0F, bytes_ >> 4], dim=3).flatten(2).float() - 8.0
        per_input = scale.repeat_interleave(INT4_GROUP, dim=1)  # [panels, in, PW]
        return from_panels(q * per_input, out)
    matrix = from_panels(packed, out).float()
    return matrix if scale is None else matrix * scale[:out, None]


def describe_kernels(model: nn.Module) -> str:
    """What computes `model`'s projections: GGUF blocks, the small-rows kernels (with their instruction set)
    or PyTorch's."""
    from specdecode.gguf_blocks import has_blocks

    if has_blocks(model):
        rows = extension().block_rows()
        how = "AVX-512 VNNI integer dot products" if rows == "int8" else extension().instruction_set()
        return f"GGUF blocks, {rows} rows ({how})"
    if any(isinstance(m, SmallRowsLinear) for m in model.modules()):
        return f"small-rows ({extension().instruction_set()})"
    return "stock (PyTorch's)"


class SmallRowsLinear(nn.Module):
    """Drop-in for nn.Linear at inference through `small_rows_linear` (no autograd): each row's result
    has the same bits whatever the rows around it.

    The weight is stored packed in panels (`pack`), replacing the nn.Linear's (a tied output projection
    keeps the embedding's matrix besides). `quantization` "int8" stores it as per-row int8, "int4" as
    int4 in groups of 32 (int8 where in_features is not a multiple of 32): for a draft only, where it
    changes speed, not output.
    """

    def __init__(self, linear: nn.Linear, quantization: str = "none") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float()  # float32, as the kernel adds it
        self.register_buffer("bias", bias)
        if quantization == "int4" and self.in_features % INT4_GROUP:
            quantization = "int8"
        packed, scale = pack(linear.weight, quantization)
        self.register_buffer("weight", packed)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = small_rows_linear(flat, self.weight, self.out_features, self.bias, self.scale)
        return y.reshape(*x.shape[:-1], self.out_features)


def use_small_rows_linears(model: nn.Module, quantization: str = "none") -> int:
    """Replace every float32/bfloat16 nn.Linear on the CPU in `model` by SmallRowsLinear; returns how many.

    `quantization` "int8" or "int4" also quantizes their weights (for a draft model; see SmallRowsLinear).
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
        if type(child) is nn.Linear
        and child.weight.device.type == "cpu"
        and child.weight.dtype in (torch.float32, torch.bfloat16)
        and child.weight.is_contiguous()
    ]
    replaced = len(targets)
    while targets:  # popped, so that each original weight is freed once its packed copy replaces it
        parent, name, child = targets.pop()
        setattr(parent, name, SmallRowsLinear(child, quantization))
    if replaced:
        _release_checkpoint(model)
    return replaced


def _release_checkpoint(model: nn.Module) -> None:
    """Copy the parameters that SmallRowsLinear does not hold (embeddings, norms) into ordinary memory.

    A checkpoint loaded from safetensors lives in a memory map of its file; while any parameter points
    into it, the pages of the replaced weights that packing read stay mapped, and the process shows
    about twice the model in resident memory (measured: 6.8 against 4.3 GB for the 1.5B model in
    bfloat16). Parameters that shared memory still share it.
    """
    copies: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, SmallRowsLinear):
            continue
        for param in module.parameters(recurse=False):
            if id(param) in seen or param.device.type != "cpu":
                continue
            seen.add(id(param))
            key = param.data_ptr()
            if key not in copies:
                copies[key] = param.data.clone()
            param.data = copies[key]


def use_small_rows_path(model: nn.Module, quantization: str = "none") -> int:
    """The CPU verification path: `use_small_rows_linears`, and row-exact attention (`row_attention`).

    Both compute each token's row the same way whatever the number of tokens in the pass, so a
    verify pass over K+1 tokens caches the bits that K+1 one-token steps would (tested bit for bit
    in bfloat16, `tests/test_small_rows.py`): greedy speculative output equals target-only output
    through the same path. Stock attention (SDPA, eager) rounds a query differently among others,
    which in bfloat16 flips near-ties. A model whose attention the row-exact one does not cover
    (soft-capping, sinks) keeps its own, with a warning. Returns the number of projections replaced.
    """
    replaced = use_small_rows_linears(model, quantization)
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
