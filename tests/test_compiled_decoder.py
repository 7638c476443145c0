"""The compiled draft decoder (csrc/decoder.cpp): the same logits as the model's modules, its own KV
cache through every CachedModel operation, and a speculative output that stays the target's."""

import copy
import functools

import pytest
import torch
from tiny_models import make_model, make_tokenizer

from specdecode import SamplingParams, SpeculativeDecoder
from specdecode.batch import BatchDecoder
from specdecode.compiled_decoder import attach, unsupported
from specdecode.kv import CachedModel, forward_together
from specdecode.small_rows import SmallRowsLinear, extension, unpack, use_small_rows_path


def _twins(arch: str) -> tuple[CachedModel, CachedModel]:
    """The same float32 model twice: through its modules, and through the compiled decoder."""
    tokenizer = make_tokenizer()
    model = make_model(arch, len(tokenizer), 0, layers=2, dtype=torch.float32, init_range=0.3)
    use_small_rows_path(model)
    modules = CachedModel(model, len(tokenizer))
    assert attach(model)
    compiled = CachedModel(model, len(tokenizer))
    assert modules.decoder is None and compiled.decoder is not None
    return modules, compiled


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(b.float(), a.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_compiled_decoder_matches_the_modules(arch):
    """Prompt, one-token steps, a chain, rollback, a token tree and keep_path: logits agree to float32
    rounding (the decoder keeps its activations in float32, the modules too here), and so do the
    caches, since later passes read them."""
    modules, compiled = _twins(arch)
    prompt = list(range(3, 40))
    for cache in (modules, compiled):
        assert len(cache) == 0
    _close(modules.forward(prompt, num_logits=4), compiled.forward(prompt, num_logits=4))
    for token in (5, 6):
        _close(modules.forward([token], 1), compiled.forward([token], 1))
    for cache in (modules, compiled):
        cache.rollback(20)
    _close(modules.forward([7, 8, 9], 3), compiled.forward([7, 8, 9], 3))
    # a tree after 23 tokens: nodes 0 and 1 children of the last token, node 2 a child of node 1
    parents = [22, 22, 24]
    _close(modules.forward([10, 11, 12], 3, parents=parents), compiled.forward([10, 11, 12], 3, parents=parents))
    for cache in (modules, compiled):
        cache.keep_path([1, 2])
        assert len(cache) == 25
    _close(modules.forward([13, 14], 2), compiled.forward([13, 14], 2))
    for cache in (modules, compiled):
        cache.rollback(0)
    _close(modules.forward(prompt[:5], 1), compiled.forward(prompt[:5], 1))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize(
    "quantization, atol",  # int8: the kernel scales the sum, the reference the weights; a last-bit difference
    [("none", 1e-4), ("int8", 5e-2)],  # can flip one input's bfloat16 rounding a layer later
)
def test_bfloat16_and_int8_weights_take_bfloat16_rows_where_the_cpu_has_the_dot_product(arch, quantization, atol):
    """With bfloat16 or int8 weights the decoder hands its projections bfloat16 rows where the CPU has the
    bfloat16 dot product (float32 rows elsewhere): it computes what float32 modules holding the same weights
    compute when their projections' inputs are rounded the same way."""
    tokenizer = make_tokenizer()
    model = make_model(arch, len(tokenizer), 0, layers=2, dtype=torch.bfloat16, init_range=0.3)
    reference = copy.deepcopy(model).float()
    use_small_rows_path(model, quantization)
    rounds = extension().bfloat16_pairs()
    for name, module in model.named_modules():
        if isinstance(module, SmallRowsLinear):
            linear = reference.get_submodule(name)
            linear.weight.data.copy_(unpack(module.weight, module.scale, module.out_features))
            if rounds:
                linear.register_forward_pre_hook(lambda _, args: (args[0].bfloat16().float(),))
    assert attach(model)
    modules, compiled = CachedModel(reference, len(tokenizer)), CachedModel(model, len(tokenizer))
    prompt = list(range(3, 40))
    close = functools.partial(torch.testing.assert_close, atol=atol, rtol=1e-4)
    close(compiled.forward(prompt, num_logits=4), modules.forward(prompt, num_logits=4))
    for token in (5, 6, 7):
        close(compiled.forward([token], 1), modules.forward([token], 1))


def test_the_cache_grows_past_its_first_capacity():
    modules, compiled = _twins("llama")
    tokens = [int(t) for t in torch.randint(3, 40, (150,), generator=torch.Generator().manual_seed(0))]
    _close(modules.forward(tokens[:100], 1), compiled.forward(tokens[:100], 1))
    for token in tokens[100:]:
        _close(modules.forward([token], 1), compiled.forward([token], 1))


def test_what_it_does_not_run_says_why():
    tokenizer = make_tokenizer()
    gpt2 = make_model("gpt2", len(tokenizer), 0, dtype=torch.float32)
    use_small_rows_path(gpt2)
    assert "model type 'gpt2'" in unsupported(gpt2)
    llama = make_model("llama", len(tokenizer), 0, dtype=torch.float32)
    assert unsupported(llama) == "projections not on the small-rows or block kernels"
    assert not attach(llama) and CachedModel(llama, len(tokenizer)).decoder is None


@pytest.mark.parametrize("proposer", ["draft", "tree"])
def test_a_compiled_draft_keeps_the_output_exact(model_dirs, proposer):
    """The loaded draft runs compiled by default (and through its modules on request); either way the
    greedy output is the target's own, token for token."""
    target_dir, draft_dir = model_dirs
    dec = SpeculativeDecoder.from_pretrained(str(target_dir), str(draft_dir), dtype="float32", proposer=proposer)
    draft = dec.proposer.draft if proposer == "draft" else dec.proposer.draft.draft
    assert draft.decoder is not None
    plain = dec.generate("def f(x):", 40, num_speculative_tokens=0, ignore_eos=True)
    out = dec.generate("def f(x):", 40, num_speculative_tokens=4, ignore_eos=True)
    assert out.token_ids == plain.token_ids and out.stats.accepted > 0
    modules = SpeculativeDecoder.from_pretrained(
        str(target_dir), str(draft_dir), dtype="float32", draft_decoder="modules"
    )
    assert modules.proposer.draft.decoder is None
    with pytest.raises(ValueError, match="draft_decoder must be one of"):
        SpeculativeDecoder.from_pretrained(str(target_dir), str(draft_dir), draft_decoder="fast")


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_a_quantized_target_runs_compiled_and_stays_exact(model_dirs, quantization):
    """`quantization` changes the target's weights (a new model) and runs it compiled; speculative greedy
    output is that model's own target-only output, token for token."""
    target_dir, draft_dir = model_dirs
    dec = SpeculativeDecoder.from_pretrained(str(target_dir), str(draft_dir), quantization=quantization)
    assert dec.target.decoder is not None
    packed = {m.weight.dtype for m in dec.target.model.modules() if isinstance(m, SmallRowsLinear)}
    assert (torch.int8 if quantization == "int8" else torch.uint8) in packed and packed <= {torch.int8, torch.uint8}
    plain = dec.generate("def f(x):", 40, num_speculative_tokens=0, ignore_eos=True)
    for k in (3, "auto"):
        out = dec.generate("def f(x):", 40, num_speculative_tokens=k, ignore_eos=True)
        assert out.token_ids == plain.token_ids


def test_one_pass_for_several_sequences_gives_each_its_own_bits():
    """`forward_together` over forks (one compiled call): each row's logits and cache bit for bit those
    of a pass of its own, for prompts, chains and a token tree, rows of different lengths."""
    _, cache = _twins("llama")
    alone, together = [cache.fork() for _ in range(3)], [cache.fork() for _ in range(3)]
    steps = [
        ([list(range(3, 30)), [5, 6, 7, 8], [9]], [None] * 3),
        ([[1, 2, 3], [4], [10, 11]], [None] * 3),
        ([[12, 13, 14], [15, 16], [17]], [[29, 29, 31], None, None]),  # row 0: a tree after its 30 tokens
    ]
    for new, parents in steps:
        want = [c.forward(ids, len(ids), tree) for c, ids, tree in zip(alone, new, parents, strict=True)]
        got = forward_together(together, new, [len(ids) for ids in new], parents)
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    together[0].keep_path([1, 2])
    alone[0].keep_path([1, 2])
    assert torch.equal(alone[0].forward([20], 1), forward_together(together[:1], [[20]], [1], [None])[0])
    assert [len(c) for c in together] == [len(c) for c in alone] == [33, 7, 4]


@pytest.mark.parametrize("proposer", ["draft", "ngram", "tree", "ngram+draft"])
def test_batches_of_a_compiled_target_are_each_row_alone(model_dirs, proposer):
    """A quantized target runs compiled; its batches share every target and draft pass, and each row is
    token for token the prompt alone: greedy (= target-only), seeded samples, K fixed or `auto`, and a
    row that joins a running batch."""
    target_dir, draft_dir = model_dirs
    dec = SpeculativeDecoder.from_pretrained(str(target_dir), str(draft_dir), quantization="int8", proposer=proposer)
    prompts = ["def f(x):", "a", "print(1, 2) = 3\nfor i in range(10):"]
    plain = [dec.generate(p, 20, num_speculative_tokens=0, ignore_eos=True).token_ids for p in prompts]
    for k in (3, "auto"):
        got = dec.generate(prompts, 20, num_speculative_tokens=k, ignore_eos=True)
        assert [r.token_ids for r in got] == plain and got.batched_passes < sum(r.stats.target_passes for r in got)
    # a seeded sample is reproducible where the K of every step is (`auto` picks K from timings)
    sampled = SamplingParams(temperature=1.0, top_k=20, seed=4)
    rows = dec.generate(prompts, 12, num_speculative_tokens=3, sampling=sampled, n=2)
    for i, row in enumerate(rows):
        seeded = SamplingParams(temperature=1.0, top_k=20, seed=4 + i)
        assert row.token_ids == dec.generate(prompts[i // 2], 12, num_speculative_tokens=3, sampling=seeded).token_ids
    batch = BatchDecoder(dec, 3)
    batch.add(prompts[0], 20, SamplingParams(), ignore_eos=True, index=0)
    batch.step()
    batch.add(prompts[2], 20, SamplingParams(), ignore_eos=True, index=1)
    assert [r.token_ids for r in batch.run()] == [plain[0], plain[2]]


def test_a_compiled_target_without_a_drafter_decodes_batches(model_dirs):
    """No draft model and no proposer: a batch of a compiled target is plain decoding, each row alone."""
    target_dir, _ = model_dirs
    dec = SpeculativeDecoder.from_pretrained(str(target_dir), quantization="int8")
    assert dec.proposer is None and dec.target.decoder is not None
    prompts = ["def f(x):", "print(1, 2) = 3\nfor i in range(10):"]
    plain = [dec.generate(p, 12, num_speculative_tokens=0, ignore_eos=True).token_ids for p in prompts]
    assert [r.token_ids for r in dec.generate(prompts, 12, num_speculative_tokens=0, ignore_eos=True)] == plain
