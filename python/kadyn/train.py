"""`kadyn-train`: train the transformer on biography streams and track knowledge acquisition.

Reads top to bottom like nanoGPT's train loop: config -> world and data -> model -> optimizer ->
loop (step, periodic knowledge evaluation, checkpoint) -> summary. `train(config)` is the
programmatic entry used by experiments (with hooks: a callback per evaluation and per step, and an
attention source for the attention-patching experiment); `main()` is the console script.

Choices worth knowing:
- AdamW with weight decay on the matrices of the blocks only (attention and MLP weights, and an
  untied output head); none on RMSNorm gains or on the token embedding (nanoGPT's convention).
- Cosine decay from --lr to --min-lr-ratio x --lr over --steps, no warm-up (paper, Table 1), or a
  constant lr (--constant-lr, the paper's fine-tuning runs).
- The loss is next-token cross-entropy on every token of the stream except <pad> targets.
- Knowledge is evaluated on fixed probe sets (`World.eval_set`, seeded by --world-seed so every run
  of a world sees the same probes): train templates and eval templates of trained individuals, eval
  templates of held-out individuals; the phases are detected on the eval-template attribute loss.
- Replay (--population new --replay-weight w): each step's batch concatenates rows from a stream of
  'new' individuals and a stream of 'train' (old) ones, round(B * w / (1 + w)) old rows (at least
  one of each), so w is the ratio of old to new biographies, as the paper's replay weight.
- Exact resume: the checkpoint holds the streams' positions, so a resumed run sees the very same
  batches; on CPU with fixed threads the metrics match an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import kadyn
from kadyn.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from kadyn.config import RESUMABLE_FIELDS, TrainConfig, flag_name, parse_args, to_toml
from kadyn.metrics import knowledge_sums, summarize, top1_probability, value_scores
from kadyn.model import GPT, ModelConfig, next_token_targets
from kadyn.phases import detect_phases
from kadyn.plots import plot_curves

EvalCallback = Callable[[int, dict, GPT], None]
StepCallback = Callable[[int, dict, GPT], None]
# Maps a batch of input ids to {layer: (B, H, T, T) pattern} for GPT's attention_override.
AttentionSource = Callable[[torch.Tensor], dict]

METRICS = "metrics.jsonl"
PLOT_EVERY_EVALS = 10


# ----------------------------------------------------------------------------------------------
# Devices and processes


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    owns_process_group: bool  # we initialised torch.distributed, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: TrainConfig) -> Runtime:
    """Pick the device; join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch sees no CUDA device")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    if want_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(config.threads)
        # Fixed thread count + deterministic kernels: a resumed CPU run repeats the same numbers.
        torch.use_deterministic_algorithms(True, warn_only=True)
    return Runtime(device, rank, world_size, owns)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    )
    # Probes are always one padded biography per row, so every biography must fit.
    if config.seq_len < world.max_biography_tokens:
        raise ValueError(
            f"--seq-len must be >= {world.max_biography_tokens} (the longest biography of this "
            f"world), got {config.seq_len}"
        )
    return world


def make_sampling(config: TrainConfig) -> Any:
    if config.sampling == "power":
        return kadyn.PowerLaw(config.alpha)
    if config.sampling == "curriculum":
        warmup = kadyn.Subset(config.warmup_individuals)
        return kadyn.Curriculum([(warmup, config.warmup_samples), (kadyn.Uniform(), None)])
    return kadyn.Uniform()


def replay_rows(rows: int, weight: float) -> int:
    """Old-population rows in a batch of `rows` for replay weight `weight` (old : new)."""
    if weight <= 0:
        return 0
    return min(max(round(rows * weight / (1 + weight)), 1), rows - 1)


class TrainBatches:
    """Per-rank training batches: one stream, or new + replayed old rows concatenated per step."""

    def __init__(self, world: Any, config: TrainConfig, runtime: Runtime) -> None:
        if config.batch_size % runtime.world_size != 0:
            raise ValueError(
                f"--batch-size must be a multiple of the number of processes "
                f"({runtime.world_size}), got {config.batch_size}"
            )
        rows = config.batch_size // runtime.world_size
        old_rows = replay_rows(rows, config.replay_weight)
        if config.replay_weight > 0 and rows < 2:
            raise ValueError(f"--batch-size must be >= {2 * runtime.world_size} with replay")
        common = dict(
            seq_len=config.seq_len,
            split="train",
            packing=config.packing,
            rank=runtime.rank,
            world_size=runtime.world_size,
            threads=config.data_threads,
        )
        self.streams = {
            "main": kadyn.BiographyStream(
                world,
                batch_size=rows - old_rows,
                sampling=make_sampling(config),
                population=config.population,
                seed=config.seed,
                **common,
            )
        }
        if old_rows:
            self.streams["replay"] = kadyn.BiographyStream(
                world,
                batch_size=old_rows,
                sampling=kadyn.Uniform(),
                population="train",
                seed=config.seed + 1,
                **common,
            )
        self._iters: Optional[dict[str, Iterator]] = None

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._iters is None:
            self._iters = {k: iter(s) for k, s in self.streams.items()}
        parts = [kadyn.to_torch(next(it)) for it in self._iters.values()]
        if len(parts) == 1:
            return parts[0]
        batch = {k: torch.cat([p[k] for p in parts]) for k in ("input_ids", "sample_index")}
        # Which rows are replayed 'train' biographies (sample_index alone cannot tell).
        batch["replay"] = (
            torch.arange(batch["input_ids"].shape[0]) >= parts[0]["input_ids"].shape[0]
        )
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {k: s.state_dict() for k, s in self.streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, s in self.streams.items():
            s.load_state_dict(state[k])
        self._iters = None  # restart the iterators from the restored positions


@dataclass
class Probe:
    input_ids: torch.Tensor  # (n, T) int32, this rank's rows
    attr_type: torch.Tensor  # (n, T) int8


def build_probes(world: Any, config: TrainConfig, runtime: Runtime) -> dict[str, Probe]:
    """Fixed probe sets, sharded by rank (rows i = rank mod world_size); sums are all-reduced."""
    specs = {"train": ("train", config.population), "eval": ("eval", config.population)}
    if config.heldout > 0:
        specs["heldout"] = ("eval", "heldout")
    if config.population == "new":
        specs["old"] = ("eval", "train")
    probes = {}
    for name, (split, population) in specs.items():
        batch = world.eval_set(
            split=split,
            population=population,
            max_individuals=config.eval_individuals,
            seq_len=config.seq_len,
            seed=config.world_seed,
        )
        t = kadyn.to_torch(batch)
        sl = slice(runtime.rank, None, runtime.world_size)
        # clone: own the memory instead of keeping the Arrow buffers alive for the whole run
        probes[name] = Probe(t["input_ids"][sl].clone(), t["attr_type"][sl].clone())
    return probes


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def probe_sums(
    model: GPT,
    probe: Probe,
    config: TrainConfig,
    pad_id: int,
    n_attributes: int,
    device: torch.device,
    attention_source: Optional[AttentionSource] = None,
) -> torch.Tensor:
    sums = torch.zeros(n_attributes, 4, dtype=torch.float64, device=device)
    for i in range(0, probe.input_ids.shape[0], config.eval_batch_size):
        ids = probe.input_ids[i : i + config.eval_batch_size].to(device).long()
        attr = probe.attr_type[i : i + config.eval_batch_size].to(device)
        override = attention_source(ids) if attention_source is not None else None
        with autocast(device):
            out = model(ids, next_token_targets(ids, pad_id), attention_override=override)
        # Confidence only where a value token is predicted (position t - 1 of a value token t):
        # a few rows of full logits instead of (rows x T x vocab).
        predicts_value = torch.zeros_like(attr, dtype=torch.bool)
        predicts_value[:, :-1] = attr[:, 1:] >= 0
        confidence = torch.zeros(attr.shape, device=device)
        confidence[predicts_value] = top1_probability(
            out.hidden[predicts_value].float(), model.head_weight.float()
        )
        scores = value_scores(out.token_ce, out.token_correct, attr, confidence)
        sums += knowledge_sums(scores, n_attributes)
    return sums


def evaluate(
    model: GPT,
    probes: dict[str, Probe],
    config: TrainConfig,
    world: Any,
    runtime: Runtime,
    attention_source: Optional[AttentionSource] = None,
) -> dict[str, dict]:
    """Knowledge summaries ({'loss', 'acc', 'confidence', 'by_attribute'}) per probe set."""
    names = list(world.attribute_names)
    was_training = model.training
    model.eval()
    results = {}
    for name, probe in probes.items():
        sums = probe_sums(
            model, probe, config, world.pad_id, len(names), runtime.device, attention_source
        )
        if runtime.world_size > 1:
            dist.all_reduce(sums)
        results[name] = summarize(sums, names)
    model.train(was_training)
    return results


def make_record(
    step: int,
    results: dict[str, dict],
    baseline: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """One metrics.jsonl line. Keys named as in the issue; per attribute under 'by_attribute'."""
    record: dict[str, Any] = {"step": step, **extra}
    record["attr_loss"] = results["train"]["loss"]
    record["attr_acc"] = results["train"]["acc"]
    record["attr_loss_eval"] = results["eval"]["loss"]
    record["attr_acc_eval"] = results["eval"]["acc"]
    record["attr_confidence_eval"] = results["eval"]["confidence"]
    held = results.get("heldout")
    record["heldout_attr_loss"] = held["loss"] if held else None
    record["heldout_attr_acc"] = held["acc"] if held else None
    record["heldout_confidence"] = held["confidence"] if held else None
    if "old" in results:
        record["old_attr_loss_eval"] = results["old"]["loss"]
        record["old_attr_acc_eval"] = results["old"]["acc"]
    record["baseline"] = baseline
    by_attribute: dict[str, dict[str, float]] = {}
    prefixes = {"train": "attr", "eval": "attr", "heldout": "heldout_attr", "old": "old_attr"}
    suffixes = {"train": "", "eval": "_eval", "heldout": "", "old": "_eval"}
    for probe, summary in results.items():
        for attr, s in summary["by_attribute"].items():
            entry = by_attribute.setdefault(attr, {})
            entry[f"{prefixes[probe]}_loss{suffixes[probe]}"] = s["loss"]
            entry[f"{prefixes[probe]}_acc{suffixes[probe]}"] = s["acc"]
            if probe in ("eval", "heldout"):
                entry[f"{prefixes[probe]}_confidence{suffixes[probe]}"] = s["confidence"]
    record["by_attribute"] = by_attribute
    return record


# ----------------------------------------------------------------------------------------------
# Optimisation


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


# ----------------------------------------------------------------------------------------------
# Checkpoints and outputs


def check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    """Refuse to continue a checkpoint with a config that changes what is computed."""
    for f in fields(TrainConfig):
        if f.name in RESUMABLE_FIELDS | {"checkpoint_every", "keep_checkpoints"}:
            continue
        if f.name in saved and saved[f.name] != getattr(config, f.name):
            raise ValueError(
                f"{flag_name(f.name)} differs from the checkpoint being resumed "
                f"({saved[f.name]!r} there, {getattr(config, f.name)!r} now)"
            )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of metrics.jsonl; a last line cut short by a killed run is dropped."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return records


def truncate_metrics(path: Path, last_step: int) -> list[dict[str, Any]]:
    """Drop records a killed run wrote after its last checkpoint; they will be recomputed."""
    records = [r for r in read_metrics(path) if r["step"] <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
    return records


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
    return str(Path("runs") / f"{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}")


def summary_line(summary: dict[str, Any]) -> str:
    final = summary["final"]
    ratio = final["attr_loss_eval"] / final["baseline"]
    held = final["heldout_attr_loss"]
    held_text = (
        "" if held is None else f" | held-out loss {held:.3f} ({held / final['baseline']:.2f}x)"
    )
    start, end = summary["plateau_start"], summary["plateau_end"]
    if start is None:
        plateau = "no plateau reached"
    elif end is None:
        plateau = f"plateau from step {start}, not left"
    else:
        plateau = f"plateau steps {start}-{end}"
    return (
        f"done: {plateau} | "
        f"final eval attr loss {final['attr_loss_eval']:.3f} vs baseline {final['baseline']:.3f} "
        f"({ratio:.2f}x) | eval acc {final['attr_acc_eval']:.3f}{held_text} | "
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
) -> dict[str, Any]:
    """Train as configured; returns a summary dict (plateau, final metrics, out dir, timings).

    on_eval(step, record, model): after each evaluation (rank 0 and others alike).
    on_step(step, batch, model): after each optimizer step; batch holds this rank's tensors.
    attention_source(input_ids) -> {layer: pattern}: patch those layers' attention patterns, in
    training and evaluation (attention-patching twin model).
    """
    config.validate()
    t_start = time.perf_counter()
    runtime = setup_runtime(config)
    try:
        return _train(config, runtime, t_start, on_eval, on_step, attention_source)
    finally:
        if runtime.owns_process_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    runtime: Runtime,
    t_start: float,
    on_eval: Optional[EvalCallback],
    on_step: Optional[StepCallback],
    attention_source: Optional[AttentionSource],
) -> dict[str, Any]:
    device = runtime.device
    out = Path(config.out or default_out(config))
    metrics_path = out / METRICS
    if not config.resume and metrics_path.exists():
        raise ValueError(f"--out {out} already holds a run; pass --resume or choose another --out")
    log = (lambda msg: tqdm.write(msg, file=sys.stderr)) if runtime.is_main else (lambda msg: None)

    # --- world and data ---
    world = build_world(config)
    data = TrainBatches(world, config, runtime)
    probes = build_probes(world, config, runtime)
    baseline = float(world.no_knowledge_loss(population=config.population)["mean"])
    if runtime.world_size > 1:
        # The engine's sum is parallel (last bit may vary): every rank takes rank 0's value so
        # that phases, records and the checkpoint agree.
        shared = torch.tensor([baseline], dtype=torch.float64, device=device)
        dist.broadcast(shared, src=0)
        baseline = shared.item()

    # --- model and optimizer ---
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model_config = ModelConfig(
        vocab_size=world.vocab_size,
        n_layers=config.n_layers,
        d_model=config.d_model,
        n_heads=config.n_heads,
        d_mlp=config.d_mlp,
        max_seq_len=config.seq_len,
        tie_embeddings=config.tie_embeddings,
        rope_base=config.rope_base,
    )
    model = GPT(model_config).to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(
            lr_factor,
            steps=config.steps,
            min_ratio=config.min_lr_ratio,
            constant=config.constant_lr,
        ),
    )

    # --- where to start: fresh, resumed, or from another run's weights ---
    step = 0
    eval_steps: list[int] = []
    eval_losses: list[float] = []
    loss_acc = torch.zeros((), dtype=torch.float64, device=device)  # summed step losses
    loss_count = 0
    if config.resume:
        try:
            ckpt = load_checkpoint(checkpoint_path(out), map_location=device)
        except CheckpointError as e:
            raise ValueError(f"--resume: {e}") from None
        check_resumable(ckpt["config"], config)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        data.load_state_dict(ckpt["data"])
        set_rng_state(ckpt["rng"], device)
        step = int(ckpt["step"])
        eval_steps, eval_losses = list(ckpt["eval_steps"]), list(ckpt["eval_losses"])
        loss_acc.fill_(float(ckpt["loss_sum"]))
        loss_count = int(ckpt["loss_count"])
        # The run's own baseline, not a recomputation: the phases were detected against it.
        baseline = float(ckpt.get("baseline", baseline))
        if runtime.is_main:
            truncate_metrics(metrics_path, step)
        log(f"resumed {out} at step {step}")
    elif config.init_checkpoint:
        try:
            ckpt = load_checkpoint(config.init_checkpoint, map_location=device)
        except CheckpointError as e:
            raise ValueError(f"--init-checkpoint: {e}") from None
        for key, value in ckpt["model_config"].items():
            # max_seq_len only sizes the RoPE tables; vocab_size follows the world's pools.
            if getattr(model_config, key) != value and key != "max_seq_len":
                what = "vocab_size (set by the world's pool sizes)" if key == "vocab_size" else key
                raise ValueError(
                    f"--init-checkpoint: model {what} is {value!r} there, "
                    f"{getattr(model_config, key)!r} now"
                )
        model.load_state_dict(ckpt["model"])
        log(f"initialised from {config.init_checkpoint} (step {ckpt['step']})")
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(to_toml(dataclasses.replace(config, resume=False)))

    n_params, n_body = model.num_parameters(), model.num_parameters(embeddings=False)
    log(
        f"model: {config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads, "
        f"MLP {config.d_mlp}, vocab {world.vocab_size} | parameters {n_params / 1e6:.2f}M, "
        f"{n_body / 1e6:.2f}M without embeddings"
    )
    log(
        f"data: N={config.individuals}, {config.sampling} sampling, batch {config.batch_size} x "
        f"{config.seq_len} tokens on {runtime.world_size} process(es), {device} | "
        f"no-knowledge baseline {baseline:.3f} nats/value | out {out}"
    )

    raw_model = model
    if runtime.world_size > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        model = torch.compile(model)

    flops_per_step = raw_model.flops_per_token(config.seq_len) * config.batch_size * config.seq_len
    peak = config.peak_tflops * 1e12 * runtime.world_size
    tokens_per_step = config.batch_size * config.seq_len
    # Every rank keeps the (identical, all-reduced) records; only rank 0 writes them.
    records = read_metrics(metrics_path) if config.resume and runtime.is_main else []

    def run_eval(train_seconds: float, steps_timed: int) -> dict[str, Any]:
        nonlocal loss_count
        results = evaluate(raw_model, probes, config, world, runtime, attention_source)
        totals = torch.stack([loss_acc, torch.tensor(float(loss_count), device=device).double()])
        if runtime.world_size > 1:
            dist.all_reduce(totals)
        train_loss = (totals[0] / totals[1]).item() if totals[1] > 0 else None
        loss_acc.zero_()
        loss_count = 0
        eval_steps.append(step)
        eval_losses.append(results["eval"]["loss"])
        phases = detect_phases(eval_steps, eval_losses, baseline)
        tokens_per_s = steps_timed * tokens_per_step / train_seconds if steps_timed else None
        mfu = (
            steps_timed * flops_per_step / train_seconds / peak
            if steps_timed and device.type == "cuda"
            else None
        )
        extra = {
            "samples": step * config.batch_size,
            "lr": scheduler.get_last_lr()[0],
            "train_loss": train_loss,
            "phase": phases.phase[-1],
            "plateau_start": phases.plateau_start,
            "plateau_end": phases.plateau_end,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "elapsed_s": time.perf_counter() - t_start,
        }
        record = make_record(step, results, baseline, extra)
        records.append(record)
        if runtime.is_main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if len(records) % PLOT_EVERY_EVALS == 0 or step == config.steps:
                plot_curves(records, out / "curves.png", phases.plateau_start, phases.plateau_end)
            speed = f" | {tokens_per_s:,.0f} tok/s" if tokens_per_s else ""
            speed += f" | MFU {mfu:.1%}" if mfu is not None else ""
            log(
                f"step {step:>6} | eval attr loss {record['attr_loss_eval']:.3f} "
                f"(baseline {baseline:.3f}) acc {record['attr_acc_eval']:.3f} | "
                f"train-template loss {record['attr_loss']:.3f} | phase {record['phase']}{speed}"
            )
        if on_eval is not None:
            on_eval(step, record, raw_model)
        return record

    def save(step_: int) -> None:
        if not runtime.is_main:
            return
        state = {
            "step": step_,
            "model": raw_model.state_dict(),
            "model_config": vars(model_config).copy(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "data": data.state_dict(),
            "rng": rng_state(device),
            "config": config.to_dict(),
            "eval_steps": eval_steps,
            "eval_losses": eval_losses,
            "loss_sum": loss_acc.item(),
            "loss_count": loss_count,
            "baseline": baseline,
        }
        save_checkpoint(state, checkpoint_path(out))
        if config.keep_checkpoints:
            save_checkpoint(state, checkpoint_path(out, step_))

    checkpoint_every = config.checkpoint_every or config.eval_every
    if step == 0:
        run_eval(0.0, 0)
    model.train()
    bar = tqdm(
        total=config.steps,
        initial=step,
        disable=not (config.progress and runtime.is_main),
        dynamic_ncols=True,
        desc="train",
    )
    train_seconds, steps_timed = 0.0, 0
    t0 = time.perf_counter()
    while step < config.steps:
        batch = next(data)
        ids = batch["input_ids"].to(device, non_blocking=True).long()
        override = attention_source(ids) if attention_source is not None else None
        with autocast(device):
            loss = model(
                ids, next_token_targets(ids, world.pad_id), attention_override=override
            ).loss
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        # Accumulate on the device: a .item() per step would stall a GPU on every step.
        loss_acc += loss.detach().double()
        loss_count += 1
        steps_timed += 1
        if on_step is not None:
            on_step(step, batch, raw_model)
        if step % 10 == 0 or step == config.steps:
            seconds = max(train_seconds + time.perf_counter() - t0, 1e-9)
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                phase=eval_phase(eval_steps, eval_losses, baseline),
                tok_s=f"{steps_timed * tokens_per_step / seconds:,.0f}",
            )
        bar.update(1)
        if step % config.eval_every == 0 or step == config.steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_seconds += time.perf_counter() - t0
            run_eval(train_seconds, steps_timed)
            train_seconds, steps_timed = 0.0, 0
            t0 = time.perf_counter()
        if step % checkpoint_every == 0 or step == config.steps:
            t_save = time.perf_counter()
            save(step)
            t0 += time.perf_counter() - t_save  # saving is not training time
    bar.close()

    phases = detect_phases(eval_steps, eval_losses, baseline)
    final = records[-1] if records else None
    summary = {
        "out": str(out),
        "steps": config.steps,
        "baseline": baseline,
        "plateau_start": phases.plateau_start,
        "plateau_end": phases.plateau_end,
        "final": final,
        "wall_s": time.perf_counter() - t_start,
        "parameters": n_params,
        "parameters_without_embeddings": n_body,
    }
    if runtime.is_main and final is not None:
        log(summary_line(summary))
    return summary


def eval_phase(eval_steps: Sequence[int], eval_losses: Sequence[float], baseline: float) -> int:
    return detect_phases(eval_steps, eval_losses, baseline).phase[-1] if eval_steps else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        config, _ = parse_args(argv)
        config.validate()
        train(config)
    except (ValueError, CheckpointError) as e:
        print(f"kadyn-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
