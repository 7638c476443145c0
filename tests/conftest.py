import pytest
from tiny_models import save_model_pair

from specdecode import SpeculativeDecoder


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """A tiny target and draft saved as real Hugging Face folders (config, safetensors, tokenizer)."""
    return save_model_pair(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reference(model_dirs):
    """The decoder a server of `model_dirs` runs, loaded the same way, for expected outputs."""
    return SpeculativeDecoder.from_pretrained(*map(str, model_dirs))
