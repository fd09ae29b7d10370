"""Scale presets of the suite: `smoke` (tests, seconds), `cpu` (the whole suite in under an hour on
two cores) and `gpu` (the paper's numbers, one accelerator).

A scale is the trainer settings shared by every run (`base`, over the `tiny` or `paper` preset)
plus one plan per study (which N, seeds, alphas, budgets...). Command-line options override the
plan's lists; the base is fixed per scale so cached runs stay comparable.

Sizing the cpu scale (measured on this 2-core machine, with the earlier 100-name pools and N from
128; the pools and N >= 256 now follow the phases issue, and the suite's second edition re-sizes
the plans): a 2-layer, d_model-64 model on the tiny
preset's small pools, batch 32, lr 3e-3, reaches the no-knowledge band after 170-380 steps and
knowledge after about 210 / 330 / 600 steps for N = 128 / 256 / 512; it trains at 5-10 steps/s
on one thread. Each study is sized so that the whole suite takes about half an hour with two
one-thread runs in parallel, leaving room for a busy machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

SCALES = ("smoke", "cpu", "gpu")


@dataclass(frozen=True)
class PlateauPlan:
    individuals: tuple[int, ...]
    seeds: tuple[int, ...]
    max_steps: int  # cosine horizon shared by every N; runs stop once knowledge has emerged
    eval_divisor: int  # eval every max(min_eval_every, N // eval_divisor) steps
    min_eval_every: int


@dataclass(frozen=True)
class AlphaPlan:
    alphas: tuple[float, ...]
    individuals: tuple[int, ...]
    budgets: tuple[int, ...]  # steps
    seeds: tuple[int, ...]
    evals_per_run: int


@dataclass(frozen=True)
class WarmupPlan:
    individuals: tuple[int, ...]
    steps: int
    alphas: tuple[float, ...]  # fixed-alpha competitors (0 is the uniform baseline)
    warmup_individuals: tuple[int, ...]  # swept; values >= N are skipped
    warmup_epochs: tuple[int, ...]  # epochs over the warm-up subset
    seed: int
    evals_per_run: int


@dataclass(frozen=True)
class HallucinationPlan:
    individuals: int
    heldout: int
    steps: int
    seeds: tuple[int, ...]
    eval_every: int


@dataclass(frozen=True)
class FinetunePlan:
    individuals: int  # pre-training population
    pretrain_steps: int
    new_individuals: int
    steps: int  # fine-tuning steps
    lr: float  # constant fine-tuning learning rate
    replay: tuple[float, ...]
    eval_every: int
    pretrain_eval_every: int


@dataclass(frozen=True)
class PatchingPlan:
    individuals: int
    # lr schedule of the reference and of every twin; the reference stops `after_knowledge` steps
    # after its plateau ends, the twins at the reference's last step.
    steps: int
    after_knowledge: int
    eval_every: int
    seed: int  # reference; twins use seed + 1
    # Reference checkpoints whose patterns are patched in: init (step 0), early (plateau start),
    # mid / late (50% / 85% into the plateau), post (after the plateau end).
    sources: tuple[str, ...] = ("init", "early", "mid", "post")


@dataclass(frozen=True)
class Scale:
    name: str
    preset: str
    base: Mapping[str, Any]
    plateau: PlateauPlan
    alpha: AlphaPlan
    warmup: WarmupPlan
    hallucination: HallucinationPlan
    finetune: FinetunePlan
    patching: PatchingPlan
    # torch threads per run; None = cores // jobs. Small models on a shared CPU run 3-4x faster
    # on one thread than on two (measured here: OpenMP threads wait on each other when another
    # process holds a core), so the CPU scales use one.
    threads_per_run: Optional[int] = None

    @property
    def eval_cap(self) -> int:
        return int(self.base.get("eval_individuals", 512))


# The tiny preset's pools, spelled out so a change of the preset does not silently change the
# suite's world. Chosen (with N >= 256) so that no definition of the no-knowledge level can move
# the plateau: a 96-date calendar keeps the population's joint date entropy within 3% of the
# factorized statistics-only level F, and 50 / 32 name pools leave no name token to one person
# (tests/test_levels.py checks both at every N of the cpu scale).
_SMALL_WORLD: dict[str, Any] = {
    "n_first_names": 50,
    "n_last_names": 32,
    "n_cities": 100,
    "n_universities": 50,
    "n_majors": 50,
    "n_companies": 100,
    "year_min": 1990,
    "year_max": 1993,
    "n_days": 4,
    "n_months": 6,
    "seq_len": 100,
    "heldout": 0,
    "device": "cpu",
    "data_threads": 1,
}

SMOKE = Scale(
    name="smoke",
    preset="tiny",
    base={
        **_SMALL_WORLD,
        "n_layers": 1,
        "d_model": 32,
        "n_heads": 2,
        "d_mlp": 64,
        "batch_size": 8,
        "lr": 3e-3,
        "eval_individuals": 16,
        "eval_batch_size": 64,
    },
    plateau=PlateauPlan((16, 32), (0,), max_steps=8, eval_divisor=16, min_eval_every=4),
    alpha=AlphaPlan((0.0, 1.0), (16,), (8,), (0,), evals_per_run=2),
    warmup=WarmupPlan((16,), 8, (0.0, 1.0), (4,), (2,), seed=0, evals_per_run=2),
    hallucination=HallucinationPlan(16, 8, 8, (0,), eval_every=4),
    finetune=FinetunePlan(16, 6, 8, 6, 1e-3, (0.0, 1.0), eval_every=3, pretrain_eval_every=6),
    patching=PatchingPlan(16, 8, 4, eval_every=2, seed=0, sources=("init", "early", "post")),
    threads_per_run=1,
)

CPU = Scale(
    name="cpu",
    preset="tiny",
    base={
        **_SMALL_WORLD,
        "n_layers": 2,
        "d_model": 64,
        "n_heads": 2,
        "d_mlp": 256,
        "batch_size": 32,
        "lr": 3e-3,
        "eval_individuals": 128,
        "eval_batch_size": 128,
    },
    plateau=PlateauPlan(
        (256, 512, 768, 1024), (0, 1), max_steps=2000, eval_divisor=20, min_eval_every=10
    ),
    # Budgets well past phase 1 (which a short cosine schedule slows down); 0.7 sits inside the
    # paper's 0.6-0.8, with 0.4 and 1.0 as its neighbours.
    alpha=AlphaPlan((0.0, 0.4, 0.7, 1.0), (256, 512), (300, 500), (0,), evals_per_run=12),
    warmup=WarmupPlan((256, 512), 500, (0.0, 0.7), (64, 128), (50, 100), seed=0, evals_per_run=12),
    hallucination=HallucinationPlan(256, 128, 400, (0,), eval_every=10),
    finetune=FinetunePlan(
        256, 500, 64, 250, 3e-4, (0.0, 0.125, 0.5, 1.0), eval_every=10, pretrain_eval_every=50
    ),
    patching=PatchingPlan(256, 2000, 60, eval_every=10, seed=0),
    threads_per_run=1,
)

GPU = Scale(
    name="gpu",
    preset="paper",
    base={"device": "auto", "heldout": 0, "eval_individuals": 4096, "eval_batch_size": 256},
    plateau=PlateauPlan(
        (4000, 8000, 16000, 32000, 64000),
        (0, 1, 2),
        max_steps=16000,
        eval_divisor=200,
        min_eval_every=25,
    ),
    alpha=AlphaPlan(
        (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), (16000, 64000), (8000, 16000), (0,), evals_per_run=40
    ),
    warmup=WarmupPlan(
        (32000, 64000, 128000),
        16000,
        (0.0, 0.6, 0.8),
        (2000, 4000, 8000, 16000),
        (1, 2, 4, 8),
        seed=0,
        evals_per_run=32,
    ),
    hallucination=HallucinationPlan(64000, 2000, 16000, (0,), eval_every=250),
    finetune=FinetunePlan(
        64000,
        16000,
        4000,
        4000,
        3e-5,
        (0.0, 0.125, 0.5, 1.0),
        eval_every=100,
        pretrain_eval_every=500,
    ),
    patching=PatchingPlan(
        16000,
        16000,
        1000,
        eval_every=100,
        seed=0,
        sources=("init", "early", "mid", "late", "post"),
    ),
)

BY_NAME = {s.name: s for s in (SMOKE, CPU, GPU)}


def get_scale(name: str) -> Scale:
    if name not in BY_NAME:
        raise ValueError(f"--scale must be one of {', '.join(SCALES)}, got {name!r}")
    return BY_NAME[name]
