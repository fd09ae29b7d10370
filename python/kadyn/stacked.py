"""Stacked training: K runs of one model shape trained as one stacked model in one process.

`kadyn-exp` sweeps train many models of one shape (seeds, alphas, N at equal model size). Here K
of them are one `StackedGPT`: each of GPT's parameters carries a leading member dimension, the
matmuls are batched over it (`torch.bmm`), attention folds the members into its batch dimension,
and one AdamW steps every member at once (AdamW is elementwise, so one optimizer over stacked
tensors is K optimizers as long as lr and weight decay are the same, which `SHARED` enforces).

Everything else stays per member and is built and written by `kadyn.train`'s own functions: its
world, data stream, probes, `TrainState`, metrics and phases, and its directory holds what a solo
run's holds (metrics.jsonl, config.toml, summary.json, and checkpoint.pt in the solo format: a
member's checkpoint resumes solo, and a solo run's resumes as a member). A member's evaluation
runs on its own `GPT`, refreshed from its slice of the stack (cheap at these sizes).

Choices worth knowing:
- gradient clipping is per member: member k's gradient is scaled by its own norm, as
  `torch.nn.utils.clip_grad_norm_` scales a solo run's (`clip_grad_norms_`);
- what members must share is every TrainConfig field except `MEMBER_FIELDS` (a new field is
  shared until declared otherwise): the model shape, the world's pools (they fix the vocabulary),
  the batch, steps, lr schedule, AdamW settings, clipping, device and threads. Members may differ
  in their data and evaluation: seed, world seed, N, sampling and alpha, control, replay, the
  evaluation, logging and checkpoint cadence, an init checkpoint;
- a member whose loss turns non-finite, or whose evaluation (or evaluation callback) raises,
  leaves the stack at that step (its outcome is the exception, its directory as a solo run that
  raised there would leave it) and the others go on: its slices are cut out of the parameters and
  the optimizer state;
- a member equals its solo run up to float rounding, not bit for bit (batched matmuls, norms
  applied in two steps); tests/test_stacked.py holds it to 1e-5 over the first steps;
- the forward is spelled out batched here rather than `torch.func.vmap` over `GPT.forward`
  (`functional_call`): measured side by side with one and two threads, vmap was 6-12% slower
  eager and no faster compiled (CPU flash attention has no batching rule: vmap loops over the
  members there). The price is a second spelling of GPT's forward, checked against `GPT` by the
  tests. `forward` takes GPT's training call, so `kadyn.train.StepLoss` (padding trimmed to the
  longest row of all members, compiled where a solo step would be) drives a stack as a GPT;
- members start together (fresh, or resumed from checkpoints at one step) and step together;
  `train_stacked` refuses members whose checkpoints stand at different steps (`kadyn-exp`
  regroups them by step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import sys
import time
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from kadyn.batches import DatasetBatches, TrainBatches
from kadyn.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from kadyn.config import TrainConfig, flag_name, run_provenance, to_toml
from kadyn.evaluation import METRICS, Probe, json_line, read_metrics
from kadyn.fileio import atomic_write_text
from kadyn.kernels import attention, attribute_loss
from kadyn.kernels.attribute_loss import attribute_loss_only_reference
from kadyn.model import GPT, ModelConfig, apply_rope, rope_lanes, rope_tables
from kadyn.reporting import Reporters, open_reporters, parse_report_to, progress, require
from kadyn.runtime import Runtime, setup_runtime
from kadyn.train import (
    Diverged,
    EvalCallback,
    Stateful,
    StepLoss,
    TrainState,
    build_inputs,
    build_scheduler,
    check_resumable,
    claim_out_dir,
    describe_device,
    eager_reason,
    init_from_checkpoint,
    make_model_config,
    param_groups,
    phase_summary,
    publish,
    restore_run,
    resumes,
    rng_state,
    run_eval,
    save_run,
    set_rng_state,
    speed_summary,
    summary_line,
    throughput,
    truncate_metrics,
    with_dataset,
    write_exposures,
)
from kadyn.twin import Twin, load_twin

# TrainConfig fields a member sets for itself: its outputs, data stream, world and evaluation, and
# the cadence of its reads, evaluations and checkpoints. Every other field must be equal across a
# stack (`SHARED`).
MEMBER_FIELDS = frozenset(
    {
        "preset",
        "out",
        "resume",
        "init_checkpoint",
        "data_threads",
        "seed",
        "progress",
        "log_every",
        "allow_nonfinite",
        "twin",
        "world_seed",
        "individuals",
        "heldout",
        "new_individuals",
        "population",
        "sampling",
        "alpha",
        "warmup_individuals",
        "warmup_samples",
        "control",
        "replay_weight",
        "packing",
        "eval_every",
        "eval_individuals",
        "eval_batch_size",
        "train_probe",
        "checkpoint_every",
        "keep_checkpoints",
        "count_exposures",
        "peak_tflops",
        "plateau_band",
        "plateau_min_evals",
    }
)
SHARED = tuple(f.name for f in fields(TrainConfig) if f.name not in MEMBER_FIELDS)

Outcome = Union[dict[str, Any], Exception]


def stack_key(config: TrainConfig) -> tuple[tuple[str, Any], ...]:
    """What runs must share to train in one stack: equal keys stack."""
    return tuple((name, getattr(config, name)) for name in SHARED)


def check_stackable(configs: Sequence[TrainConfig]) -> None:
    """Raise ValueError naming the first shared field on which two configs differ."""
    if not configs:
        raise ValueError("a stack needs at least one run")
    first = configs[0]
    for config in configs[1:]:
        for name in SHARED:
            if getattr(config, name) != getattr(first, name):
                raise ValueError(
                    f"stacked runs must share {flag_name(name)}: {getattr(first, name)!r} in "
                    f"{first.out or 'the first run'}, {getattr(config, name)!r} in "
                    f"{config.out or 'another'}"
                )


# ----------------------------------------------------------------------------------------------
# The stacked model


class StackedOutput(NamedTuple):
    loss: torch.Tensor  # (K,): member k's mean next-token cross-entropy


class StackedGPT(nn.Module):
    """K `GPT`s of one config as one module: each GPT parameter stacked on a new first dimension.

    `forward(input_ids, targets)` takes the members' (B, T) rows end to end, (K * B, T), and
    returns the (K,) training losses, member k's as `GPT(...).loss` computes it; the gradient of
    their sum is each member's own gradient in its slice.
    """

    # Members keep different numbers of target positions and the batched matmuls need one count:
    # a stack computes every position, and `kadyn.train.StepLoss` passes it no `positions`.
    takes_positions = False

    def __init__(self, members: Sequence[GPT]) -> None:
        super().__init__()
        if not members:
            raise ValueError("StackedGPT needs at least one member")
        config = members[0].config
        for m in members[1:]:
            if m.config != config:
                raise ValueError(f"stacked models must share one config: {m.config} != {config}")
        self.config = config
        self.names = [name for name, _ in members[0].named_parameters()]
        self.index = {name: i for i, name in enumerate(self.names)}
        by_member = [dict(m.named_parameters()) for m in members]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([p[name].detach() for p in by_member])) for name in self.names
        )
        cos, sin = rope_lanes(
            *rope_tables(config.max_seq_len, config.head_dim, config.rope_base),
            2 * config.n_heads,
        )
        self.rope_cos: torch.Tensor
        self.rope_sin: torch.Tensor
        self.register_buffer("rope_cos", cos.to(members[0].head_weight.device), persistent=False)
        self.register_buffer("rope_sin", sin.to(members[0].head_weight.device), persistent=False)
        self.norm_eps = members[0].norm.eps
        # Which of GPT's parameters AdamW decays: train.param_groups' rule, read off a member.
        names_by_id = {id(p): name for name, p in members[0].named_parameters()}
        self.group_names = [
            ([names_by_id[id(p)] for p in group["params"]], group["weight_decay"] > 0)
            for group in param_groups(members[0], 1.0)
        ]

    @property
    def size(self) -> int:
        return self.weights[0].shape[0]

    def weight(self, name: str) -> torch.Tensor:
        return self.weights[self.index[name]]

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """`kadyn.train.param_groups` of the stack: the same groups in the same order, so that
        the optimizer's state indices are a solo run's."""
        return [
            {
                "params": [self.weight(n) for n in names],
                "weight_decay": weight_decay if decayed else 0.0,
            }
            for names, decayed in self.group_names
        ]

    @torch.no_grad()
    def copy_to(self, k: int, model: GPT) -> None:
        """Write member k's weights into `model` (its evaluation and checkpoint copy)."""
        for name, p in model.named_parameters():
            p.copy_(self.weight(name)[k])

    @torch.no_grad()
    def select(self, keep: Sequence[int]) -> None:
        """Keep only the members `keep`, in that order (new parameters: rebuild the optimizer)."""
        index = torch.tensor(list(keep), device=self.weights[0].device)
        for i, w in enumerate(self.weights):
            self.weights[i] = nn.Parameter(w.detach().index_select(0, index))

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """nn.RMSNorm with member k's gain on x[k]: (K, N, D) x (K, D)."""
        return F.rms_norm(x, (x.shape[-1],), None, self.norm_eps) * weight.unsqueeze(1)

    def _linear(self, block: str, x: torch.Tensor, name: str) -> torch.Tensor:
        """nn.Linear without bias, member k's weight on x[k]: (K, N, in) -> (K, N, out)."""
        return torch.bmm(x, self.weight(block + name).mT)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (K, B * T, d) of (K, B, T) ids: GPT.hidden_states' fast path."""
        c = self.config
        K, B, T = input_ids.shape
        if T > c.max_seq_len:
            raise ValueError(f"sequence length must be <= {c.max_seq_len}, got {T}")
        D, H = c.d_model, c.n_heads
        embed = self.weight("embed.weight")
        # One lookup in the members' tables laid end to end: member k's ids offset by k * vocab.
        offsets = torch.arange(K, device=input_ids.device).view(K, 1, 1) * c.vocab_size
        x = F.embedding((input_ids + offsets).view(K, B * T), embed.reshape(-1, D))
        cos, sin = self.rope_cos, self.rope_sin
        for i in range(c.n_layers):
            block = f"blocks.{i}."
            linear = partial(self._linear, block)
            h = self._norm(x, self.weight(block + "attn_norm.weight"))
            qkv = linear(h, "attn.qkv.weight")
            # Members folded into attention's batch: (K * B, H, T, head_dim).
            # As GPT's attention: q and k rotated together (split, whose backward concatenates).
            qk, v = qkv.view(K * B, T, 3 * D).split([2 * D, D], dim=-1)
            qk = apply_rope(qk, cos, sin, c.head_dim)
            q, k = qk.view(K * B, T, 2, H, c.head_dim).permute(2, 0, 3, 1, 4)
            v = v.view(K * B, T, H, c.head_dim).transpose(1, 2)
            y = attention(q, k, v, causal=True).transpose(1, 2).reshape(K, B * T, D)
            x = x + linear(y, "attn.proj.weight")
            h = self._norm(x, self.weight(block + "mlp_norm.weight"))
            x = x + linear(F.gelu(linear(h, "mlp.up.weight")), "mlp.down.weight")
        return self._norm(x, self.weight("norm.weight"))

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        attention_override: Optional[dict[int, torch.Tensor]] = None,
        token_stats: bool = False,
        positions: Optional[torch.Tensor] = None,
    ) -> StackedOutput:
        """GPT's training call on the members' rows laid end to end: input_ids and targets
        (K * B, T), member k's rows at [k * B, (k + 1) * B); `.loss` is the (K,) member losses.
        So `kadyn.train.StepLoss` (trimming, compiling) drives a stack as it drives a GPT, with
        every position (`takes_positions`)."""
        if attention_override is not None or token_stats:
            raise ValueError("a stacked model computes the training loss only")
        if positions is not None:
            raise ValueError("a stacked model computes every position (positions=None)")
        rows, T = input_ids.shape
        K = self.size
        if rows % K != 0:
            raise ValueError(f"input_ids must hold {K} members' rows alike, got {rows} rows")
        B = rows // K
        hidden = self.hidden_states(input_ids.view(K, B, T))
        head = self.weight("embed.weight" if self.config.tie_embeddings else "head.weight")
        flat = targets.reshape(K, B * T).long()
        # Member by member, as GPT.forward's training call: the fused kernel on CUDA, else the
        # reference called directly (as GPT does, for torch.compile) with a solo run's head matmul.
        if hidden.device.type == "cuda":
            losses = [
                attribute_loss(hidden[k], head[k], flat[k], token_stats=False)[0] for k in range(K)
            ]
        else:
            losses = [attribute_loss_only_reference(hidden[k], head[k], flat[k]) for k in range(K)]
        return StackedOutput(torch.stack(losses))


def clip_grad_norms_(parameters: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip each member's gradient to norm `max_norm` by its own norm, as
    `torch.nn.utils.clip_grad_norm_` clips a solo run's; returns the (K,) norms before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))
    return total


def stacked_optimizer_step(
    stacked: StackedGPT,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float,
) -> Optional[torch.Tensor]:
    """`kadyn.train.optimizer_step` of a stack: each member clipped by its own norm. Returns the
    (K,) gradient norms before clipping (on the device, not read), or None without clipping."""
    norms = None
    if grad_clip > 0:
        norms = clip_grad_norms_(list(stacked.parameters()), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norms


# ----------------------------------------------------------------------------------------------
# Optimizer state: a member's slice in the solo format, and members' states stacked


def member_optimizer_state(stacked: dict[str, Any], k: int) -> dict[str, Any]:
    """Member k's AdamW state_dict, as its solo run's optimizer would hold it: every per-element
    tensor sliced at k (and copied, so a saved file holds only the slice), the step shared."""
    return {
        "state": {
            i: {
                name: v[k].clone() if isinstance(v, torch.Tensor) and v.ndim > 0 else v
                for name, v in entry.items()
            }
            for i, entry in stacked["state"].items()
        },
        "param_groups": [dict(g) for g in stacked["param_groups"]],
    }


def stack_optimizer_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The stacked AdamW state_dict of members' solo-format states (checkpoints at one step)."""
    first = states[0]
    keys = set(first["state"])
    for s in states[1:]:
        if set(s["state"]) != keys:
            raise CheckpointError("stacked members' optimizer states hold different parameters")
    stacked: dict[int, dict[str, Any]] = {}
    for i in first["state"]:
        entry = {}
        for name, v in first["state"][i].items():
            values = [s["state"][i][name] for s in states]
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                entry[name] = torch.stack(values)
            else:
                if any(not torch.equal(torch.as_tensor(x), torch.as_tensor(v)) for x in values):
                    raise CheckpointError(
                        f"stacked members' optimizer states differ in {name!r} ({values})"
                    )
                entry[name] = v
        stacked[i] = entry
    return {"state": stacked, "param_groups": [dict(g) for g in first["param_groups"]]}


class _Held:
    """A checkpoint entry held as loaded (restore_run's `load_state_dict`), for stacking."""

    def __init__(self) -> None:
        self.state: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        assert self.state is not None
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state


class _MemberSlice:
    """A member's optimizer entry of a checkpoint: its slice of the stacked state."""

    def __init__(self, stacked: dict[str, Any], k: int) -> None:
        self.stacked, self.k = stacked, k

    def state_dict(self) -> dict[str, Any]:
        return member_optimizer_state(self.stacked, self.k)

    def load_state_dict(self, state: dict[str, Any]) -> None:  # pragma: no cover - never loaded
        raise NotImplementedError


def stacked_optimizer(
    stacked: StackedGPT, config: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """A solo run's AdamW (`kadyn.train.build_optimizer`'s settings) over the stacked parameters,
    and its lr schedule."""
    device = stacked.weights[0].device
    optimizer = torch.optim.AdamW(
        stacked.param_groups(config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        fused=device.type == "cuda" or _TORCH_VERSION >= (2, 4),
    )
    return optimizer, build_scheduler(optimizer, config)


_TORCH_VERSION = tuple(int(part) for part in torch.__version__.split(".")[:2])


# ----------------------------------------------------------------------------------------------
# A member: a solo run's state, less the weights and optimizer that live in the stack


@dataclass
class Member:
    index: int  # position in train_stacked's `configs`: where its outcome goes
    config: TrainConfig
    out: Path
    log: Callable[[str], None]
    world: Any
    data: Union[TrainBatches, DatasetBatches]
    probes: dict[str, Probe]
    state: TrainState
    floor: float  # the value-table entropy
    twin: Optional[Twin]
    model: GPT  # its weights as of the last copy from the stack: what evaluations and saves read
    model_config: ModelConfig
    rng: dict[str, Any]  # what a solo run's checkpoints hold: the generators after its init
    records: list[dict[str, Any]]
    on_eval: Optional[EvalCallback]
    reporters: Reporters  # its --report-to writers
    optimizer_state: Optional[dict[str, Any]] = None  # from its checkpoint, until stacked
    scheduler_state: Optional[dict[str, Any]] = None
    clock: float = 0.0  # the stack's training seconds at this member's last evaluation
    steps_timed: int = 0

    def eval_due(self, step: int) -> bool:
        return step % self.config.eval_every == 0 or step == self.config.steps

    def checkpoint_due(self, step: int) -> bool:
        every = self.config.checkpoint_every or self.config.eval_every
        return step % every == 0 or step == self.config.steps


def _setup_member(
    index: int,
    config: TrainConfig,
    out: Path,
    runtime: Runtime,
    log: Callable[[str], None],
    on_eval: Optional[EvalCallback],
    ran: dict[str, Any],
    cleanup: contextlib.ExitStack,
) -> Member:
    """Everything kadyn.train._train sets up before its model is wrapped, for one member; `ran`
    is config.toml's provenance, and `cleanup` closes the member's --report-to writers."""
    device = runtime.device
    metrics_path = out / METRICS
    resume = resumes(config, out, runtime, log)
    twin = load_twin(config.twin, config) if config.twin else None
    world, data, probes, levels, state = build_inputs(config, runtime)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model_config = make_model_config(config, world.vocab_size)
    model = GPT(model_config).to(device)
    rng = rng_state(device)  # nothing draws from the generators after the init
    member = Member(
        index=index,
        config=config,
        out=out,
        log=log,
        world=world,
        data=data,
        probes=probes,
        state=state,
        floor=levels["no_knowledge/value_table_entropy"],
        twin=twin,
        model=model,
        model_config=model_config,
        rng=rng,
        records=[],
        on_eval=on_eval,
        reporters=Reporters(),
    )
    if resume:
        try:
            ckpt = load_checkpoint(checkpoint_path(out), map_location=device)
        except CheckpointError as e:
            raise ValueError(f"--resume {out}: {e}") from None
        check_resumable(ckpt["config"], config)
        optimizer, scheduler = _Held(), _Held()
        states: dict[str, Stateful] = {
            "model": model,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "data": data,
            "train_state": state,
        }
        restore_run(ckpt, states, device)
        member.rng = rng_state(device)
        member.optimizer_state, member.scheduler_state = optimizer.state, scheduler.state
        truncate_metrics(metrics_path, state.step)
        member.records = read_metrics(metrics_path)
        log(f"resumed {out} at step {state.step}")
    elif config.init_checkpoint:
        init_from_checkpoint(model, config.init_checkpoint, device, log)
    atomic_write_text(out / "config.toml", to_toml(dataclasses.replace(config, resume=False), ran))
    # As a solo run: what a killed attempt logged after the checkpoint is replaced.
    member.reporters = open_reporters(
        parse_report_to(config.report_to),
        out,
        config.to_dict(),
        state.step + 1 if state.step else 0,
    )
    cleanup.callback(member.reporters.close)
    n_params, n_body = model.num_parameters(), model.num_parameters(embeddings=False)
    log(
        f"model: {config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads, "
        f"MLP {config.d_mlp}, vocab {world.vocab_size} | parameters {n_params / 1e6:.2f}M, "
        f"{n_body / 1e6:.2f}M without embeddings | stacked"
    )
    log(
        f"data: N={config.individuals}, {config.sampling} sampling, batch {config.batch_size} x "
        f"{config.seq_len} tokens, {device} | no-knowledge level {state.level:.3f} nats/value | "
        f"out {out}"
    )
    return member


# ----------------------------------------------------------------------------------------------
# The stacked run


def train_stacked(
    configs: Sequence[TrainConfig],
    *,
    on_eval: Optional[Sequence[Optional[EvalCallback]]] = None,
    logs: Optional[Sequence[Callable[[str], None]]] = None,
    command: Optional[Sequence[str]] = None,
) -> list[Outcome]:
    """Train `configs` as one stack; returns, in `configs` order, each member's summary (the dict
    `kadyn.train.train` returns) or the exception that ended it: `Diverged`, or what its
    evaluation or its `on_eval[k]` callback raised (the others train on).

    on_eval[k](step, record, model): after member k's evaluations, with its own `GPT`.
    logs[k](line): member k's progress lines (default: stderr, prefixed with its --out).
    command: the command line each config.toml records (default: this process's, sys.argv).
    Raises before training (ValueError, CheckpointError, OSError, DirectoryInUse) when the configs
    cannot stack or a member cannot start; Ctrl-C leaves each member at its last checkpoint.
    """
    configs = [with_dataset(config) for config in configs]
    for config in configs:
        config.validate()
        if not config.out:
            raise ValueError("each stacked run needs its own --out")
    check_stackable(configs)
    outs = [Path(c.out) for c in configs]
    if len({o.resolve() for o in outs}) != len(outs):
        raise ValueError("stacked runs must have distinct --out directories")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("stacked runs train in one process; they do not combine with torchrun")
    callbacks = list(on_eval) if on_eval is not None else [None] * len(configs)
    if logs is None:
        logs = [_stderr_log(out) for out in outs]
    if len(callbacks) != len(configs) or len(logs) != len(configs):
        raise ValueError("on_eval and logs need one entry per stacked run")
    require(parse_report_to(configs[0].report_to))  # a missing package fails before the set-up
    t_start = time.perf_counter()
    runtime = setup_runtime(configs[0])
    ran = run_provenance(describe_device(runtime), sys.argv if command is None else command)
    with contextlib.ExitStack() as claims:
        for out in outs:
            claims.enter_context(claim_out_dir(out, runtime))
        members = [
            _setup_member(i, c, out, runtime, log, cb, ran, claims)
            for i, (c, out, log, cb) in enumerate(zip(configs, outs, logs, callbacks))
        ]
        return _train_members(members, runtime, t_start)


def _stderr_log(out: Path) -> Callable[[str], None]:
    return lambda msg: tqdm.write(f"{out.name}: {msg}", file=sys.stderr)


def _train_members(members: list[Member], runtime: Runtime, t_start: float) -> list[Outcome]:
    device = runtime.device
    config = members[0].config  # the shared fields
    steps_at = {m.state.step for m in members}
    if len(steps_at) > 1:
        at = ", ".join(f"{m.out} at step {m.state.step}" for m in members)
        raise ValueError(f"stacked runs must start at one step; their checkpoints stand at {at}")
    step = steps_at.pop()
    stacked = StackedGPT([m.model for m in members]).to(device)
    optimizer, scheduler = stacked_optimizer(stacked, config)
    if step > 0:
        held = [m.optimizer_state for m in members]
        assert all(h is not None for h in held) and members[0].scheduler_state is not None
        optimizer.load_state_dict(stack_optimizer_states(held))  # type: ignore[arg-type]
        scheduler.load_state_dict(members[0].scheduler_state)  # equal steps: equal schedules
    for m in members:
        m.optimizer_state = m.scheduler_state = None
    pad_ids = {m.world.pad_id for m in members}
    if len(pad_ids) > 1:
        raise ValueError(f"stacked runs' worlds must share one <pad> id, got {sorted(pad_ids)}")
    why_eager = eager_reason(config, device, patching=False)
    step_loss = StepLoss(stacked, pad_ids.pop(), device, config.seq_len, why_eager is None)
    for m in members:
        m.log(
            f"step: stacked x{len(members)}, "
            + ("torch.compile (inductor)" if why_eager is None else f"eager, {why_eager}")
        )
    outcomes: list[Optional[Outcome]] = [None] * len(members)
    tokens_per_step = config.batch_size * config.seq_len
    flops_per_step = members[0].model.flops_per_token(config.seq_len) * tokens_per_step
    peak = config.peak_tflops * 1e12 if device.type == "cuda" else 0.0
    clock = 0.0  # seconds spent in training steps (not evaluations or saves) since the start

    def evaluate_member(k: int, m: Member) -> None:
        stacked.copy_to(k, m.model)
        seconds = max(clock - m.clock, 1e-9)
        perf = throughput(m.steps_timed, seconds, tokens_per_step, flops_per_step, peak)
        record = run_eval(
            m.state,
            m.model,
            m.probes,
            m.world,
            m.config,
            runtime,
            None,
            m.twin,
            m.floor,
            lr=float(scheduler.get_last_lr()[0]),
            perf=perf,
            t_start=t_start,
        )
        publish(record, m.records, m.out, m.config, runtime, m.log, m.twin)
        m.reporters.log_record(record)
        if m.state.exposures is not None:
            write_exposures(m.out, m.state)
        if m.on_eval is not None:
            m.on_eval(m.state.step, record, m.model)
        m.clock, m.steps_timed = clock, 0

    def save_member(k: int, m: Member, optimizer_state: dict[str, Any]) -> None:
        stacked.copy_to(k, m.model)
        m.state.sync_exposures(1)
        states: dict[str, Stateful] = {
            "model": m.model,
            "optimizer": _MemberSlice(optimizer_state, k),
            "scheduler": scheduler,
            "data": m.data,
            "train_state": m.state,
        }
        set_rng_state(m.rng, device)  # save_run records the generators: the member's own
        save_run(m.out, states, m.config, m.model_config, device)

    def leave(ended: dict[int, Exception]) -> None:
        """Record the ended members' outcomes and cut them out of the stack."""
        nonlocal members, optimizer, scheduler
        if not ended:
            return
        for k, error in ended.items():
            m = members[k]
            outcomes[m.index] = error
            m.log(f"step {m.state.step:>6} | left the stack: {type(error).__name__}: {error}")
        keep = [k for k in range(len(members)) if k not in ended]
        members = [members[k] for k in keep]
        if not members:
            return
        saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()
        stacked.select(keep)
        optimizer, scheduler = stacked_optimizer(stacked, config)
        index = torch.tensor(keep)
        for entry in saved_optimizer["state"].values():
            for name, v in entry.items():
                if isinstance(v, torch.Tensor) and v.ndim > 0:
                    entry[name] = v.index_select(0, index.to(v.device))
        optimizer.load_state_dict(saved_optimizer)
        scheduler.load_state_dict(saved_scheduler)

    if step == 0:
        ended: dict[int, Exception] = {}
        for k, m in enumerate(members):
            try:
                evaluate_member(k, m)
            except Exception as e:  # noqa: BLE001 - one member's failure ends that member only
                ended[k] = e
        leave(ended)
    stacked.train()
    # A tqdm bar on a terminal; in a log, a plain line every --log-every steps.
    bar = progress(
        config.steps,
        initial=step,
        desc=f"train x{len(members)}",
        enabled=any(m.config.progress for m in members),
        every=config.log_every,
    )
    t0 = time.perf_counter()
    while members and step < config.steps:
        batches = [next(m.data) for m in members]
        for m, batch in zip(members, batches):
            if m.state.exposures is not None:
                m.state.add_exposures(batch["exposed"])
        # Members' rows end to end: one trim (to the longest row of all) and one step.
        losses = step_loss(torch.cat([b["input_ids"] for b in batches]))
        losses.sum().backward()
        norms = stacked_optimizer_step(stacked, optimizer, scheduler, config.grad_clip)
        step += 1
        ended = {}
        for k, m in enumerate(members):
            m.state.step = step
            m.state.add_train_loss(losses[k])
            m.steps_timed += 1
            if step % m.config.log_every == 0 or step == config.steps:
                try:
                    # As a solo run: the window's loss and the gradient norm in one read.
                    window_loss, norm = m.state.read_log_window(
                        m.config.allow_nonfinite, None if norms is None else norms[k]
                    )
                except Diverged as e:
                    ended[k] = e
                    continue
                lr = float(scheduler.get_last_lr()[0])
                m.reporters.log(
                    step, {"train/loss": window_loss, "train/lr": lr, "train/grad_norm": norm}
                )
        bar.update(1)
        due = [k for k, m in enumerate(members) if k not in ended and m.eval_due(step)]
        saving = [k for k, m in enumerate(members) if k not in ended and m.checkpoint_due(step)]
        if due or saving:
            if device.type == "cuda":
                torch.cuda.synchronize()
            clock += time.perf_counter() - t0
            for k in due:
                try:
                    evaluate_member(k, members[k])
                except Exception as e:  # noqa: BLE001
                    ended[k] = e
            saving = [k for k in saving if k not in ended]
            if saving:
                optimizer_state = optimizer.state_dict()
                for k in saving:
                    try:
                        save_member(k, members[k], optimizer_state)
                    except Exception as e:  # noqa: BLE001
                        ended[k] = e
            t0 = time.perf_counter()
        leave(ended)
    bar.close()

    for m in members:
        outcomes[m.index] = _finish(m, t_start)
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def _finish(m: Member, t_start: float) -> dict[str, Any]:
    """The member's summary, as kadyn.train._train writes it."""
    final = m.records[-1] if m.records else None
    summary = {
        "out": str(m.out),
        "steps": m.config.steps,
        "control": m.config.control,
        "twin": m.twin.runs if m.twin is not None else None,
        "level": m.state.level,
        "value_table_entropy": m.floor,
        **phase_summary(m.state, m.config, m.twin),
        "final": final,
        "wall_s": time.perf_counter() - t_start,
        **speed_summary(m.records, m.config.batch_size * m.config.seq_len),
        "parameters": m.model.num_parameters(),
        "parameters_without_embeddings": m.model.num_parameters(embeddings=False),
    }
    if final is not None:
        atomic_write_text(m.out / "summary.json", json_line(summary, indent=1))
        if "nonfinite" not in final:
            m.log(summary_line(summary))
    return summary
