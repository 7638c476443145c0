"""Loading from local folders, a draft from the target's first layers, and clear errors."""

import pytest
import torch
from tiny_models import make_model

from specdecode import ModelLoadError, SpeculativeDecoder
from specdecode.loading import first_layers, load_model


def test_from_local_folders(model_dirs):
    target_dir, draft_dir = model_dirs
    dec = SpeculativeDecoder.from_pretrained(str(target_dir), str(draft_dir), dtype="float32")
    assert dec.target.model.dtype == torch.float32
    up_proj = dec.proposer.draft.model.model.layers[0].mlp.up_proj
    assert up_proj.weight.dtype == torch.int8  # draft_quantization="auto" on a CPU: the measured fastest
    greedy = dec.generate("def f(x):", 12, num_speculative_tokens=0, ignore_eos=True)
    assert dec.generate("def f(x):", 12, num_speculative_tokens=3, ignore_eos=True).token_ids == greedy.token_ids
    assert len(greedy.token_ids) == 12 and greedy.text


def test_stock_kernels_leave_the_draft_unquantized(model_dirs):
    dec = SpeculativeDecoder.from_pretrained(*map(str, model_dirs), dtype="float32", kernels="stock")
    assert dec.proposer.draft.model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="draft_quantization must be one of auto, none, int8, int4"):
        SpeculativeDecoder.from_pretrained(str(model_dirs[0]), draft_quantization="int3")


def test_draft_from_first_layers_shares_weights(model_dirs):
    dec = SpeculativeDecoder.from_pretrained(str(model_dirs[0]), draft_layers=1, dtype="float64")
    target, draft = dec.target.model, dec.proposer.draft.model
    assert draft.config.num_hidden_layers == 1 and len(draft.model.layers) == 1
    assert draft.model.layers[0].mlp.up_proj.weight.data_ptr() == target.model.layers[0].mlp.up_proj.weight.data_ptr()
    assert draft.lm_head.weight.data_ptr() == target.lm_head.weight.data_ptr()
    plain = dec.generate("abc", 20, num_speculative_tokens=0, ignore_eos=True)
    assert dec.generate("abc", 20, num_speculative_tokens=4, ignore_eos=True).token_ids == plain.token_ids


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_first_layers_other_architectures(arch):
    model = make_model(arch, 50, 0, layers=3)
    draft = first_layers(model, 2)
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert draft(ids).logits.shape == (1, 3, 50)
    with pytest.raises(ValueError, match="between 1 and 2"):
        first_layers(model, 3)


@pytest.mark.parametrize(
    "source, match",
    [
        ("/nonexistent/model", "no such model folder"),
        ("./missing.gguf", "GGUF file not found"),
    ],
)
def test_missing_models(source, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(source)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_hub_id_without_network_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: patch it
    with pytest.raises(ModelLoadError, match="local folder"):
        load_model("nobody/no-such-model-here")
