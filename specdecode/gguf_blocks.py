"""GGUF weights kept in their quantized blocks: every weight of the file, none re-quantized.

llama.cpp's block formats all write a weight as an integer code times a scale plus an offset:

    W[o, i] = d[o, i // SB] * scale[o, i // G] * code[o, i] + dmin[o, i // SB] * min[o, i // G]

with float16 `d`, `dmin` per superblock of SB inputs, small integer `scale`, `min` per group of G inputs
and 4- to 8-bit codes (Q4_K: SB 256, G 32, 4-bit codes, 6-bit scales and minimums; Q6_K: G 16, 6-bit codes
stored as 0..63 with min = scale and dmin = -32 d; Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: SB = G = 32, scale 1).
`split` reads a tensor's blocks into those parts (bit layouts as in gguf-py's dequantizers, which the
tests compare with), `pack` lays them out for the block kernel
(csrc/block_linear.cpp), which multiplies the codes by the inputs and brings each group's factors in once.
The model computed is the file's model: `Parts.dense` is the float64 matrix the kernel multiplies by, and
it equals gguf-py's dequantization (tests/test_gguf_blocks.py).

`load_gguf` builds a Llama-family model (Llama, Qwen2, Mistral) from a .gguf file with its projections and
token embedding in blocks (BlockLinear, BlockEmbedding) and the rest (norms, biases) dequantized.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from specdecode.kernels import extension
from specdecode.small_rows import to_panels

log = logging.getLogger(__name__)
PANEL = 16  # outputs a panel (BLOCK_PANEL in csrc/kernels.h)


@dataclass
class Parts:
    """A [out, in] matrix as block parts (module docstring): codes [out, in] uint8 of `bits` bits (4 to 6), or
    int8 when `bits` is 8; scales and mins [out, in / group] int8 (all 1 when superblock == group); d and
    dmin [out, in / superblock] float32 holding float16 values."""

    codes: np.ndarray
    scales: np.ndarray
    mins: np.ndarray
    d: np.ndarray
    dmin: np.ndarray
    bits: int
    group: int
    superblock: int

    def dense(self) -> np.ndarray:
        """The matrix, float64 [out, in] (exact: every part is exact in float64)."""
        per_group = lambda a: np.repeat(a.astype(np.float64), self.group, axis=1)  # noqa: E731
        per_block = lambda a: np.repeat(a.astype(np.float64), self.superblock, axis=1)  # noqa: E731
        return per_block(self.d) * per_group(self.scales) * self.codes.astype(np.float64) + per_block(
            self.dmin
        ) * per_group(self.mins)

    def take_rows(self, index: np.ndarray) -> Parts:
        """The matrix with its rows reordered: row r of the result is row index[r]."""
        take = lambda a: np.ascontiguousarray(a[index])  # noqa: E731
        return Parts(
            take(self.codes),
            take(self.scales),
            take(self.mins),
            take(self.d),
            take(self.dmin),
            self.bits,
            self.group,
            self.superblock,
        )


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    return blocks[:, at : at + 2].copy().view(np.float16).astype(np.float32)[:, 0]


def _nibbles(qs: np.ndarray, run: int) -> np.ndarray:
    """qs [n, bytes] -> 4-bit values [n, 2 * bytes]: each run of `run` bytes gives its low nibbles, then its high."""
    q = qs.reshape(qs.shape[0], -1, 1, run)
    return np.concatenate([q & 0x0F, q >> 4], axis=2).reshape(qs.shape[0], -1)


def _bits(qh: np.ndarray, shifts: np.ndarray, width: int, mask: int) -> np.ndarray:
    """qh [n, bytes] -> [n, len(shifts) * bytes]: (qh >> shift) & mask, shift by shift, in runs of `width` bytes."""
    q = qh.reshape(qh.shape[0], -1, 1, width) >> shifts.reshape(1, 1, -1, 1).astype(qh.dtype)
    return (q & mask).astype(np.uint8).reshape(qh.shape[0], -1)


def split(raw: np.ndarray, qtype, out: int, size: int) -> Parts:
    """The block parts of a GGUF tensor's data: raw [out, bytes per row] uint8 of type `qtype`."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as T
    from gguf.quants import Q4_K

    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = np.ascontiguousarray(raw).reshape(-1, type_size)
    per_row = size // block_size
    shaped = lambda a: np.ascontiguousarray(a).reshape(out, -1)  # noqa: E731
    ones = lambda: np.ones((out, per_row), dtype=np.int8)  # noqa: E731
    zeros_f = lambda: np.zeros((out, per_row), dtype=np.float32)  # noqa: E731
    if qtype == T.Q8_0:  # W = d * q, q int8
        codes = blocks[:, 2:].copy().view(np.int8)
        return Parts(shaped(codes), ones(), ones(), shaped(_f16(blocks, 0)), zeros_f(), 8, 32, 32)
    legacy_high = lambda at: _bits(blocks[:, at : at + 4].copy().view(np.uint32), np.arange(32), 1, 1) << 4  # noqa: E731
    if qtype in (T.Q4_0, T.Q5_0):  # W = d * (q - 8 or 16)
        shift = 8 if qtype == T.Q4_0 else 16
        codes = _nibbles(blocks[:, -16:], 16) | (legacy_high(2) if qtype == T.Q5_0 else 0)
        d = shaped(_f16(blocks, 0))
        return Parts(shaped(codes), ones(), ones(), d, -shift * d, 4 if qtype == T.Q4_0 else 5, 32, 32)
    if qtype in (T.Q4_1, T.Q5_1):  # W = d * q + m
        codes = _nibbles(blocks[:, -16:], 16) | (legacy_high(4) if qtype == T.Q5_1 else 0)
        d, m = shaped(_f16(blocks, 0)), shaped(_f16(blocks, 2))
        return Parts(shaped(codes), ones(), ones(), d, m, 4 if qtype == T.Q4_1 else 5, 32, 32)
    if qtype in (T.Q4_K, T.Q5_K):  # W = d * sc * q - dmin * m, sc and m 6-bit per 32
        codes = _nibbles(blocks[:, -128:], 32)
        if qtype == T.Q5_K:
            codes |= _bits(blocks[:, 16:48], np.arange(8), 32, 1) << 4
        sc, m = Q4_K.get_scale_min(blocks[:, 4:16].copy())
        return Parts(
            shaped(codes),
            shaped(sc.astype(np.int8)),
            shaped(m.astype(np.int8)),
            shaped(_f16(blocks, 0)),
            -shaped(_f16(blocks, 2)),
            4 if qtype == T.Q4_K else 5,
            32,
            256,
        )
    if qtype == T.Q6_K:  # W = d * sc * (q - 32), sc int8 per 16
        low = _bits(blocks[:, :128], np.array([0, 4]), 64, 0x0F)
        codes = low | _bits(blocks[:, 128:192], np.array([0, 2, 4, 6]), 32, 0x03) << 4
        sc = shaped(blocks[:, 192:208].copy().view(np.int8))
        d = shaped(_f16(blocks, 208))
        return Parts(shaped(codes), sc, sc.copy(), d, -32 * d, 6, 16, 256)
    raise NotImplementedError(f"no block layout for {T(qtype).name}")


BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


def _panels(a: np.ndarray) -> torch.Tensor:
    """[out, k] numpy -> [panels, k, PANEL] (`small_rows.to_panels`: zero rows past `out`)."""
    return to_panels(torch.from_numpy(np.ascontiguousarray(a)))


def _half(a: np.ndarray) -> torch.Tensor:
    """float32 values that are float16 values, as float16 panels (refused if any is not: it would change a weight)."""
    half = a.astype(np.float16)
    if not np.array_equal(half.astype(np.float32), a, equal_nan=True):
        raise ValueError("a block factor is not a float16 value")
    return _panels(half)


def pack(parts: Parts):
    """The kernel's BlockWeights for `parts` (layout in csrc/kernels.h)."""
    out, size = parts.codes.shape
    values = _panels(parts.codes.view(np.uint8))  # [panels, in, 16]
    panels = values.shape[0]
    if parts.bits == 8:  # a step: 2 inputs x 16 outputs; byte 2k + t = input t, output k
        steps = values.reshape(panels, size // 2, 2, PANEL).transpose(2, 3).reshape(panels, size // 2, 32)
    else:  # a step: 4 inputs; byte 2k + t = input t | input t + 2 << 4, then bit planes of the rest
        quad = values.reshape(panels, size // 4, 4, PANEL).transpose(2, 3)  # [.., k, input]
        pieces = [((quad[..., 0:2] & 0x0F) | (quad[..., 2:4] & 0x0F) << 4).reshape(panels, size // 4, 32)]
        for bit in range(4, parts.bits):
            lanes = ((quad >> bit) & 1).numpy()  # [.., k, input]
            for half in (lanes[..., 0:2], lanes[..., 2:4]):  # lane j = 2k + t
                bits = half.reshape(panels, size // 4, 32)
                pieces.append(torch.from_numpy(np.packbits(bits, axis=-1, bitorder="little")))
        steps = torch.cat(pieces, dim=-1)
    grouped = parts.superblock > parts.group
    if not grouped and not (np.all(parts.scales == 1) and np.all(parts.mins == 1)):
        raise ValueError("blocks without groups must have unit scales and minimums")
    empty = torch.empty(0, dtype=torch.int8)
    return extension().BlockWeights(
        steps.contiguous().reshape(panels, -1),
        _panels(parts.scales) if grouped else empty,
        _panels(parts.mins) if grouped else empty,
        _half(parts.d),
        _half(parts.dmin),
        out,
        size,
        parts.bits,
        parts.group,
        parts.superblock,
    )


class BlockLinear(nn.Module):
    """nn.Linear at inference through the block kernel: y = x @ W^T + b, W kept as quantized blocks.
    Each row's result has the same bits whatever the rows around it. CPU only."""

    def __init__(self, blocks, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.blocks = blocks
        self.in_features, self.out_features = blocks.in_features, blocks.out_features
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = extension().block_linear(flat, self.blocks, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        b = self.blocks
        return f"in={self.in_features}, out={self.out_features}, {b.bits}-bit codes, groups of {b.group}"


class BlockEmbedding(nn.Module):
    """nn.Embedding whose rows are read from quantized blocks (shared with a tied output projection)."""

    def __init__(self, blocks, dtype: torch.dtype) -> None:
        super().__init__()
        self.blocks, self.dtype = blocks, dtype
        self.num_embeddings, self.embedding_dim = blocks.out_features, blocks.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.blocks.rows(ids.reshape(-1).cpu())
        return rows.to(self.dtype).reshape(*ids.shape, self.embedding_dim)


def has_blocks(model: nn.Module | None) -> bool:
    """Whether `model` computes any projection from GGUF blocks."""
    return model is not None and any(isinstance(m, BlockLinear) for m in model.modules())


def to_4_bits(parts: Parts, chunk_rows: int = 8192) -> Parts:
    """`parts` re-quantized to Q4_1 blocks (4-bit codes, a scale and a minimum per 32 inputs) from their exact
    values, unless already 4-bit: for a draft, whose weights change its guesses, never the output."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    if parts.bits == 4:
        return parts
    out, size = parts.codes.shape
    raw = np.concatenate(
        [
            quantize(parts.take_rows(np.arange(r, min(out, r + chunk_rows))).dense().astype(np.float32), T.Q4_1)
            for r in range(0, out, chunk_rows)
        ]
    )
    return split(raw, T.Q4_1, out, size)


SUPPORTED_ARCHS = ("llama", "qwen2")  # GGUF architectures whose tensors load into blocks here


def load_gguf(path: str | Path, dtype: torch.dtype = torch.bfloat16, draft_4_bits: bool = False) -> nn.Module:
    """A causal LM from a .gguf file with its quantized projections and embedding kept in blocks.

    `draft_4_bits`: blocks with more than 4-bit codes are re-quantized to 4 bits (`to_4_bits`; for drafts).

    Tensors of other types (float32, float16, unsupported quantizations) are dequantized. Raises
    NotImplementedError for architectures other than SUPPORTED_ARCHS, or where the kernels do not build
    (load those dequantized instead).
    """
    from gguf import GGMLQuantizationType, GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    if extension() is None:
        raise NotImplementedError("GGUF blocks need specdecode's compiled kernels, which cannot be built here")
    path = Path(path)
    reader = _parsed(path, GGUFReader)
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    if arch not in SUPPORTED_ARCHS:
        raise NotImplementedError(f"GGUF architecture {arch!r} (blocks supported for {', '.join(SUPPORTED_ARCHS)})")
    with reusing_parse(path):
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    config_dict = config.to_dict()
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config_dict)
    to_hf = get_gguf_hf_weights_map(model, processor)
    tensors = {t.name: t for t in reader.tensors}
    block_types = {getattr(GGMLQuantizationType, name) for name in BLOCK_TYPES}

    def parts_of(tensor) -> Parts | None:
        if tensor.tensor_type not in block_types:
            return None
        out, size = int(tensor.shape[1]), int(tensor.shape[0])
        parts = split(np.asarray(tensor.data).reshape(out, -1), tensor.tensor_type, out, size)
        if draft_4_bits:
            parts = to_4_bits(parts)
        if arch == "llama" and (".attn_q." in tensor.name or ".attn_k." in tensor.name):  # llama.cpp's order
            order = processor.process(np.arange(out)[:, None], tensor.name).weights[:, 0]
            parts = parts.take_rows(order)
        return parts

    def dense(tensor) -> torch.Tensor:
        from gguf.quants import dequantize

        values = dequantize(np.asarray(tensor.data), tensor.tensor_type)
        return torch.from_numpy(np.array(processor.process(values, tensor.name).weights))

    state: dict[str, torch.Tensor] = {}
    blocks_of: dict[str, object] = {}  # gguf tensor name -> BlockWeights
    embed_name = next(name for name, hf in to_hf.items() if hf.endswith("embed_tokens.weight"))
    for name, tensor in tensors.items():
        hf = to_hf.get(name)
        if hf is None:
            log.warning("GGUF tensor %s has no place in the model; ignored", name)
            continue
        parts = parts_of(tensor)
        if parts is None:
            state[hf] = dense(tensor).to(dtype)
        else:
            blocks_of[name] = pack(parts)
    for name, blocks in blocks_of.items():
        owner, _, leaf = to_hf[name].removesuffix(".weight").rpartition(".")
        parent = model.get_submodule(owner)
        if name == embed_name:
            setattr(parent, leaf, BlockEmbedding(blocks, dtype))
        else:
            setattr(parent, leaf, BlockLinear(blocks, state.pop(f"{owner}.{leaf}.bias", None)))
    tied = "output.weight" not in tensors  # the output projection is the token embedding
    if tied and embed_name in blocks_of:
        model.lm_head = BlockLinear(blocks_of[embed_name])
    elif tied:
        state["lm_head.weight"] = state[to_hf[embed_name]]
    missing = model.load_state_dict(state, strict=False, assign=True).missing_keys
    for name, module in model.named_modules():  # rotary frequencies are buffers made at init, not weights
        if any(b is not None and b.is_meta for b in module.buffers(recurse=False)):
            owner, _, leaf = name.rpartition(".")
            (model.get_submodule(owner) if owner else model).__setattr__(leaf, type(module)(config=config))
    left = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise ValueError(f"{path.name}: no weights for {', '.join(left[:5])} (missing {missing[:5]})")
    model.config.tie_word_embeddings = tied
    _return_freed_memory()
    model.generation_config = GenerationConfig.from_model_config(model.config)
    log.info("%s: %d tensors kept in blocks, %d dequantized", path.name, len(blocks_of), len(state))
    return model.eval()


_last_parse: dict[Path, object] = {}  # the latest file's parsed GGUFReader (one), until its tokenizer is loaded


def _parsed(path: Path, reader_type):
    """The file's GGUFReader, parsed once for the model, its config and its tokenizer (a 150k-token vocabulary
    takes gguf-py about 14 s to parse)."""
    key = path.resolve()
    if key not in _last_parse:
        _last_parse.clear()
        _last_parse[key] = reader_type(str(path))
    return _last_parse[key]


@contextlib.contextmanager
def reusing_parse(path: str | Path, forget: bool = False):
    """Within it, gguf.GGUFReader(path) (as transformers calls it for configs and tokenizers) returns the parse
    `load_gguf` made of `path`, if any; `forget` drops that parse afterwards."""
    import gguf

    real = gguf.GGUFReader
    key = Path(path).resolve()

    def reader(where, *args, **kwargs):
        if Path(where).resolve() == key and key in _last_parse:
            return _last_parse[key]
        return real(where, *args, **kwargs)

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = real
        if forget:
            _last_parse.pop(key, None)


def _return_freed_memory() -> None:
    """Hand the unpacking's freed heap back to the system (glibc keeps it otherwise: ~0.4 GB for a 1.5B model)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
