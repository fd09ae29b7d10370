"""Fused final projection + cross-entropy (the attribute loss), with its torch reference beside it.

At the paper's scale the (tokens x vocab) logits of one batch (say 32k x 32k) take 2 GiB in bf16
and twice that again once upcast for the softmax; they are the trainer's largest activation by far.
Following Liger Kernel's fused linear cross-entropy, the autograd Function here never holds them
whole: it walks the tokens in chunks, computes a chunk's logits with a torch matmul, and a Triton
kernel then makes one pass per row for the log-sum-exp, argmax and target logit (online, over
vocab tiles) and a second that overwrites the logits with their gradient, (softmax - onehot) over
the number of non-ignored tokens.
Two more matmuls turn that into the chunk's grad_hidden and add its share of grad_weight, so the
gradients are ready when the forward returns; backward only scales them by grad_output.

The per-token outputs (cross-entropy and argmax == target) come from the same pass: they feed the
knowledge metrics, which need exactly those numbers for every value token.

Precision: logits are produced by the matmul in the compute dtype (as `F.linear` would), the
softmax, cross-entropy and gradient are computed in fp32 inside the kernel, and the logit gradients
are stored back in the compute dtype for the two gradient matmuls, as in Liger. grad_weight is
accumulated over chunks in the compute dtype too; chunks are sized large (`_CHUNK_LOGITS_BYTES`) so
that only a handful of bf16 roundings add up.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from kadyn.kernels._triton import (
    is_interpreted,
    next_power_of_2,
    resolve_backend,
    tl,
    triton,
)

IGNORE_INDEX = -100
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Upper bound on one chunk's logits: small next to the full logits, large enough that each chunk's
# matmuls keep the GPU busy and that few chunks accumulate into grad_weight.
_CHUNK_LOGITS_BYTES = 256 << 20
# Vocab tile per kernel step. On GPU one or two tiles cover a 32k-128k vocabulary (Liger's choice);
# under the interpreter small tiles keep tests cheap and make the online log-sum-exp cross tiles.
_BLOCK_V_GPU = 32768
_BLOCK_V_INTERPRETER = 128


def attribute_loss_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain torch: full logits, fp32 cross-entropy, argmax; what the fused kernel must match."""
    logits = F.linear(hidden, weight).float()
    token_ce = F.cross_entropy(logits, targets.long(), ignore_index=IGNORE_INDEX, reduction="none")
    valid = targets != IGNORE_INDEX
    loss = token_ce.sum() / valid.sum().clamp(min=1)
    correct = (logits.argmax(-1) == targets) & valid
    return loss, token_ce.detach(), correct


@triton.jit
def _cross_entropy_rows(
    LOGITS,
    stride_row,
    TARGETS,
    TOKEN_CE,
    CORRECT,
    INV_N_VALID,
    V,
    IGNORE: tl.constexpr,
    BLOCK_V: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
):
    """One program per token row: CE, argmax == target, and (optionally) dCE/dlogits in place."""
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    target = tl.load(TARGETS + row)
    ignored = target == IGNORE

    # Pass 1: online log-sum-exp, first argmax (strict > keeps the earliest tile on ties, like
    # torch.argmax) and the target's logit, one vocab tile at a time, all in fp32.
    m = float("-inf")
    s = 0.0
    best = 0
    target_logit = 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        tile_max = tl.max(x, 0)
        best = tl.where(tile_max > m, start + tl.argmax(x, 0), best)
        m_new = tl.maximum(m, tile_max)
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
        target_logit += tl.sum(tl.where(offs == target, x, 0.0), 0)
    lse = m + tl.log(s)

    # A target outside [0, V) that is not the ignore index gives NaN, so the loss shows it without
    # a host-side range check (which would synchronise the GPU every step).
    in_range = (target >= 0) & (target < V)
    ce = tl.where(in_range, lse - target_logit, float("nan"))
    tl.store(TOKEN_CE + row, tl.where(ignored, 0.0, ce))
    tl.store(CORRECT + row, ((best == target) & ~ignored).to(tl.uint8))

    if WRITE_GRAD:
        # d(mean CE)/dlogits = (softmax - onehot) / n_valid; ignored rows contribute nothing.
        scale = tl.where(ignored, 0.0, tl.load(INV_N_VALID))
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            x = tl.load(base + offs, mask=offs < V, other=0.0).to(tl.float32)
            grad = (tl.exp(x - lse) - tl.where(offs == target, 1.0, 0.0)) * scale
            tl.store(base + offs, grad.to(LOGITS.dtype.element_ty), mask=offs < V)


_INTERPRETED = is_interpreted(_cross_entropy_rows)


def _chunk_rows(n_tokens: int, vocab: int, dtype: torch.dtype) -> int:
    bytes_per_row = vocab * torch.empty((), dtype=dtype).element_size()
    return max(1, min(n_tokens, _CHUNK_LOGITS_BYTES // bytes_per_row))


def _fused_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    grad_hidden_wanted: bool,
    grad_weight_wanted: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Chunked forward; returns loss, token_ce, token_correct and the (unscaled) gradients."""
    n_tokens = hidden.shape[0]
    vocab = weight.shape[0]
    device = hidden.device
    write_grad = grad_hidden_wanted or grad_weight_wanted
    # 1/n_valid stays on the device: the kernel reads it, so no host synchronisation.
    inv_n_valid = 1.0 / (targets != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)
    token_ce = torch.empty(n_tokens, device=device, dtype=torch.float32)
    correct = torch.empty(n_tokens, device=device, dtype=torch.uint8)
    # Contiguous, whatever the inputs' strides: chunks of rows are then contiguous `out=` targets.
    grad_hidden: torch.Tensor | None = None
    grad_weight: torch.Tensor | None = None
    if grad_hidden_wanted:
        grad_hidden = torch.empty(hidden.shape, device=device, dtype=hidden.dtype)
    if grad_weight_wanted:
        grad_weight = torch.zeros(weight.shape, device=device, dtype=weight.dtype)

    compiled = device.type == "cuda" and not _INTERPRETED
    block_v = min(_BLOCK_V_GPU if compiled else _BLOCK_V_INTERPRETER, next_power_of_2(vocab))
    num_warps = 32 if compiled and block_v >= 8192 else 4
    chunk = _chunk_rows(n_tokens, vocab, hidden.dtype)
    # Inputs already share the compute dtype; autocast would only get in the way of `out=`.
    with torch.autocast(device.type, enabled=False):
        for start in range(0, n_tokens, chunk):
            end = min(start + chunk, n_tokens)
            hidden_chunk = hidden[start:end]
            logits = hidden_chunk @ weight.t()  # (chunk, vocab) in the compute dtype
            _cross_entropy_rows[(end - start,)](
                logits,
                logits.stride(0),
                targets[start:end],
                token_ce[start:end],
                correct[start:end],
                inv_n_valid,
                vocab,
                IGNORE=IGNORE_INDEX,
                BLOCK_V=block_v,
                WRITE_GRAD=write_grad,
                num_warps=num_warps,
            )
            # `logits` now holds dloss/dlogits for this chunk.
            if grad_hidden is not None:
                torch.mm(logits, weight, out=grad_hidden[start:end])
            if grad_weight is not None:
                grad_weight.addmm_(logits.t(), hidden_chunk)
    loss = token_ce.sum() * inv_n_valid
    return loss, token_ce, correct.view(torch.bool), grad_hidden, grad_weight


class _FusedAttributeLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        wants_hidden, wants_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]  # type: ignore[attr-defined]
        loss, token_ce, correct, grad_hidden, grad_weight = _fused_forward(
            hidden, weight, targets, wants_hidden, wants_weight
        )
        # Gradients are intermediates, not inputs or outputs: keep them on ctx, not saved tensors.
        ctx.grad_hidden = grad_hidden  # type: ignore[attr-defined]
        ctx.grad_weight = grad_weight  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(token_ce, correct)
        return loss, token_ce, correct

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_loss: torch.Tensor,
        _grad_ce: torch.Tensor | None,
        _grad_correct: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        grad_hidden: torch.Tensor | None = ctx.grad_hidden  # type: ignore[attr-defined]
        grad_weight: torch.Tensor | None = ctx.grad_weight  # type: ignore[attr-defined]
        # Out of place, so a second backward through a retained graph sees the same gradients.
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_loss.to(grad_weight.dtype)
        return grad_hidden, grad_weight, None


def _validate(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    shapes = f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, "
    shapes += f"targets {tuple(targets.shape)}"
    if hidden.ndim != 2 or weight.ndim != 2 or targets.ndim != 1:
        raise ValueError(
            "attribute_loss: expected hidden (tokens, d), weight (vocab, d), targets (tokens,); "
            f"got {shapes}"
        )
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"attribute_loss: hidden and weight must share d (last dim); got {shapes}")
    if targets.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"attribute_loss: targets must have one entry per hidden row (tokens); got {shapes}"
        )
    if weight.shape[0] == 0:
        raise ValueError(f"attribute_loss: vocab (weight rows) must be >= 1; got {shapes}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(
            f"attribute_loss: targets must be integers, got dtype {targets.dtype} ({shapes})"
        )
    if hidden.dtype not in _DTYPES or weight.dtype not in _DTYPES:
        raise ValueError(
            "attribute_loss: hidden and weight must be float32, float16 or bfloat16; got hidden "
            f"{hidden.dtype}, weight {weight.dtype}"
        )
    if hidden.device != weight.device or hidden.device != targets.device:
        raise ValueError(
            f"attribute_loss: tensors must be on one device; got hidden {hidden.device}, "
            f"weight {weight.device}, targets {targets.device}"
        )


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype `F.linear` would use here: autocast's if enabled, else the wider input."""
    device_type = hidden.device.type
    try:
        autocast = torch.is_autocast_enabled(device_type)
        autocast_dtype = torch.get_autocast_dtype(device_type) if autocast else None
    except (TypeError, AttributeError):  # torch < 2.4: only the CUDA autocast state is queryable
        autocast = device_type == "cuda" and torch.is_autocast_enabled()
        autocast_dtype = torch.get_autocast_gpu_dtype() if autocast else None
    if autocast_dtype is not None:
        return autocast_dtype
    return torch.promote_types(hidden.dtype, weight.dtype)


def attribute_loss_only_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The reference's loss alone (no per-token outputs, no argmax): the CPU training step's."""
    logits = F.linear(hidden, weight).float()
    total = F.cross_entropy(logits, targets.long(), ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def attribute_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    backend: str = "auto",
    token_stats: bool = True,
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Cross-entropy of `hidden @ weight.T` against `targets`, without materialising the logits.

    hidden (tokens, d), weight (vocab, d), targets (tokens,) integer with -100 = ignore. Returns
    (loss, token_ce, token_correct): loss is the fp32 mean cross-entropy over non-ignored tokens
    (0 if there are none), differentiable with respect to hidden and weight; token_ce (tokens,) fp32
    per-token cross-entropy (0 where ignored) and token_correct (tokens,) bool, argmax == target
    (False where ignored), both without gradient.

    backend: "triton" runs the fused kernel (CUDA tensors, or CPU tensors when TRITON_INTERPRET=1),
    "torch" runs `attribute_loss_reference`, "auto" picks Triton on CUDA, the reference elsewhere.

    token_stats=False returns (loss, None, None): what a training step needs. The torch backend then
    skips the per-token outputs and the argmax (a plain summed `F.cross_entropy`; the same loss up to
    float rounding); the Triton kernel computes them in the same pass anyway and they are dropped.
    """
    _validate(hidden, weight, targets)
    use = resolve_backend(backend, hidden.device, _INTERPRETED, "attribute_loss")
    # Cast outside the autograd Function so autograd hands each gradient back in its input's dtype.
    dtype = _compute_dtype(hidden, weight)
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    if use == "torch":
        if not token_stats:
            return attribute_loss_only_reference(hidden, weight, targets), None, None
        return attribute_loss_reference(hidden, weight, targets)
    targets = targets.contiguous()
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        loss, token_ce, correct = _FusedAttributeLoss.apply(hidden, weight, targets)
    else:
        loss, token_ce, correct, _, _ = _fused_forward(hidden, weight, targets, False, False)
    return (loss, token_ce, correct) if token_stats else (loss, None, None)
