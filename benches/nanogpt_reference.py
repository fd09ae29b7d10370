"""The plain PyTorch reference for kadyn's training step: nanoGPT's `model.py`, at kadyn's shape.

`kadyn-bench train` times kadyn's trainer step against this model in the same process. It is
nanoGPT's GPT (karpathy/nanoGPT, model.py) as its train.py runs it by default: learned position
embeddings, LayerNorm, one fused QKV projection, `F.scaled_dot_product_attention(is_causal=True)`
(nanoGPT's "flash" path), a non-gated GELU MLP, the head tied to the token embedding, dropout 0,
no biases (train.py's `bias = False`), full logits and `F.cross_entropy(..., ignore_index=-1)`;
AdamW over the same two parameter groups, `fused` only on CUDA (nanoGPT's `configure_optimizers`),
grad clip 1.0, `zero_grad(set_to_none=True)`. Eager unless the caller wraps it in `torch.compile`
(nanoGPT's `--compile`).

The shape is kadyn's: n_layer, n_embd, n_head, MLP width, vocabulary and sequence length are
given; with MLP width 4 x n_embd (both of kadyn's benchmarked shapes) it is nanoGPT's own MLP.
What differs from kadyn's model is what nanoGPT does differently (LayerNorm vs RMSNorm, learned
positions vs rotary), so the ratio reads as "kadyn's step vs a well-known plain PyTorch step".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE = -1  # nanoGPT's ignore_index


@dataclass
class ReferenceConfig:
    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    d_mlp: int = 512  # nanoGPT: 4 * n_embd
    dropout: float = 0.0
    bias: bool = False


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nanoGPT's; torch's `bias=False` came later)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.d_mlp, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(config.d_mlp, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        tok_emb = self.transformer.wte(idx)
        pos_emb = self.transformer.wpe(pos)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=IGNORE
        )
        return logits, loss

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device: str
    ) -> torch.optim.AdamW:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        extra = {"fused": True} if device == "cuda" else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)


def get_batch(input_ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT's get_batch on kadyn's rows: int64 inputs and next-token targets, -1 where the
    next token is <pad> or absent (the same tokens as kadyn's loss)."""
    x = input_ids.long()
    y = torch.full_like(x, IGNORE)
    y[:, :-1] = x[:, 1:]
    y[y == pad_id] = IGNORE
    return x, y


class ReferenceStep:
    """nanoGPT's training iteration: forward with targets, backward, clip, AdamW, zero_grad."""

    def __init__(
        self,
        config: ReferenceConfig,
        device: torch.device,
        pad_id: int,
        compile: bool = False,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        grad_clip: float = 1.0,
    ) -> None:
        self.model = GPT(config).to(device)
        self.model.train()
        self.optimizer = self.model.configure_optimizers(weight_decay, lr, (0.9, 0.95), device.type)
        self.forward = torch.compile(self.model) if compile else self.model
        self.device = device
        self.pad_id = pad_id
        self.grad_clip = grad_clip

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        x, y = get_batch(input_ids.to(self.device, non_blocking=True), self.pad_id)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):
            _, loss = self.forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()
