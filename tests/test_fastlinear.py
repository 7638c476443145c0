"""The small-rows verification kernel: close to F.linear, bit-identical per row whatever the number
of rows (so checking K+1 tokens computes the same projections as decoding them one by one), and
greedy decoding through it stays identical to target-only decoding through it."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import make_model, make_tokenizer, perturbed_copy

from specdecode import SpeculativeDecoder
from specdecode.fastlinear import (
    FastLinear,
    extension,
    small_rows_linear,
    stock_kernels,
    use_fast_linear,
    use_small_rows_path,
)

pytestmark = pytest.mark.skipif(extension() is None, reason="no C++ compiler or AVX2 on this machine")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("in_features", [64, 67])  # a multiple of the vector width, and one with a tail
def test_matches_f_linear(dtype, tol, in_features):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, in_features, generator=g).to(dtype)
    b = torch.randn(96, generator=g).to(dtype)
    for n in range(1, 17):
        x = torch.randn(n, in_features, generator=g).to(dtype)
        ref = F.linear(x.float(), w.float(), b.float())
        got = small_rows_linear(x, w, b)
        assert got.dtype == dtype and got.shape == (n, 96)
        torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol * in_features**0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_row_is_bit_identical_for_any_number_of_rows(dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(200, 131, generator=g).to(dtype)
    x = torch.randn(16, 131, generator=g).to(dtype)
    full = small_rows_linear(x, w)
    for n in range(1, 17):
        assert torch.equal(small_rows_linear(x[:n], w), full[:n])
        assert torch.equal(small_rows_linear(x[n - 1 : n], w)[0], full[n - 1])


def test_module_swap_and_fallbacks():
    tokenizer = make_tokenizer()
    model = make_model("llama", len(tokenizer), 0, dtype=torch.float32)
    replaced = use_fast_linear(model)
    assert replaced == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer; lm_head
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, FastLinear)
    x = torch.randn(1, 20, 32)  # 20 rows: more than the kernel takes, so PyTorch's path
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight))
        small = torch.randn(1, 5, 32)
        fast = layer(small)
        with stock_kernels():
            torch.testing.assert_close(layer(small), fast, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_identical_through_the_kernel(arch, dtype):
    tokenizer = make_tokenizer()
    target = make_model(arch, len(tokenizer), 0, layers=3, dtype=dtype, init_range=0.3)
    draft = perturbed_copy(target, 0.05, 1)
    use_small_rows_path(target)
    use_small_rows_path(draft)
    dec = SpeculativeDecoder(target, draft, tokenizer)
    plain = dec.generate("def f(x):", 40, num_speculative_tokens=0, ignore_eos=True)
    for k in (1, 3, 8):
        out = dec.generate("def f(x):", 40, num_speculative_tokens=k, ignore_eos=True)
        assert out.token_ids == plain.token_ids, f"K={k}"
        assert out.stats.accepted > 0


def test_int8_weights_match_their_dequantised_matrix():
    from specdecode.fastlinear import quantize_int8

    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 80, generator=g)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    torch.testing.assert_close(q.float() * scale[:, None], w, rtol=0, atol=float(scale.max()) / 2 + 1e-6)
    x = torch.randn(5, 80, generator=g)
    torch.testing.assert_close(small_rows_linear(x, q, None, scale), F.linear(x, q.float() * scale[:, None]))


def test_int8_draft_keeps_the_output_exact():
    """A quantized draft only changes which guesses are made, never the output."""
    tokenizer = make_tokenizer()
    target = make_model("llama", len(tokenizer), 0, layers=3, dtype=torch.float32, init_range=0.3)
    draft = perturbed_copy(target, 0.02, 1)
    use_small_rows_path(target)
    assert use_small_rows_path(draft, int8=True) == 3 * 7 + 1
    assert draft.model.layers[0].mlp.up_proj.weight.dtype == torch.int8
    dec = SpeculativeDecoder(target, draft, tokenizer)
    plain = dec.generate("def f(x):", 40, num_speculative_tokens=0, ignore_eos=True)
    out = dec.generate("def f(x):", 40, num_speculative_tokens=4, ignore_eos=True)
    assert out.token_ids == plain.token_ids and out.stats.accepted > 0
