"""kadyn — knowledge-acquisition dynamics.

A deterministic world of synthetic biographies (Rust), streamed into PyTorch as zero-copy Arrow
batches, with the trainer and experiments that reproduce "How do language models learn facts?"
(Zucchet et al., 2025). The native module is private; this package re-exports the public API.
"""

from kadyn._native import (
    MAX_SEQ_LEN,
    Curriculum,
    PowerLaw,
    Subset,
    Uniform,
    World,
    __version__,
    memory_limit,
)
from kadyn.checkpoint import load_model
from kadyn.dataset import load_dataset
from kadyn.interop import to_torch
from kadyn.stream import BiographyStream

__all__ = [
    "MAX_SEQ_LEN",
    "BiographyStream",
    "Curriculum",
    "PowerLaw",
    "Subset",
    "Uniform",
    "World",
    "__version__",
    "load_dataset",
    "load_model",
    "memory_limit",
    "to_torch",
]
