"""A/B comparisons of kadyn's training step, interleaved in one process; prints paired ratios.

    python benches/train_step.py                          # every comparison, tiny preset shape
    python benches/train_step.py --only trim compile      # a subset
    python benches/train_step.py --shape d64 --steps 200  # the cpu experiment scale's model

What the trainer runs (`kadyn.train.StepLoss` + `optimizer_step`) is the "new" side of each
comparison; the "old" side is spelled out here, so it stays measurable after the library has
moved on. Each comparison builds one step per side from the same seed and runs them alternately
(A, B, B, A, ...) on the tiny preset's own batches; it prints the median step time of each and the
median over rounds of A's time / B's time (> 1: B is faster). The machine is shared: the paired
ratio, not the times, is the result, and its spread between runs says how far to trust it.

The comparisons, each measured when its change was made:
- `trim`: the full batch vs trailing all-<pad> columns trimmed (`kadyn.model.trim_padding`);
- `compile`: eager vs `torch.compile` of the loss (trimmed, dynamic sequence length);
- `compile-static`: compiled on the full batch (static shapes) vs compiled and trimmed;
- `int64-ids`: the batch copied to int64 before the step (as before) vs the stream's int32 ids;
- `loss-formula`: compiled, the loss as `F.cross_entropy` vs as `kadyn.model.next_token_loss`
  writes it under torch.compile (log-sum-exp minus the one-hot-picked target logit);
- `clip`: `clip_grad_norm_` vs the same clipping compiled into one graph (not adopted: no gain
  measurable);
- `adamw`: foreach AdamW (torch's CPU default, nanoGPT's) vs fused AdamW;
- `rope`: eager, rotary embeddings applied per head half to permuted q and k views (as before) vs
  on all heads' rows at once (`kadyn.model.apply_rope`; bitwise the same numbers);
- `inductor`: compiled with the kernels called from Python (as before) vs from C++
  (`cpp_wrapper`, `kadyn.train.inductor_options`; bitwise the same numbers);
- `lengths`: compiled, each trimmed length apart with static shapes (as before) vs one graph for
  every length (`StepLoss.dynamic`), both with every position. This times the steps; the compile
  times (39 s against 21 s for a tiny-preset run's three lengths, cold cache) are in
  `kadyn.train.COMPILE_MIN_STEPS`;
- `positions` (eager), `positions-compiled`: every position of the trimmed batch (as before) vs
  the positions that have a target alone (`kadyn.model.target_positions`);
- `layout` (eager), `layout-compiled`: attention's (B, T) layout of the kept positions by
  index_copy and index_select (as before: index_select's backward is a scatter-add, which
  deterministic mode sorts) vs by gathers both ways (`kadyn.model.to_grid`, `from_grid`);
- `attention`: compiled, attention through torch's CPU flash kernel (as before) vs the pattern
  written out (`kadyn.kernels.attention_weights`), which inductor fuses;
- `overall`: the step as it was before issue 14 (eager, full batch, int64 ids, clip_grad_norm_)
  vs the trainer's step now.
`kadyn-bench train` compares the trainer's step with the nanoGPT-equivalent reference instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import types
from typing import Any, Callable, Optional

import torch

import kadyn
import kadyn.kernels
import kadyn.model
from kadyn.config import TrainConfig, make_config
from kadyn.kernels.attribute_loss import attribute_loss_only_reference
from kadyn.model import GPT, CausalSelfAttention
from kadyn.train import (
    StepLoss,
    build_scheduler,
    build_world,
    inductor_options,
    make_model_config,
    param_groups,
    training_loss,
)

NEXT_TOKEN_LOSS = kadyn.model.next_token_loss
TO_GRID, FROM_GRID = kadyn.model.to_grid, kadyn.model.from_grid
ATTENTION = kadyn.model.attention


def scatter_to_grid(x: torch.Tensor, rows: kadyn.model.Rows) -> torch.Tensor:
    """`kadyn.model.to_grid` as it was: index_copy into zeros."""
    B, T = rows.shape
    return x.new_zeros(B * T, x.shape[-1]).index_copy(0, rows.positions, x)


def select_from_grid(y: torch.Tensor, rows: kadyn.model.Rows) -> torch.Tensor:
    """`kadyn.model.from_grid` as it was: index_select, whose backward is a scatter-add."""
    return y.index_select(0, rows.positions)


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True
) -> torch.Tensor:
    """`kadyn.kernels.attention` on CPU as it was compiled too: torch's fused (flash) kernel."""
    return kadyn.kernels.attention_reference(q, k, v, causal=causal)


SHAPES = {
    "tiny": {"n_layers": 2, "d_model": 128, "n_heads": 4, "d_mlp": 512},
    "d64": {"n_layers": 2, "d_model": 64, "n_heads": 2, "d_mlp": 256},
}


def clip_gradients(parameters: list[torch.nn.Parameter], max_norm: float) -> None:
    """`clip_grad_norm_`'s arithmetic, written to be compiled into one graph."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)


def per_half_attention(
    self: CausalSelfAttention,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    return_attention: bool = False,
    pattern: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, None]:
    """`CausalSelfAttention.forward`'s training path as it was before the rotary change: q, k
    and v as permuted views of the projection, q and k each rotated per head half."""
    B, T, D = x.shape
    H, Dh = self.n_heads, self.head_dim
    q, k, v = self.qkv(x).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)
    # The (T, Dh/2) tables back from GPT's lanes: cos twice per head, then -sin and sin.
    c = cos[:T].unflatten(-1, (-1, 2, Dh // 2))[:, 0, 0]
    s = sin[:T].unflatten(-1, (-1, 2, Dh // 2))[:, 0, 1]

    def rotate(t: torch.Tensor) -> torch.Tensor:
        t1, t2 = t.chunk(2, dim=-1)
        return torch.cat([t1 * c - t2 * s, t1 * s + t2 * c], dim=-1)

    y = kadyn.model.attention(rotate(q), rotate(k), v, causal=True)
    return self.proj(y.transpose(1, 2).reshape(B, T, D)), None


class Step:
    """A model, optimizer and schedule, and how one step runs; `step(ids)` returns the loss.

    opts: trim, compile (bool), long (int64 ids), clip ("eager" or "compiled"), adamw ("fused" or
    "foreach"), loss ("kadyn" or "cross_entropy"), rope ("lanes" or "per-half"), wrapper
    ("cpp" or "python"), lengths ("dynamic" or "static"), positions ("targets" or "all"), layout
    ("gather" or "scatter"), attention ("written" or "flash"); the defaults are the trainer's."""

    def __init__(self, config: TrainConfig, vocab: int, pad_id: int, **opts: Any) -> None:
        self.opts = {"trim": True, "compile": True, "long": False, "clip": "eager", **opts}
        torch.manual_seed(config.seed)
        self.model = GPT(make_model_config(config, vocab))
        self.model.train()
        if self.opts.get("rope") == "per-half":
            for block in self.model.blocks:
                block.attn.forward = types.MethodType(per_half_attention, block.attn)
        adamw = self.opts.get("adamw", "fused")
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, config.weight_decay),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            **({"fused": True} if adamw == "fused" else {"foreach": True}),
        )
        self.scheduler = build_scheduler(self.optimizer, config)
        self.pad_id = pad_id
        self.params = list(self.model.parameters())
        compiled = bool(self.opts["compile"])
        self.loss: Callable[[torch.Tensor], torch.Tensor]
        if self.opts["trim"]:
            step_loss = StepLoss(
                self.model,
                pad_id,
                torch.device("cpu"),
                config.seq_len,
                compiled=compiled,
                drop_untargeted=self.opts.get("positions") != "all",
            )
            if compiled and self.opts.get("wrapper") == "python":
                options = inductor_options(torch.device("cpu"))
                options.pop("cpp_wrapper", None)
                dynamic = None if step_loss.dynamic else False
                step_loss._loss = torch.compile(training_loss, dynamic=dynamic, options=options)
            if compiled and self.opts.get("lengths") == "static":
                step_loss.dynamic = step_loss.drop_untargeted = False
                step_loss._loss = torch.compile(
                    training_loss, dynamic=False, options=inductor_options(torch.device("cpu"))
                )
            self.loss = step_loss
        else:
            fn = torch.compile(training_loss, dynamic=False) if compiled else training_loss
            self.loss = lambda ids: fn(self.model, ids, pad_id)
        self.clip = (
            torch.compile(clip_gradients, dynamic=False)
            if self.opts["clip"] == "compiled"
            else clip_gradients
        )

    def step(self, ids: torch.Tensor) -> float:
        # Swapped in for this side's steps only; dynamo guards on the globals, so each side
        # keeps its own compiled graph.
        if self.opts.get("loss") == "cross_entropy":
            kadyn.model.next_token_loss = attribute_loss_only_reference  # type: ignore[assignment]
        if self.opts.get("layout") == "scatter":
            kadyn.model.to_grid, kadyn.model.from_grid = scatter_to_grid, select_from_grid
        if self.opts.get("attention") == "flash":
            kadyn.model.attention = flash_attention
        try:
            loss = self.loss(ids.long() if self.opts["long"] else ids)
        finally:
            kadyn.model.next_token_loss = NEXT_TOKEN_LOSS
            kadyn.model.to_grid, kadyn.model.from_grid = TO_GRID, FROM_GRID
            kadyn.model.attention = ATTENTION
        loss.backward()
        if self.opts["clip"] == "eager":
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        else:
            self.clip(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def compare(
    name: str, a: Step, b: Step, data: list[torch.Tensor], args: argparse.Namespace
) -> None:
    warm = []
    for v in (a, b):
        start = time.perf_counter()
        for ids in data[: args.warmup]:
            v.step(ids)
        warm.append(time.perf_counter() - start)
    ta: list[float] = []
    tb: list[float] = []
    for i in range(args.steps):
        ids = data[(args.warmup + i) % len(data)]
        for key in "ab" if i % 2 == 0 else "ba":
            start = time.perf_counter()
            (a if key == "a" else b).step(ids)
            (ta if key == "a" else tb).append(time.perf_counter() - start)
    paired = statistics.median(x / y for x, y in zip(ta, tb))
    print(
        f"{name:<16} A {statistics.median(ta) * 1e3:7.1f} ms  B {statistics.median(tb) * 1e3:7.1f}"
        f" ms  A/B paired {paired:5.3f}  (warm-up {args.warmup} steps: A {warm[0]:.1f} s, "
        f"B {warm[1]:.1f} s)",
        flush=True,
    )


OLD = dict(trim=False, compile=False, long=True, clip="eager", loss="cross_entropy")
COMPARISONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "trim": (dict(trim=False, compile=False), dict(trim=True, compile=False)),
    "compile": (dict(compile=False), dict(compile=True)),
    "compile-static": (dict(trim=False, compile=True), dict(trim=True, compile=True)),
    "int64-ids": (dict(compile=False, long=True), dict(compile=False, long=False)),
    "loss-formula": (dict(loss="cross_entropy"), {}),
    "clip": (dict(clip="eager"), dict(clip="compiled")),
    "adamw": (dict(adamw="foreach"), dict(adamw="fused")),
    "rope": (dict(compile=False, rope="per-half"), dict(compile=False)),
    "inductor": (dict(wrapper="python"), {}),
    "lengths": (dict(lengths="static", positions="all"), dict(positions="all")),
    "positions": (dict(compile=False, positions="all"), dict(compile=False)),
    "positions-compiled": (dict(positions="all"), {}),
    "layout": (dict(compile=False, layout="scatter"), dict(compile=False)),
    "layout-compiled": (dict(layout="scatter"), {}),
    "attention": (dict(attention="flash"), {}),
    "overall": (OLD, {}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=60, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (compilation)")
    p.add_argument("--only", nargs="*", choices=sorted(COMPARISONS), default=None)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as the trainer on CPU
    config = dataclasses.replace(make_config("tiny"), **SHAPES[args.shape])
    world = build_world(config)
    it = iter(kadyn.BiographyStream(world, batch_size=config.batch_size, seq_len=config.seq_len))
    data = [kadyn.to_torch(next(it))["input_ids"] for _ in range(16)]
    print(
        f"torch {torch.__version__}, {args.threads} threads, shape {args.shape}, median of "
        f"{args.steps} interleaved steps each; A/B > 1 means B is faster"
    )
    for name in args.only if args.only is not None else list(COMPARISONS):
        a_opts, b_opts = COMPARISONS[name]
        a = Step(config, world.vocab_size, world.pad_id, **a_opts)
        b = Step(config, world.vocab_size, world.pad_id, **b_opts)
        compare(name, a, b, data, args)


if __name__ == "__main__":
    main()
