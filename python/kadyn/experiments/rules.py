"""The pre-registered verdict rules of `kadyn-exp` (second edition): every verdict comes from here.

How a verdict is reached, for every finding alike:
1. each finding has one *primary* statistic, written from the paper's claim, and secondary ones
   that are reported beside it with their own interval but do not decide;
2. the claim is a *region* of values the statistic may take (the paper's value plus or minus a
   margin, or "at least a minimum effect");
3. the statistic's 90% interval decides, symmetrically: wholly inside the region is *reproduced*
   (for a two-sided region this is the two one-sided tests at 5%, TOST), wholly outside is
   *not reproduced*, straddling an edge is *inconclusive*. "Not reproduced" is exactly as easy to
   reach as "reproduced": both need the interval to clear the same edge by the same amount.
4. each finding's plan size (seeds) comes from a power analysis on the seed-to-seed spread
   measured on pilot seeds (`PILOT_SEEDS`), which the confirmatory runs never reuse; a finding
   that cannot be decided within the CPU budget is registered so, with the size it would need,
   before its confirmatory runs.

The statistics are computed here too (from per-run numbers the studies measure), so that a
study cannot choose how to summarise its runs after seeing them.

Changing this module changes `rules_hash()`, which every report prints. Version history (a change
after data must give its reason here):
- 2.0 (2026-11-29): written from the paper's claims before any run of the second edition; the
  margins below are fixed from the claims, not from data. The registrations' spreads and plan
  sizes are filled from the pilot runs (seeds 100 and 101), in a commit of their own, before the
  confirmatory runs.
- 2.1 (2026-11-29, after the pilot, before any confirmatory run): the registrations' pilot values,
  spreads and seeds (`kadyn-exp pilot`; the plateau's from an earlier pilot of the same design).
  Alpha and warm-up are registered undecidable at CPU scale, with the size they need. Changes
  of measurement, not of rule, made after seeing pilot data, with their reasons:
  (1) a run "stops at knowledge" at its knowledge onset, not at its plateau's end: pilot runs
  that reached knowledge without a detected plateau never stopped; (2) patching twins stop at
  their own onset and compare mean losses over the steps every twin of the seed ran (cost: the
  pilot's twins ran to 1.5x the reference); (3) the fine-tuning plan pre-trains N = 256 for 1500
  steps instead of N = 512 for 1000: the pilot's pre-trained models knew 19-39% of the old
  values, too little to forget. The alpha argmin's estimator (quadratic fit, residual
  bootstrap) was fixed before the pilot, since a seed bootstrap needs 3 seeds.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import stats

from kadyn.experiments.fit import Estimate, bootstrap_estimate, fit_power_law, mean_estimate

RULES_VERSION = "2.1"
LEVEL = 0.90  # of every interval that decides: TOST at 5% on each side
PILOT_SEEDS = (100, 101)  # spread only; confirmatory runs use seeds 0, 1, 2, ...

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
OUTCOMES = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


def rules_hash() -> str:
    """sha256 (first 12 hex digits) of this module's source: any edit to a rule changes it."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


@dataclass(frozen=True)
class Verdict:
    outcome: str  # REPRODUCED, NOT_REPRODUCED or INCONCLUSIVE
    reason: str

    def line(self) -> str:
        return f"**{self.outcome}** — {self.reason}"


@dataclass(frozen=True)
class Region:
    """The values the paper's claim allows: [lo, hi], either end possibly infinite."""

    lo: float = -math.inf
    hi: float = math.inf

    def text(self) -> str:
        # Edges of +-1e-9 stand for a strict sign ("> 0"): a grid statistic can be exactly 0.
        if math.isinf(self.lo):
            return "< 0" if self.hi == -1e-9 else f"≤ {self.hi:g}"
        if math.isinf(self.hi):
            return "> 0" if self.lo == 1e-9 else f"≥ {self.lo:g}"
        return f"[{self.lo:g}, {self.hi:g}]"

    def distance_to_edge(self, value: float) -> float:
        """How far `value` lies from the nearest finite edge (the edge a verdict must clear)."""
        edges = [e for e in (self.lo, self.hi) if math.isfinite(e)]
        return min(abs(value - e) for e in edges)


def decide(estimate: Optional[Estimate], region: Region, what: str) -> Verdict:
    """The symmetric three-way decision on a statistic's interval."""
    if estimate is None or not all(math.isfinite(v) for v in estimate.ci):
        return Verdict(INCONCLUSIVE, f"{what}: not measured (too few runs showed it)")
    lo, hi = estimate.ci
    text = f"{what} = {estimate.text()}, claim {region.text()}"
    if region.lo <= lo and hi <= region.hi:
        return Verdict(REPRODUCED, f"{text}: interval inside the claim")
    if hi < region.lo or lo > region.hi:
        return Verdict(NOT_REPRODUCED, f"{text}: interval outside the claim")
    return Verdict(INCONCLUSIVE, f"{text}: interval straddles an edge of the claim")


@dataclass(frozen=True)
class Statistic:
    key: str
    description: str
    region: Region


@dataclass(frozen=True)
class Registration:
    """What is registered for a finding before its confirmatory runs."""

    finding: str
    claim: str
    primary: Statistic
    secondary: tuple[Statistic, ...]
    seeds: int  # confirmatory seeds, from the power analysis
    # Pilot (PILOT_SEEDS): the primary statistic's value and its seed-to-seed standard deviation
    # (for a regression slope: the residual sd of one run's log length), and the power analysis.
    pilot_value: Optional[float] = None
    pilot_sd: Optional[float] = None
    power_note: str = "pilot not run yet"
    decidable: bool = True  # False: registered as undecidable at CPU scale (see power_note)


@dataclass
class Judgement:
    """A finding's verdict with every statistic it was computed from."""

    finding: str
    verdict: Verdict
    primary: Optional[Estimate]
    secondary: dict[str, Optional[Estimate]] = field(default_factory=dict)
    secondary_verdicts: dict[str, Verdict] = field(default_factory=dict)


def judge(
    reg: Registration, primary: Optional[Estimate], secondary: Mapping[str, Optional[Estimate]]
) -> Judgement:
    verdict = decide(primary, reg.primary.region, reg.primary.description)
    if not reg.decidable and verdict.outcome == INCONCLUSIVE:
        verdict = Verdict(
            INCONCLUSIVE, f"{verdict.reason} (registered undecidable: {reg.power_note})"
        )
    second = {s.key: secondary.get(s.key) for s in reg.secondary}
    return Judgement(
        reg.finding,
        verdict,
        primary,
        second,
        {s.key: decide(second[s.key], s.region, s.description) for s in reg.secondary},
    )


# ----------------------------------------------------------------------------------------------
# Finding 2 (plateau): plateau ≈ 0.43 · N^0.81, "almost linear". Margin 0.3: a slope below 0.51
# is clearly sub-linear and one above 1.11 clearly super-linear, neither "almost linear 0.81".

PAPER_BETA = 0.81
PAPER_C = 0.43
BETA_MARGIN = 0.30
MIN_SIZES = 3  # a slope from two sizes has no error estimate worth the name

PLATEAU = Registration(
    finding="plateau",
    claim="plateau length grows as N^0.81",
    primary=Statistic(
        "beta_length",
        "β of plateau length",
        Region(PAPER_BETA - BETA_MARGIN, PAPER_BETA + BETA_MARGIN),
    ),
    secondary=(
        Statistic(
            "beta_onset",
            "β of time to knowledge onset",
            Region(PAPER_BETA - BETA_MARGIN, PAPER_BETA + BETA_MARGIN),
        ),
    ),
    seeds=3,
    pilot_value=1.88,
    pilot_sd=0.166,  # standard error of beta from 8 runs (N = 256-2048 x 2 seeds)
    power_note=(
        "beta = 1.88 [1.55, 2.20] on seeds 100-101 (eval every N/50 on 128 individuals, before "
        "the plan's N/256 on 64); 80% power needs 2 seeds if the truth is the pilot's value, 5 "
        "if it is the paper's 0.81 (3 seeds: power 0.66 there); 3 registered, the issue's minimum"
    ),
)


@dataclass(frozen=True)
class PlateauRun:
    n: int
    seed: int
    length: Optional[float]  # plateau length in steps; None = no plateau detected
    onset: Optional[float]  # knowledge onset step; None = never within the run


def _power_law_estimate(points: Sequence[tuple[int, float]]) -> Optional[Estimate]:
    usable = [(n, v) for n, v in points if v is not None and v > 0]
    if len({n for n, _ in usable}) < MIN_SIZES:
        return None
    n, v = zip(*usable)
    return fit_power_law(n, v, level=LEVEL).estimate()


def judge_plateau(runs: Sequence[PlateauRun]) -> Judgement:
    """β by log-log least squares over runs (each seed an independent point); runs without a
    plateau are left out, and the fit needs plateaus at `MIN_SIZES` sizes of N."""
    primary = _power_law_estimate([(r.n, r.length) for r in runs if r.length is not None])
    onset = _power_law_estimate([(r.n, r.onset) for r in runs if r.onset is not None])
    return judge(PLATEAU, primary, {"beta_onset": onset})


# ----------------------------------------------------------------------------------------------
# Finding 4 (alpha): the plateau is shortest at alpha 0.6-0.8 whatever N. Margin 0.2 (one step of
# the paper's alpha grid): the argmin within [0.4, 1.0]. The argmin is the vertex of a quadratic in
# alpha fitted to log plateau length (see `plateau_argmin`). The alpha that minimises the final loss
# grows with N and shrinks with the budget (secondary: its shift between the two N at the shorter
# budget must be > 0).

PAPER_PLATEAU_ALPHA = (0.6, 0.8)
ALPHA_MARGIN = 0.2

ALPHA = Registration(
    finding="alpha",
    claim="the plateau is shortest at alpha 0.6-0.8 whatever N",
    primary=Statistic(
        "plateau_argmin",
        "alpha of the shortest plateau",
        Region(PAPER_PLATEAU_ALPHA[0] - ALPHA_MARGIN, PAPER_PLATEAU_ALPHA[1] + ALPHA_MARGIN),
    ),
    secondary=(
        Statistic("loss_argmin_shift_n", "alpha_opt(large N) - alpha_opt(small N)", Region(1e-9)),
        Statistic(
            "loss_argmin_shift_budget",
            "alpha_opt(long) - alpha_opt(short budget)",
            Region(hi=-1e-9),
        ),
    ),
    seeds=2,
    pilot_value=0.81,
    pilot_sd=0.137,  # residual-bootstrap standard error, N = 256 only, 2 seeds
    power_note=(
        "argmin 0.81 [0.55, 1.00] at N = 256 on seeds 100-101; 80% power needs 8 seeds at one N "
        "if the truth is the pilot's value (about 4 seeds at the plan's two N: 48 runs, about "
        "64 core-minutes on top of the suite), 5 (about 3) if it is the paper's 0.7; the CPU "
        "budget allows 2 seeds (24 runs)"
    ),
    decidable=False,
)


@dataclass(frozen=True)
class AlphaRun:
    n: int
    seed: int
    alpha: float
    # Plateau length in steps: end - start; a plateau not left by the run's end counts up to its
    # last step (censored); no detected plateau counts 0. Floored at one eval interval, the
    # detector's resolution, so that a log can be taken.
    length: float
    eval_every: int
    final_loss: Mapping[int, float]  # budget -> eval attribute loss at that step


def _vertex(alphas: Sequence[float], values: Sequence[float]) -> float:
    """Argmin on the grid, refined by the parabola through it and its two neighbours."""
    i = int(np.argmin(values))
    if 0 < i < len(alphas) - 1:
        a, v = alphas[i - 1 : i + 2], values[i - 1 : i + 2]
        denom = v[0] - 2 * v[1] + v[2]
        if denom > 0:  # a proper minimum: equal spacing assumed
            h = alphas[i + 1] - alphas[i]
            return float(a[1] + h * (v[0] - v[2]) / (2 * denom))
    return float(alphas[i])


def _quadratic_vertex(alpha: np.ndarray, coef: np.ndarray) -> float:
    """argmin over [min alpha, max alpha] of b1·a + b2·a² (coef = [b1, b2])."""
    lo, hi = float(alpha.min()), float(alpha.max())
    b1, b2 = float(coef[0]), float(coef[1])
    if b2 > 0:
        return min(hi, max(lo, -b1 / (2 * b2)))
    return lo if b1 * lo + b2 * lo**2 <= b1 * hi + b2 * hi**2 else hi


def plateau_argmin(
    runs: Sequence[AlphaRun], n_resamples: int = 2000, seed: int = 0
) -> Optional[Estimate]:
    """The alpha of the shortest plateau: log plateau length regressed on alpha and alpha²
    (one intercept per N, so "whatever N" pools the sizes), its vertex; the interval from a
    residual bootstrap of that regression, which works with any number of seeds."""
    if len({r.alpha for r in runs}) < 3:
        return None
    sizes = sorted({r.n for r in runs})
    alpha = np.array([r.alpha for r in runs], dtype=float)
    y = np.array([math.log(max(r.length, r.eval_every)) for r in runs])
    x = np.column_stack(
        [alpha, alpha**2] + [np.array([float(r.n == n) for r in runs]) for n in sizes]
    )
    if len(y) <= x.shape[1]:
        return None
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    fitted = x @ coef
    residuals = y - fitted
    value = _quadratic_vertex(alpha, coef)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_resamples)
    for b in range(n_resamples):
        boot = fitted + residuals[rng.integers(len(y), size=len(y))]
        draws[b] = _quadratic_vertex(alpha, np.linalg.lstsq(x, boot, rcond=None)[0])
    lo, hi = np.quantile(draws, [0.5 - LEVEL / 2, 0.5 + LEVEL / 2])
    seeds = len({r.seed for r in runs})
    return Estimate(value, (float(lo), float(hi)), seeds, "residual bootstrap")


def _loss_argmin(groups: Sequence[object], n: int, budget: int) -> float:
    runs = [r for g in groups for r in g if r.n == n]  # type: ignore[attr-defined]
    alphas = sorted({r.alpha for r in runs})
    losses = [np.mean([r.final_loss[budget] for r in runs if r.alpha == a]) for a in alphas]
    return _vertex(alphas, losses)


def judge_alpha(runs: Sequence[AlphaRun]) -> Judgement:
    """Primary: `plateau_argmin`. Secondary: intervals from resampling seeds (all of one seed's
    runs together), which needs 3 seeds."""
    seeds = sorted({r.seed for r in runs})
    groups = [[r for r in runs if r.seed == s] for s in seeds]
    primary = plateau_argmin(runs)
    sizes = sorted({r.n for r in runs})
    budgets = sorted({b for r in runs for b in r.final_loss})
    secondary: dict[str, Optional[Estimate]] = {}
    if len(sizes) >= 2 and budgets:
        b = budgets[0]
        secondary["loss_argmin_shift_n"] = bootstrap_estimate(
            groups, lambda g: _loss_argmin(g, sizes[-1], b) - _loss_argmin(g, sizes[0], b), LEVEL
        )
    if len(budgets) >= 2 and sizes:
        n = sizes[-1]
        secondary["loss_argmin_shift_budget"] = bootstrap_estimate(
            groups,
            lambda g: _loss_argmin(g, n, budgets[-1]) - _loss_argmin(g, n, budgets[0]),
            LEVEL,
        )
    return judge(ALPHA, primary, secondary)


# ----------------------------------------------------------------------------------------------
# Finding 5 (warm-up): warming up on a few individuals beats uniform sampling at a fixed budget,
# more so for large N. The paper's gain at N = 128k is 31.7 points; at CPU scale the claim is
# read as "a gain of at least 2 accuracy points at the largest N", 2 points being the smallest
# gain worth a curriculum. The configuration (and the best fixed alpha) is chosen on
# `WARMUP_SELECTION_SEED` and scored on the confirmatory seeds, so selection cannot inflate it.

MIN_WARMUP_GAIN = 0.02
WARMUP_SELECTION_SEED = 200  # neither a pilot nor a confirmatory seed

WARMUP = Registration(
    finding="warmup",
    claim="the warm-up beats uniform sampling at a fixed budget, more so for large N",
    primary=Statistic(
        "gain_uniform", "accuracy gain over uniform at the largest N", Region(MIN_WARMUP_GAIN)
    ),
    secondary=(
        Statistic("gain_alpha", "accuracy gain over the best fixed alpha", Region(MIN_WARMUP_GAIN)),
        Statistic("gain_growth", "gain(largest N) - gain(smallest N)", Region(1e-9)),
    ),
    seeds=2,
    pilot_value=0.019,
    pilot_sd=0.038,  # per seed, N = 512, warm-up 128 x 50 epochs, 600 steps
    power_note=(
        "gain +0.019 [-0.15, +0.19] at N = 512 on seeds 100-101, per-seed sd 0.038: the pilot's "
        "value sits on the 2-point margin, so no plan of <= 64 seeds is conclusive with 80% "
        "power; a true gain of 5 points would need 6 seeds, 3 points 12 seeds (with the "
        "selection runs, about 20 core-minutes per seed at N = 512). Run on 2 seeds, the alpha "
        "study's, whose uniform and fixed-alpha runs it shares"
    ),
    decidable=False,
)


def select_best(scores: Mapping[str, float]) -> str:
    """The configuration with the highest final accuracy on the selection seed (ties: first by
    name, so the choice is reproducible)."""
    if not scores:
        raise ValueError("no configuration to select from")
    return max(sorted(scores), key=lambda k: scores[k])


@dataclass(frozen=True)
class WarmupScore:
    n: int
    seed: int
    uniform: float  # final accuracy over all N individuals
    best_alpha: float  # the alpha chosen on the selection seed
    warmup: float  # the warm-up configuration chosen on the selection seed


def judge_warmup(scores: Sequence[WarmupScore]) -> Judgement:
    sizes = sorted({s.n for s in scores})
    if not sizes:
        return judge(WARMUP, None, {})
    large = [s for s in scores if s.n == sizes[-1]]
    small = {s.seed: s for s in scores if s.n == sizes[0]}
    primary = mean_estimate([s.warmup - s.uniform for s in large], LEVEL)
    secondary = {
        "gain_alpha": mean_estimate([s.warmup - s.best_alpha for s in large], LEVEL),
        "gain_growth": mean_estimate(
            [
                (s.warmup - s.uniform) - (small[s.seed].warmup - small[s.seed].uniform)
                for s in large
                if s.seed in small
            ],
            LEVEL,
        )
        if len(sizes) >= 2
        else None,
    }
    return judge(WARMUP, primary, secondary)


# ----------------------------------------------------------------------------------------------
# Finding 6 (hallucination): once knowledge appears, held-out individuals' loss rises above the
# no-knowledge level. The level is measured, not assumed: the held-out loss of the control twin
# (same model and seed, on a stream whose values carry no information about names) at the same
# steps. Margin: 5% of F, the detector's band, so "above" means above the plateau's own band.

HALLUCINATION_MARGIN = 0.05

HALLUCINATION = Registration(
    finding="hallucination",
    claim="held-out loss rises above the no-knowledge level once knowledge appears",
    primary=Statistic(
        "heldout_excess",
        "(held-out loss - twin's held-out loss) / F, last quarter",
        Region(HALLUCINATION_MARGIN),
    ),
    secondary=(
        Statistic("confidence_gap", "confidence known - held-out (final)", Region(1e-9)),
        Statistic("confidence_rise", "held-out confidence final - at plateau", Region(1e-9)),
        Statistic(
            "name_match_excess",
            "share of held-out answers = nearest-name individual's, minus chance",
            Region(1e-9),
        ),
    ),
    seeds=3,
    pilot_value=0.314,
    pilot_sd=0.075,  # per seed
    power_note=(
        "excess +0.31 [-0.02, +0.65] on seeds 100-101, per-seed sd 0.075: 80% power with 3 seeds "
        "if the truth is the pilot's value"
    ),
)


@dataclass(frozen=True)
class HallucinationRun:
    seed: int
    level: float  # F of the eval probe
    heldout_loss: float  # mean over the last quarter of evals
    twin_heldout_loss: float  # the control twin's, same evals
    confidence_known: float
    confidence_heldout: float
    confidence_heldout_plateau: float
    name_match: Optional[float] = None  # share of held-out answers matching the nearest name
    name_match_chance: Optional[float] = None


def judge_hallucination(runs: Sequence[HallucinationRun]) -> Judgement:
    matched = [r for r in runs if r.name_match is not None and r.name_match_chance is not None]
    return judge(
        HALLUCINATION,
        mean_estimate([(r.heldout_loss - r.twin_heldout_loss) / r.level for r in runs], LEVEL),
        {
            "confidence_gap": mean_estimate(
                [r.confidence_known - r.confidence_heldout for r in runs], LEVEL
            ),
            "confidence_rise": mean_estimate(
                [r.confidence_heldout - r.confidence_heldout_plateau for r in runs], LEVEL
            ),
            "name_match_excess": mean_estimate(
                [r.name_match - r.name_match_chance for r in matched],  # type: ignore[operator]
                LEVEL,
            ),
        },
    )


# ----------------------------------------------------------------------------------------------
# Finding 7 (fine-tuning): fine-tuning on new individuals makes old accuracy collapse early while
# new ones are learned slowly; replay helps later, not at the start. The early point is taken from
# the data: the first eval at which the no-replay run has lost half its old accuracy (its last
# eval if it never does). Primary: for the largest replay weight, its gain in old accuracy at the
# end minus its gain at the early point; at least 5 points ("helps later, not at the start").

MIN_REPLAY_LATE_GAIN = 0.05
COLLAPSE_FRACTION = 0.5

FINETUNE = Registration(
    finding="finetune",
    claim="replay helps later, not at the start; old accuracy collapses early",
    primary=Statistic(
        "replay_late_minus_early",
        "replay's old-accuracy gain at the end minus at the early point",
        Region(MIN_REPLAY_LATE_GAIN),
    ),
    secondary=(
        Statistic(
            "collapse", "old accuracy lost by the early point / before", Region(COLLAPSE_FRACTION)
        ),
        Statistic(
            "new_early",
            "new accuracy at the early point / old before",
            Region(hi=COLLAPSE_FRACTION),
        ),
    ),
    seeds=3,
    pilot_value=0.290,
    pilot_sd=0.0074,  # per seed
    power_note=(
        "late minus early +0.29 [+0.26, +0.32] on seeds 100-101 (N = 256 pre-trained 1500 "
        "steps, 256 new individuals), per-seed sd 0.007: 80% power with 2 seeds; 3 registered "
        "(the first pilot, N = 512 pre-trained 1000 steps to 19-39% accuracy, gave +0.057 and "
        "would have needed 16)"
    ),
)


def early_index(old_acc_no_replay: Sequence[float], old_start: float) -> int:
    """The first eval at which the no-replay run has lost `COLLAPSE_FRACTION` of its old
    accuracy; its last eval if it never does."""
    for i, acc in enumerate(old_acc_no_replay):
        if acc <= (1 - COLLAPSE_FRACTION) * old_start:
            return i
    return len(old_acc_no_replay) - 1


@dataclass(frozen=True)
class FinetuneRun:
    seed: int
    new_individuals: int
    old_start: float  # old accuracy before fine-tuning
    old_acc: Mapping[float, Sequence[float]]  # replay weight -> old accuracy at each eval
    new_acc: Mapping[float, Sequence[float]]  # replay weight -> new accuracy at each eval


def finetune_numbers(run: FinetuneRun) -> dict[str, float]:
    w = max(run.old_acc)
    none = run.old_acc[0.0]
    i = early_index(none, run.old_start)
    gain_early = run.old_acc[w][i] - none[i]
    gain_final = run.old_acc[w][-1] - none[-1]
    return {
        "early_index": float(i),
        "gain_early": gain_early,
        "gain_final": gain_final,
        "late_minus_early": gain_final - gain_early,
        "collapse": (run.old_start - none[i]) / run.old_start if run.old_start > 0 else 0.0,
        "new_early": run.new_acc[0.0][i] / run.old_start if run.old_start > 0 else math.inf,
    }


def judge_finetune(runs: Sequence[FinetuneRun]) -> Judgement:
    """On the plan's main number of new individuals (the largest); other counts are reported."""
    if not runs or any(0.0 not in r.old_acc or len(r.old_acc) < 2 for r in runs):
        return judge(FINETUNE, None, {})
    main = max(r.new_individuals for r in runs)
    numbers = [finetune_numbers(r) for r in runs if r.new_individuals == main]
    return judge(
        FINETUNE,
        mean_estimate([x["late_minus_early"] for x in numbers], LEVEL),
        {
            "collapse": mean_estimate([x["collapse"] for x in numbers], LEVEL),
            "new_early": mean_estimate([x["new_early"] for x in numbers], LEVEL),
        },
    )


# ----------------------------------------------------------------------------------------------
# Finding 3 (patching): post-plateau attention patterns remove the plateau; later-in-plateau
# patterns help more; early patterns are worse than untrained ones. Primary: log of (onset with
# post-plateau patterns / onset unpatched), at most log 0.75: knowledge at least a quarter
# earlier. A run that never reaches knowledge counts at its last step (censored: a lower bound).

PATCHING_MAX_RATIO = 0.75
# Sources in the order of the reference's training; the ordering claim is over this order.
PATCHING_SOURCES = ("init", "statistics", "plateau_start", "plateau_mid", "plateau_late", "post")

PATCHING = Registration(
    finding="patching",
    claim="post-plateau attention patterns remove the plateau",
    primary=Statistic(
        "log_onset_ratio",
        "log(onset with post-plateau patterns / onset unpatched)",
        Region(hi=math.log(PATCHING_MAX_RATIO)),
    ),
    secondary=(
        Statistic(
            "order_rho", "Spearman ρ(source position, onset), plateau sources on", Region(hi=-1e-9)
        ),
        Statistic(
            "early_vs_init",
            "log(mean loss mid-statistics patterns / untrained patterns)",
            Region(1e-9),
        ),
    ),
    seeds=3,
    pilot_value=-1.07,
    pilot_sd=0.337,  # per seed
    power_note=(
        "log ratio -1.07 [-2.58, +0.43] on seeds 100-101 (post-plateau source only), per-seed "
        "sd 0.34: 80% power with 3 seeds if the truth is the pilot's value"
    ),
)


@dataclass(frozen=True)
class PatchingRun:
    seed: int
    onset: Mapping[str, float]  # source ("none" = unpatched) -> onset step, censored at the end
    mean_loss: Mapping[str, float]  # source -> mean eval attribute loss over the steps all ran


def _order_rho(groups: Sequence[object]) -> float:
    order = [s for s in PATCHING_SOURCES if s.startswith("plateau") or s == "post"]
    x, y = [], []
    for run in groups:
        for i, s in enumerate(order):
            if s in run.onset:  # type: ignore[attr-defined]
                x.append(i)
                y.append(run.onset[s])  # type: ignore[attr-defined]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def judge_patching(runs: Sequence[PatchingRun]) -> Judgement:
    usable = [r for r in runs if "post" in r.onset and "none" in r.onset]
    return judge(
        PATCHING,
        mean_estimate([math.log(r.onset["post"] / r.onset["none"]) for r in usable], LEVEL),
        {
            "order_rho": bootstrap_estimate(list(runs), _order_rho, LEVEL),
            "early_vs_init": mean_estimate(
                [
                    math.log(r.mean_loss["statistics"] / r.mean_loss["init"])
                    for r in runs
                    if "statistics" in r.mean_loss and "init" in r.mean_loss
                ],
                LEVEL,
            ),
        },
    )


REGISTRATIONS: dict[str, Registration] = {
    r.finding: r for r in (PLATEAU, ALPHA, WARMUP, HALLUCINATION, FINETUNE, PATCHING)
}
