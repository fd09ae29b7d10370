"""Flash attention (FlashAttention-2 scheme) in Triton, with its torch reference beside it.

The trainer's attention is the one op whose naive form is quadratic in memory: a (T x T) score
matrix per head. These kernels tile queries and keys, keep a running max and sum for the softmax
(online softmax), and never hold that matrix. The forward saves the log-sum-exp of each query row;
the backward recomputes the probabilities block by block from it: a preprocess kernel computes
delta = rowsum(dO * O), one kernel walks the queries for each key block (dK, dV), another walks the
keys for each query block (dQ), so neither needs atomics.

Unlike the Triton tutorial, any sequence length works (tails are masked) and head_dim may be any
value in 16..128 (blocks are padded to the next power of two and masked). Each kernel splits its
loop into blocks that need no mask and the few that do (the causal diagonal, the ragged tail), so
the common blocks pay nothing for the generality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kadyn.kernels._triton import (
    is_interpreted,
    next_power_of_2,
    resolve_backend,
    tl,
    triton,
)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MIN_HEAD_DIM, _MAX_HEAD_DIM = 16, 128
_LOG2E = 1.4426950408889634


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True
) -> torch.Tensor:
    """Plain torch attention, softmax scale 1/sqrt(head_dim): what the kernels must reproduce."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def attention_weights(q: torch.Tensor, k: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """The attention pattern softmax(q k^T / sqrt(head_dim)) itself, (batch, heads, T, T),
    from fp32 scores, each query's later keys masked out when `causal`."""
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
    if causal:
        visible = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
    return scores.softmax(dim=-1)


# --------------------------------------------------------------------------------------------
# Triton kernels. Shapes: q, k, v, o, do are (batch, heads, seq, head_dim) addressed by strides with
# a unit stride on head_dim; lse and delta are contiguous (batch * heads, seq) fp32. Scores are kept
# in base 2 (scaled by log2(e)) so the softmax uses exp2.
# --------------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    stride_kt,
    stride_vt,
    offs_m,
    offs_d,
    lo,
    hi,
    T,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            n_ok = offs_n < T
        else:
            n_ok = offs_n >= 0
        kT = tl.load(
            k_base + offs_n[None, :] * stride_kt + offs_d[:, None],
            mask=d_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        v = tl.load(
            v_base + offs_n[:, None] * stride_vt + offs_d[None, :],
            mask=n_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        if DOT_FP32:
            kT = kT.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale
        if MASKED:
            keep = n_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(keep, s, float("-inf"))
        # Every row meets key 0 in its first block, so m_new is finite and no exp2(-inf + inf).
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    Q,
    K,
    V,
    Out,
    LSE,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_ob,
    stride_oh,
    stride_ot,
    H,
    T,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1).to(tl.int64)  # int64: offsets overflow int32 on large batches
    off_b = off_bh // H
    off_h = off_bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < T
    md_ok = m_ok[:, None] & (offs_d[None, :] < HEAD_DIM)

    q = tl.load(
        Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
        mask=md_ok,
        other=0.0,
    )
    if DOT_FP32:
        q = q.to(tl.float32)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Key blocks strictly below the diagonal (causal) or wholly inside the sequence need no mask.
    if CAUSAL:
        full_hi = start_m
        masked_hi = tl.minimum(start_m + BLOCK_M, T)
    else:
        full_hi = (T // BLOCK_N) * BLOCK_N
        masked_hi = T
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, 0, full_hi, T,
        qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL, DOT_FP32, PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, full_hi,
        masked_hi, T, qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL, DOT_FP32, PRECISION,
    )  # fmt: skip

    acc = acc / l_i[:, None]
    tl.store(LSE + off_bh * T + offs_m, m_i + tl.math.log2(l_i), mask=m_ok)
    tl.store(
        Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
        acc.to(Out.dtype.element_ty),
        mask=md_ok,
    )


@triton.jit
def _attn_bwd_delta(
    Out,
    DO,
    DELTA,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_dob,
    stride_doh,
    stride_dot,
    H,
    T,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1).to(tl.int64)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < T
    md_ok = m_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(
        Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
        mask=md_ok,
        other=0.0,
    )
    do_base = DO + off_b * stride_dob + off_h * stride_doh
    do = tl.load(
        do_base + offs_m[:, None] * stride_dot + offs_d[None, :],
        mask=md_ok,
        other=0.0,
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + off_bh * T + offs_m, delta, mask=m_ok)


@triton.jit
def _bwd_dkdv_inner(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    lse_base,
    delta_base,
    stride_qt,
    stride_dot,
    offs_n,
    offs_d,
    lo,
    hi,
    T,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    d_ok = offs_d < HEAD_DIM
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        if MASKED:
            m_ok = offs_m < T
        else:
            m_ok = offs_m >= 0
        qT = tl.load(
            q_base + offs_m[None, :] * stride_qt + offs_d[:, None],
            mask=d_ok[:, None] & m_ok[None, :],
            other=0.0,
        )
        do = tl.load(
            do_base + offs_m[:, None] * stride_dot + offs_d[None, :],
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        lse = tl.load(lse_base + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
        if DOT_FP32:
            qT = qT.to(tl.float32)
            do = do.to(tl.float32)
        pT = tl.math.exp2(tl.dot(k, qT, input_precision=PRECISION) * qk_scale - lse[None, :])
        if MASKED:
            keep = m_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_m[None, :] >= offs_n[:, None])
            pT = tl.where(keep, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    LSE,
    DELTA,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_dob,
    stride_doh,
    stride_dot,
    H,
    T,
    qk_scale,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1).to(tl.int64)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    nd_ok = (offs_n[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(
        K + off_b * stride_kb + off_h * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
        mask=nd_ok,
        other=0.0,
    )
    v = tl.load(
        V + off_b * stride_vb + off_h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :],
        mask=nd_ok,
        other=0.0,
    )
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    do_base = DO + off_b * stride_dob + off_h * stride_doh
    lse_base = LSE + off_bh * T
    delta_base = DELTA + off_bh * T
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Query blocks: [diag_lo, diag_hi) straddle the causal diagonal (masked), [diag_hi, full_hi)
    # lie wholly after it and inside the sequence (unmasked), [full_hi, T) is the ragged tail.
    # Queries before start_n never attend to these keys under the causal mask.
    if CAUSAL:
        diag_lo = start_n
        after_diag = start_n + BLOCK_N
        diag_hi = tl.minimum(after_diag, T)
    else:
        diag_lo = 0
        after_diag = 0
        diag_hi = 0
    full_hi = tl.maximum(after_diag, (T // BLOCK_M) * BLOCK_M)
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, offs_n,
        offs_d, diag_lo, diag_hi, T, qk_scale, HEAD_DIM, BLOCK_M, True, CAUSAL, DOT_FP32,
        PRECISION,
    )  # fmt: skip
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, offs_n,
        offs_d, after_diag, full_hi, T, qk_scale, HEAD_DIM, BLOCK_M, False, CAUSAL, DOT_FP32,
        PRECISION,
    )  # fmt: skip
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, offs_n,
        offs_d, full_hi, T, T, qk_scale, HEAD_DIM, BLOCK_M, True, CAUSAL, DOT_FP32, PRECISION,
    )  # fmt: skip

    # DK and DV are allocated contiguous: (batch * heads, T, head_dim).
    out = off_bh * T * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=nd_ok)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=nd_ok)


@triton.jit
def _bwd_dq_inner(
    dq,
    q,
    do,
    lse,
    delta,
    k_base,
    v_base,
    stride_kt,
    stride_vt,
    offs_m,
    offs_d,
    lo,
    hi,
    T,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            n_ok = offs_n < T
        else:
            n_ok = offs_n >= 0
        kT = tl.load(
            k_base + offs_n[None, :] * stride_kt + offs_d[:, None],
            mask=d_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        vT = tl.load(
            v_base + offs_n[None, :] * stride_vt + offs_d[:, None],
            mask=d_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        if DOT_FP32:
            kT = kT.to(tl.float32)
            vT = vT.to(tl.float32)
        p = tl.math.exp2(tl.dot(q, kT, input_precision=PRECISION) * qk_scale - lse[:, None])
        if MASKED:
            keep = n_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(
    Q,
    K,
    V,
    DO,
    DQ,
    LSE,
    DELTA,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_dob,
    stride_doh,
    stride_dot,
    H,
    T,
    qk_scale,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1).to(tl.int64)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < T
    md_ok = m_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(
        Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
        mask=md_ok,
        other=0.0,
    )
    do_base = DO + off_b * stride_dob + off_h * stride_doh
    do = tl.load(
        do_base + offs_m[:, None] * stride_dot + offs_d[None, :],
        mask=md_ok,
        other=0.0,
    )
    if DOT_FP32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + off_bh * T + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + off_bh * T + offs_m, mask=m_ok, other=0.0)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if CAUSAL:
        full_hi = start_m
        masked_hi = tl.minimum(start_m + BLOCK_M, T)
    else:
        full_hi = (T // BLOCK_N) * BLOCK_N
        masked_hi = T
    dq = _bwd_dq_inner(
        dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, 0, full_hi,
        T, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL, DOT_FP32, PRECISION,
    )  # fmt: skip
    dq = _bwd_dq_inner(
        dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, full_hi,
        masked_hi, T, qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL, DOT_FP32, PRECISION,
    )  # fmt: skip
    out = off_bh * T * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DQ + out, (dq * sm_scale).to(DQ.dtype.element_ty), mask=md_ok)


# --------------------------------------------------------------------------------------------
# Launch configuration and the autograd Function.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    """Block sizes and launch options for one head_dim / dtype / device."""

    fwd_m: int
    fwd_n: int
    dkdv_m: int
    dkdv_n: int
    dq_m: int
    dq_n: int
    num_warps: int
    num_stages: int
    dot_fp32: bool
    precision: str


_INTERPRETED = is_interpreted(_attn_fwd)


def _config(head_dim: int, dtype: torch.dtype, device: torch.device) -> _Config:
    # Fixed configurations instead of @triton.autotune: autotune with several configs does not run
    # under the interpreter, and a fixed choice keeps GPU timings reproducible. The loops require
    # fwd_m % fwd_n == 0, dq_m % dq_n == 0 and dkdv_n % dkdv_m == 0.
    if device.type != "cuda" or _INTERPRETED:
        # Interpreter: small unequal blocks so that tests at seq 77 or 200 cross several blocks,
        # the causal diagonal spans two of them and the tails are ragged. bf16 tl.dot is wrong
        # under the interpreter, so every dot runs in fp32 there.
        return _Config(32, 16, 16, 32, 32, 16, 4, 1, dot_fp32=True, precision="ieee")
    # fp32 follows torch's matmul setting (TF32 only when the user allowed it for matmuls); the
    # setting means nothing to fp16 / bf16 operands, which keep Triton's default.
    allow_tf32 = dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32
    precision = "tf32" if allow_tf32 else "ieee"
    wide = head_dim > 64
    if dtype == torch.float32:  # twice the bytes per tile: halve the blocks to fit shared memory
        return _Config(64, 32, 32, 64, 64, 32, 4 if not wide else 8, 2, False, precision)
    # fp16 / bf16: the FA2 tutorial's choices for Hopper-class GPUs (128 x 64 forward tiles; the
    # backward walks 32-row query blocks per 128-key block and 32-key blocks per 128-query block).
    return _Config(128, 64, 32, 128, 128, 32, 8 if wide else 4, 3, False, precision)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
    ) -> torch.Tensor:
        B, H, T, D = q.shape
        cfg = _config(D, q.dtype, q.device)
        block_d = max(16, next_power_of_2(D))
        sm_scale = 1.0 / math.sqrt(D)
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty((B * H, T), device=q.device, dtype=torch.float32)
        grid = (triton.cdiv(T, cfg.fwd_m), B * H)
        _attn_fwd[grid](
            q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o), H, T,
            sm_scale * _LOG2E, HEAD_DIM=D, BLOCK_M=cfg.fwd_m, BLOCK_N=cfg.fwd_n, BLOCK_D=block_d,
            CAUSAL=causal, DOT_FP32=cfg.dot_fp32, PRECISION=cfg.precision,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal  # type: ignore[attr-defined]
        return o

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, do: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, k, v, o, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        causal: bool = ctx.causal  # type: ignore[attr-defined]
        B, H, T, D = q.shape
        if do.stride(-1) != 1:
            do = do.contiguous()
        cfg = _config(D, q.dtype, q.device)
        block_d = max(16, next_power_of_2(D))
        sm_scale = 1.0 / math.sqrt(D)
        delta = torch.empty_like(lse)
        _attn_bwd_delta[(triton.cdiv(T, cfg.dq_m), B * H)](
            o, do, delta, *_strides(o), *_strides(do), H, T, HEAD_DIM=D, BLOCK_M=cfg.dq_m,
            BLOCK_D=block_d, num_warps=cfg.num_warps,
        )  # fmt: skip
        dq = torch.empty((B, H, T, D), device=q.device, dtype=q.dtype)
        dk = torch.empty((B, H, T, D), device=k.device, dtype=k.dtype)
        dv = torch.empty((B, H, T, D), device=v.device, dtype=v.dtype)
        common = dict(
            HEAD_DIM=D,
            BLOCK_D=block_d,
            CAUSAL=causal,
            DOT_FP32=cfg.dot_fp32,
            PRECISION=cfg.precision,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
        _attn_bwd_dkdv[(triton.cdiv(T, cfg.dkdv_n), B * H)](
            q, k, v, do, dk, dv, lse, delta, *_strides(q), *_strides(k), *_strides(v),
            *_strides(do), H, T, sm_scale * _LOG2E, sm_scale, BLOCK_M=cfg.dkdv_m,
            BLOCK_N=cfg.dkdv_n, **common,
        )  # fmt: skip
        _attn_bwd_dq[(triton.cdiv(T, cfg.dq_m), B * H)](
            q, k, v, do, dq, lse, delta, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            H, T, sm_scale * _LOG2E, sm_scale, BLOCK_M=cfg.dq_m, BLOCK_N=cfg.dq_n, **common,
        )  # fmt: skip
        return dq, dk, dv, None


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention: q, k, v need 4 dims (batch, heads, seq, head_dim), got {shapes}"
        )
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"attention: q, k, v must have the same shape; got {shapes}")
    dtypes = f"q {q.dtype}, k {k.dtype}, v {v.dtype}"
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"attention: q, k, v need one dtype out of float32, float16, bfloat16; got {dtypes}"
        )
    if q.device != k.device or q.device != v.device:
        raise ValueError(
            f"attention: q, k, v must share a device, got q {q.device}, k {k.device}, v {v.device}"
        )
    head_dim = q.shape[-1]
    if not _MIN_HEAD_DIM <= head_dim <= _MAX_HEAD_DIM:
        raise ValueError(
            f"attention: head_dim must be in {_MIN_HEAD_DIM}..{_MAX_HEAD_DIM}, got {head_dim} "
            f"(q shape {tuple(q.shape)})"
        )


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, backend: str = "auto"
) -> torch.Tensor:
    """Scaled dot-product attention over (batch, heads, seq, head_dim) tensors.

    backend: "triton" runs the flash-attention kernels (CUDA tensors, or CPU tensors when
    TRITON_INTERPRET=1), "torch" runs `attention_reference` (under torch.compile on CPU, the
    same attention with its pattern written out, `attention_weights`, for inductor to fuse),
    "auto" picks Triton on CUDA and torch elsewhere. Differentiable with respect to q, k and v.
    """
    _validate(q, k, v)
    if resolve_backend(backend, q.device, _INTERPRETED, "attention") == "torch" or q.numel() == 0:
        if q.device.type == "cpu" and torch.compiler.is_compiling():
            # Compiled on CPU, the pattern written out is faster than the CPU flash kernel at
            # these lengths (<= ~100): inductor fuses scale, mask and softmax, the two products
            # go to batched matmuls (`benches/train_step.py --only attention`).
            return attention_weights(q, k, causal).to(v.dtype) @ v
        return attention_reference(q, k, v, causal=causal)
    # The kernels address (batch, heads, seq) by strides, so the usual transposed views from a
    # (batch, seq, heads, head_dim) projection need no copy; only head_dim must be unit-stride.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return _FlashAttention.apply(q, k, v, bool(causal))
