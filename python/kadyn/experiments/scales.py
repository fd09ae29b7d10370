"""Scale presets of the suite: `smoke` (tests, seconds), `cpu` (the whole suite in under an hour on
two cores) and `gpu` (the paper's numbers, one accelerator).

A scale is the trainer settings shared by every run (`base`, over the `tiny` or `paper` preset)
plus one plan per study (which N, seeds, alphas, budgets...). Command-line options override the
plan's lists; the base is fixed per scale so cached runs stay comparable.

Sizing the cpu scale (2 cores, two one-thread runs at a time; a 2-layer, d_model-64 model at
constant lr trains at about 13 steps/s on one thread, and an evaluation of k probe rows costs
about k / 100 training steps): each plan's number of seeds is the one registered in `rules.py`
from the pilot (`kadyn-exp pilot`, cut by `PILOT_CUTS`), and the grids are the issue's minimums
where a finding is registered undecidable. Measured: the whole `kadyn-exp all --scale cpu` took
51 minutes on an idle 2-core machine (README).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from kadyn.experiments import rules

SCALES = ("smoke", "cpu", "gpu")


@dataclass(frozen=True)
class PlateauPlan:
    individuals: tuple[int, ...]
    seeds: tuple[int, ...]
    max_steps: int  # cap only: the lr is constant, so a run's schedule does not depend on it
    eval_divisor: int  # eval every max(1, N // eval_divisor) steps: >= 20 evals in the plateau
    eval_individuals: int  # probed individuals (fewer = cheaper evals)


@dataclass(frozen=True)
class AlphaPlan:
    alphas: tuple[float, ...]
    individuals: tuple[int, ...]
    # Budgets are read as prefixes of one constant-lr run of the longest budget: with a constant
    # lr, the first B steps of a long run are the run of budget B.
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    eval_divisor: int  # eval every max(1, N // eval_divisor) steps


@dataclass(frozen=True)
class WarmupPlan:
    individuals: tuple[int, ...]
    steps: int
    alphas: tuple[float, ...]  # fixed-alpha candidates; the best is chosen on the selection seed
    warmup_individuals: tuple[int, ...]  # swept on the selection seed; values >= N are skipped
    warmup_epochs: tuple[int, ...]  # epochs over the warm-up subset, swept likewise
    selection_seed: int
    seeds: tuple[int, ...]  # scoring seeds
    eval_every: int  # of the warm-up runs
    alpha_eval_divisor: int  # of the uniform and fixed-alpha runs: the alpha plan's, to share them


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
    new_individuals: tuple[int, ...]  # swept; the largest decides
    steps: int  # fine-tuning steps
    lr: float  # constant fine-tuning learning rate
    replay: tuple[float, ...]
    seeds: tuple[int, ...]
    eval_every: int
    pretrain_eval_every: int


@dataclass(frozen=True)
class PatchingPlan:
    individuals: int
    steps: int  # constant-lr cap of the reference and of every twin
    after_knowledge: int  # the reference runs this many steps past its knowledge onset
    eval_every: int
    seeds: tuple[int, ...]  # one reference per seed; its twins use seed + 1000
    sources: tuple[str, ...] = rules.PATCHING_SOURCES


@dataclass(frozen=True)
class AnalysesPlan:
    """The analyses beyond the paper: one uniform and one power-law run with per-individual
    exposure counts and attention snapshots."""

    individuals: int
    steps: int
    alpha: float  # of the power-law run
    seed: int
    eval_every: int


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
    analyses: AnalysesPlan
    # torch threads per run; None = cores // jobs. Small models on a shared CPU run 3-4x faster
    # on one thread than on two (measured here: OpenMP threads wait on each other when another
    # process holds a core), so the CPU scales use one.
    threads_per_run: Optional[int] = None
    # Runs per stacked group (kadyn.stacked) unless --stack says otherwise; 1 = each run alone.
    # Not on CPU: fp32 matmuls of a tiny run's 3200-token batch already run at 94-155 GFLOP/s on
    # one core here (AVX-512, near its peak), so stacking saves only per-op overhead. Measured on
    # two cores (benches/stacked_sweep.py): one stacked step of 4 tiny models at 0.88-0.96x the
    # speed of 4 solo steps; whole sweeps of K = 4 at 0.98-1.00x the model-steps/s of two
    # one-thread solo runs at a time on a quiet machine (0.5x under load). Small models leave an accelerator mostly idle, so
    # the gpu scale stacks (not measured: no GPU here).
    stack: int = 1

    @property
    def eval_cap(self) -> int:
        return int(self.base.get("eval_individuals", 512))

    def plan(self, study: str) -> Any:
        return getattr(self, study)


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


def _seeds(finding: str) -> tuple[int, ...]:
    """The registered number of confirmatory seeds (rules.py), as seeds 0, 1, ..."""
    return tuple(range(rules.REGISTRATIONS[finding].seeds))


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
        "constant_lr": True,
        "eval_individuals": 16,
        "eval_batch_size": 64,
    },
    plateau=PlateauPlan((16, 32, 64), (0,), max_steps=8, eval_divisor=16, eval_individuals=16),
    alpha=AlphaPlan((0.0, 0.5, 1.0), (16, 32), (4, 8), (0, 1, 2), eval_divisor=8),
    warmup=WarmupPlan(
        (16, 32),
        8,
        (0.5,),
        (4,),
        (2,),
        selection_seed=200,
        seeds=(0, 1),
        eval_every=4,
        alpha_eval_divisor=8,
    ),
    hallucination=HallucinationPlan(16, 8, 8, (0, 1), eval_every=4),
    finetune=FinetunePlan(
        16, 6, (4, 8), 6, 1e-3, (0.0, 1.0), (0, 1), eval_every=3, pretrain_eval_every=6
    ),
    patching=PatchingPlan(
        16, 8, 4, eval_every=2, seeds=(0, 1), sources=("init", "statistics", "post")
    ),
    analyses=AnalysesPlan(16, 8, alpha=1.0, seed=0, eval_every=4),
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
        # Constant lr everywhere: no schedule favours small N, and a short budget is a prefix of
        # a long run.
        "constant_lr": True,
        "eval_individuals": 128,
        "eval_batch_size": 128,
        # The findings are read on the eval templates; `analyses` turns the train probe back on.
        "train_probe": False,
    },
    plateau=PlateauPlan(
        (256, 512, 1024, 2048),
        _seeds("plateau"),
        max_steps=6000,
        eval_divisor=256,
        eval_individuals=64,
    ),
    alpha=AlphaPlan(
        (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), (256, 512), (300, 600), _seeds("alpha"), eval_divisor=16
    ),
    warmup=WarmupPlan(
        # Registered undecidable at this scale (rules.WARMUP): the smallest plan that still
        # selects among warm-ups and alphas on its own seed.
        (256, 512),
        600,
        (0.6, 0.8),
        (64, 128),
        (50,),
        selection_seed=rules.WARMUP_SELECTION_SEED,
        seeds=_seeds("warmup"),
        eval_every=40,
        alpha_eval_divisor=16,
    ),
    hallucination=HallucinationPlan(512, 128, 1000, _seeds("hallucination"), eval_every=20),
    finetune=FinetunePlan(
        # N = 256 and 1500 steps: old accuracy well above chance before fine-tuning (the pilot's
        # N = 512 after 1000 steps knew 19-39% of its values: too little to forget).
        256,
        1500,
        (64, 256),
        300,
        3e-4,
        (0.0, 0.125, 0.5, 1.0),
        _seeds("finetune"),
        eval_every=10,
        pretrain_eval_every=100,
    ),
    patching=PatchingPlan(512, 2000, 100, eval_every=10, seeds=_seeds("patching")),
    analyses=AnalysesPlan(512, 1200, alpha=0.8, seed=0, eval_every=20),
    threads_per_run=1,
)

GPU = Scale(
    name="gpu",
    preset="paper",
    base={
        "device": "auto",
        "heldout": 0,
        "constant_lr": True,
        "eval_individuals": 4096,
        "eval_batch_size": 256,
    },
    plateau=PlateauPlan(
        (4000, 8000, 16000, 32000, 64000),
        _seeds("plateau"),
        max_steps=32000,
        eval_divisor=800,
        eval_individuals=1024,
    ),
    alpha=AlphaPlan(
        (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        (16000, 64000),
        (8000, 16000),
        _seeds("alpha"),
        eval_divisor=400,
    ),
    warmup=WarmupPlan(
        (32000, 64000, 128000),
        16000,
        (0.6, 0.8),
        (2000, 4000, 8000, 16000),
        (1, 2, 4, 8),
        selection_seed=rules.WARMUP_SELECTION_SEED,
        seeds=_seeds("warmup"),
        eval_every=500,
        alpha_eval_divisor=400,
    ),
    hallucination=HallucinationPlan(64000, 2000, 16000, _seeds("hallucination"), eval_every=250),
    finetune=FinetunePlan(
        64000,
        16000,
        (1000, 4000),
        4000,
        3e-5,
        (0.0, 0.125, 0.5, 1.0),
        _seeds("finetune"),
        eval_every=100,
        pretrain_eval_every=500,
    ),
    patching=PatchingPlan(16000, 32000, 1000, eval_every=100, seeds=_seeds("patching")),
    analyses=AnalysesPlan(16000, 16000, alpha=0.8, seed=0, eval_every=250),
    # One accelerator, one run at a time: small models leave most of it idle (not measured).
    stack=4,
)

# What `kadyn-exp pilot` cuts from a plan, besides running it on the pilot seeds: only the
# conditions the primary statistic needs, since the pilot measures its spread, not the finding.
PILOT_CUTS: dict[str, dict[str, Any]] = {
    "plateau": {},
    "alpha": {"individuals": (256,)},
    "warmup": {
        "individuals": (512,),
        "warmup_individuals": (128,),
        "warmup_epochs": (50,),
        "alphas": (0.8,),
    },
    "hallucination": {},
    "finetune": {"new_individuals": (256,)},
    "patching": {"sources": ("post",)},
}


def pilot_plan(scale: Scale, study: str) -> Any:
    """The scale's plan for `study` on `rules.PILOT_SEEDS`, cut to what its primary needs."""
    plan = scale.plan(study)
    cuts = PILOT_CUTS[study] if scale.name == "cpu" else {}
    return dataclasses.replace(plan, seeds=rules.PILOT_SEEDS, **cuts)


BY_NAME = {s.name: s for s in (SMOKE, CPU, GPU)}


def get_scale(name: str) -> Scale:
    if name not in BY_NAME:
        raise ValueError(f"--scale must be one of {', '.join(SCALES)}, got {name!r}")
    return BY_NAME[name]
