"""One CPU training step of kadyn's GPT, A/B variants interleaved; prints time ratios.

    python benches/train_step.py                    # every comparison, tiny preset shape
    python benches/train_step.py --only loss adamw  # a subset
    python benches/train_step.py --compile          # also torch.compile (inductor), with compile time

The step is the trainer's (`kadyn.train`): forward with targets, backward, grad clip 1.0, AdamW,
zero_grad. Each comparison builds one model + optimizer per variant from the same seed and runs
their steps alternately (A, B, A, B, ...) on the same batches, so that whatever else the machine is
doing falls on both alike; it reports the median step time of each and the ratio A/B (> 1: B is
faster). Absolute times mean little on a shared machine; the ratios are the result.

Variants are spelled out here rather than toggled in the library, so the "old" side of each
comparison stays measurable after the library has moved to the "new" one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

import kadyn.model as kmodel
from kadyn.kernels import attribute_loss
from kadyn.model import GPT, IGNORE_INDEX, ModelConfig

PAD = 0


def joint_rope_attention_forward(self, x, cos, sin, return_attention=False, pattern=None):
    """CausalSelfAttention.forward's fast path with queries and keys rotated in one call (tried:
    the same values, but slower on CPU than two calls)."""
    assert pattern is None and not return_attention
    B, T, D = x.shape
    qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k = kmodel.apply_rope(qkv[:2], cos, sin).unbind(0)
    y = kmodel.attention(q, k, qkv[2], causal=True)
    return self.proj(y.transpose(1, 2).reshape(B, T, D)), None


def old_targets(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    ids = input_ids.long()
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, :-1] = ids[:, 1:]
    targets[targets == pad_id] = IGNORE_INDEX
    return targets


def batches(n: int, args: argparse.Namespace, vocab: int) -> list[torch.Tensor]:
    """int32 rows like the stream's: tokens, then <pad> to seq_len."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (args.batch, args.seq_len), generator=g, dtype=torch.int32)
        lengths = torch.randint(args.seq_len // 2, args.seq_len + 1, (args.batch, 1), generator=g)
        ids[torch.arange(args.seq_len) >= lengths] = PAD
        out.append(ids)
    return out


class Variant:
    """A model + optimizer + how one step runs; `step(ids)` returns the loss."""

    def __init__(self, args: argparse.Namespace, vocab: int, **opts: Any) -> None:
        self.opts = opts
        torch.manual_seed(0)
        cfg = ModelConfig(
            vocab_size=vocab,
            n_layers=args.layers,
            d_model=args.d_model,
            n_heads=args.heads,
            d_mlp=args.d_mlp,
            max_seq_len=args.seq_len,
        )
        self.model = GPT(cfg)
        self.model.train()
        adamw = opts.get("adamw", "default")
        kw: dict[str, Any] = {}
        if adamw == "foreach":
            kw["foreach"] = True
        elif adamw == "forloop":
            kw["foreach"] = False
        elif adamw == "fused":
            kw["fused"] = True
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, **kw)
        self.forward: Callable[..., Any] = self.model
        if opts.get("compile"):
            self.forward = torch.compile(self.model)

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        o = self.opts
        ids_in = ids.long() if o.get("long", True) else ids
        targets = old_targets(ids, PAD) if o.get("old_targets", False) else None
        if targets is None:
            targets = kmodel.next_token_targets(ids, PAD)
        if o.get("stats", False):
            # The old forward: per-token CE and correctness on every step.
            hidden, _ = self.model.hidden_states(ids_in)
            B, T, D = hidden.shape
            return attribute_loss(
                hidden.reshape(B * T, D), self.model.head_weight, targets.reshape(B * T)
            )[0]
        return self.forward(ids_in, targets, token_stats=False).loss

    def step(self, ids: torch.Tensor) -> float:
        forward = kmodel.CausalSelfAttention.forward
        if self.opts.get("joint_rope"):
            kmodel.CausalSelfAttention.forward = joint_rope_attention_forward  # type: ignore[method-assign]
        try:
            loss = self.loss(ids)
            loss.backward()
        finally:
            kmodel.CausalSelfAttention.forward = forward  # type: ignore[method-assign]
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


def compare(name: str, a: Variant, b: Variant, data: list[torch.Tensor], args) -> float:
    t0 = time.perf_counter()
    for ids in data[: args.warmup]:
        a.step(ids)
    ta = time.perf_counter() - t0
    t0 = time.perf_counter()
    for ids in data[: args.warmup]:
        b.step(ids)
    tb = time.perf_counter() - t0
    times: dict[str, list[float]] = {"a": [], "b": []}
    la = lb = 0.0
    for i in range(args.steps):
        ids = data[(args.warmup + i) % len(data)]
        for key, v in (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a)):
            t = time.perf_counter()
            loss = v.step(ids)
            times[key].append(time.perf_counter() - t)
            if key == "a":
                la = loss
            else:
                lb = loss
    ma, mb = statistics.median(times["a"]), statistics.median(times["b"])
    print(
        f"{name:<34} A {ma * 1e3:7.2f} ms  B {mb * 1e3:7.2f} ms  A/B {ma / mb:5.3f}  "
        f"(warm-up {args.warmup} steps: A {ta:.1f}s, B {tb:.1f}s; last loss A {la:.5f} "
        f"B {lb:.5f})",
        flush=True,
    )
    return ma / mb


OLD = dict(stats=True, adamw="default", long=True, old_targets=True)
NEW = dict(stats=False, adamw="fused", long=True, old_targets=False)

COMPARISONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "loss": (dict(stats=True), dict(stats=False)),
    "adamw": (dict(adamw="default"), dict(adamw="foreach")),
    "adamw-fused": (dict(adamw="default"), dict(adamw="fused")),
    "adamw-foreach-vs-fused": (dict(adamw="foreach"), dict(adamw="fused")),
    "int32-ids": (dict(long=True), dict(long=False)),
    "targets": (dict(old_targets=True), dict(old_targets=False)),
    "rope-qk-joint": (dict(joint_rope=False), dict(joint_rope=True)),
    "overall": (OLD, NEW),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=60, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--only", nargs="*", choices=sorted(COMPARISONS), default=None)
    p.add_argument("--compile", action="store_true", help="also NEW vs NEW + torch.compile")
    p.add_argument("--vocab", type=int, default=620)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-mlp", type=int, default=512)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    data = batches(16, args, args.vocab)
    print(
        f"torch {torch.__version__}, {args.threads} threads, median of {args.steps} interleaved "
        f"steps each; A/B > 1 means B is faster"
    )
    for name in args.only if args.only is not None else list(COMPARISONS):
        a_opts, b_opts = COMPARISONS[name]
        compare(
            name,
            Variant(args, args.vocab, **a_opts),
            Variant(args, args.vocab, **b_opts),
            data,
            args,
        )
    if args.compile:
        compare(
            "compile (NEW vs NEW+compile)",
            Variant(args, args.vocab, **NEW),
            Variant(args, args.vocab, **NEW, compile=True),
            data,
            args,
        )


if __name__ == "__main__":
    main()
