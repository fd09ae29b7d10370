"""Fused projection + cross-entropy against F.linear + F.cross_entropy: values and gradients.

`interpreter` tests force backend="triton": without CUDA they run through Triton's interpreter on
CPU (conftest sets TRITON_INTERPRET=1), with CUDA they run compiled. The interpreter's vocab tile is
128, so vocabularies of 333 or 1000 end in a ragged tile and 128 is exactly one.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from kadyn.kernels.attribute_loss import IGNORE_INDEX, attribute_loss, attribute_loss_reference

# The package re-exports the function under the module's name, hence importlib for the module.
loss_module = importlib.import_module("kadyn.kernels.attribute_loss")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernel = pytest.mark.skipif(
    DEVICE == "cpu" and not loss_module._INTERPRETED,
    reason="no CUDA and Triton is not in interpreter mode (TRITON_INTERPRET=0)",
)
TOL = 1e-4  # fp32: loss, per-token CE and gradients, max abs
pytestmark = pytest.mark.usefixtures("exact_fp32")  # see conftest.py


def _inputs(
    tokens: int,
    vocab: int,
    d: int,
    ignored: float = 0.3,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, d, generator=gen).to(DEVICE, dtype)
    weight = (torch.randn(vocab, d, generator=gen) / d**0.5).to(DEVICE, dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=gen).to(DEVICE)
    # Make about half the targets the argmax, so token_correct has both values to get right.
    hit = (torch.rand(tokens, generator=gen) < 0.5).to(DEVICE)
    targets[hit] = (hidden @ weight.t()).argmax(-1)[hit]
    targets[(torch.rand(tokens, generator=gen) < ignored).to(DEVICE)] = IGNORE_INDEX
    return hidden, weight, targets


def _run(fn, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, **kwargs):
    """Outputs and the gradients of 3 * loss (so grad_output scaling is exercised too)."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss, token_ce, correct = fn(h, w, targets, **kwargs)
    grad_h, grad_w = torch.autograd.grad(3 * loss, (h, w))
    return loss.detach(), token_ce, correct, grad_h, grad_w


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def _check(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    loss, ce, correct, gh, gw = _run(attribute_loss, hidden, weight, targets, backend="triton")
    r_loss, r_ce, r_correct, r_gh, r_gw = _run(attribute_loss_reference, hidden, weight, targets)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert ce.dtype == torch.float32 and ce.shape == targets.shape and not ce.requires_grad
    assert correct.dtype == torch.bool and correct.shape == targets.shape
    assert _max_err(loss, r_loss) <= TOL
    assert _max_err(ce, r_ce) <= TOL
    assert torch.equal(correct, r_correct)
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype
    assert _max_err(gh, r_gh) <= TOL
    assert _max_err(gw, r_gw) <= TOL


@pytest.mark.interpreter
@needs_kernel
@pytest.mark.parametrize(
    ("tokens", "vocab", "d", "ignored"),
    [
        (37, 333, 32, 0.3),  # vocab not a multiple of the tile, some targets ignored
        (24, 128, 16, 0.0),  # vocab exactly one tile, nothing ignored
        (1, 50, 16, 0.0),  # a single token, vocab smaller than a tile
        (16, 1000, 24, 0.5),  # eight tiles, the last ragged
    ],
)
def test_matches_reference(tokens: int, vocab: int, d: int, ignored: float) -> None:
    hidden, weight, targets = _inputs(tokens, vocab, d, ignored)
    _check(hidden, weight, targets)
    assert loss_module._chunk_rows(tokens, vocab, torch.float32) == tokens  # one chunk here


@pytest.mark.interpreter
@needs_kernel
def test_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 8 rows (and a ragged last one): grad_weight accumulates over five chunks.
    hidden, weight, targets = _inputs(37, 200, 16)
    monkeypatch.setattr(loss_module, "_CHUNK_LOGITS_BYTES", 8 * 200 * 4)
    assert loss_module._chunk_rows(37, 200, torch.float32) == 8
    _check(hidden, weight, targets)


@pytest.mark.interpreter
@needs_kernel
def test_all_ignored() -> None:
    hidden, weight, targets = _inputs(12, 300, 16)
    targets.fill_(IGNORE_INDEX)
    loss, ce, correct, gh, gw = _run(attribute_loss, hidden, weight, targets, backend="triton")
    assert loss.item() == 0.0
    assert not ce.any() and not correct.any()
    assert not gh.any() and not gw.any()


@pytest.mark.interpreter
@needs_kernel
def test_no_tokens() -> None:
    hidden, weight, targets = _inputs(0, 100, 16)
    loss, ce, correct, gh, gw = _run(attribute_loss, hidden, weight, targets, backend="triton")
    assert loss.item() == 0.0 and ce.shape == correct.shape == (0,)
    assert gh.shape == (0, 16) and not gw.any()


@pytest.mark.interpreter
@needs_kernel
def test_without_grad_and_partial_grad() -> None:
    hidden, weight, targets = _inputs(20, 150, 16)
    r_loss, r_ce, r_correct = attribute_loss_reference(hidden, weight, targets)
    with torch.no_grad():
        loss, ce, correct = attribute_loss(hidden, weight, targets, backend="triton")
    assert _max_err(loss, r_loss) <= TOL and _max_err(ce, r_ce) <= TOL
    assert torch.equal(correct, r_correct)
    # Only the hidden states need a gradient (a frozen output projection).
    h = hidden.clone().requires_grad_()
    (grad_h,) = torch.autograd.grad(attribute_loss(h, weight, targets, backend="triton")[0], h)
    h_ref = hidden.clone().requires_grad_()
    (ref_grad_h,) = torch.autograd.grad(attribute_loss_reference(h_ref, weight, targets)[0], h_ref)
    assert _max_err(grad_h, ref_grad_h) <= TOL


@pytest.mark.interpreter
@needs_kernel
def test_int32_targets() -> None:
    hidden, weight, targets = _inputs(10, 140, 16)
    _check(hidden, weight, targets.to(torch.int32))


@pytest.mark.interpreter
@needs_kernel
def test_low_precision_inputs() -> None:
    # bf16 inputs: both sides compute the same bf16 logits and fp32 cross-entropy, so the loss and
    # per-token values agree closely; gradients come back in each input's own dtype.
    hidden, weight, targets = _inputs(16, 200, 32, dtype=torch.bfloat16)
    loss, ce, correct, gh, gw = _run(attribute_loss, hidden, weight, targets, backend="triton")
    r_loss, r_ce, r_correct, r_gh, r_gw = _run(attribute_loss_reference, hidden, weight, targets)
    assert gh.dtype == gw.dtype == torch.bfloat16 and ce.dtype == torch.float32
    assert _max_err(loss, r_loss) <= TOL and _max_err(ce, r_ce) <= TOL
    assert torch.equal(correct, r_correct)
    assert _max_err(gh, r_gh) <= 1e-2 and _max_err(gw, r_gw) <= 1e-2
    # Mixed dtypes compute in the wider one and still return each gradient in its input's dtype.
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().float().requires_grad_()
    m_loss = attribute_loss(h, w, targets, backend="triton")[0]
    grad_h, grad_w = torch.autograd.grad(m_loss, (h, w))
    assert grad_h.dtype == torch.bfloat16 and grad_w.dtype == torch.float32
    f_loss = attribute_loss_reference(hidden.float(), weight.float(), targets)[0]
    assert _max_err(m_loss, f_loss) <= TOL


@pytest.mark.interpreter
@needs_kernel
def test_target_out_of_range_gives_nan() -> None:
    hidden, weight, targets = _inputs(6, 100, 16, ignored=0.0)
    targets[2] = 100
    loss, ce, _ = attribute_loss(hidden, weight, targets, backend="triton")
    assert torch.isnan(loss) and torch.isnan(ce[2]) and not torch.isnan(ce[:2]).any()


def test_auto_on_cpu_is_the_reference() -> None:
    hidden, weight, targets = _inputs(9, 70, 16)
    hidden, weight, targets = hidden.cpu(), weight.cpu(), targets.cpu()
    expected = attribute_loss_reference(hidden, weight, targets)
    for backend in ("auto", "torch"):
        got = attribute_loss(hidden, weight, targets, backend=backend)
        for a, b in zip(got, expected):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("hidden_shape", "weight_shape", "targets_shape", "match"),
    [
        ((4, 8), (10, 9), (4,), r"share d.*hidden \(4, 8\), weight \(10, 9\)"),
        ((4, 8), (10, 8), (5,), r"one entry per hidden row.*targets \(5,\)"),
        ((2, 4, 8), (10, 8), (8,), r"hidden \(2, 4, 8\)"),
        ((4, 8), (10, 8), (4, 1), r"targets \(4, 1\)"),
    ],
)
def test_bad_shapes(
    hidden_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    targets_shape: tuple[int, ...],
    match: str,
) -> None:
    targets = torch.zeros(targets_shape, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        attribute_loss(torch.zeros(hidden_shape), torch.zeros(weight_shape), targets)


def test_bad_dtypes_and_backend() -> None:
    hidden, weight = torch.zeros(4, 8), torch.zeros(10, 8)
    with pytest.raises(ValueError, match=r"targets must be integers, got dtype torch\.float32"):
        attribute_loss(hidden, weight, torch.zeros(4))
    with pytest.raises(ValueError, match=r"torch\.float64"):
        attribute_loss(hidden.double(), weight, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"backend.*'fused'"):
        attribute_loss(hidden, weight, torch.zeros(4, dtype=torch.long), backend="fused")


# ------------------------------------------------------------------------------------------------
# GPU only: realistic sizes (several chunks) in the training dtype.
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(("tokens", "vocab", "d"), [(8192, 32768, 512), (3000, 50257, 256)])
def test_gpu_bf16_matches_reference(tokens: int, vocab: int, d: int) -> None:
    hidden, weight, targets = _inputs(tokens, vocab, d, ignored=0.2, dtype=torch.bfloat16)
    loss, ce, correct, gh, gw = _run(attribute_loss, hidden, weight, targets, backend="triton")
    r_loss, r_ce, r_correct, r_gh, r_gw = _run(attribute_loss_reference, hidden, weight, targets)
    # Same bf16 logits on both sides (cuBLAS may tile the chunked matmul differently, so not
    # bit-identical): fp32 cross-entropy agrees to a few bf16 ulps of the logits.
    assert _max_err(loss, r_loss) <= 1e-3 * max(1.0, r_loss.abs().item())
    assert _max_err(ce, r_ce) <= 5e-2
    assert (correct == r_correct).float().mean().item() > 0.999
    for g, rg in ((gh, r_gh), (gw, r_gw)):
        assert g.dtype == torch.bfloat16
        rel = (g.float() - rg.float()).norm() / rg.float().norm()
        assert rel.item() < 2e-2


@pytest.mark.gpu
def test_gpu_fp32_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loss_module, "_CHUNK_LOGITS_BYTES", 512 * 40000 * 4)
    _check(*_inputs(2000, 40000, 128))


@pytest.mark.gpu
def test_gpu_auto_uses_triton() -> None:
    hidden, weight, targets = _inputs(64, 1000, 32, dtype=torch.bfloat16)
    auto = attribute_loss(hidden, weight, targets, backend="auto")
    kernel = attribute_loss(hidden, weight, targets, backend="triton")
    for a, b in zip(auto, kernel):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "backend",
    ["torch", pytest.param("triton", marks=[pytest.mark.interpreter, needs_kernel])],
)
@pytest.mark.parametrize(("tokens", "ignored"), [(40, 0.3), (12, 1.0), (0, 0.3)])
def test_loss_without_token_stats(backend: str, tokens: int, ignored: float) -> None:
    """token_stats=False (the training step): the same loss and gradients, no per-token outputs."""
    hidden, weight, targets = _inputs(tokens, 300, 16, ignored=ignored)
    loss, ce, correct, gh, gw = _run(
        attribute_loss, hidden, weight, targets, backend=backend, token_stats=False
    )
    assert ce is None and correct is None
    ref_loss, _, _, ref_gh, ref_gw = _run(attribute_loss_reference, hidden, weight, targets)
    assert _max_err(loss, ref_loss) < TOL
    assert _max_err(gh, ref_gh) < TOL and _max_err(gw, ref_gw) < TOL
