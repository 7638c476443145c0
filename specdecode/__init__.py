"""specdecode: exact speculative decoding and sampling for Hugging Face causal LMs."""

from specdecode.engine import GenerationResult, SpeculativeDecoder, StreamChunk
from specdecode.loading import IncompatibleModelsError, ModelLoadError
from specdecode.sampling import NonFiniteLogitsError, SamplingParams
from specdecode.stats import DecodeStats

__all__ = [
    "DecodeStats",
    "GenerationResult",
    "IncompatibleModelsError",
    "ModelLoadError",
    "NonFiniteLogitsError",
    "SamplingParams",
    "SpeculativeDecoder",
    "StreamChunk",
]
__version__ = "0.1.0"
