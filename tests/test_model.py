"""The transformer (kadyn.model): fast vs slow path, attention read-out/patching, heads, RoPE,
and the training step's inputs (int32 ids, trimmed padding)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kadyn.model import (
    GPT,
    IGNORE_INDEX,
    ModelConfig,
    Rows,
    apply_rope,
    from_grid,
    next_token_targets,
    rope_lanes,
    rope_tables,
    target_positions,
    to_grid,
    trim_padding,
)

V, T = 50, 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(tie: bool = True, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        ModelConfig(
            vocab_size=V,
            n_layers=2,
            d_model=32,
            n_heads=2,
            d_mlp=64,
            max_seq_len=16,
            tie_embeddings=tie,
        )
    )


def batch(seed: int = 1, B: int = 3) -> torch.Tensor:
    return torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tie", [True, False])
def test_forward_matches_logits_path(tie: bool) -> None:
    model = small(tie)
    ids = batch()
    targets = next_token_targets(ids, pad_id=0)
    out = model(ids, targets)
    logits = model.logits(ids)
    assert logits.shape == (3, T, V)
    ce = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none")
    assert torch.allclose(out.token_ce.reshape(-1), ce, atol=1e-5)
    assert torch.allclose(out.loss, ce[targets.reshape(-1) != IGNORE_INDEX].mean(), atol=1e-5)
    argmax_right = (logits.argmax(-1) == targets) & (targets != IGNORE_INDEX)
    assert torch.equal(out.token_correct, argmax_right)
    assert out.attention is None
    # The training step's loss alone: the same number, no per-token outputs.
    lean = model(ids, targets, token_stats=False)
    assert lean.token_ce is None and lean.token_correct is None
    assert torch.allclose(lean.loss, out.loss, atol=1e-6)


def test_causal() -> None:
    model = small()
    ids = batch()
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % V
    a, b = model.logits(ids), model.logits(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def test_return_attention_is_the_slow_path_of_the_same_function() -> None:
    model = small()
    ids = batch()
    targets = next_token_targets(ids, 0)
    fast = model(ids, targets)
    slow = model(ids, targets, return_attention=True)
    assert torch.allclose(fast.loss, slow.loss, atol=1e-5)
    assert len(slow.attention) == 2
    for p in slow.attention:
        assert p.shape == (3, 2, T, T)
        assert torch.allclose(p.sum(-1), torch.ones(3, 2, T), atol=1e-5)
        assert (p.triu(1) == 0).all()  # nothing attends to the future


def test_attention_override() -> None:
    model = small()
    ids = batch()
    targets = next_token_targets(ids, 0)
    own = model(ids, targets, return_attention=True).attention
    same = model(ids, targets, attention_override={1: own[1]})
    assert torch.allclose(same.loss, model(ids, targets).loss, atol=1e-5)

    # Attending only to itself in layer 0 changes the output...
    diagonal = torch.eye(T).expand(3, 2, T, T)
    patched = model(ids, targets, attention_override={0: diagonal}, return_attention=True)
    assert not torch.allclose(patched.hidden, same.hidden, atol=1e-4)
    assert torch.equal(patched.attention[0], diagonal)
    # ...and no gradient reaches layer 0's queries and keys (only its values).
    model.zero_grad()
    patched.loss.backward()
    grad = model.blocks[0].attn.qkv.weight.grad
    d = model.config.d_model
    assert grad[: 2 * d].abs().max() == 0
    assert grad[2 * d :].abs().max() > 0
    assert model.blocks[1].attn.qkv.weight.grad[:d].abs().max() > 0


def test_attention_override_is_checked() -> None:
    model = small()
    ids = batch()
    with pytest.raises(ValueError, match=r"layer must be in \[0, 1\], got 2"):
        model(ids, attention_override={2: torch.zeros(3, 2, T, T)})
    with pytest.raises(ValueError, match="shape"):
        model(ids, attention_override={0: torch.zeros(3, 2, T, T + 1)})


def test_parameter_counts() -> None:
    tied, untied = small(True), small(False)
    body = 2 * (4 * 32 * 32 + 2 * 32 * 64 + 2 * 32) + 32  # blocks (qkv, proj, MLP, 2 norms), norm
    assert tied.num_parameters(embeddings=False) == body
    assert untied.num_parameters(embeddings=False) == body
    assert tied.num_parameters() == body + V * 32
    assert untied.num_parameters() == body + 2 * V * 32
    assert untied.head_weight is not untied.embed.weight
    assert tied.head_weight is tied.embed.weight
    assert tied.flops_per_token(T) == 6 * (body + V * 32) + 12 * 2 * 32 * T


def test_rope_depends_only_on_relative_position() -> None:
    cos, sin = rope_lanes(*rope_tables(32, 8, 10000.0), n_heads=1)
    q, k = torch.randn(1, 1, 8), torch.randn(1, 1, 8)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q.expand(1, 32, 8), cos, sin, 8)[0, m]
        kn = apply_rope(k.expand(1, 32, 8), cos, sin, 8)[0, n]
        return float(qm @ kn)

    assert score(5, 2) == pytest.approx(score(20, 17), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_rope_is_bitwise_the_per_half_rotation() -> None:
    """`apply_rope` on all heads' rows at once gives, bit for bit, the outputs and gradients of
    the rotation written per head half (x1 cos - x2 sin | x1 sin + x2 cos), the form it replaced."""
    B, T, H, Dh = 3, 20, 4, 16
    cos, sin = rope_tables(T, Dh, 10000.0)
    x = torch.randn(B, T, 3 * H * Dh, generator=torch.Generator().manual_seed(0))
    grad = torch.randn(B, T, 2 * H * Dh, generator=torch.Generator().manual_seed(1))

    def per_half(qkv: torch.Tensor) -> torch.Tensor:
        heads = qkv[..., : 2 * H * Dh].unflatten(-1, (2 * H, Dh)).transpose(1, 2)  # (B, 2H, T, Dh)
        x1, x2 = heads.chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return out.transpose(1, 2).flatten(-2)

    def lanes(qkv: torch.Tensor) -> torch.Tensor:
        return apply_rope(qkv[..., : 2 * H * Dh], *rope_lanes(cos, sin, 2 * H), Dh)

    outputs, grads = [], []
    for rotate in (per_half, lanes):
        leaf = x.clone().requires_grad_()
        out = rotate(leaf)
        out.backward(grad)
        outputs.append(out.detach())
        grads.append(leaf.grad)
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(grads[0], grads[1])


def test_next_token_targets_ignore_pad_and_last() -> None:
    ids = torch.tensor([[1, 5, 6, 2, 0, 0]])
    assert next_token_targets(ids, pad_id=0).tolist() == [[5, 6, 2, -100, -100, -100]]


def test_int32_ids_give_the_int64_result() -> None:
    # The stream's batches are int32 and the training step no longer copies them to int64.
    model = small()
    ids = batch()
    targets = next_token_targets(ids, 0)
    wide = model(ids.long(), targets, token_stats=False).loss
    narrow = model(ids.int(), targets, token_stats=False).loss
    assert narrow.item() == wide.item()


def padded(seed: int = 3) -> torch.Tensor:
    """int32 rows of 3..T-2 tokens, <pad> (0) after them: the stream's layout."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (4, T), generator=g, dtype=torch.int32)
    lengths = torch.tensor([[3], [T - 2], [5], [4]])
    ids[torch.arange(T) >= lengths] = 0
    return ids


def test_trim_padding_drops_only_all_pad_columns() -> None:
    ids = padded()  # the longest row has T - 2 = 10 tokens
    assert trim_padding(ids, 0, multiple=1).shape == (4, T - 2)
    assert torch.equal(trim_padding(ids, 0, multiple=1), ids[:, : T - 2])
    assert trim_padding(ids, 0, multiple=4).shape == (4, 12)  # 10 rounded up to 12 = T: whole
    assert trim_padding(ids, 0, multiple=4) is ids
    short = ids.clone()
    short[1, 5:] = 0  # now the longest row has 5 tokens
    assert trim_padding(short, 0, multiple=1).shape == (4, 5)
    assert trim_padding(short, 0, multiple=4).shape == (4, 8)
    assert trim_padding(torch.zeros(2, T, dtype=torch.int32), 0, multiple=4).shape == (2, 4)
    full = torch.randint(3, V, (2, T))
    assert trim_padding(full, 0) is full


def loss_and_gradients(ids: torch.Tensor, **forward) -> tuple[float, dict[str, torch.Tensor]]:
    """A fresh `small()` model's loss on `ids` and its parameters' gradients."""
    model = small()
    loss = model(ids, next_token_targets(ids, 0), **forward).loss
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


def assert_same_loss_and_gradients(
    expected: tuple[float, dict[str, torch.Tensor]], got: tuple[float, dict[str, torch.Tensor]]
) -> None:
    assert got[0] == pytest.approx(expected[0], rel=1e-6)
    for name, g in expected[1].items():
        assert torch.allclose(got[1][name], g, rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("token_stats", [False, True])
def test_trimmed_batch_has_the_full_batchs_loss_and_gradients(token_stats: bool) -> None:
    ids = padded()
    ids[1, 6:] = 0  # longest row: 6 tokens, so half the columns are all <pad>
    trimmed = trim_padding(ids, 0, multiple=1)
    assert trimmed.shape[1] == 6
    assert_same_loss_and_gradients(
        loss_and_gradients(ids, token_stats=token_stats),
        loss_and_gradients(trimmed, token_stats=token_stats),
    )


def test_target_positions_are_those_with_a_target_when_they_lead_every_row() -> None:
    ids = padded()
    positions = target_positions(ids, 0)
    assert positions is not None
    expected = (next_token_targets(ids, 0) != IGNORE_INDEX).flatten().nonzero().squeeze(1)
    assert torch.equal(positions, expected)
    # Each row's last token (before its <pad>) has no target, so it is left out too.
    assert positions.numel() == int((ids != 0).sum()) - ids.shape[0]
    inside = ids.clone()
    inside[2, 3] = 0  # a <pad> followed by tokens: position 2 has no target, position 3 has one
    assert target_positions(inside, 0) is None
    assert target_positions(torch.zeros(2, T, dtype=torch.int32), 0).numel() == 0


def test_target_positions_give_the_full_batchs_loss_and_gradients() -> None:
    ids = padded()
    positions = target_positions(ids, 0)
    assert_same_loss_and_gradients(
        loss_and_gradients(ids, token_stats=False),
        loss_and_gradients(ids, token_stats=False, positions=positions),
    )
    out = small()(ids, next_token_targets(ids, 0), token_stats=False, positions=positions)
    assert out.hidden.shape == (positions.numel(), 32)  # the kept positions' alone


def test_grid_layout_is_index_copy_and_select_with_gathers_for_gradients() -> None:
    # Rows of 3, 2 and 0 kept positions in a (3, 4) batch: what target_positions gives.
    positions = torch.tensor([0, 1, 2, 4, 5])
    rows = Rows.of(positions, (3, 4))
    assert rows.slot.tolist() == [0, 1, 2, 5, 3, 4, 5, 5, 5, 5, 5, 5]
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(to_grid(x, rows), x.new_zeros(12, 3).index_copy(0, positions, x))
    y = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(from_grid(y, rows), y.index_select(0, positions))
    # Their hand-written backwards against finite differences.
    assert torch.autograd.gradcheck(lambda t: to_grid(t, rows), (x,))
    assert torch.autograd.gradcheck(lambda t: from_grid(t, rows), (y,))


def test_target_positions_are_for_the_loss_alone() -> None:
    ids = padded()
    positions = target_positions(ids, 0)
    targets = next_token_targets(ids, 0)
    with pytest.raises(ValueError, match="loss alone"):
        small()(ids, targets, positions=positions)  # token_stats=True
    with pytest.raises(ValueError, match="loss alone"):
        small()(ids, positions=positions, token_stats=False)
    with pytest.raises(ValueError, match="attention patterns"):
        small()(ids, targets, token_stats=False, positions=positions, return_attention=True)


def test_too_long_input_is_refused() -> None:
    with pytest.raises(ValueError, match="sequence length must be <= 16"):
        small()(torch.zeros(1, 17, dtype=torch.long))


def test_generate_is_greedy() -> None:
    model = small()
    prompt = batch(B=1)[:, :4]
    out = model.generate(prompt, max_new_tokens=3, eos_id=None)
    assert out.shape == (1, 7)
    assert torch.equal(out[:, :4], prompt)
    assert int(out[0, 4]) == int(model.logits(prompt)[0, -1].argmax())
    assert int(out[0, 6]) == int(model.logits(out[:, :6])[0, -1].argmax())


def test_generate_stops_rows_at_eos(monkeypatch) -> None:
    model = small()
    # Row 0 says <eos> (2) at once, row 1 after two tokens; then only <eos> or 7 would follow.
    script = {0: [2, 7, 7, 7], 1: [5, 6, 2, 7]}

    def logits(ids: torch.Tensor) -> torch.Tensor:
        step = ids.shape[1] - 4
        out = torch.zeros(ids.shape[0], ids.shape[1], V)
        for row, tokens in script.items():
            out[row, -1, tokens[step]] = 1.0
        return out

    monkeypatch.setattr(model, "logits", logits)
    prompt = batch(B=2)[:, :4]
    out = model.generate(prompt, max_new_tokens=4)
    assert out[:, 4:].tolist() == [[2, 0, 0], [5, 6, 2]]  # finished rows padded; stops when all are
    assert model.generate(prompt, max_new_tokens=4, eos_id=None)[:, 4:].tolist() == [
        [2, 7, 7, 7],
        [5, 6, 2, 7],
    ]


def test_learns_a_batch() -> None:
    model = small()
    ids = batch(B=4)
    targets = next_token_targets(ids, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(ids, targets).loss.item()
    for _ in range(40):
        loss = model(ids, targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
