import pytest
from tiny_models import save_model_pair


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """A tiny target and draft saved as real Hugging Face folders (config, safetensors, tokenizer)."""
    return save_model_pair(tmp_path_factory.mktemp("models"))
