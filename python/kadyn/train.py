"""`kadyn-train`: train the transformer on biography streams and track knowledge acquisition.

Reads top to bottom like nanoGPT's train loop: config -> world and data -> model -> optimizer ->
loop (step, periodic knowledge evaluation, checkpoint) -> summary. `train(config)` is the
programmatic entry used by experiments (with hooks: a callback per evaluation and per step, and an
attention source for the attention-patching experiment); `main()` is the console script. The
training batches live in `kadyn.batches`, the knowledge evaluation and the metrics record in
`kadyn.evaluation`, the device and process group in `kadyn.runtime`.

Choices worth knowing:
- AdamW with weight decay on the matrices of the blocks only (attention and MLP weights, and an
  untied output head); none on RMSNorm gains or on the token embedding (nanoGPT's convention).
- Cosine decay from --lr to --min-lr-ratio x --lr over --steps, no warm-up (paper, Table 1), or a
  constant lr (--constant-lr, the paper's fine-tuning runs).
- The loss is next-token cross-entropy on every token of the stream except <pad> targets.
- The run's own state (step, eval history, training-loss accumulators, the no-knowledge level) is
  one `TrainState`; as in torchtitan's CheckpointManager, a checkpoint is the `state_dict()` of
  each entry of one `{name: stateful}` dict (model, optimizer, scheduler, data, train_state) plus
  plain extras (rng, config, model_config), and a resume loads each entry back.
- Numbers out: metrics.jsonl per evaluation (rank 0); --report-to also sends the training loss,
  lr and gradient norm every --log-every steps and each evaluation's record to TensorBoard, W&B
  or a CSV file (`kadyn.reporting`, which also draws the progress bar or, in a log, its lines).
- Exact resume: the checkpoint holds the streams' positions, so a resumed run sees the very same
  batches; on CPU with fixed threads the metrics match an uninterrupted run.
- --count-exposures: `TrainState` also counts, per individual of the trained population, the
  biographies of it seen so far (checkpointed, so a resumed run's counts stay exact), and rank 0
  writes them as `exposures-<step>.npy` at every evaluation. Each rank counts its own rows; the
  counts are all-reduced at evaluations and before checkpoints, the only places they are read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import kadyn
from kadyn.batches import (
    DatasetBatches,
    TrainBatches,
    dataset_settings,
    make_sampling,
    open_dataset,
)
from kadyn.checkpoint import (
    CheckpointError,
    checkpoint_path,
    first_line,
    load_checkpoint,
    save_checkpoint,
)
from kadyn.config import (
    RESUMABLE_FIELDS,
    TrainConfig,
    flag_name,
    parse_args,
    run_provenance,
    to_toml,
)
from kadyn.dataset import read_manifest
from kadyn.evaluation import (
    METRICS,
    AttentionSource,
    Probe,
    build_probes,
    evaluate,
    json_line,
    make_record,
    read_metrics,
)
from kadyn.fileio import atomic_write, atomic_write_text
from kadyn.model import (
    GPT,
    ModelConfig,
    next_token_targets,
    target_positions,
    trim_padding,
)
from kadyn.phases import Phases, band_sensitivity, detect_phases
from kadyn.plots import plot_curves
from kadyn.reporting import open_reporters, parse_report_to, progress, require
from kadyn.runlock import LOCK_NAME, DirectoryInUse, DirectoryLock
from kadyn.runtime import Runtime, autocast, setup_runtime
from kadyn.twin import Twin, load_twin

EvalCallback = Callable[[int, dict, GPT], None]
StepCallback = Callable[[int, dict, GPT], None]

PLOT_EVERY_EVALS = 10

# Exit codes of `kadyn-train`, one per kind of failure, so that a scheduler can tell "fix the
# command" from "retry later" from "the run diverged". Shared with kadyn-gen where the kinds are
# shared (2, 75, 130); 74 and 75 are sysexits.h's EX_IOERR and EX_TEMPFAIL.
EXIT_USAGE = 2  # a bad flag, config or checkpoint
EXIT_DIVERGED = 5  # a non-finite loss, without --allow-nonfinite
EXIT_ENVIRONMENT = 74  # the filesystem refused: not a directory, read-only, full
EXIT_IN_USE = 75  # another process holds --out: retry when it is done
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT; --resume continues from the last checkpoint


class Diverged(RuntimeError):
    """The loss became non-finite (and --allow-nonfinite was not given)."""


# ----------------------------------------------------------------------------------------------
# The run's state


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


@dataclass
class TrainState:
    """What the loop carries besides model, optimizer, scheduler and data; checkpointed whole."""

    level: float  # the statistics-only level F (World.no_knowledge_loss under the run's sampling)
    loss_sum: torch.Tensor  # float64, 0-dim, on the device: summed step losses since the last eval
    step: int = 0
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)  # eval-probe attribute loss
    eval_accs: list[float] = field(default_factory=list)  # eval-probe attribute accuracy
    loss_count: int = 0
    # --count-exposures: biographies seen per individual (int64, CPU), all ranks together as of
    # the last sync, plus this rank's since then. None when not counting.
    exposures: Optional[torch.Tensor] = None
    pending_exposures: Optional[torch.Tensor] = None
    # The last finite training loss read (mean over a log window) and its step: what a divergence
    # message reports. Not checkpointed: only messages read it.
    last_finite: Optional[tuple[int, float]] = None
    # loss_sum and loss_count as of the last log read (host values): the log window's mean is
    # the difference, so reading it costs no device op beyond the read itself.
    logged_sum: float = 0.0
    logged_count: int = 0

    @classmethod
    def start(
        cls, level: float, device: torch.device, individuals: Optional[int] = None
    ) -> TrainState:
        """`individuals`: the trained population's size, to count exposures; None = no counts."""
        state = cls(level=level, loss_sum=torch.zeros((), dtype=torch.float64, device=device))
        if individuals is not None:
            state.exposures = torch.zeros(individuals, dtype=torch.int64)
            state.pending_exposures = torch.zeros(individuals, dtype=torch.int64)
        return state

    def add_exposures(self, individuals: torch.Tensor) -> None:
        assert self.pending_exposures is not None
        n = self.pending_exposures.numel()
        self.pending_exposures += torch.bincount(individuals.long().cpu(), minlength=n)[:n]

    def sync_exposures(self, world_size: int) -> None:
        """Fold every rank's pending counts into `exposures` (a collective with > 1 rank)."""
        if self.exposures is None or self.pending_exposures is None:
            return
        pending = self.pending_exposures
        if world_size > 1:
            # NCCL reduces device tensors only; the counts are small (one int64 per individual).
            pending = pending.to(self.loss_sum.device)
            dist.all_reduce(pending)
        self.exposures += pending.cpu()
        self.pending_exposures.zero_()

    def add_train_loss(self, loss: torch.Tensor) -> None:
        # Accumulate on the device: a .item() per step would stall a GPU on every step.
        self.loss_sum += loss.detach().double()
        self.loss_count += 1

    def read_log_window(
        self, allow_nonfinite: bool, grad_norm: Optional[torch.Tensor] = None
    ) -> tuple[Optional[float], Optional[float]]:
        """(mean step loss of this rank over the steps since the previous read, `grad_norm`'s
        value): one host sync for both, at log intervals only. Raises `Diverged` if the loss
        since the last eval is not finite, unless allowed."""
        values = [self.loss_sum]
        if grad_norm is not None:
            values.append(grad_norm.detach().to(self.loss_sum))
        read = torch.stack(values).tolist()
        total, count = read[0], self.loss_count
        if count and math.isfinite(total):
            self.last_finite = (self.step, total / count)
        elif count and not allow_nonfinite:
            raise Diverged(self.divergence(f"non-finite training loss by step {self.step}"))
        window = None
        if count > self.logged_count:
            window = (total - self.logged_sum) / (count - self.logged_count)
        self.logged_sum, self.logged_count = total, count
        return window, (read[1] if grad_norm is not None else None)

    def divergence(self, what: str) -> str:
        if self.last_finite is not None:
            last = f"last finite training loss {self.last_finite[1]:.4f} at step "
            last += str(self.last_finite[0])
        elif self.eval_steps:
            last = f"last finite eval loss {self.eval_losses[-1]:.4f} at step {self.eval_steps[-1]}"
        else:
            last = "no finite loss yet"
        return (
            f"{what} ({last}); lower --lr or set --grad-clip, or pass --allow-nonfinite to "
            "keep training"
        )

    def take_train_loss(self, world_size: int) -> Optional[float]:
        """Mean step loss over all ranks since the last call (None if no step); resets the sums."""
        count = torch.tensor(
            float(self.loss_count), dtype=torch.float64, device=self.loss_sum.device
        )
        totals = torch.stack([self.loss_sum, count])
        if world_size > 1:
            dist.all_reduce(totals)
        self.loss_sum.zero_()
        self.loss_count = 0
        self.logged_sum, self.logged_count = 0.0, 0
        return (totals[0] / totals[1]).item() if totals[1] > 0 else None

    def finite_history(self) -> tuple[list[int], list[float], list[float]]:
        """(steps, losses, accuracies) of the evaluations before the first non-finite loss: what
        the phases are read from (a run kept going with --allow-nonfinite has no phases after)."""
        n = next(
            (i for i, x in enumerate(self.eval_losses) if not math.isfinite(x)),
            len(self.eval_losses),
        )
        return self.eval_steps[:n], self.eval_losses[:n], self.eval_accs[:n]

    def record_eval(self, step: int, loss: float, acc: float) -> None:
        self.eval_steps.append(step)
        self.eval_losses.append(loss)
        self.eval_accs.append(acc)

    def state_dict(self) -> dict[str, Any]:
        # Plain values (and one int64 tensor), so the checkpoint loads with
        # torch.load(weights_only=True).
        state: dict[str, Any] = {
            "step": self.step,
            "eval_steps": list(self.eval_steps),
            "eval_losses": list(self.eval_losses),
            "eval_accs": list(self.eval_accs),
            "loss_sum": self.loss_sum.item(),
            "loss_count": self.loss_count,
            "logged_sum": self.logged_sum,
            "logged_count": self.logged_count,
            "level": self.level,
        }
        if self.exposures is not None and self.pending_exposures is not None:
            # Synced before every checkpoint, so this is every rank's count (and with one process
            # exact at any time).
            state["exposures"] = (self.exposures + self.pending_exposures).clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.eval_steps = [int(s) for s in state["eval_steps"]]
        self.eval_losses = [float(x) for x in state["eval_losses"]]
        self.eval_accs = [float(x) for x in state["eval_accs"]]
        self.loss_sum.fill_(float(state["loss_sum"]))
        self.loss_count = int(state["loss_count"])
        # Older checkpoints lack the log window: it then starts at the resume.
        self.logged_sum = float(state.get("logged_sum", state["loss_sum"]))
        self.logged_count = int(state.get("logged_count", state["loss_count"]))
        # The run's own level, not a recomputation: the phases were detected against it.
        self.level = float(state["level"])
        if self.exposures is not None:
            if "exposures" not in state:
                raise ValueError("--count-exposures: the checkpoint holds no exposure counts")
            saved = torch.as_tensor(state["exposures"], dtype=torch.int64).cpu()
            if saved.shape != self.exposures.shape:
                raise ValueError(
                    f"--count-exposures: the checkpoint counts {saved.numel()} individuals, "
                    f"this run {self.exposures.numel()}"
                )
            self.exposures.copy_(saved)
            assert self.pending_exposures is not None
            self.pending_exposures.zero_()


def current_phases(state: TrainState, config: TrainConfig, twin: Optional[Twin]) -> Phases:
    """Phases of the eval-probe history so far (the one call of the detector): the plateau is
    entered at F's band; knowledge starts below F's band, or with a twin, below the twin's curve
    by more than its seed-to-seed range (+-band of it with a single twin seed)."""
    steps, losses, accs = state.finite_history()
    onset_level = onset_half_width = None
    if twin is not None:
        onset_level, onset_half_width = twin.at(steps)
    return detect_phases(
        steps,
        losses,
        state.level,
        accs,
        band=config.plateau_band,
        min_evals=config.plateau_min_evals,
        onset_level=onset_level,
        onset_half_width=onset_half_width,
        confirm=1 if twin is None else 2,
    )


# ----------------------------------------------------------------------------------------------
# Data


def build_world(config: TrainConfig) -> Any:
    world = kadyn.World(
        n_individuals=config.individuals,
        seed=config.world_seed,
        heldout=config.heldout,
        new=config.new_individuals,
        n_first_names=config.n_first_names,
        n_last_names=config.n_last_names,
        n_cities=config.n_cities,
        n_universities=config.n_universities,
        n_majors=config.n_majors,
        n_companies=config.n_companies,
        year_min=config.year_min,
        year_max=config.year_max,
        n_days=config.n_days,
        n_months=config.n_months,
    )
    # Probes are always one padded biography per row, so every biography must fit.
    if config.seq_len < world.max_biography_tokens:
        raise ValueError(
            f"--seq-len must be >= {world.max_biography_tokens} (the longest biography of this "
            f"world), got {config.seq_len}"
        )
    return world


def no_knowledge_levels(world: Any, config: TrainConfig) -> dict[str, float]:
    """F for the eval probes under the run's sampling (a curriculum's last, open-ended phase,
    where its plateau lies) and the value-table entropy, the floor of memorising the population's
    value combinations. Both are sequential sums in the engine: the same bits on every rank."""
    level = world.no_knowledge_loss(
        make_sampling(config),
        population=config.population,
        max_individuals=config.eval_individuals,
    )["mean"]
    floor = world.value_table_entropy(config.population)["mean"]
    return {"no_knowledge/level": level, "no_knowledge/value_table_entropy": floor}


# ----------------------------------------------------------------------------------------------
# Optimisation


_TORCH_VERSION = tuple(int(part) for part in torch.__version__.split(".")[:2])


def param_groups(model: GPT, weight_decay: float) -> list[dict[str, Any]]:
    """Decay the matrices of the blocks (and an untied head); not norms, not the embedding."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.startswith("embed.") else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(step: int, steps: int, min_ratio: float, constant: bool) -> float:
    """Multiplier of the peak lr at `step`: cosine from 1 to min_ratio over `steps`, no warm-up."""
    if constant:
        return 1.0
    progress = min(step, steps) / steps
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_model_config(config: TrainConfig, vocab_size: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size,
        n_layers=config.n_layers,
        d_model=config.d_model,
        n_heads=config.n_heads,
        d_mlp=config.d_mlp,
        max_seq_len=config.seq_len,
        tie_embeddings=config.tie_embeddings,
        rope_base=config.rope_base,
    )


def build_optimizer(model: GPT, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        # One kernel per parameter tensor instead of a dozen elementwise ops; on CPU from torch 2.4.
        fused=device.type == "cuda" or _TORCH_VERSION >= (2, 4),
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(
            lr_factor,
            steps=config.steps,
            min_ratio=config.min_lr_ratio,
            constant=config.constant_lr,
        ),
    )


def init_from_checkpoint(
    model: GPT, path: str, device: torch.device, log: Callable[[str], None]
) -> None:
    """--init-checkpoint: `model`'s weights from a run's checkpoint or a model snapshot, whose
    model config must be `model`'s (but for max_seq_len, which only sizes the RoPE tables)."""
    try:
        ckpt = load_checkpoint(path, map_location=device)
    except CheckpointError as e:
        raise ValueError(f"--init-checkpoint: {e}") from None
    for key, value in ckpt["model_config"].items():
        ours = getattr(model.config, key)
        if ours != value and key != "max_seq_len":
            what = "vocab_size (set by the world's pool sizes)" if key == "vocab_size" else key
            raise ValueError(f"--init-checkpoint: model {what} is {value!r} there, {ours!r} now")
    model.load_state_dict(ckpt["model"])
    # A run's checkpoint keeps its step in train_state; a model snapshot at the top level.
    log(f"initialised from {path} (step {ckpt.get('train_state', ckpt).get('step')})")


# ----------------------------------------------------------------------------------------------
# The training step

# Runs shorter than this stay eager even with --compile. Compiling the step (one graph for every
# batch shape, StepLoss) costs 21-27 s of a 2-core AMD EPYC (Zen 4) with a cold inductor cache
# ($TORCHINDUCTOR_CACHE_DIR, by default under /tmp) and ~2 s with a warm one, against 13-20 ms
# saved per tiny-preset step (paired, `python benches/train_step.py --only compile`: 1.21-1.33x
# eager): a cold compile pays back after 1,300-2,000 steps. The default run (2,200 steps)
# therefore compiles. Against the reference loop run beside it (`python
# benches/train_vs_reference.py [--compile-cache default]`, two runs each) it reported 1.39x and
# 1.38x with a fresh cache (torch's precompiled header already built) and 1.58x and 1.59x with a
# warm one (eager: 1.26x and 1.27x, before attention's gathers); from an empty TMPDIR, once the
# compile skipped inductor's ISA test builds and precompiled header (inductor_options), 1.40x and
# 1.44x.
# Shorter runs stay eager: on a cold cache compiling would cost them more than it saves. The rule
# reads --steps, not the steps left, so a resumed run computes as the run it continues.
COMPILE_MIN_STEPS = 2000
# Trimmed batches are a multiple of this long: few lengths, each a compilation where a torch
# without size hints compiles them apart (StepLoss).
TRIM_MULTIPLE = 8


def training_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    pad_id: int,
    attention_override: Optional[dict[int, torch.Tensor]] = None,
    positions: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The step's forward: mean next-token cross-entropy over the non-<pad> targets. Loss only:
    per-token cross-entropy and correctness are the evaluation's, not computed here. `positions`
    (`target_positions`): computed from the positions that have a target alone."""
    with autocast(input_ids.device):
        return model(
            input_ids,
            next_token_targets(input_ids, pad_id),
            attention_override=attention_override,
            token_stats=False,
            positions=positions,
        ).loss


def cpp_compiler() -> Optional[str]:
    """The C++ compiler inductor builds CPU kernels with (its default: $CXX, else g++ or, on
    macOS, clang++), if it is installed."""
    return shutil.which(os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++"))


def eager_reason(config: TrainConfig, device: torch.device, patching: bool) -> Optional[str]:
    """Why the training step runs eager; None when it is compiled."""
    if not config.compile:
        return "--no-compile"
    if patching:
        return "attention patching (its override path is not compiled)"
    if config.steps < COMPILE_MIN_STEPS:
        return f"--steps {config.steps} < {COMPILE_MIN_STEPS}: too short to pay back compiling"
    if device.type == "cpu" and cpp_compiler() is None:
        return "no C++ compiler for inductor (set CXX, or install g++)"
    return None


def dynamic_lengths() -> bool:
    """Whether this torch compiles one graph for every sequence length with a size hint of our
    choosing (`mark_dynamic`'s hint_override). Without the override inductor plans the code
    (reduction strategies, among others) for the first length it sees, which a resumed run may
    not see first."""
    return "hint_override" in inspect.signature(torch._dynamo.mark_dynamic).parameters


def inductor_options(device: torch.device) -> dict[str, bool]:
    """The options StepLoss compiles with (those this torch has):
    - `deterministic`: no on-device benchmarking (CUDA autotuning), which can pick kernels, and
      so roundings, by timing;
    - on CPU, `cpp_wrapper`: the compiled graphs call their kernels from C++ rather than Python.
      The same kernels, so the same bits (40 steps' losses equal; tests/test_compile.py checks
      compiled runs); a tiny-preset step 1-3% faster (`python benches/train_step.py --only
      inductor`: paired A/B 1.003-1.022), and no slower to compile from a cold cache (55 s for
      three lengths, against 62 s).
    - on CPU, a machine's first compile made shorter (Zen 4, tiny preset, empty temporary
      directory: first step 33-37 s before, 21-22 s after), with the same ISA picked and the
      same bits (30 steps' losses and weights equal):
      - `cpp.vec_isa_ok`: the SIMD level is taken from the CPU's flags without inductor's test
        builds, three compiles of ATen's vector headers (~7 s, once per cache). The builds of the
        extensions (bf16, VNNI, AMX), a few small files, still run;
      - `cpp_cache_precompile_headers` off: the precompiled header costs ~5 s to build (150 MB,
        kept under /tmp per torch build and flags) and saved the two wrappers' compiles little
        (9.5-12 s with it, 11-12 s without)."""
    inductor = torch._inductor.config
    wanted: dict[str, bool] = {"deterministic": True}
    if device.type == "cpu":
        wanted.update(cpp_wrapper=True, cpp_cache_precompile_headers=False)
        # vec_isa_ok defaults to None: only a torch that type-checks options by their declared
        # (Optional) type accepts a bool for it (older ones compare with the current value's).
        if hasattr(inductor, "get_type") and hasattr(inductor.cpp, "vec_isa_ok"):
            wanted["cpp.vec_isa_ok"] = True
    return {name: on for name, on in wanted.items() if "." in name or hasattr(inductor, name)}


class StepLoss:
    """The loss of one training step, from the stream's CPU batch: trailing all-<pad> columns
    trimmed (`trim_padding`: the same loss and gradients, from fewer positions), the positions
    that have a target found (`target_positions`, unless `drop_untargeted` is False: the model
    then computes the rest too), moved to the device, then `training_loss`, compiled or eager.

    Compiled: `torch.compile` (inductor) of `training_loss`, one graph for the forward and loss and
    one for their backward, for every batch shape (its trimmed length, a multiple of
    TRIM_MULTIPLE, and its count of positions): both are symbols, and inductor plans the code for
    a full batch (`seq_len` long, every position kept: the size hints), whichever shape comes
    first. So the code is the same in a run and in the run resuming it: compiled runs are
    deterministic for a given device, thread count and torch version, and resume exactly. On a
    torch without size hints (`dynamic_lengths`) each length is compiled apart, with static
    shapes, which also depends only on the shapes. Their numbers differ from an eager run's
    by float rounding (other fusions), which is why a run's --compile is part of what it computes
    (tests/test_compile.py)."""

    def __init__(
        self,
        model: torch.nn.Module,
        pad_id: int,
        device: torch.device,
        seq_len: int,
        compiled: bool,
        drop_untargeted: bool = True,
    ) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = device
        self.compiled = compiled
        self._loss: Callable[..., torch.Tensor] = training_loss
        self.seq_len = seq_len
        self.dynamic = compiled and dynamic_lengths()
        # Compiled with static shapes, every count of positions would be a compilation; a model
        # that computes every position (a stack) says so with `takes_positions = False`.
        self.drop_untargeted = (
            drop_untargeted
            and getattr(model, "takes_positions", True)
            and (self.dynamic or not compiled)
        )
        if compiled:
            # Every length must stay compiled: past dynamo's recompile limit (8 per function) a
            # new graph would run eager, and a resumed run, counting afresh, would not. Room for
            # every length of a few model shapes in one process (experiments, benchmarks), should
            # lengths be compiled apart. (torch < 2.6 calls the limit cache_size_limit.)
            lengths = -(-seq_len // TRIM_MULTIPLE)
            dynamo = torch._dynamo.config
            name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
            setattr(dynamo, name, max(getattr(dynamo, name), 4 * lengths))
            self._loss = torch.compile(
                training_loss,
                dynamic=None if self.dynamic else False,  # None: the marked length is a symbol
                options=inductor_options(device),
            )

    def __call__(
        self, input_ids: torch.Tensor, attention_source: Optional[AttentionSource] = None
    ) -> torch.Tensor:
        ids = trim_padding(input_ids, self.pad_id, TRIM_MULTIPLE)
        positions = None
        if self.drop_untargeted and attention_source is None:
            positions = target_positions(ids, self.pad_id)
        ids = ids.to(self.device, non_blocking=True)
        if positions is not None:
            positions = positions.to(self.device, non_blocking=True)
        if self.dynamic:
            torch._dynamo.mark_dynamic(ids, 1, hint_override=self.seq_len)
            if positions is not None:
                # The count of positions is a symbol too, planned for a full batch.
                hint = ids.shape[0] * self.seq_len
                torch._dynamo.mark_dynamic(positions, 0, hint_override=hint)
        override = attention_source(ids) if attention_source is not None else None
        return self._loss(self.model, ids, self.pad_id, override, positions)


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float,
) -> Optional[torch.Tensor]:
    """After backward: clip, step, advance the lr schedule, drop the gradients. Returns the
    gradient norm before clipping (0-dim, on the device, not read: reading it is a host sync),
    or None without clipping."""
    grad_norm = None
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


# ----------------------------------------------------------------------------------------------
# Evaluation rounds


def run_eval(
    state: TrainState,
    model: GPT,
    probes: dict[str, Probe],
    world: Any,
    config: TrainConfig,
    runtime: Runtime,
    attention_source: Optional[AttentionSource],
    twin: Optional[Twin],
    floor: float,
    *,
    lr: float,
    perf: tuple[Optional[float], Optional[float]],
    t_start: float,
) -> dict[str, Any]:
    """Evaluate at `state.step`: record the eval in `state`, close the training-loss window,
    and return the metrics record. `perf` is (tokens/s, MFU) since the previous eval; `floor` the
    value-table entropy."""
    results = evaluate(model, probes, config, world, runtime, attention_source)
    train_loss = state.take_train_loss(runtime.world_size)
    state.sync_exposures(runtime.world_size)
    eval_loss = results["eval"]["loss"]
    finite = math.isfinite(eval_loss) and (train_loss is None or math.isfinite(train_loss))
    if not finite and not config.allow_nonfinite:
        # Diverged: every later step and metric would be NaN, and the phases undefined.
        raise Diverged(state.divergence(f"non-finite loss at the evaluation of step {state.step}"))
    if train_loss is not None and math.isfinite(train_loss):
        state.last_finite = (state.step, train_loss)
    state.record_eval(state.step, eval_loss, results["eval"]["acc"])
    levels = {"no_knowledge/level": state.level, "no_knowledge/value_table_entropy": floor}
    if twin is not None:
        reference, half_width = twin.at([state.step])
        levels["twin/eval/attr_loss"] = reference[0]
        levels["twin/eval/spread"] = None if half_width is None else half_width[0]
    tokens_per_s, mfu = perf
    return make_record(
        step=state.step,
        samples=state.step * config.batch_size,
        lr=lr,
        train_loss=train_loss,
        results=results,
        levels=levels,
        phases=current_phases(state, config, twin),
        tokens_per_s=tokens_per_s,
        mfu=mfu,
        elapsed_s=time.perf_counter() - t_start,
    )


def throughput(
    steps: int, seconds: float, tokens_per_step: int, flops_per_step: float, peak_flops: float
) -> tuple[Optional[float], Optional[float]]:
    """(tokens/s, MFU) over `steps` timed steps; MFU only on CUDA (peak_flops = 0 elsewhere)."""
    if not steps:
        return None, None
    mfu = steps * flops_per_step / seconds / peak_flops if peak_flops else None
    return steps * tokens_per_step / seconds, mfu


def speed_summary(records: Sequence[dict[str, Any]], tokens_per_step: int) -> dict[str, Any]:
    """summary.json's speed, from the metrics records (so over every attempt of a resumed run):
    the token positions trained (<pad> included), the training seconds (evaluations and
    checkpoints left out: each record's tokens/s covers the steps since the previous record),
    the mean tokens/s and MFU (CUDA only) over them."""
    seconds, mfu_seconds, timed, timed_tokens = 0.0, 0.0, True, 0
    for before, record in zip(records, records[1:]):
        window = record["step"] - before["step"]
        tokens_per_s = record.get("perf/tokens_per_s")
        if window > 0 and tokens_per_s:
            window_s = window * tokens_per_step / tokens_per_s
            seconds += window_s
            timed_tokens += window * tokens_per_step
            mfu = record.get("perf/mfu")
            timed = timed and mfu is not None
            mfu_seconds += window_s * (mfu or 0.0)
    tokens = records[-1]["step"] * tokens_per_step if records else 0
    return {
        "tokens": tokens,
        "train_s": seconds,
        "tokens_per_s": timed_tokens / seconds if seconds else None,
        "mfu": mfu_seconds / seconds if seconds and timed else None,
    }


def publish(
    record: dict[str, Any],
    records: list[dict[str, Any]],
    out: Path,
    config: TrainConfig,
    runtime: Runtime,
    log: Callable[[str], None],
    twin: Optional[Twin],
) -> None:
    """Keep the record (every rank); rank 0 appends it to metrics.jsonl, plots and logs it."""
    records.append(record)
    if not runtime.is_main:
        return
    with (out / METRICS).open("a") as f:
        f.write(json_line(record))
    if len(records) % PLOT_EVERY_EVALS == 0 or record["step"] == config.steps:
        plot_curves(records, out / "curves.png", twin=twin, control=config.control)
    if "nonfinite" in record:
        log(f"step {record['step']:>6} | non-finite: {', '.join(record['nonfinite'])}")
        return
    tokens_per_s, mfu = record["perf/tokens_per_s"], record["perf/mfu"]
    speed = f" | {tokens_per_s:,.0f} tok/s" if tokens_per_s else ""
    speed += f" | MFU {mfu:.1%}" if mfu is not None else ""
    train_probe = record.get("train/attr_loss")
    train_text = "" if train_probe is None else f"train-template loss {train_probe:.3f} | "
    log(
        f"step {record['step']:>6} | eval attr loss {record['eval/attr_loss']:.3f} "
        f"(no-knowledge {record['no_knowledge/level']:.3f}) acc {record['eval/attr_acc']:.3f} | "
        f"{train_text}phase {record['phase']}{speed}"
    )


# ----------------------------------------------------------------------------------------------
# Checkpoints and outputs


def check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    """Refuse to continue a checkpoint with a config that changes what is computed."""
    for f in fields(TrainConfig):
        if f.name in RESUMABLE_FIELDS:
            continue
        if f.name in saved and saved[f.name] != getattr(config, f.name):
            raise ValueError(
                f"{flag_name(f.name)} differs from the checkpoint being resumed "
                f"({saved[f.name]!r} there, {getattr(config, f.name)!r} now)"
            )


def save_run(
    out: Path,
    states: dict[str, Stateful],
    config: TrainConfig,
    model_config: ModelConfig,
    device: torch.device,
) -> None:
    """The latest checkpoint (and, with --keep-checkpoints, a kept copy for this step)."""
    ckpt: dict[str, Any] = {name: s.state_dict() for name, s in states.items()}
    ckpt["rng"] = rng_state(device)
    ckpt["config"] = config.to_dict()
    ckpt["model_config"] = vars(model_config).copy()
    save_checkpoint(ckpt, checkpoint_path(out))
    if config.keep_checkpoints:
        save_checkpoint(ckpt, checkpoint_path(out, ckpt["train_state"]["step"]))


def restore_run(ckpt: dict[str, Any], states: dict[str, Stateful], device: torch.device) -> None:
    """Load each entry back; a missing entry or one of the wrong shape is a CheckpointError
    naming it (torch's own messages run to dozens of lines)."""
    for name in (*states, "rng"):
        if name not in ckpt:
            raise CheckpointError(f"the checkpoint has no {name!r} entry")
    for name, s in states.items():
        try:
            s.load_state_dict(ckpt[name])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(
                f"checkpoint entry {name!r} does not load: {first_line(e)}"
            ) from None
    try:
        set_rng_state(ckpt["rng"], device)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint entry 'rng' does not load: {first_line(e)}") from None


def truncate_metrics(path: Path, last_step: int) -> list[dict[str, Any]]:
    """Drop records a killed run wrote after its last checkpoint; they will be recomputed."""
    records = [r for r in read_metrics(path) if r["step"] <= last_step]
    atomic_write_text(path, "".join(json_line(r) for r in records))
    return records


def exposures_path(out: Path, step: int) -> Path:
    return Path(out) / f"exposures-{step:07d}.npy"


def write_exposures(out: Path, state: TrainState) -> None:
    """The counts as of this evaluation (synced in run_eval), atomically: a kill mid-write must
    not leave a torn file that a later analysis reads."""
    assert state.exposures is not None
    counts = state.exposures.numpy().copy()
    atomic_write(exposures_path(out, state.step), lambda f: np.save(f, counts))


def read_exposures(out: Path, step: int) -> Optional[np.ndarray]:
    """Exposure counts of a run at an evaluation step; None if the run did not write them."""
    path = exposures_path(out, step)
    return np.load(path) if path.exists() else None


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def default_out(config: TrainConfig) -> str:
    kind = f"{config.preset}-control" if config.control else config.preset
    return str(Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")


def summary_line(summary: dict[str, Any]) -> str:
    final = summary["final"]
    level = final["no_knowledge/level"]
    loss = final["eval/attr_loss"]
    held = final.get("heldout/attr_loss")
    held_text = "" if held is None else f" | held-out loss {held:.3f} ({held / level:.2f}x)"
    start, end = summary["plateau_start"], summary["plateau_end"]
    onset = summary.get("knowledge_onset")
    if start is None:
        plateau = "no plateau"
        plateau += f", knowledge from step {onset:.0f}" if onset is not None else ""
    elif end is None:
        plateau = f"plateau from step {start:.0f}, not left"
    else:
        plateau = f"plateau steps {start:.0f}-{end:.0f} ({summary.get('plateau_evals')} evals)"
    return (
        f"done: {plateau} | "
        f"final eval attr loss {loss:.3f} vs no-knowledge level {level:.3f} "
        f"({loss / level:.2f}x) | eval acc {final['eval/attr_acc']:.3f}{held_text} | "
        f"wall {summary['wall_s']:.0f}s"
    )


# ----------------------------------------------------------------------------------------------
# The run


def train(
    config: TrainConfig,
    *,
    on_eval: Optional[EvalCallback] = None,
    on_step: Optional[StepCallback] = None,
    attention_source: Optional[AttentionSource] = None,
    command: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Train as configured; returns a summary dict (plateau, final metrics, out dir, timings).

    on_eval(step, record, model): after each evaluation (rank 0 and others alike).
    on_step(step, batch, model): after each optimizer step; batch holds this rank's tensors.
    attention_source(input_ids) -> {layer: pattern}: patch those layers' attention patterns, in
    training and evaluation (attention-patching twin model).
    command: the command line config.toml records (default: this process's, sys.argv).
    """
    config = with_dataset(config)
    config.validate()
    t_start = time.perf_counter()
    runtime = setup_runtime(config)
    try:
        out = Path(config.out or default_out(config))
        ran = (
            run_provenance(describe_device(runtime), sys.argv if command is None else command)
            if runtime.is_main
            else {}
        )
        with claim_out_dir(out, runtime), contextlib.ExitStack() as cleanup:
            return _train(
                config, out, runtime, t_start, on_eval, on_step, attention_source, ran, cleanup
            )
    finally:
        if runtime.owns_process_group:
            dist.destroy_process_group()


def describe_device(runtime: Runtime) -> str:
    """The resolved device, e.g. "cpu" or "cuda:0 (NVIDIA H200)", and the process count."""
    device = runtime.device
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return name + (f" x {runtime.world_size} processes" if runtime.world_size > 1 else "")


def with_dataset(config: TrainConfig) -> TrainConfig:
    """With --data: `config` with what the dataset fixes (world, sampling, population, row
    layout) taken from its manifest."""
    if not config.data:
        return config
    try:
        manifest = read_manifest(config.data)
    except FileNotFoundError as e:
        raise ValueError(f"--data: {e}") from None
    return dataclasses.replace(config, **dataset_settings(manifest))


@contextlib.contextmanager
def claim_out_dir(out: Path, runtime: Runtime) -> Iterator[None]:
    """Create --out and hold its lock for the run (rank 0 only: the other ranks of a torchrun
    job write nothing there). Done before the world and the model are built, so a directory
    that cannot be used fails in a second, not after minutes of set-up."""
    if not runtime.is_main:
        yield
        return
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "--out exists and is not a directory", str(out))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with DirectoryLock(out, "kadyn-train"):
            yield
    except BaseException:
        if created:  # a run refused before it wrote anything leaves no empty directory behind
            (out / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def resumes(config: TrainConfig, out: Path, runtime: Runtime, log: Callable[[str], None]) -> bool:
    """Whether the run in `out` resumes from its checkpoint: --resume and a checkpoint there.
    Refuses to start afresh over a run's metrics."""
    resume = config.resume and checkpoint_path(out).exists()
    if config.resume and not resume:
        # Killed (or out of disk) before its first checkpoint: nothing to continue, so start as a
        # fresh run would, instead of a dead end between "no checkpoint" and "pass --resume".
        log(f"--resume: {out} holds no checkpoint yet; starting from step 0")
        if runtime.is_main:
            (out / METRICS).unlink(missing_ok=True)
    elif not config.resume and (out / METRICS).exists():
        raise ValueError(f"--out {out} already holds a run; pass --resume or choose another --out")
    return resume


def build_inputs(
    config: TrainConfig, runtime: Runtime
) -> tuple[Any, Union[TrainBatches, DatasetBatches], Any, dict[str, float], TrainState]:
    """What a run reads, before its model: the world, this rank's training batches (the live
    stream, or --data's rows), the probes, the no-knowledge levels and a fresh TrainState."""
    world = build_world(config)
    data: Union[TrainBatches, DatasetBatches] = (
        DatasetBatches(open_dataset(config), world, config, runtime)
        if config.data
        else TrainBatches(world, config, runtime)
    )
    probes = build_probes(world, config, runtime)
    levels = no_knowledge_levels(world, config)
    state = TrainState.start(
        levels["no_knowledge/level"],
        runtime.device,
        individuals=world.population_size(config.population) if config.count_exposures else None,
    )
    return world, data, probes, levels, state


def _train(
    config: TrainConfig,
    out: Path,
    runtime: Runtime,
    t_start: float,
    on_eval: Optional[EvalCallback],
    on_step: Optional[StepCallback],
    attention_source: Optional[AttentionSource],
    ran: dict[str, Any],
    cleanup: contextlib.ExitStack,
) -> dict[str, Any]:
    """The run, in `out` (claimed); `ran` is config.toml's provenance, and `cleanup` closes the
    --report-to writers however the run ends."""
    device = runtime.device
    metrics_path = out / METRICS
    report_to = parse_report_to(config.report_to) if runtime.is_main else []
    require(report_to)  # a missing package fails now, not after the set-up
    log = (lambda msg: tqdm.write(msg, file=sys.stderr)) if runtime.is_main else (lambda msg: None)
    resume = resumes(config, out, runtime, log)
    twin = load_twin(config.twin, config) if config.twin else None
    world, data, probes, levels, state = build_inputs(config, runtime)
    floor = levels["no_knowledge/value_table_entropy"]

    # --- model and optimizer ---
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model_config = make_model_config(config, world.vocab_size)
    model = GPT(model_config).to(device)
    optimizer = build_optimizer(model, config, device)
    scheduler = build_scheduler(optimizer, config)
    # Everything a checkpoint holds besides the plain extras (rng, config, model_config).
    states: dict[str, Stateful] = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "data": data,
        "train_state": state,
    }

    # --- where to start: fresh, resumed, or from another run's weights ---
    if resume:
        try:
            ckpt = load_checkpoint(checkpoint_path(out), map_location=device)
        except CheckpointError as e:
            raise ValueError(f"--resume: {e}") from None
        check_resumable(ckpt["config"], config)
        restore_run(ckpt, states, device)
        if runtime.is_main:
            truncate_metrics(metrics_path, state.step)
        log(f"resumed {out} at step {state.step}")
    elif config.init_checkpoint:
        init_from_checkpoint(model, config.init_checkpoint, device, log)
    if runtime.is_main:
        atomic_write_text(
            out / "config.toml", to_toml(dataclasses.replace(config, resume=False), ran)
        )
    # What a killed attempt logged after the checkpoint is replaced: the first step logged now
    # is the checkpoint's next one (and at a fresh start, step 0's evaluation).
    reporters = open_reporters(
        report_to, out, config.to_dict(), state.step + 1 if state.step else 0
    )
    cleanup.callback(reporters.close)

    n_params, n_body = model.num_parameters(), model.num_parameters(embeddings=False)
    log(
        f"model: {config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads, "
        f"MLP {config.d_mlp}, vocab {world.vocab_size} | parameters {n_params / 1e6:.2f}M, "
        f"{n_body / 1e6:.2f}M without embeddings"
    )
    log(
        f"data: N={config.individuals}, {config.sampling} sampling, batch {config.batch_size} x "
        f"{config.seq_len} tokens on {runtime.world_size} process(es), {device} | "
        f"no-knowledge level {state.level:.3f} nats/value | out {out}"
    )

    raw_model = model
    if runtime.world_size > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    why_eager = eager_reason(config, device, patching=attention_source is not None)
    step_loss = StepLoss(model, world.pad_id, device, config.seq_len, compiled=why_eager is None)
    compiling = "torch.compile (inductor), compiled at the first step: 20-30 s cold, seconds warm"
    log("step: " + (compiling if why_eager is None else f"eager, {why_eager}"))

    flops_per_step = raw_model.flops_per_token(config.seq_len) * config.batch_size * config.seq_len
    peak = config.peak_tflops * 1e12 * runtime.world_size if device.type == "cuda" else 0.0
    tokens_per_step = config.batch_size * config.seq_len
    # Every rank keeps the (identical, all-reduced) records; only rank 0 writes them.
    records = read_metrics(metrics_path) if resume and runtime.is_main else []
    eval_args = (raw_model, probes, world, config, runtime, attention_source, twin, floor)

    checkpoint_every = config.checkpoint_every or config.eval_every
    if state.step == 0:
        lr = scheduler.get_last_lr()[0]
        record = run_eval(state, *eval_args, lr=lr, perf=(None, None), t_start=t_start)
        publish(record, records, out, config, runtime, log, twin)
        reporters.log_record(record)
        if state.exposures is not None and runtime.is_main:
            write_exposures(out, state)
        if on_eval is not None:
            on_eval(state.step, record, raw_model)
    model.train()
    # A tqdm bar on a terminal; in a log, a plain line every --log-every steps.
    bar = progress(
        config.steps,
        initial=state.step,
        desc="train",
        enabled=config.progress and runtime.is_main,
        every=config.log_every,
    )
    train_seconds, steps_timed = 0.0, 0
    t0 = time.perf_counter()
    while state.step < config.steps:
        batch = next(data)
        if state.exposures is not None:
            state.add_exposures(batch["exposed"])
        loss = step_loss(batch["input_ids"], attention_source)
        loss.backward()
        grad_norm = optimizer_step(raw_model, optimizer, scheduler, config.grad_clip)
        state.step += 1
        state.add_train_loss(loss)
        steps_timed += 1
        step = state.step
        if on_step is not None:
            on_step(step, batch, raw_model)
        if step % config.log_every == 0 or step == config.steps:
            # The loss and the gradient norm in one read: the only host sync between evals.
            window_loss, norm = state.read_log_window(config.allow_nonfinite, grad_norm)
            seconds = max(train_seconds + time.perf_counter() - t0, 1e-9)
            lr = float(scheduler.get_last_lr()[0])
            reporters.log(
                step, {"train/loss": window_loss, "train/lr": lr, "train/grad_norm": norm}
            )
            bar.set_postfix(
                loss=f"{window_loss:.3f}",
                **({} if norm is None else {"grad_norm": f"{norm:.2f}"}),
                phase=records[-1]["phase"] if records else 1,  # phases change only at evals
                tok_s=f"{steps_timed * tokens_per_step / seconds:,.0f}",
            )
        bar.update(1)
        if step % config.eval_every == 0 or step == config.steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_seconds += time.perf_counter() - t0
            perf = throughput(steps_timed, train_seconds, tokens_per_step, flops_per_step, peak)
            lr = scheduler.get_last_lr()[0]
            record = run_eval(state, *eval_args, lr=lr, perf=perf, t_start=t_start)
            publish(record, records, out, config, runtime, log, twin)
            reporters.log_record(record)
            if state.exposures is not None and runtime.is_main:
                write_exposures(out, state)
            if on_eval is not None:
                on_eval(step, record, raw_model)
            train_seconds, steps_timed = 0.0, 0
            t0 = time.perf_counter()
        if step % checkpoint_every == 0 or step == config.steps:
            t_save = time.perf_counter()
            state.sync_exposures(runtime.world_size)  # every rank: a collective with DDP
            if runtime.is_main:
                save_run(out, states, config, model_config, device)
            t0 += time.perf_counter() - t_save  # saving is not training time
    bar.close()

    final = records[-1] if records else None
    summary = {
        "out": str(out),
        "steps": config.steps,
        "control": config.control,
        "twin": twin.runs if twin is not None else None,
        "level": state.level,
        "value_table_entropy": floor,
        **phase_summary(state, config, twin),
        "final": final,
        "wall_s": time.perf_counter() - t_start,
        **speed_summary(records, tokens_per_step),
        "parameters": n_params,
        "parameters_without_embeddings": n_body,
    }
    if runtime.is_main and final is not None:
        atomic_write_text(out / "summary.json", json_line(summary, indent=1))
        if "nonfinite" not in final:
            log(summary_line(summary))
    return summary


def phase_summary(state: TrainState, config: TrainConfig, twin: Optional[Twin]) -> dict[str, Any]:
    """The detected phases, and the plateau length at 5/10/20% bands around F (the detector's
    sensitivity to its band, read without the twin)."""
    phases = current_phases(state, config, twin)
    steps, losses, accs = state.finite_history()
    sensitivity = band_sensitivity(
        steps,
        losses,
        state.level,
        accs,
        min_evals=config.plateau_min_evals,
    )
    return {
        "plateau_start": phases.plateau_start,
        "plateau_end": phases.plateau_end,
        "knowledge_onset": phases.knowledge_onset,
        "plateau_length": phases.plateau_length,
        "plateau_evals": phases.plateau_evals,
        "plateau_max_deviation": phases.max_deviation,
        "plateau_max_accuracy": phases.max_accuracy,
        "plateau_band": config.plateau_band,
        "plateau_length_by_band": {f"{b:g}": p.plateau_length for b, p in sensitivity.items()},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script: one line on stderr and a distinct exit code per kind of failure."""

    def fail(message: str, code: int) -> int:
        print(f"kadyn-train: error: {message}", file=sys.stderr)
        return code

    try:
        config, given = parse_args(argv)
        config = with_dataset(config)
        config.validate()
        if given.get("print_config"):
            print(to_toml(config), end="")
            return 0
        train(config, command=["kadyn-train", *(sys.argv[1:] if argv is None else argv)])
    except (ValueError, CheckpointError) as e:
        return fail(str(e), EXIT_USAGE)
    except DirectoryInUse as e:
        return fail(str(e), EXIT_IN_USE)
    except Diverged as e:
        return fail(str(e), EXIT_DIVERGED)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        return fail(f"cannot write{where}: {e.strerror or e}", EXIT_ENVIRONMENT)
    except KeyboardInterrupt:
        return fail(
            "interrupted; rerun the same command with --resume to continue from the last "
            "checkpoint",
            EXIT_INTERRUPTED,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
