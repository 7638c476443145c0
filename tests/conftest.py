import pytest
from tiny_models import make_model, make_tokenizer


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """A tiny target and draft saved as real Hugging Face folders (config, safetensors, tokenizer)."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = make_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    for name, seed, layers in (("target", 0, 3), ("draft", 1, 1)):
        model = make_model("llama", len(tokenizer), seed, layers=layers, dtype="float32", init_range=0.3)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "target", root / "draft"
