"""Compute kernels used by the trainer: causal attention and the fused attribute loss.

Each op has a plain-torch reference (used on CPU and by the tests) and a Triton kernel (used on
CUDA). `backend="auto"` picks Triton on CUDA tensors and the reference elsewhere.
"""

from kadyn.kernels.attention import attention, attention_reference
from kadyn.kernels.attribute_loss import attribute_loss, attribute_loss_reference

__all__ = ["attention", "attention_reference", "attribute_loss", "attribute_loss_reference"]
