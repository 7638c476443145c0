"""GGUF weights kept in their quantized blocks (specdecode/gguf_blocks.py, csrc/block_linear.cpp).

- Every block type: the parts represent gguf-py's dequantized weights exactly (float32 rounding of gguf-py's
  own arithmetic only), the kernel's product matches a float64 reference from those parts (relative 1e-5,
  inputs already bfloat16), and each row's result has the same bits whatever the number of rows.
- A tiny Llama GGUF file with all of those types: loaded in blocks it gives the logits of transformers'
  own (dequantizing) GGUF loader (to float rounding with float32 rows; 2% of the largest logit with bfloat16
  rows, 5% with int8 rows), and greedy speculative decoding through the compiled target is token-identical
  to its target-only decoding.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
from tiny_models import make_tokenizer

from specdecode import SpeculativeDecoder, compiled_decoder
from specdecode.gguf_blocks import BLOCK_TYPES, BlockLinear, has_blocks, load_gguf, pack, split, to_4_bits
from specdecode.kernels import extension

pytestmark = pytest.mark.skipif(extension() is None, reason="the compiled kernels do not build here")


def random_blocks(qtype, out: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of `qtype` for an [out, size] matrix: random codes, scales chosen so that every weight
    has mean zero (minimums equal to the middle code) and magnitudes stay near 0.1, as in trained models."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = out * (size // block_size)
    raw = rng.integers(0, 256, size=(blocks, type_size), dtype=np.uint8)

    def f16(values) -> np.ndarray:
        return np.asarray(values, dtype=np.float16).reshape(blocks, 1).view(np.uint8)

    d = rng.uniform(0.2, 1.0, size=blocks)
    if qtype == T.Q8_0:
        raw[:, 0:2] = f16(d * 1e-3)
    elif qtype in (T.Q4_0, T.Q5_0):
        raw[:, 0:2] = f16(d * (2e-2 if qtype == T.Q4_0 else 1e-2))
    elif qtype in (T.Q4_1, T.Q5_1):
        middle = 7.5 if qtype == T.Q4_1 else 15.5
        step = d * (2e-2 if qtype == T.Q4_1 else 1e-2)
        raw[:, 0:2], raw[:, 2:4] = f16(step), f16(-middle * step)
    elif qtype in (T.Q4_K, T.Q5_K):  # every sub-block's scale and minimum equal: W = d * sc * (q - middle)
        middle = 7.5 if qtype == T.Q4_K else 15.5
        step = d * (5e-4 if qtype == T.Q4_K else 2.5e-4)
        raw[:, 0:2], raw[:, 2:4] = f16(step), f16(middle * step)
        v = rng.integers(1, 64, size=(blocks, 8), dtype=np.uint8)
        low = v[:, :4] | (v[:, 4:] >> 4) << 6
        raw[:, 4:8], raw[:, 8:12], raw[:, 12:16] = low, low, (v[:, 4:] & 0x0F) * np.uint8(0x11)
    elif qtype == T.Q6_K:
        raw[:, 192:208] = rng.integers(-63, 64, size=(blocks, 16)).astype(np.int8).view(np.uint8)
        raw[:, 208:210] = f16(d * 1e-4)
    return raw.reshape(out, -1)


def rows_as_multiplied(x: torch.Tensor) -> np.ndarray:
    """The rows the kernel multiplies, float64: with int8 rows, each 32 inputs quantized to int8 with scale
    max|x| / 127 as the kernel does (float32 arithmetic, nearest even), else x itself."""
    rows = x.float().numpy()
    if extension().block_rows() != "int8":
        return rows.astype(np.float64)
    blocks = rows.reshape(rows.shape[0], -1, 32)
    amax = np.abs(blocks).max(axis=2, keepdims=True)
    inverse = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(blocks * inverse)
    return (q.astype(np.float64) * (amax / np.float32(127)).astype(np.float64)).reshape(rows.shape)


@pytest.mark.parametrize("name", BLOCK_TYPES)
@pytest.mark.parametrize("out,size", [(40, 512), (16, 256), (33, 768)])
def test_block_kernel_matches_float64_and_rows_are_bit_identical(name, out, size):
    qtype = getattr(T, name)
    rng = np.random.default_rng(out * 1000 + size)
    raw = random_blocks(qtype, out, size, rng)
    parts = split(raw, qtype, out, size)
    dense = parts.dense()
    reference = dequantize(raw, qtype).astype(np.float64)  # gguf-py, float32 arithmetic
    assert np.abs(dense - reference).max() <= 1e-6 * np.abs(reference).max()
    weights = pack(parts)
    np.testing.assert_array_equal(weights.rows(torch.arange(out)).double().numpy(), dense.astype(np.float32))
    x = torch.randn(12, size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    y = extension().block_linear(x, weights, None, True)
    expected = rows_as_multiplied(x) @ dense.T
    assert np.abs(y.double().numpy() - expected).max() <= 1e-5 * np.abs(expected).max()
    exact_rows = x.double().numpy() @ dense.T  # int8 rows: within their quantization of the float rows
    assert np.abs(y.double().numpy() - exact_rows).max() <= 2e-2 * np.abs(exact_rows).max()
    for n in (1, 3, 8, 9):  # the same bits whatever the number of rows
        assert torch.equal(extension().block_linear(x[:n], weights, None, True), y[:n])


@pytest.mark.parametrize("name", ["Q5_0", "Q6_K", "Q8_0"])
def test_drafts_re_quantized_to_4_bits_stay_close(name):
    qtype = getattr(T, name)
    parts = split(random_blocks(qtype, 24, 512, np.random.default_rng(2)), qtype, 24, 512)
    four = to_4_bits(parts)
    assert four.bits == 4 and to_4_bits(four) is four
    exact, approx = parts.dense(), four.dense()
    spread = np.ptp(exact.reshape(24, -1, 32), axis=2).repeat(32, axis=1)  # each block's range
    assert np.all(np.abs(approx - exact) <= spread / 15 / 2 * 1.01 + 1e-4 * np.abs(exact).max())


def test_block_kernel_bias_and_bfloat16_result():
    rng = np.random.default_rng(1)
    raw = random_blocks(T.Q4_K, 24, 256, rng)
    weights = pack(split(raw, T.Q4_K, 24, 256))
    x = torch.randn(3, 256).to(torch.bfloat16)
    bias = torch.randn(24)
    y = extension().block_linear(x, weights, bias)
    assert y.dtype == torch.bfloat16
    full = extension().block_linear(x, weights, bias, True)
    assert torch.equal(y, full.to(torch.bfloat16))


HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 256, 512, 4, 2, 2
TYPES = {  # one tensor of each kind per layer, covering every block type
    "attn_q": T.Q4_K,
    "attn_k": T.Q5_K,
    "attn_v": T.Q6_K,
    "attn_output": T.Q8_0,
    "ffn_gate": T.Q4_0,
    "ffn_up": T.Q5_1,
    "ffn_down": T.Q5_0,
}


def write_tiny_gguf(path, seed: int, vocab: int) -> None:
    """A 2-layer Llama .gguf of random blocks (a tied Q4_1 embedding and output)."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>" for i in range(vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([1] * vocab)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    shapes = {
        "attn_q": (HIDDEN, HIDDEN),
        "attn_k": (HIDDEN // 2, HIDDEN),
        "attn_v": (HIDDEN // 2, HIDDEN),
        "attn_output": (HIDDEN, HIDDEN),
        "ffn_gate": (FFN, HIDDEN),
        "ffn_up": (FFN, HIDDEN),
        "ffn_down": (HIDDEN, FFN),
    }

    def add(name: str, qtype, out: int, size: int) -> None:
        writer.add_tensor(name, random_blocks(qtype, out, size, rng), raw_dtype=qtype)

    add("token_embd.weight", T.Q4_1, vocab, HIDDEN)
    writer.add_tensor("output_norm.weight", rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
    for layer in range(LAYERS):
        for kind, qtype in TYPES.items():
            add(f"blk.{layer}.{kind}.weight", qtype, *shapes[kind])
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{layer}.{norm}.weight", rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    vocab = len(make_tokenizer())
    for name, seed in (("target.gguf", 0), ("draft.gguf", 1)):
        write_tiny_gguf(folder / name, seed, vocab)
    return folder


def test_blocks_model_matches_transformers_dequantized(tiny_files):
    from transformers import AutoModelForCausalLM

    model = load_gguf(tiny_files / "target.gguf", torch.float32)
    assert has_blocks(model) and compiled_decoder.unsupported(model) is None
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_files), gguf_file="target.gguf", dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 17, 33, 4, 8, 21, 40, 3]])
    with torch.no_grad():
        expected = reference(ids).logits[0].double()
        modules = model(ids).logits[0].double()
    decoder = compiled_decoder.build(model)
    compiled = decoder.forward(ids[0], torch.arange(ids.shape[1]), None, ids.shape[1]).double()
    scale = expected.abs().max()
    # float32 rows: the weights are the same, only float rounding differs; bfloat16 rows round each
    # projection's input; int8 rows quantize it every 32 inputs (as llama.cpp does for these formats)
    tolerance = {"float32": 1e-5, "bfloat16": 2e-2, "int8": 5e-2}[extension().block_rows()]
    assert (modules - expected).abs().max() <= tolerance * scale
    assert (compiled - expected).abs().max() <= max(tolerance, 2e-2) * scale  # float32 activations, bfloat16 rows
    assert (compiled.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.8


@pytest.mark.parametrize(
    "proposer,k,draft_file",
    [("draft", 3, "target.gguf"), ("draft", "auto", "draft.gguf"), ("ngram", 4, None), ("tree", 2, "target.gguf")],
)
def test_gguf_target_greedy_is_identical_to_target_only(tiny_files, proposer, k, draft_file):
    """Drafts: the target's own file (guesses accepted) and an unrelated one (guesses rejected)."""
    tokenizer = make_tokenizer()
    target = load_gguf(tiny_files / "target.gguf")
    draft = None if draft_file is None else load_gguf(tiny_files / draft_file)
    for model in (target, draft):
        if model is not None:
            assert compiled_decoder.attach(model)
    dec = SpeculativeDecoder(target, draft, tokenizer, proposer=proposer)
    assert dec.target.decoder is not None
    accepted = 0
    for prompt in ("def f(x):", "abc abc abc ab", "the cat sat on the"):
        plain = dec.generate(prompt, 40, num_speculative_tokens=0, ignore_eos=True)
        fast = dec.generate(prompt, 40, num_speculative_tokens=k, ignore_eos=True)
        assert fast.token_ids == plain.token_ids
        accepted += fast.stats.accepted
    assert (accepted > 0) == (draft_file != "draft.gguf")
    batch = dec.generate(["def f(x):", "the cat"], 12, num_speculative_tokens=2, ignore_eos=True)
    assert batch[0].token_ids == dec.generate("def f(x):", 12, num_speculative_tokens=0, ignore_eos=True).token_ids


def test_from_pretrained_loads_gguf_blocks_and_dequantized(tiny_files, monkeypatch):
    monkeypatch.setattr("specdecode.engine.load_tokenizer", lambda source: make_tokenizer())
    blocks = SpeculativeDecoder.from_pretrained(str(tiny_files / "target.gguf"), proposer="ngram")
    assert has_blocks(blocks.target.model) and blocks.target.decoder is not None
    file = str(tiny_files / "target.gguf")
    dec = SpeculativeDecoder.from_pretrained(file, file)  # the draft's blocks re-quantized to 4 bits
    draft = dec.proposer.draft.model
    assert all(m.blocks.bits == 4 for m in draft.modules() if isinstance(m, BlockLinear))
    plain = dec.generate("def f(x):", 30, num_speculative_tokens=0, ignore_eos=True)
    fast = dec.generate("def f(x):", 30, num_speculative_tokens=3, ignore_eos=True)
    assert fast.token_ids == plain.token_ids and fast.stats.accepted > 0
    plain = SpeculativeDecoder.from_pretrained(str(tiny_files / "target.gguf"), gguf="dequantize", proposer="ngram")
    assert not has_blocks(plain.target.model) and plain.target.decoder is None
    with pytest.raises(ValueError, match="a GGUF file keeps its own blocks"):
        SpeculativeDecoder.from_pretrained(file, proposer="ngram", quantization="int8")
    with pytest.raises(ValueError, match="gguf must be one of"):
        SpeculativeDecoder.from_pretrained(str(tiny_files / "target.gguf"), gguf="fast")
