"""pytest setup shared by every test: Triton's interpreter where there is no GPU, `gpu` skips.

Without a CUDA device Triton kernels can only run through its interpreter, and triton decides
interpreted-or-compiled when a kernel is decorated, from TRITON_INTERPRET, i.e. when a module of
`kadyn.kernels` is first imported. This file is imported before any test module and `import torch`
does not import triton, so setting the variable here is early enough; asking
`torch.cuda.is_available()` (rather than guessing from /dev/nvidia* or an opt-in variable) uses the
same test the kernels' `backend="auto"` dispatches on, so the two can never disagree. setdefault
leaves an explicit TRITON_INTERPRET=0 or 1 from the caller alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the test: tiny tensors run fastest so, and immune to a busy
    machine's oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """On CUDA, fp32 matmuls in full fp32 while a kernel is compared with torch: TF32 would blur
    both sides."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old
