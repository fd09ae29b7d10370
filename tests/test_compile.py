"""The compiled training step (`kadyn.train.StepLoss`, torch.compile with inductor): the same loss
and gradients as the eager step, one graph, an exact resume, and when it is not used.

Compiling costs seconds per graph, so only the tests here compile; every other test that trains
runs fewer than `COMPILE_MIN_STEPS` steps and stays eager. Also here: a smoke run of
`kadyn-bench train`, the trainer-step benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
from test_train import read_records, small_config, without_timing
from torch._dynamo.utils import counters

import kadyn
import kadyn.train
from kadyn import bench
from kadyn.config import make_config
from kadyn.kernels.attribute_loss import IGNORE_INDEX, attribute_loss_only_reference
from kadyn.model import GPT, next_token_loss, target_positions, trim_padding
from kadyn.train import (
    COMPILE_MIN_STEPS,
    TRIM_MULTIPLE,
    StepLoss,
    build_world,
    dynamic_lengths,
    eager_reason,
    inductor_options,
    make_model_config,
    train,
    training_loss,
)

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model_and_batches(tmp_path: Path, n: int = 3) -> tuple[GPT, int, list[torch.Tensor]]:
    config = small_config(tmp_path)
    world = build_world(config)
    torch.manual_seed(0)
    model = GPT(make_model_config(config, world.vocab_size))
    stream = kadyn.BiographyStream(world, batch_size=config.batch_size, seq_len=config.seq_len)
    it = iter(stream)
    return model, world.pad_id, [kadyn.to_torch(next(it))["input_ids"] for _ in range(n)]


def test_training_loss_is_one_graph(tmp_path) -> None:
    # A graph break would split the step into pieces compiled apart (and, at the break, run eager).
    model, pad_id, batches = small_model_and_batches(tmp_path, 1)
    ids = trim_padding(batches[0], pad_id)
    explained = torch._dynamo.explain(training_loss)(model, ids, pad_id)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_compiled_step_matches_eager(tmp_path) -> None:
    model, pad_id, batches = small_model_and_batches(tmp_path)
    twin = GPT(model.config)
    twin.load_state_dict(model.state_dict())
    eager = StepLoss(model, pad_id, CPU, model.config.max_seq_len, compiled=False)
    compiled = StepLoss(twin, pad_id, CPU, model.config.max_seq_len, compiled=True)
    for ids in batches:
        a, b = eager(ids), compiled(ids)
        assert b.item() == pytest.approx(a.item(), rel=1e-5)
        a.backward()
        b.backward()
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            assert torch.allclose(q.grad, p.grad, rtol=1e-4, atol=1e-6), name
            p.grad, q.grad = None, None


@pytest.fixture
def deterministic_algorithms() -> Iterator[None]:
    """As the trainer runs (kadyn.runtime): without it, inductor's embedding gradient adds in
    parallel, in no fixed order."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


def loss_and_gradients(
    model: GPT,
    pad_id: int,
    batches: list[torch.Tensor],
    compiled: bool = True,
    drop_untargeted: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A fresh StepLoss's (freshly compiled, if so) loss and gradients on a copy of `model`, on
    the last batch, after the others."""
    torch._dynamo.reset()
    twin = GPT(model.config)
    twin.load_state_dict(model.state_dict())
    step_loss = StepLoss(
        twin, pad_id, CPU, model.config.max_seq_len, compiled, drop_untargeted=drop_untargeted
    )
    for ids in batches:
        loss = step_loss(ids)
        loss.backward()
        grads = [p.grad for p in twin.parameters()]
        twin.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.skipif(not dynamic_lengths(), reason="this torch compiles each length apart")
@pytest.mark.usefixtures("deterministic_algorithms")
def test_one_graph_serves_every_length_whichever_comes_first(tmp_path) -> None:
    # Compiling each trimmed length apart cost a 2-core CPU 39 s for a tiny-preset run's three
    # lengths; one graph for all of them, 21 s. Inductor plans it for seq_len, not for the first
    # length it sees: a resumed run, which starts on another batch, runs the same code.
    model, pad_id, (ids,) = small_model_and_batches(tmp_path, 1)
    length = trim_padding(ids, pad_id, TRIM_MULTIPLE).shape[1]
    shorter = ids.clone()
    shorter[:, length - TRIM_MULTIPLE :] = pad_id
    assert trim_padding(shorter, pad_id, TRIM_MULTIPLE).shape[1] < length

    counters.clear()
    loss, grads = loss_and_gradients(model, pad_id, [shorter, ids])
    assert counters["stats"]["unique_graphs"] == 1  # not recompiled for the second length
    loss_first, grads_first = loss_and_gradients(model, pad_id, [ids])
    assert torch.equal(loss, loss_first)
    for name, (g, h) in zip([n for n, _ in model.named_parameters()], zip(grads, grads_first)):
        assert torch.equal(g, h), name


def test_step_drops_untargeted_positions_only_where_the_loss_stays_the_same(tmp_path) -> None:
    model, pad_id, batches = small_model_and_batches(tmp_path, 2)
    inside = batches[1].clone()
    inside[0, 2] = pad_id  # a <pad> inside a row: every position is computed
    for ids in (batches[0], inside):
        every, every_grads = loss_and_gradients(model, pad_id, [ids], False, False)
        kept, kept_grads = loss_and_gradients(model, pad_id, [ids], False, True)
        assert kept.item() == pytest.approx(every.item(), rel=1e-6)
        for g, h in zip(every_grads, kept_grads):
            assert torch.allclose(h, g, rtol=1e-5, atol=1e-7)
    assert target_positions(trim_padding(inside, pad_id, TRIM_MULTIPLE), pad_id) is None


def test_compiled_loss_matches_the_reference() -> None:
    # next_token_loss takes another formula under torch.compile: the same values and gradients.
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 16, generator=g, requires_grad=True)
    weight = torch.randn(30, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 30, (40,), generator=g)
    targets[::3] = IGNORE_INDEX
    reference = attribute_loss_only_reference(hidden, weight, targets)
    compiled = torch.compile(next_token_loss, fullgraph=True, dynamic=False)(
        hidden, weight, targets
    )
    assert compiled.item() == pytest.approx(reference.item(), rel=1e-6)
    expected = torch.autograd.grad(reference, (hidden, weight))
    got = torch.autograd.grad(compiled, (hidden, weight))
    for e, x in zip(expected, got):
        assert torch.allclose(x, e, rtol=1e-5, atol=1e-7)


class Killed(Exception):
    pass


def test_compiled_run_resumes_exactly_and_matches_eager(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(kadyn.train, "COMPILE_MIN_STEPS", 1)
    flags = dict(steps=8, eval_every=4, checkpoint_every=2)
    full = tmp_path / "full"
    train(small_config(full, **flags))
    assert "step: torch.compile" in capsys.readouterr().err
    killed = tmp_path / "killed"

    def kill(step: int, record: dict, model: object) -> None:
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        train(small_config(killed, **flags), on_eval=kill)
    # Compiled afresh, as in a new process (inductor's on-disk cache may serve the same code).
    torch._dynamo.reset()
    train(small_config(killed, resume=True, **flags))
    assert without_timing(read_records(killed)) == without_timing(read_records(full))

    eager = tmp_path / "eager"
    train(small_config(eager, compile=False, **flags))
    assert "step: eager, --no-compile" in capsys.readouterr().err
    for c, e in zip(read_records(full), read_records(eager)):
        assert c["step"] == e["step"]
        for key in ("train/loss", "eval/attr_loss", "heldout/attr_loss"):
            if e[key] is not None:
                assert c[key] == pytest.approx(e[key], rel=1e-4), (c["step"], key)


def test_compile_is_used_only_where_it_pays(tmp_path) -> None:
    long = small_config(tmp_path, steps=COMPILE_MIN_STEPS)
    assert eager_reason(long, CPU, patching=False) is None
    assert "--no-compile" in eager_reason(dataclasses.replace(long, compile=False), CPU, False)
    assert "patching" in eager_reason(long, CPU, patching=True)
    short = dataclasses.replace(long, steps=COMPILE_MIN_STEPS - 1)
    assert "too short" in eager_reason(short, CPU, patching=False)
    # The default run (the README's `kadyn-train`) is long enough: its figures are compiled ones.
    assert eager_reason(make_config("tiny"), CPU, patching=False) is None


def test_compile_without_a_cpp_compiler_stays_eager(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-kadyn")
    long = small_config(tmp_path, steps=COMPILE_MIN_STEPS)
    assert "C++ compiler" in eager_reason(long, CPU, patching=False)


# The SIMD level inductor picks, in a fresh process: by its test builds of ATen's vector headers
# (vec_isa_ok None), or from the CPU's flags alone (True).
PICKED_ISA = """
import sys, torch, torch._inductor.config as config
from torch._inductor.cpu_vec_isa import pick_vec_isa
config.cpp.vec_isa_ok = True if sys.argv[1] == "flags" else None
isa = pick_vec_isa()
print(str(isa), isa.build_arch_flags())
"""


def test_cpu_options_take_the_isa_from_the_flags_and_pick_what_the_test_builds_pick() -> None:
    options = inductor_options(CPU)
    assert options["cpp_wrapper"] is True
    assert options["cpp_cache_precompile_headers"] is False
    torch.compile(training_loss, options=options)  # this torch accepts every option
    assert not {"cpp_wrapper", "cpp.vec_isa_ok"} & set(inductor_options(torch.device("cuda")))
    if "cpp.vec_isa_ok" not in options:
        pytest.skip("this torch cannot take cpp.vec_isa_ok as a compile option")
    assert options["cpp.vec_isa_ok"] is True
    picked = {
        how: subprocess.run(
            [sys.executable, "-c", PICKED_ISA, how], capture_output=True, text=True, check=True
        ).stdout.strip()
        for how in ("flags", "test-builds")
    }
    assert picked["flags"] == picked["test-builds"], picked


def test_train_bench_quick(tmp_path) -> None:
    out = tmp_path / "train.json"
    argv = ["train", "--quick", "--no-compile", "--threads", "1", "--shapes", "d64"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    runs = {(r["shape"], r["step"]): r for r in result["runs"]}
    assert set(runs) == {("d64", "reference"), ("d64", "kadyn")}
    assert runs["d64", "reference"]["ratio_to_reference"] == 1.0
    for r in runs.values():
        assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["d_model"] == 64


@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [("--threads", "0", "[1, 1024]"), ("--threads", "-2", "[1, 1024]"), ("--warmup", "-1", "[0,")],
)
def test_train_bench_refuses_bad_counts(flag: str, value: str, allowed: str, capsys) -> None:
    with pytest.raises(SystemExit):
        bench.main(["train", flag, value])
    err = capsys.readouterr().err
    assert f"argument {flag}: must be an integer in {allowed}" in err and repr(value) in err
