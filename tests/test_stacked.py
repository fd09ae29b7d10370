"""Stacked training (`kadyn.stacked`): a member is its solo run, and `kadyn-exp` groups runs into
stacks that resume and fail member by member.

The runs are tests/small_run.py's (a one-layer model on a 24-individual world: about a second per
run); a member must equal its solo `train()` to 1e-5 relative in every metric, weight and
optimizer moment after 10 steps.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from test_reporting import csv_scalars

from kadyn.checkpoint import load_checkpoint
from kadyn.config import TrainConfig, make_config, read_provenance
from kadyn.evaluation import read_metrics
from kadyn.experiments import cli, runner
from kadyn.experiments.runner import RESULT, Context, RunSpec
from kadyn.experiments.scales import SMOKE
from kadyn.model import GPT, ModelConfig, next_token_targets
from kadyn.reporting import CSV_FILE
from kadyn.stacked import (
    StackedGPT,
    check_stackable,
    clip_grad_norms_,
    member_optimizer_state,
    stack_key,
    stack_optimizer_states,
    train_stacked,
)
from kadyn.train import train

from small_run import SMALL_RUN

RTOL = 1e-5
RUN = dict(SMALL_RUN, steps=10, eval_every=5, log_every=1)
# Members differ in what is their own: seed, world, N, sampling, the no-knowledge control.
MEMBERS: list[dict[str, Any]] = [
    {"seed": 0},
    {"seed": 1, "world_seed": 1, "individuals": 30},
    {"seed": 2, "sampling": "power", "alpha": 0.8},
    {"seed": 3, "control": True},
]


def config(out: Path, **overrides: Any) -> TrainConfig:
    return make_config("tiny", **{**RUN, **overrides}, out=str(out))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-30))


def assert_same_run(solo: Path, member: Path, rtol: float = RTOL) -> None:
    """Every metric, weight and optimizer moment of `member` within `rtol` of `solo`'s; the
    checkpoint's other entries (schedule, stream positions, step, generators) equal."""
    a, b = read_metrics(solo / "metrics.jsonl"), read_metrics(member / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            if key.startswith(("perf/", "time/")) or not isinstance(value, float):
                assert key.startswith(("perf/", "time/")) or value == rb[key], key
                continue
            assert rb[key] == pytest.approx(value, rel=rtol, abs=1e-9), (key, ra["step"])
    ca, cb = load_checkpoint(solo), load_checkpoint(member)
    assert ca.keys() == cb.keys()
    for name, weight in ca["model"].items():
        assert rel(weight, cb["model"][name]) <= rtol, name
    oa, ob = ca["optimizer"], cb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    for i, entry in oa["state"].items():
        for name, value in entry.items():
            assert rel(value, ob["state"][i][name]) <= rtol, (i, name)
    for entry in ("scheduler", "data", "train_state", "config", "model_config"):
        if entry == "train_state":
            assert ca[entry].keys() == cb[entry].keys()
            assert ca[entry]["step"] == cb[entry]["step"]
            assert ca[entry]["loss_sum"] == pytest.approx(cb[entry]["loss_sum"], rel=rtol)
        elif entry == "config":
            ignored = {"out": "", "resume": False}  # where it ran, and whether resumed
            assert {**ca[entry], **ignored} == {**cb[entry], **ignored}
        else:
            assert ca[entry] == cb[entry], entry
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    summary = json.loads((member / "summary.json").read_text())
    assert summary.keys() == json.loads((solo / "summary.json").read_text()).keys()


# ----------------------------------------------------------------------------------------------
# The stacked model against GPT


@pytest.mark.parametrize("tied", [True, False])
def test_stacked_model_matches_each_member_gpt(tied: bool) -> None:
    cfg = ModelConfig(vocab_size=50, n_layers=2, d_model=32, n_heads=2, d_mlp=48, max_seq_len=12)
    cfg = dataclasses.replace(cfg, tie_embeddings=tied)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(GPT(cfg))
    ids = torch.randint(1, 50, (3, 4, 12), dtype=torch.int32)
    ids[:, :, 9:] = 0  # trailing <pad>
    stacked = StackedGPT(models)
    rows = ids.view(3 * 4, 12)  # members' rows end to end, as the training step hands them
    losses = stacked(rows, next_token_targets(rows, 0)).loss
    losses.sum().backward()
    for k, model in enumerate(models):
        loss = model(ids[k], next_token_targets(ids[k], 0), token_stats=False).loss
        loss.backward()
        assert losses[k].item() == pytest.approx(loss.item(), rel=1e-6)
        for name, p in model.named_parameters():
            assert p.grad is not None
            assert rel(p.grad, stacked.weight(name).grad[k]) < 1e-5, name
    copy = GPT(cfg)
    stacked.copy_to(1, copy)
    assert all(torch.equal(p, q) for p, q in zip(copy.parameters(), models[1].parameters()))


def test_stacked_param_groups_are_the_solo_groups() -> None:
    from kadyn.train import param_groups

    cfg = ModelConfig(vocab_size=20, n_layers=2, d_model=16, n_heads=1, tie_embeddings=False)
    models = [GPT(cfg), GPT(cfg)]
    names = {id(p): n for n, p in models[0].named_parameters()}
    solo = [
        ([names[id(p)] for p in g["params"]], g["weight_decay"])
        for g in param_groups(models[0], 0.1)
    ]
    stacked = StackedGPT(models)
    ids = {id(w): n for n, w in zip(stacked.names, stacked.weights)}
    groups = [
        ([ids[id(p)] for p in g["params"]], g["weight_decay"]) for g in stacked.param_groups(0.1)
    ]
    assert groups == solo


def test_clip_is_per_member_as_clip_grad_norm() -> None:
    torch.manual_seed(0)
    grads = [torch.randn(3, 5, 4) * torch.tensor([0.1, 10.0, 3.0]).view(3, 1, 1), torch.randn(3, 7)]
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    norms = clip_grad_norms_(params, max_norm=1.0)
    for k in range(3):
        solo = [torch.zeros_like(g[k], requires_grad=True) for g in grads]
        for p, g in zip(solo, grads):
            p.grad = g[k].clone()
        norm = torch.nn.utils.clip_grad_norm_(solo, 1.0)
        assert norms[k].item() == pytest.approx(norm.item(), rel=1e-6)
        for p, q in zip(solo, params):
            assert rel(p.grad, q.grad[k]) < 1e-6


def test_optimizer_state_slices_and_stacks_back() -> None:
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        w = torch.nn.Parameter(torch.randn(4, 3))
        opt = torch.optim.AdamW([w], lr=0.1)
        w.sum().backward()
        opt.step()
        states.append(opt.state_dict())
    stacked = stack_optimizer_states(states)
    assert stacked["state"][0]["exp_avg"].shape == (3, 4, 3)
    for k, state in enumerate(states):
        back = member_optimizer_state(stacked, k)
        assert back["param_groups"] == state["param_groups"]
        for name, value in state["state"][0].items():
            assert torch.equal(back["state"][0][name], value), name


# ----------------------------------------------------------------------------------------------
# Which runs stack


def test_members_must_share_the_shape_and_schedule(tmp_path: Path) -> None:
    base = [config(tmp_path / str(i), **m) for i, m in enumerate(MEMBERS)]
    check_stackable(base)  # seed, world, N, sampling, control: the members' own
    assert len({stack_key(c) for c in base}) == 1
    for field, value in [("d_model", 64), ("steps", 12), ("lr", 1e-3), ("n_cities", 21)]:
        other = config(tmp_path / "x", **{field: value})
        assert stack_key(other) != stack_key(base[0])
        with pytest.raises(ValueError, match=f"--{field.replace('_', '-')}"):
            train_stacked([base[0], other])
        assert not (tmp_path / "x").exists()


def test_members_resume_only_from_one_step(tmp_path: Path) -> None:
    def stop_at_10(step: int, record: dict, model: GPT) -> None:
        if step == 10:
            raise RuntimeError("killed")

    a, b = config(tmp_path / "a"), config(tmp_path / "b", seed=1)
    train(a)
    with pytest.raises(RuntimeError, match="killed"):
        train(b, on_eval=stop_at_10)  # its last checkpoint: step 5
    resumed = [dataclasses.replace(c, resume=True) for c in (a, b)]
    with pytest.raises(ValueError, match="at step 10.*at step 5"):
        train_stacked(resumed)


# ----------------------------------------------------------------------------------------------
# A member is its solo run


def test_a_member_equals_its_solo_run(tmp_path: Path) -> None:
    for i, m in enumerate(MEMBERS):
        train(config(tmp_path / f"solo{i}", **m, report_to="csv"))
    outcomes = train_stacked(
        [config(tmp_path / f"stack{i}", **m, report_to="csv") for i, m in enumerate(MEMBERS)],
        command=["kadyn-exp", "all"],
    )
    for i in range(len(MEMBERS)):
        solo, member = tmp_path / f"solo{i}", tmp_path / f"stack{i}"
        assert isinstance(outcomes[i], dict)
        assert_same_run(solo, member)
        for name in ("config.toml", "summary.json", "curves.png"):
            assert (member / name).exists(), name
        assert read_provenance(member / "config.toml")["command"] == "kadyn-exp all"
        # --report-to: the solo run's scalars at the solo run's steps (train/* every log step).
        a, b = csv_scalars(solo / CSV_FILE), csv_scalars(member / CSV_FILE)
        assert a.keys() == b.keys() and "train/grad_norm" in b
        for name, points in a.items():
            assert [step for step, _ in b[name]] == [step for step, _ in points], name
            if not name.startswith(("perf/", "time/")):
                values = [v for _, v in points]
                assert [v for _, v in b[name]] == pytest.approx(values, rel=RTOL, abs=1e-9), name


def test_a_member_that_raises_leaves_and_the_others_go_on(tmp_path: Path) -> None:
    def stop_at_5(step: int, record: dict, model: GPT) -> None:
        if step == 5:
            raise RuntimeError("stop here")

    train(config(tmp_path / "solo", seed=1, checkpoint_every=2))
    configs = [config(tmp_path / f"m{i}", seed=i, checkpoint_every=2) for i in range(3)]
    outcomes = train_stacked(configs, on_eval=[None, None, stop_at_5])
    assert isinstance(outcomes[2], RuntimeError)
    assert [r["step"] for r in read_metrics(tmp_path / "m2" / "metrics.jsonl")] == [0, 5]
    assert load_checkpoint(tmp_path / "m2")["train_state"]["step"] == 4  # as a solo run's
    assert not (tmp_path / "m2" / "summary.json").exists()
    assert isinstance(outcomes[1], dict)
    assert_same_run(tmp_path / "solo", tmp_path / "m1")


def test_a_killed_stack_resumes_exactly_and_a_member_resumes_alone(tmp_path: Path) -> None:
    def killed_at_10(step: int, record: dict, model: GPT) -> None:
        if step == 10:
            raise KeyboardInterrupt

    whole = train_stacked([config(tmp_path / f"w{i}", seed=i) for i in range(2)])
    with pytest.raises(KeyboardInterrupt):
        train_stacked(
            [config(tmp_path / f"k{i}", seed=i) for i in range(2)], on_eval=[None, killed_at_10]
        )
    # Killed after its step-10 evaluation, before the checkpoint: both members stand at step 5.
    resumed = [config(tmp_path / f"k{i}", seed=i, resume=True) for i in range(2)]
    again = train_stacked(resumed)
    for i in range(2):
        assert isinstance(whole[i], dict) and isinstance(again[i], dict)
        assert_same_run(tmp_path / f"w{i}", tmp_path / f"k{i}", rtol=0.0)
    # A member's checkpoint is a solo run's: it resumes solo, and stays its solo run.
    train(config(tmp_path / "solo", seed=1))
    with pytest.raises(KeyboardInterrupt):
        train_stacked(
            [config(tmp_path / f"h{i}", seed=i) for i in range(2)], on_eval=[killed_at_10] * 2
        )
    train(config(tmp_path / "h1", seed=1, resume=True))
    assert_same_run(tmp_path / "solo", tmp_path / "h1")


# ----------------------------------------------------------------------------------------------
# kadyn-exp: runs grouped into stacks


def context(out: Path, stack: int) -> Context:
    return Context(
        out=out, preset="tiny", base=dict(SMOKE.base), threads=1, progress=False, stack=stack
    )


def specs(ctx: Context) -> list[RunSpec]:
    common: dict[str, Any] = dict(steps=6, eval_every=2, checkpoint_every=2)
    return [
        ctx.spec("t", "a", n=16, seed=0, **common),
        ctx.spec("t", "b", n=24, seed=1, stop_at_step=4, **common),
        ctx.spec("t", "c", n=16, seed=2, sampling="power", alpha=1.0, **common),
        ctx.spec("t", "wide", n=16, seed=0, d_model=64, **common),
        ctx.spec("t", "patched", n=16, seed=0, patch_checkpoint="t/x", **common),
    ]


def test_runs_are_grouped_by_what_they_share(tmp_path: Path) -> None:
    runs = specs(context(tmp_path, 2))
    assert runner.plan_groups(runs, tmp_path, stack=2) == [[0, 1], [2], [3], [4]]
    assert runner.plan_groups(runs, tmp_path, stack=4) == [[0, 1, 2], [3], [4]]
    assert runner.plan_groups(runs, tmp_path, stack=1) == [[i] for i in range(5)]
    # A run whose settings do not even resolve trains (and fails) alone.
    bad = dataclasses.replace(runs[0], overrides={**runs[0].overrides, "bogus": 1})
    assert runner.plan_groups([runs[0], bad, runs[2]], tmp_path, stack=4) == [[0, 2], [1]]


def test_kadyn_exp_stacks_by_its_scale_unless_told(tmp_path: Path, capsys) -> None:
    parser, _ = cli.build_parser()
    for scale, argv, stack in [
        ("smoke", [], 1),
        ("smoke", ["--stack", "2"], 2),
        ("gpu", [], 4),
        ("gpu", ["--no-stack"], 1),
        ("cpu", [], 1),
        ("cpu", ["--stack", "4"], 4),
    ]:
        args = parser.parse_args(["plateau", "--scale", scale, *argv])
        assert cli._context(tmp_path, scale, args).stack == stack
    with pytest.raises(SystemExit):
        parser.parse_args(["plateau", "--stack", "2", "--no-stack"])
    assert "not allowed with" in capsys.readouterr().err


def test_stacked_runs_write_what_solo_runs_write(tmp_path: Path) -> None:
    solo_ctx, stack_ctx = context(tmp_path / "solo", 1), context(tmp_path / "stack", 4)
    solo = solo_ctx.run(specs(solo_ctx)[:4], "t")
    stacked = stack_ctx.run(specs(stack_ctx)[:4], "t")
    for a, b in zip(solo, stacked):
        assert [r["step"] for r in a.records] == [r["step"] for r in b.records]
        assert a.summary.keys() == b.summary.keys()
        assert a.summary["stopped_early"] == b.summary["stopped_early"]
        assert b.summary["final"]["eval/attr_loss"] == pytest.approx(
            a.summary["final"]["eval/attr_loss"], rel=RTOL
        )
        log = (b.dir / runner.LOG).read_text()
        assert ("stacked x3" in log) == (b.spec.name != "wide"), log
    assert stacked[1].summary["stopped_early"] and stacked[1].records[-1]["step"] == 4


def test_a_killed_group_resumes_member_by_member(tmp_path: Path, monkeypatch) -> None:
    ctx = context(tmp_path, 4)
    runs = specs(ctx)[:3]
    runs[2] = dataclasses.replace(
        runs[2], overrides={**runs[2].overrides, "keep_checkpoints": True}
    )
    first = ctx.run(runs, "t")
    groups: list[list[str]] = []
    real = runner._train_group

    def spy(group: list[RunSpec], out: Path, threads: int) -> list[Optional[str]]:
        groups.append([s.name for s in group])
        return real(group, out, threads)

    monkeypatch.setattr(runner, "_train_group", spy)
    a_dir, c_dir = runs[0].run_dir(tmp_path), runs[2].run_dir(tmp_path)
    # Killed after their last checkpoints, before result.json: a and c stack again.
    for d in (a_dir, c_dir):
        (d / RESULT).unlink()
    ctx.run(runs, "t")
    assert groups == [["a", "c"]]
    # c killed earlier than a (its checkpoint at step 4): each resumes alone from its own.
    for d in (a_dir, c_dir):
        (d / RESULT).unlink()
    (c_dir / "checkpoint-0000004.pt").replace(c_dir / "checkpoint.pt")
    groups.clear()
    again = ctx.run(runs, "t")
    assert sorted(groups) == [["a"], ["c"]]
    for before, after in zip(first, again):
        assert [r["step"] for r in before.records] == [r["step"] for r in after.records]
        assert after.summary["final"]["eval/attr_loss"] == pytest.approx(
            before.summary["final"]["eval/attr_loss"], rel=RTOL
        )
