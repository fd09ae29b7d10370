"""GPU benchmark of kadyn's Triton kernels against what torch offers in their place.

- attention: TFLOP/s of forward, backward and forward+backward, bf16, causal, against
  `F.scaled_dot_product_attention` forced to its FlashAttention backend;
- attribute loss: time of forward+backward and peak extra memory against `F.linear` +
  `F.cross_entropy` on fp32 logits (what the trainer would otherwise run).

Prints one table with a ratio column (ours / reference: above 1 is faster for TFLOP/s, below 1 is
better for time and memory) and writes the rows as JSON with `--json PATH`.

    python benches/kernels.py [--quick] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import types
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]


def import_kernels() -> types.ModuleType:
    """kadyn.kernels, even where kadyn/__init__ cannot load because the native module is unbuilt."""
    try:
        import kadyn.kernels as kernels
    except ImportError as exc:
        # The kernels need only torch and triton; load them under a bare `kadyn` package.
        print(f"note: `import kadyn` failed ({exc}); loading kadyn.kernels from {ROOT / 'python'}")
        for name in [m for m in sys.modules if m == "kadyn" or m.startswith("kadyn.")]:
            del sys.modules[name]
        package = types.ModuleType("kadyn")
        package.__path__ = [str(ROOT / "python" / "kadyn")]
        sys.modules["kadyn"] = package
        import kadyn.kernels as kernels
    return kernels


def _attention_flops(batch: int, heads: int, seq: int, head_dim: int, causal: bool) -> float:
    # Two (T x T x D) matmuls forward; causal skips half of them.
    flops = 4.0 * batch * heads * seq * seq * head_dim
    return flops / 2 if causal else flops


def _attention_case(
    kernels: types.ModuleType, batch: int, heads: int, seq: int, head_dim: int
) -> list[dict[str, Any]]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    shape = (batch, heads, seq, head_dim)
    q, k, v, do = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [q.requires_grad_(), k.requires_grad_(), v.requires_grad_()]

    def ours() -> torch.Tensor:
        return kernels.attention(q, k, v, causal=True, backend="triton")

    def flash() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    fwd_flops = _attention_flops(*shape, causal=True)
    # Backward: five matmuls of the same size against the forward's two.
    flops = {"fwd": fwd_flops, "bwd": 2.5 * fwd_flops, "fwd+bwd": 3.5 * fwd_flops}
    tflops: dict[str, dict[str, float]] = {}
    for name, fn in (("ours", ours), ("flash", flash)):
        out = fn()
        ms = {
            "fwd": do_bench(fn, warmup=10, rep=50),
            "bwd": do_bench(
                lambda out=out: out.backward(do, retain_graph=True),
                warmup=10,
                rep=50,
                grad_to_none=leaves,
            ),
            "fwd+bwd": do_bench(
                lambda fn=fn: fn().backward(do), warmup=10, rep=50, grad_to_none=leaves
            ),
        }
        tflops[name] = {part: flops[part] / (ms[part] * 1e-3) / 1e12 for part in ms}
    return [
        {
            "op": "attention",
            "case": f"B{batch} H{heads} T{seq} D{head_dim} bf16 causal",
            "metric": f"{part} TFLOP/s",
            "ours": tflops["ours"][part],
            "reference": tflops["flash"][part],
        }
        for part in ("fwd", "bwd", "fwd+bwd")
    ]


def bench_attention(kernels: types.ModuleType, quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for head_dim in (64, 128):
        for seq in (512, 2048) if quick else (512, 2048, 8192):
            # A d_model of 1024 and 16k tokens per step.
            rows += _attention_case(kernels, max(1, 16384 // seq), 1024 // head_dim, seq, head_dim)
            torch.cuda.empty_cache()
    return rows


def _peak_extra_mb(fn: Callable[[], None], leaves: list[torch.Tensor]) -> float:
    """Peak memory above what was allocated before `fn` ran (the inputs), in MiB."""
    for t in leaves:
        t.grad = None  # so the gradients `fn` allocates count
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _attribute_loss_case(
    kernels: types.ModuleType, tokens: int, vocab: int, d: int
) -> list[dict[str, Any]]:
    from triton.testing import do_bench

    hidden = torch.randn(tokens, d, device="cuda", dtype=torch.bfloat16).requires_grad_()
    weight = (torch.randn(vocab, d, device="cuda", dtype=torch.bfloat16) / d**0.5).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device="cuda")
    targets[::7] = -100
    leaves = [hidden, weight]

    def ours() -> None:
        kernels.attribute_loss(hidden, weight, targets, backend="triton")[0].backward()

    def reference() -> None:
        logits = F.linear(hidden, weight).float()
        F.cross_entropy(logits, targets, ignore_index=-100).backward()

    fns = (("ours", ours), ("reference", reference))
    ms = {name: do_bench(fn, warmup=5, rep=50, grad_to_none=leaves) for name, fn in fns}
    mem = {name: _peak_extra_mb(fn, leaves) for name, fn in fns}
    case = f"N{tokens // 1024}k V{vocab // 1024}k d{d} bf16"
    return [
        {"op": "attribute_loss", "case": case, "metric": "fwd+bwd ms", **ms},
        {"op": "attribute_loss", "case": case, "metric": "peak extra MiB", **mem},
    ]


def bench_attribute_loss(kernels: types.ModuleType, quick: bool) -> list[dict[str, Any]]:
    points = [(32768, 32768, 512), (65536, 32768, 512), (16384, 65536, 1024)]
    if not quick:
        points += [(8192, 131072, 4096), (16384, 131072, 2048)]
    rows: list[dict[str, Any]] = []
    for tokens, vocab, d in points:
        rows += _attribute_loss_case(kernels, tokens, vocab, d)
        torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'op':<15} {'case':<32} {'metric':<16} {'ours':>10} {'reference':>10} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        row["ratio"] = row["ours"] / row["reference"] if row["reference"] else float("nan")
        print(
            f"{row['op']:<15} {row['case']:<32} {row['metric']:<16} "
            f"{row['ours']:>10.1f} {row['reference']:>10.1f} {row['ratio']:>7.2f}"
        )
    print("ratio = ours / reference: above 1 is better for TFLOP/s, below 1 for ms and MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path, help="also write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller points")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benches/kernels.py needs a CUDA GPU: torch.cuda.is_available() is False.")
        return 2
    kernels = import_kernels()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = bench_attention(kernels, args.quick) + bench_attribute_loss(kernels, args.quick)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
