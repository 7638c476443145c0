"""One real model: SmolLM2-135M (from ../shared/models/fetch.sh smollm2) as the target and its first
8 layers as the draft. Greedy output must be identical to target-only decoding in float32; a
mismatch is reported with the target's logit gap at that position (a near-tie shows as a tiny gap).
"""

import os
from pathlib import Path

import pytest
import torch

from specdecode import SpeculativeDecoder

MODEL = (
    Path(os.environ.get("SPECDECODE_MODELS", Path.home() / ".cache" / "specdecode-models")) / "smollm2-135m-instruct"
)
PROMPTS = [
    "def is_prime(n):\n",
    "The capital of France is",
    [{"role": "user", "content": "List three uses of a hash map."}],
]

if not MODEL.is_dir():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must fetch SmolLM2 first: {MODEL} is missing (../shared/models/fetch.sh smollm2)")
    pytest.skip(f"{MODEL} not fetched (../shared/models/fetch.sh smollm2)", allow_module_level=True)


@pytest.fixture(scope="module")
def decoder():
    return SpeculativeDecoder.from_pretrained(str(MODEL), draft_layers=8, dtype="float32")


def logit_gap(decoder, prompt_ids, generated, position):
    with torch.no_grad():
        logits = decoder.target.model(torch.tensor([prompt_ids + generated[:position]])).logits[0, -1]
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


@pytest.mark.parametrize("prompt", PROMPTS, ids=["code", "prose", "chat"])
def test_greedy_identical_to_target_only(decoder, prompt):
    decoder.reset()
    baseline = decoder.generate(prompt, 48, num_speculative_tokens=0)
    for k in (2, 5):
        out = decoder.generate(prompt, 48, num_speculative_tokens=k)
        if out.token_ids != baseline.token_ids:
            pairs = enumerate(zip(out.token_ids, baseline.token_ids, strict=False))
            at = next((i for i, (a, b) in pairs if a != b), min(len(out.token_ids), len(baseline.token_ids)))
            gap = logit_gap(decoder, decoder.encode(prompt), baseline.token_ids, at)
            pytest.fail(f"K={k}: first mismatch at new token {at}, target logit gap there {gap:.2e}")
        assert out.stats.accepted > 0
