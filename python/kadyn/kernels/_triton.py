"""Triton import guard and backend dispatch shared by the kernel modules.

Triton ships with torch's Linux wheels but not with the macOS or Windows ones, and without a GPU it
can only run kernels through its interpreter (`TRITON_INTERPRET=1`, read when a kernel is
decorated). This module keeps those facts in one place so each kernel file can decorate its kernels
unconditionally and ask one question before launching: may this kernel run on this device?
"""

from __future__ import annotations

import types
from typing import Any

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # torch wheels without triton (macOS, Windows): only the torch backend works
    HAS_TRITON = False
    # Stand-ins so `@triton.jit` and `tl.constexpr` annotations still evaluate at import time; the
    # kernels are never launched because `resolve_backend` refuses backend="triton".
    triton = types.SimpleNamespace(jit=lambda fn: fn)  # type: ignore[assignment]
    tl = types.SimpleNamespace(constexpr=Any)  # type: ignore[assignment]

BACKENDS = ("auto", "triton", "torch")


def is_interpreted(kernel: object) -> bool:
    """True when `kernel` was decorated under TRITON_INTERPRET=1 and so runs on CPU tensors."""
    if not HAS_TRITON:
        return False
    return not isinstance(kernel, triton.runtime.jit.JITFunction)


def resolve_backend(backend: str, device: torch.device, interpreted: bool, op: str) -> str:
    """Turn the user's `backend` into "triton" or "torch" for tensors on `device`.

    "auto" takes Triton only on CUDA: under the interpreter a kernel is far slower than the torch
    reference, so the interpreter is something tests opt into with backend="triton".
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if HAS_TRITON and device.type == "cuda" else "torch"
    if not HAS_TRITON:
        raise RuntimeError(
            f"{op}: backend='triton' needs the triton package, which is not installed"
        )
    if device.type != "cuda" and not interpreted:
        raise RuntimeError(
            f"{op}: backend='triton' on {device.type} tensors needs TRITON_INTERPRET=1 set before "
            "kadyn.kernels is imported (or CUDA tensors)"
        )
    return "triton"


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
