"""The decoder-only transformer trained on biographies (nanoGPT-style, one file).

Pre-norm blocks (RMSNorm), rotary position embeddings, causal self-attention and a GELU MLP; a
final RMSNorm and an output head tied to the token embedding or not. Two compute paths:

- the fast path (training, evaluation) calls `kadyn.kernels.attention` and applies the head with
  `kadyn.kernels.attribute_loss`, which on CUDA never materialises the (tokens x vocab) logits and
  returns per-token cross-entropy and correctness for the knowledge metrics in the same pass; the
  training step asks for the loss alone (`token_stats=False`), which off CUDA is a plain summed
  `F.cross_entropy` that `torch.compile` traces into one graph with the rest of the model, and
  computes it from the positions that have a target alone (`target_positions`);
- an explicit slow path computes softmax(QK^T / sqrt(d)) itself, so that attention patterns can be
  read out (`return_attention=True`) or replaced per layer (`attention_override={layer: p}`), as the
  attention-patching experiment needs (paper, App. D.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kadyn.kernels import attention, attribute_loss
from kadyn.kernels.attention import attention_weights
from kadyn.kernels.attribute_loss import attribute_loss_only_reference

IGNORE_INDEX = -100
# Fixed in every world's vocabulary (kadyn-core's vocab.rs).
PAD_ID, EOS_ID = 0, 2


@dataclass
class ModelConfig:
    vocab_size: int
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    max_seq_len: int = 128
    tie_embeddings: bool = True
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Rows(NamedTuple):
    """A batch's kept positions (`target_positions`): their flat indices into (B, T); `slot`, for
    each of the B * T positions, its row among them (their count N where it was dropped); and
    the batch's shape (B, T), which attention lays them out in (`to_grid`, `from_grid`)."""

    positions: torch.Tensor
    slot: torch.Tensor
    shape: tuple[int, int]

    @staticmethod
    def of(positions: torch.Tensor, shape: tuple[int, int]) -> Rows:
        n = positions.shape[0]
        rows = torch.arange(n, device=positions.device)
        slot = positions.new_full((shape[0] * shape[1],), n).index_copy(0, positions, rows)
        return Rows(positions, slot, shape)


def _spread(x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Row `slot[i]` of `x` (N, C) at place i, zeros where slot[i] == N: a gather from `x` and
    a zero row."""
    return torch.cat([x, x.new_zeros(1, x.shape[1])]).index_select(0, slot)


class _ToGrid(torch.autograd.Function):
    """(N, C) kept rows -> (B * T, C), zeros at the dropped positions. Each kept row lands in one
    place, so the gradient is a gather back (`from_grid`'s forward). Autograd's own backward for
    index_select is a scatter-add, which deterministic mode runs as a sorted index_put, compiled
    too: gathers both ways make a compiled tiny-preset step 1.04x faster (2 threads, Zen 4;
    `python benches/train_step.py --only layout-compiled`)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(positions)
        return _spread(x, slot)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (positions,) = ctx.saved_tensors
        return grad.index_select(0, positions), None, None


class _FromGrid(torch.autograd.Function):
    """(B * T, C) -> the (N, C) kept rows; the gradient goes back by `to_grid`'s gather."""

    @staticmethod
    def forward(
        ctx: Any, y: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(slot)
        return y.index_select(0, positions)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (slot,) = ctx.saved_tensors
        return _spread(grad, slot), None, None


def to_grid(x: torch.Tensor, rows: Rows) -> torch.Tensor:
    """The kept rows `x` (N, C) laid out as (B * T, C), zeros at the dropped positions."""
    out: torch.Tensor = _ToGrid.apply(x, rows.positions, rows.slot)
    return out


def from_grid(y: torch.Tensor, rows: Rows) -> torch.Tensor:
    """The kept rows (N, C) of `y` (B * T, C): `to_grid`'s inverse."""
    out: torch.Tensor = _FromGrid.apply(y, rows.positions, rows.slot)
    return out


class GPTOutput(NamedTuple):
    """What a forward pass returns. Loss fields are None without targets.

    token_ce[b, t] / token_correct[b, t] score the prediction of input_ids[b, t + 1] made at
    position t (the targets' alignment); attention[l] is layer l's (B, H, T, T) pattern.
    """

    loss: Optional[torch.Tensor]
    token_ce: Optional[torch.Tensor]
    token_correct: Optional[torch.Tensor]
    hidden: torch.Tensor
    attention: Optional[list[torch.Tensor]]


def rope_tables(
    seq_len: int, head_dim: int, base: float, device: Optional[torch.device] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)  # (T, Dh/2)
    return angles.cos(), angles.sin()


def rope_lanes(
    cos: torch.Tensor, sin: torch.Tensor, n_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope_tables`' (T, Dh/2) tables as `apply_rope` reads them: (T, n_heads * Dh), for heads
    laid side by side along the last dimension; cos twice per head, then -sin and sin."""
    return torch.cat([cos, cos], -1).repeat(1, n_heads), torch.cat([-sin, sin], -1).repeat(
        1, n_heads
    )


def apply_rope(
    x: torch.Tensor, cos_lanes: torch.Tensor, sin_lanes: torch.Tensor, head_dim: int
) -> torch.Tensor:
    """Rotate the pairs (x[..., i], x[..., i + Dh/2]) of each head of (..., T, heads * Dh) by
    position-dependent angles (tables from `rope_lanes`). Returns a contiguous tensor.

    As x * cos + (x with each head's halves swapped) * (-sin | sin): four whole-row ops on rows
    of every head at once. Written per head half, (x1 * cos - x2 * sin | x1 * sin + x2 * cos), it
    took fourteen ops on 16-float strided pieces, ~12% of a tiny-preset CPU step. Each output is
    the same two products and one sum either way (a - b is a + (-b), and a sum commutes), so
    outputs and gradients are bitwise those of the per-half form (tests/test_model.py)."""
    T = x.shape[-2]
    xf = x.float()
    if torch.compiler.is_compiling():
        # Inductor fuses the per-half form into one pass; from the swapped copy it makes a
        # slower one (a compiled tiny-preset step 4% slower).
        halves = xf.unflatten(-1, (-1, 2, head_dim // 2))
        x1, x2 = halves[..., 0, :], halves[..., 1, :]
        cos = cos_lanes[:T].unflatten(-1, (-1, 2, head_dim // 2))[..., 0, :]
        sin = sin_lanes[:T].unflatten(-1, (-1, 2, head_dim // 2))[..., 1, :]
        rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-2)
        return rotated.flatten(-3).type_as(x)
    swapped = xf.unflatten(-1, (-1, head_dim)).roll(head_dim // 2, dims=-1).flatten(-2)
    return (xf * cos_lanes[:T] + swapped * sin_lanes[:T]).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        return_attention: bool = False,
        pattern: Optional[torch.Tensor] = None,
        rows: Optional[Rows] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x (B, T, D); or, with `rows`, (N, D): the rows' positions `rows.positions` alone."""
        qkv = self.qkv(x)
        if rows is not None:
            # Attention needs the (B, T) layout: the dropped positions come in as zeros, which
            # no kept position attends to (they come after it in its row).
            B, T = rows.shape
            qkv = to_grid(qkv, rows).view(B, T, -1)
        (B, T), D = qkv.shape[:2], x.shape[-1]
        H, Dh = self.n_heads, self.head_dim
        # q and k rotated together: (B, T, 2D), each head's features contiguous. (split, not
        # slicing: its backward concatenates the gradients, slicing's zero-fills qkv's twice.)
        qk, v = qkv.split([2 * D, D], dim=-1)
        q, k = apply_rope(qk, cos, sin, Dh).view(B, T, 2, H, Dh).permute(2, 0, 3, 1, 4)
        v = v.view(B, T, H, Dh).transpose(1, 2)
        att = None
        if pattern is not None:
            # Patched: the given pattern replaces softmax(QK^T); no gradient flows into it, so the
            # queries and keys of this layer receive none either (as in the paper's twin model).
            if pattern.shape != (B, self.n_heads, T, T):
                raise ValueError(
                    f"attention_override pattern must have shape {(B, self.n_heads, T, T)}, "
                    f"got {tuple(pattern.shape)}"
                )
            att = pattern.detach().to(v.dtype)
            y = att @ v
        elif return_attention:
            att = attention_weights(q, k, causal=True).to(v.dtype)
            y = att @ v
        else:
            y = attention(q, k, v, causal=True)
        y = y.transpose(1, 2).reshape(B, T, D)
        if rows is not None:
            y = from_grid(y.view(B * T, D), rows)
        return self.proj(y), att


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_mlp, bias=False)
        self.down = nn.Linear(config.d_mlp, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = nn.RMSNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        return_attention: bool = False,
        pattern: Optional[torch.Tensor] = None,
        rows: Optional[Rows] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        a, att = self.attn(self.attn_norm(x), cos, sin, return_attention, pattern, rows)
        x = x + a
        x = x + self.mlp(self.mlp_norm(x))
        return x, att


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model)
        self.head = (
            None
            if config.tie_embeddings
            else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )
        # Rotary tables for q and k side by side (2 * n_heads heads), as `apply_rope` reads them.
        # Not persistent: derived from the config, so checkpoints hold only learned tensors.
        cos, sin = rope_lanes(
            *rope_tables(config.max_seq_len, config.head_dim, config.rope_base),
            2 * config.n_heads,
        )
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual-stream writes by 1/sqrt(2L) so the stream's variance at init
        # does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.head is None else self.head.weight

    def num_parameters(self, embeddings: bool = True) -> int:
        """Parameter count; without embeddings drops the token embedding and an untied head."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.embed.weight.numel()
            if self.head is not None:
                n -= self.head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x (matmul parameters) + attention scores (PaLM, App. B)."""
        c = self.config
        matmul_params = self.num_parameters(embeddings=False) + c.vocab_size * c.d_model
        return 6.0 * matmul_params + 12.0 * c.n_layers * c.d_model * seq_len

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        return_attention: bool = False,
        attention_override: Optional[dict[int, torch.Tensor]] = None,
        rows: Optional[Rows] = None,
    ) -> tuple[torch.Tensor, Optional[list[torch.Tensor]]]:
        """Final-norm hidden states (B, T, d) and, on request, every layer's attention pattern.
        With `rows` (`target_positions`): (N, d), those of the rows' kept positions alone."""
        B, T = input_ids.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length must be <= {self.config.max_seq_len}, got {T}")
        override = attention_override or {}
        for layer in override:
            if not 0 <= layer < self.config.n_layers:
                raise ValueError(
                    f"attention_override layer must be in [0, {self.config.n_layers - 1}], "
                    f"got {layer}"
                )
        if rows is not None and (return_attention or override):
            raise ValueError("rows (kept positions) cannot be combined with attention patterns")
        x = self.embed(
            input_ids if rows is None else input_ids.reshape(-1).index_select(0, rows.positions)
        )
        patterns: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, att = block(x, self.rope_cos, self.rope_sin, return_attention, override.get(i), rows)
            if return_attention:
                assert att is not None
                patterns.append(att)
        return self.norm(x), (patterns if return_attention else None)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: Optional[torch.Tensor] = None,
        return_attention: bool = False,
        attention_override: Optional[dict[int, torch.Tensor]] = None,
        token_stats: bool = True,
        positions: Optional[torch.Tensor] = None,
    ) -> GPTOutput:
        """input_ids (B, T); targets (B, T) int64 with IGNORE_INDEX where nothing is predicted.

        token_stats=False (the training step) computes the loss alone: token_ce and token_correct
        are then None, and on CPU neither they nor the argmax are computed.

        positions (the training step's, from `target_positions`): the flat indices of the
        positions that have a target, leading every row. The loss is computed from them alone
        (the same loss and gradients); `hidden` is then theirs, (N, d). Loss only: needs targets
        and token_stats=False.
        """
        rows = None
        if positions is not None:
            if targets is None or token_stats:
                raise ValueError(
                    "positions computes the loss alone: pass targets, token_stats=False"
                )
            rows = Rows.of(positions, input_ids.shape)
        # int32 ids (the stream's) index the embedding as they are: no int64 copy of the batch.
        hidden, patterns = self.hidden_states(input_ids, return_attention, attention_override, rows)
        if targets is None:
            return GPTOutput(None, None, None, hidden, patterns)
        D = hidden.shape[-1]
        flat_targets = targets.reshape(-1)
        if rows is not None:
            flat_targets = flat_targets.index_select(0, rows.positions)
        flat_targets, flat_hidden = flat_targets.long(), hidden.reshape(-1, D)
        if not token_stats and hidden.device.type != "cuda":
            # What attribute_loss(..., token_stats=False) computes off CUDA, without its checks
            # and dispatch (the training step's inputs are the model's own).
            loss = next_token_loss(flat_hidden, self.head_weight, flat_targets)
            return GPTOutput(loss, None, None, hidden, patterns)
        B, T = input_ids.shape
        loss, token_ce, token_correct = attribute_loss(
            flat_hidden, self.head_weight, flat_targets, token_stats=token_stats
        )
        if token_ce is None or token_correct is None:
            return GPTOutput(loss, None, None, hidden, patterns)
        return GPTOutput(loss, token_ce.view(B, T), token_correct.view(B, T), hidden, patterns)

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_override: Optional[dict[int, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Full (B, T, vocab) float logits: generation and tests, not the training path."""
        hidden, _ = self.hidden_states(input_ids.long(), False, attention_override)
        return F.linear(hidden, self.head_weight).float()

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, max_new_tokens: int, eos_id: Optional[int] = EOS_ID
    ) -> torch.Tensor:
        """Greedy continuation of (B, T) prompts. A row that produced `eos_id` (<eos> by default;
        None: never stop) is finished: it continues with <pad>, and generation stops once every
        row is finished (as Hugging Face's `generate` pads finished rows)."""
        out = input_ids.long()
        done = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
        for _ in range(max_new_tokens):
            next_id = self.logits(out[:, -self.config.max_seq_len :])[:, -1].argmax(-1)
            if eos_id is not None:
                next_id = torch.where(done, PAD_ID, next_id)
                done |= next_id == eos_id
            out = torch.cat([out, next_id[:, None]], dim=1)
            if eos_id is not None and bool(done.all()):
                break
        return out


def next_token_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` (tokens, vocab) against `targets` (tokens,),
    IGNORE_INDEX ignored: the training step's loss off CUDA (`attribute_loss`'s torch backend
    with token_stats=False)."""
    if not torch.compiler.is_compiling():
        return attribute_loss_only_reference(hidden, weight, targets)
    # Compiled: the same quantity as log-sum-exp minus the target's logit, picked by a one-hot
    # mask. Inductor then makes d(loss)/d(logits) in one pass over the logits; from
    # F.cross_entropy it also sums nll_loss's one-hot gradient over the vocabulary first, a second
    # full pass (a step 2-3% slower at d_model 64, benches/train_step.py).
    logits = F.linear(hidden, weight).float()
    valid = targets != IGNORE_INDEX
    picked = torch.arange(logits.shape[1], device=logits.device) == targets[:, None]
    target_logit = torch.where(picked, logits, 0.0).sum(dim=1)
    token_ce = torch.where(valid, torch.logsumexp(logits, dim=1) - target_logit, 0.0)
    return token_ce.sum() / valid.sum().clamp(min=1)


def trim_padding(input_ids: torch.Tensor, pad_id: int, multiple: int = 8) -> torch.Tensor:
    """The batch without its trailing columns that are <pad> in every row, the length rounded up
    to a multiple of `multiple` (or all columns there are).

    Those positions predict nothing (their targets, and the last kept position's, are <pad>, so
    ignored) and, attention being causal, change nothing before them: the loss and its gradients
    are those of the full batch, computed on fewer positions. Biographies fill about two thirds of
    the tiny preset's 100 tokens and the longest of 32 rows about 80. Rounding keeps the number of
    distinct shapes small (each is one compilation of a compiled step). Reads the tensor's values:
    call it on the CPU batch, before it moves to an accelerator (no device sync)."""
    used = (input_ids != pad_id).any(dim=0).nonzero()
    length = int(used[-1]) + 1 if used.numel() else 1
    length = min(input_ids.shape[1], -(-length // multiple) * multiple)
    return input_ids if length == input_ids.shape[1] else input_ids[:, :length].contiguous()


def target_positions(input_ids: torch.Tensor, pad_id: int) -> Optional[torch.Tensor]:
    """The flat indices (into B * T) of the positions that have a target (the next token is not
    <pad>), if in every row they come before all the others, as in the stream's rows (<pad> only
    at the end); else None.

    Attention being causal, those positions' outputs depend on them alone, and the loss is theirs:
    `GPT.forward(positions=...)` computes the same loss and gradients without the rest. Past
    `trim_padding`, <pad> still fills 16% of a tiny-preset batch's positions; left out of every
    position-wise op (all but attention's scores), a tiny-preset step is 1.12x faster eager and
    1.09x compiled, a d_model-64 one 1.07x and 1.06x (2 threads, Zen 4; `python
    benches/train_step.py --only positions positions-compiled`). Reads the tensor's values: call
    it on the CPU batch, before it moves to an accelerator (no device sync)."""
    has_target = next_token_targets(input_ids, pad_id) != IGNORE_INDEX
    if bool((has_target[:, 1:] > has_target[:, :-1]).any()):
        return None  # a target after a position without one: a <pad> inside a row
    return has_target.view(-1).nonzero().squeeze(1)


def next_token_targets(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Targets for every position: the next token, IGNORE_INDEX at <pad> and after the last one."""
    ids = input_ids.long()
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, :-1] = ids[:, 1:]
    targets[targets == pad_id] = IGNORE_INDEX
    return targets
