"""Flash-attention kernel against `F.scaled_dot_product_attention`: values and gradients.

`interpreter` tests force backend="triton": on a machine without CUDA they run through Triton's
interpreter on CPU (conftest sets TRITON_INTERPRET=1), on a GPU machine they run compiled on CUDA.
Shapes stay small because the interpreter is slow; the awkward ones (seq 1, seq not a multiple of
any block, head_dim not a power of two) are what the masks exist for.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from kadyn.kernels.attention import attention, attention_reference, attention_weights

# The package re-exports the function under the module's name, hence importlib for the module.
attention_module = importlib.import_module("kadyn.kernels.attention")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernel = pytest.mark.skipif(
    DEVICE == "cpu" and not attention_module._INTERPRETED,
    reason="no CUDA and Triton is not in interpreter mode (TRITON_INTERPRET=0)",
)

FWD_TOL, BWD_TOL = 2e-4, 2e-3  # fp32, max abs
pytestmark = pytest.mark.usefixtures("exact_fp32")  # see conftest.py


def _inputs(
    shape: tuple[int, int, int, int], dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(shape, generator=gen).to(DEVICE, dtype) for _ in range(4))
    return q, k, v, do


def _run(
    fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, **kwargs)
    grads = torch.autograd.grad(out, leaves, do)
    return out.detach(), grads


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _check_fp32(shape: tuple[int, int, int, int], causal: bool) -> None:
    q, k, v, do = _inputs(shape)
    out, grads = _run(attention, q, k, v, do, causal=causal, backend="triton")
    ref, ref_grads = _run(attention_reference, q, k, v, do, causal=causal)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _max_err(out, ref) <= FWD_TOL
    for name, g, rg in zip("qkv", grads, ref_grads):
        assert _max_err(g, rg) <= BWD_TOL, f"d{name}"


@pytest.mark.interpreter
@needs_kernel
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "shape",
    [
        (1, 2, 1, 16),  # one token: a single, mostly masked block
        (1, 2, 77, 32),  # ragged tail in every kernel
        (1, 1, 200, 64),  # several blocks each way, diagonal spanning two key blocks
        (2, 1, 33, 48),  # head_dim padded from 48 to 64
        (1, 1, 130, 128),  # widest head; tail of 2 rows
        (1, 2, 64, 80),  # seq a multiple of every block: no tail at all
    ],
    ids=lambda s: "x".join(map(str, s)),
)
def test_matches_reference_fp32(shape: tuple[int, int, int, int], causal: bool) -> None:
    _check_fp32(shape, causal)


@pytest.mark.interpreter
@needs_kernel
def test_strided_inputs() -> None:
    # q, k, v as views of one (batch, seq, 3, heads, head_dim) projection, transposed to
    # (batch, heads, seq, head_dim): the kernels read them through strides, without copies.
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 40, 3, 2, 16, generator=gen).to(DEVICE)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    do = torch.randn(2, 2, 40, 16, generator=gen).to(DEVICE)
    do = do.transpose(-1, -2).contiguous().transpose(-1, -2)  # non-unit stride on head_dim
    out, grads = _run(attention, q, k, v, do, backend="triton")
    ref, ref_grads = _run(attention_reference, q, k, v, do)
    assert _max_err(out, ref) <= FWD_TOL
    for g, rg in zip(grads, ref_grads):
        assert _max_err(g, rg) <= BWD_TOL


@pytest.mark.interpreter
@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_fp32(dtype: torch.dtype) -> None:
    # Half inputs against the fp32 reference on the same (rounded) values: the error is the
    # rounding of the outputs and of p / dS before their matmuls, a few units of the dtype's eps.
    q, k, v, do = _inputs((1, 2, 50, 32), dtype)
    out, grads = _run(attention, q, k, v, do, backend="triton")
    ref, ref_grads = _run(attention_reference, *(t.float() for t in (q, k, v, do)))
    tol = 4 * torch.finfo(dtype).eps
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert _max_err(out, ref) <= tol
    for g, rg in zip(grads, ref_grads):
        assert _max_err(g, rg) <= 2 * tol


def test_auto_on_cpu_is_the_reference() -> None:
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 9, 16, generator=gen) for _ in range(3))
    for causal in (True, False):
        expected = attention_reference(q, k, v, causal=causal)
        assert torch.equal(attention(q, k, v, causal=causal, backend="auto"), expected)
        assert torch.equal(attention(q, k, v, causal=causal, backend="torch"), expected)


def test_compiled_on_cpu_the_pattern_written_out_matches_the_reference() -> None:
    # What `attention` runs under torch.compile on CPU (tests/test_compile.py runs it compiled):
    # the values and gradients of torch's fused kernel.
    q, k, v, do = _inputs((2, 3, 37, 32), seed=3)
    for causal in (True, False):
        written = _run(lambda q, k, v, c=causal: attention_weights(q, k, c) @ v, q, k, v, do)
        ref = _run(attention_reference, q, k, v, do, causal=causal)
        assert _max_err(written[0], ref[0]) <= FWD_TOL
        for name, g, rg in zip("qkv", written[1], ref[1]):
            assert _max_err(g, rg) <= BWD_TOL, f"d{name}"
    pattern = attention_weights(q.cpu(), k.cpu())
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 3, 37))
    assert not pattern.triu(1).any()  # no query sees a later key


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "match"),
    [
        ((2, 8, 16), (2, 8, 16), r"4 dims.*\(2, 8, 16\)"),
        ((1, 2, 8, 16), (1, 2, 9, 16), r"same shape.*\(1, 2, 9, 16\)"),
        ((1, 2, 8, 8), (1, 2, 8, 8), r"head_dim must be in 16\.\.128, got 8"),
        ((1, 2, 8, 256), (1, 2, 8, 256), r"head_dim must be in 16\.\.128, got 256"),
    ],
)
def test_bad_shapes(q_shape: tuple[int, ...], k_shape: tuple[int, ...], match: str) -> None:
    q = torch.zeros(q_shape)
    k = torch.zeros(k_shape)
    with pytest.raises(ValueError, match=match):
        attention(q, k, k)


def test_bad_dtypes_and_backend() -> None:
    x = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match=r"torch\.float64"):
        attention(x.double(), x.double(), x.double())
    with pytest.raises(ValueError, match=r"k torch\.float16"):
        attention(x, x.half(), x)
    with pytest.raises(ValueError, match=r"backend.*'cudnn'"):
        attention(x, x, x, backend="cudnn")


# ------------------------------------------------------------------------------------------------
# GPU only: the compiled kernels at realistic sizes and in the training dtypes.
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("shape", "causal", "dtype"),
    [
        ((2, 4, 1000, 64), True, torch.bfloat16),
        ((2, 4, 1000, 64), False, torch.bfloat16),
        ((1, 2, 2048, 128), True, torch.bfloat16),
        ((1, 2, 513, 96), True, torch.float16),
        ((3, 2, 77, 16), False, torch.float16),
    ],
    ids=str,
)
def test_gpu_half_matches_reference(
    shape: tuple[int, int, int, int], causal: bool, dtype: torch.dtype
) -> None:
    # A handful of cases rather than a full sweep: each distinct one compiles four kernels.
    # Measured as FlashAttention's tests do: our error against an fp32 reference may be at most a
    # small multiple of the error torch's own half-precision attention makes.
    q, k, v, do = _inputs(shape, dtype)
    out, grads = _run(attention, q, k, v, do, causal=causal, backend="triton")
    half, half_grads = _run(attention_reference, q, k, v, do, causal=causal)
    ref, ref_grads = _run(attention_reference, *(t.float() for t in (q, k, v, do)), causal=causal)
    assert out.dtype == dtype
    assert _max_err(out, ref) <= 2 * _max_err(half, ref) + 1e-3
    for name, g, hg, rg in zip("qkv", grads, half_grads, ref_grads):
        assert _max_err(g, rg) <= 3 * _max_err(hg, rg) + 1e-3, f"d{name}"


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [16, 128])
def test_gpu_fp32(head_dim: int) -> None:
    _check_fp32((2, 3, 300, head_dim), causal=True)


@pytest.mark.gpu
def test_gpu_auto_uses_triton() -> None:
    q, k, v, do = _inputs((1, 2, 64, 32), torch.bfloat16)
    out, _ = _run(attention, q, k, v, do, backend="auto")
    kernel, _ = _run(attention, q, k, v, do, backend="triton")
    assert torch.equal(out, kernel)
