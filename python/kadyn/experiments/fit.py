"""Power-law fits with confidence intervals, and the explicit rules that turn numbers into verdicts.

Everything here is pure numpy on plain numbers, so the rules can be tested on constructed data and
the report never states a verdict that a function below did not compute. Each rule's thresholds
are named constants next to it, with the reason they were chosen; a verdict is one of
`reproduced`, `not reproduced` or `inconclusive`, with a one-line reason quoting the numbers.

scipy is only a dev dependency, so the Student-t quantile needed for the t-based interval is
computed here (regularised incomplete beta by continued fraction, then bisection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Verdict:
    outcome: str  # REPRODUCED, NOT_REPRODUCED or INCONCLUSIVE
    reason: str

    def line(self) -> str:
        return f"**{self.outcome}** — {self.reason}"


# ----------------------------------------------------------------------------------------------
# Student-t quantile (numpy only)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on the CDF; |error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------------------------
# Power-law fit on log-log axes


@dataclass(frozen=True)
class PowerLawFit:
    """y = c * n^beta fitted by least squares on (log n, log y)."""

    c: float
    beta: float
    r2: float
    beta_ci: tuple[float, float]  # t-based interval on the slope, at `level`
    bootstrap_ci: Optional[tuple[float, float]]  # percentile interval, resampling groups (seeds)
    level: float
    n_points: int
    n_sizes: int  # distinct n

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        return self.c * np.asarray(n, dtype=float) ** self.beta


def _ols(x: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(x, z, 1)
    return float(slope), float(intercept)


def fit_power_law(
    n: Sequence[float],
    y: Sequence[float],
    groups: Optional[Sequence[int]] = None,
    level: float = 0.95,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> PowerLawFit:
    """Fit y = c * n^beta; the interval on beta is t-based on the log-log regression.

    With `groups` (one label per point, e.g. the seed), a bootstrap interval is added that resamples
    whole groups with replacement, so that the points of one seed stay together.
    """
    x_n, y_v = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    if x_n.shape != y_v.shape or x_n.ndim != 1:
        raise ValueError(f"n and y must be 1-d of equal length, got {x_n.shape}, {y_v.shape}")
    if not (np.all(x_n > 0) and np.all(y_v > 0)):
        raise ValueError("n and y must be > 0 for a log-log fit")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n_sizes = len(np.unique(x_n))
    if n_sizes < 2:
        raise ValueError(f"need at least 2 distinct n to fit a power law, got {n_sizes}")
    x, z = np.log(x_n), np.log(y_v)
    beta, log_c = _ols(x, z)
    residuals = z - (beta * x + log_c)
    ss_res = float(residuals @ residuals)
    ss_tot = float(((z - z.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    dof = len(x) - 2
    if dof > 0:
        se = math.sqrt(ss_res / dof / float(((x - x.mean()) ** 2).sum()))
        half = t_quantile(0.5 + level / 2, dof) * se
        beta_ci = (beta - half, beta + half)
    else:  # two points define the line exactly: no interval
        beta_ci = (-math.inf, math.inf)

    boot: Optional[tuple[float, float]] = None
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape != x.shape:
            raise ValueError(f"groups must have one label per point, got {labels.shape}")
        unique = np.unique(labels)
        if len(unique) >= 2:
            rng = np.random.default_rng(seed)
            # A resample draws groups with replacement: each point is weighted by how many times
            # its group was drawn, and the weighted least-squares slope is computed for all
            # resamples at once.
            draws = rng.integers(len(unique), size=(n_bootstrap, len(unique)))
            counts = np.stack([np.bincount(d, minlength=len(unique)) for d in draws])
            w = counts[:, np.searchsorted(unique, labels)].astype(float)  # (B, points)
            total = w.sum(axis=1, keepdims=True)
            xm = (w * x).sum(axis=1, keepdims=True) / total
            zm = (w * z).sum(axis=1, keepdims=True) / total
            sxx = (w * (x - xm) ** 2).sum(axis=1)
            sxz = (w * (x - xm) * (z - zm)).sum(axis=1)
            ok = sxx > 1e-12  # resamples with a single distinct n have no slope
            if ok.any():
                q = np.quantile(sxz[ok] / sxx[ok], [0.5 - level / 2, 0.5 + level / 2])
                boot = (float(q[0]), float(q[1]))
    return PowerLawFit(
        c=math.exp(log_c),
        beta=beta,
        r2=r2,
        beta_ci=beta_ci,
        bootstrap_ci=boot,
        level=level,
        n_points=len(x),
        n_sizes=n_sizes,
    )


# ----------------------------------------------------------------------------------------------
# Verdict rules, one per study

# Finding 2: plateau ~ 0.43 * N^0.81 ("almost linear"). Reproduced when the interval excludes a
# clearly sub-linear law (beta <= 0.5) and the estimate sits in a band around the paper's 0.81;
# refuted when the whole interval lies outside [0.5, 1.2]; anything else (wide interval) is open.
PAPER_BETA = 0.81
PAPER_C = 0.43
BETA_BAND = (0.6, 1.1)
BETA_REFUTED_BELOW = 0.5
BETA_REFUTED_ABOVE = 1.2
MIN_SIZES = 3  # a slope from two sizes has no error estimate worth the name


def plateau_verdict(fit: Optional[PowerLawFit]) -> Verdict:
    if fit is None or fit.n_sizes < MIN_SIZES:
        have = 0 if fit is None else fit.n_sizes
        return Verdict(INCONCLUSIVE, f"finished plateaus at {have} sizes of N, need {MIN_SIZES}")
    lo, hi = fit.beta_ci
    numbers = f"beta = {fit.beta:.2f} [{lo:.2f}, {hi:.2f}] (paper {PAPER_BETA})"
    if lo > BETA_REFUTED_BELOW and BETA_BAND[0] <= fit.beta <= BETA_BAND[1]:
        return Verdict(
            REPRODUCED,
            f"{numbers}: near-linear growth, in [{BETA_BAND[0]}, {BETA_BAND[1]}] "
            f"and CI above {BETA_REFUTED_BELOW}",
        )
    if hi < BETA_REFUTED_BELOW or lo > BETA_REFUTED_ABOVE:
        return Verdict(
            NOT_REPRODUCED,
            f"{numbers}: CI outside [{BETA_REFUTED_BELOW}, {BETA_REFUTED_ABOVE}]",
        )
    if not BETA_BAND[0] <= fit.beta <= BETA_BAND[1]:
        why = (
            f"estimate outside [{BETA_BAND[0]}, {BETA_BAND[1]}] but CI not wholly outside "
            f"[{BETA_REFUTED_BELOW}, {BETA_REFUTED_ABOVE}]"
        )
    else:
        why = f"CI reaches below {BETA_REFUTED_BELOW}"
    return Verdict(INCONCLUSIVE, f"{numbers}: {why}")


# Finding 4: the plateau-minimising alpha is 0.6-0.8 whatever N; the loss-minimising alpha grows
# with N and with shorter budgets. Alphas are compared on the grid, so "0.6-0.8" is an interval
# check; an argmin at 0.4 or 1.0 is one grid step away (inconclusive), below 0.4 contradicts.
PAPER_PLATEAU_ALPHA = (0.6, 0.8)
NEAR_PLATEAU_ALPHA = (0.4, 1.0)
MIN_ALPHA_SIZES = 2  # "whatever N" needs the plateau argmin at two N at least


def argmin_alpha(values: Mapping[float, float]) -> Optional[float]:
    """The alpha with the smallest finite value (ties: the smallest alpha).

    None if no value is finite, or if every alpha ties (e.g. all plateaus one eval interval
    long): the measurement then cannot tell the alphas apart, which is no evidence either way.
    """
    finite = {a: v for a, v in values.items() if v is not None and math.isfinite(v)}
    if not finite or (
        len(values) > 1 and len(finite) == len(values) and len(set(finite.values())) == 1
    ):
        return None
    best = min(finite.values())
    return min(a for a, v in finite.items() if v == best)


def monotone_votes(sequence: Sequence[Optional[float]], increasing: bool) -> tuple[int, int]:
    """(agreements, violations) over consecutive pairs: strict moves in / against the direction."""
    agree = violate = 0
    values = [v for v in sequence if v is not None]
    for a, b in zip(values, values[1:]):
        if b == a:
            continue
        if (b > a) == increasing:
            agree += 1
        else:
            violate += 1
    return agree, violate


def alpha_verdict(
    plateau_argmin: Mapping[int, Optional[float]],
    loss_argmin: Mapping[tuple[int, int], Optional[float]],
) -> Verdict:
    """plateau_argmin: N -> alpha of the shortest plateau; loss_argmin: (N, steps) -> alpha_opt."""
    found = {n: a for n, a in plateau_argmin.items() if a is not None}
    if not found:
        return Verdict(INCONCLUSIVE, "no N whose plateau tells the alphas apart")
    plateau_text = ", ".join(
        f"N={n}: {'tie' if a is None else f'{a:g}'}" for n, a in sorted(plateau_argmin.items())
    )
    in_paper = all(PAPER_PLATEAU_ALPHA[0] <= a <= PAPER_PLATEAU_ALPHA[1] for a in found.values())
    near = all(NEAR_PLATEAU_ALPHA[0] <= a <= NEAR_PLATEAU_ALPHA[1] for a in found.values())

    sizes = sorted({n for n, _ in loss_argmin})
    budgets = sorted({s for _, s in loss_argmin})
    agree = violate = 0
    for s in budgets:  # alpha_opt should grow with N at a fixed budget
        a, v = monotone_votes([loss_argmin.get((n, s)) for n in sizes], increasing=True)
        agree, violate = agree + a, violate + v
    for n in sizes:  # ... and shrink as the budget grows at a fixed N
        a, v = monotone_votes([loss_argmin.get((n, s)) for s in budgets], increasing=False)
        agree, violate = agree + a, violate + v
    trend = f"alpha_opt trend {agree} agreeing / {violate} contrary moves"
    text = f"plateau argmin {plateau_text} (paper 0.6-0.8); {trend}"
    if not near or violate > agree:
        return Verdict(NOT_REPRODUCED, text)
    if in_paper and len(found) >= MIN_ALPHA_SIZES and agree > 0 and violate == 0:
        return Verdict(REPRODUCED, text)
    return Verdict(INCONCLUSIVE, text)


# Finding 5: the warm-up beats uniform sampling (and the best fixed alpha), more so for large N.
# Gains are in accuracy points over all individuals; 1 point is the smallest gain called a win,
# below the run-to-run noise of the probes we use at CPU scale it would be a coin toss.
MIN_WARMUP_GAIN = 0.01


@dataclass(frozen=True)
class WarmupRow:
    n: int
    uniform: float  # final accuracy over all individuals
    best_alpha: Optional[float]
    best_warmup: float


def warmup_verdict(rows: Sequence[WarmupRow]) -> Verdict:
    if not rows:
        return Verdict(INCONCLUSIVE, "no runs")
    rows = sorted(rows, key=lambda r: r.n)
    small, large = rows[0], rows[-1]
    gain_large = large.best_warmup - large.uniform
    gain_small = small.best_warmup - small.uniform
    vs_alpha = large.best_warmup - (large.best_alpha if large.best_alpha is not None else -1.0)
    text = (
        f"warm-up gain over uniform {gain_small:+.3f} at N={small.n}, {gain_large:+.3f} at "
        f"N={large.n}; over the best alpha {vs_alpha:+.3f} at N={large.n}"
    )
    if max(large.uniform, large.best_warmup) < MIN_WARMUP_GAIN:
        return Verdict(INCONCLUSIVE, "nothing learned at the largest N; " + text)
    if gain_large <= 0:
        return Verdict(NOT_REPRODUCED, text)
    grows = gain_large >= gain_small
    if gain_large >= MIN_WARMUP_GAIN and vs_alpha > 0 and grows and len(rows) >= 2:
        return Verdict(REPRODUCED, text)
    return Verdict(INCONCLUSIVE, text)


# Finding 6: once knowledge appears, held-out loss rises above the baseline; held-out confidence
# is lower than on known individuals but has risen above its no-knowledge (plateau) level.
# At small N the empirical value statistics of the trained population differ from the held-out
# one's, so held-out loss sits above the baseline even at the plateau; the rise must therefore
# also be measured against the held-out loss at the plateau start (the model's own no-knowledge
# level). Both by a 2% margin: the probes' sampling noise at CPU scale is about 1%.
HALLUCINATION_MARGIN = 0.02


@dataclass(frozen=True)
class HallucinationStats:
    baseline: float
    knowledge_step: Optional[int]  # plateau end
    heldout_final: float  # mean held-out loss over the last quarter of evals
    heldout_plateau: float  # held-out loss at the plateau start
    confidence_heldout: float  # final
    confidence_known: float  # final, eval templates of trained individuals
    confidence_heldout_plateau: float  # at the plateau start

    @property
    def excess(self) -> float:
        return self.heldout_final - self.baseline

    @property
    def rise(self) -> float:
        return self.heldout_final - self.heldout_plateau


def hallucination_verdict(s: HallucinationStats) -> Verdict:
    if s.knowledge_step is None:
        return Verdict(INCONCLUSIVE, "knowledge never emerged (no plateau end)")
    text = (
        f"held-out loss - baseline = {s.excess:+.3f} nats ({s.excess / s.baseline:+.1%}), "
        f"{s.rise:+.3f} since the plateau; confidence held-out {s.confidence_heldout:.2f} vs "
        f"known {s.confidence_known:.2f} (held-out at plateau {s.confidence_heldout_plateau:.2f})"
    )
    if s.excess <= 0 or s.rise <= 0:
        return Verdict(NOT_REPRODUCED, text)
    margin = HALLUCINATION_MARGIN * s.baseline
    loss_ok = s.excess > margin and s.rise > margin
    conf_ok = s.confidence_heldout_plateau < s.confidence_heldout < s.confidence_known
    return Verdict(REPRODUCED if loss_ok and conf_ok else INCONCLUSIVE, text)


# Finding 7: fine-tuning makes old accuracy collapse early (at least half lost by the early point)
# while new individuals are still mostly unknown; replay keeps more old knowledge at the end
# (>= 5 points), and "not at the start": its early gain is at most half its final gain. Below 30%
# pre-trained accuracy there is little to forget.
MIN_PRETRAINED_ACC = 0.3
COLLAPSE_FRACTION = 0.5
NO_FORGETTING_FRACTION = 0.2
MIN_REPLAY_GAIN = 0.05
EARLY_REPLAY_SHARE = 0.5


@dataclass(frozen=True)
class FinetuneStats:
    old_start: float  # old accuracy before fine-tuning
    old_early: Mapping[float, float]  # replay weight -> old accuracy at the early point
    old_final: Mapping[float, float]
    new_early: Mapping[float, float]
    new_final: Mapping[float, float]


def finetune_verdict(s: FinetuneStats) -> Verdict:
    if 0.0 not in s.old_early or len(s.old_early) < 2:
        return Verdict(INCONCLUSIVE, "need replay 0 and at least one replay weight > 0")
    w = max(s.old_early)
    drop_early = s.old_start - s.old_early[0.0]
    drop_final = s.old_start - s.old_final[0.0]
    gain_early = s.old_early[w] - s.old_early[0.0]
    gain_final = s.old_final[w] - s.old_final[0.0]
    text = (
        f"old acc {s.old_start:.2f} -> {s.old_early[0.0]:.2f} early, {s.old_final[0.0]:.2f} at "
        f"the end without replay; replay {w:g} keeps {gain_early:+.2f} early, {gain_final:+.2f} "
        f"at the end; new acc {s.new_early[0.0]:.2f} early, {s.new_final[0.0]:.2f} at the end"
    )
    if s.old_start < MIN_PRETRAINED_ACC:
        return Verdict(INCONCLUSIVE, f"pre-training reached only {s.old_start:.2f}; " + text)
    collapse = drop_early >= COLLAPSE_FRACTION * s.old_start
    slow = s.new_early[0.0] < COLLAPSE_FRACTION * s.old_start
    if (not collapse and drop_final < NO_FORGETTING_FRACTION * s.old_start) or gain_final <= 0:
        return Verdict(NOT_REPRODUCED, text)
    helps_later = gain_final >= MIN_REPLAY_GAIN and gain_early <= EARLY_REPLAY_SHARE * gain_final
    return Verdict(REPRODUCED if collapse and slow and helps_later else INCONCLUSIVE, text)


# Finding 3: post-plateau attention patterns remove the plateau (knowledge earlier than without
# patching); the earliest trained patterns are worse than untrained ones. "Earlier" compares the
# step of the plateau end (never = infinity); "worse" compares the mean eval attribute loss over
# the run, which also orders runs that never leave the plateau.


@dataclass(frozen=True)
class PatchingStats:
    knowledge_step: Mapping[str, float]  # source -> plateau end (inf if none); "none" = unpatched
    mean_loss: Mapping[str, float]  # source -> mean eval attribute loss over the run


def patching_verdict(s: PatchingStats) -> Verdict:
    needed = ("none", "init", "early", "post")
    missing = [k for k in needed if k not in s.knowledge_step or k not in s.mean_loss]
    if missing:
        return Verdict(INCONCLUSIVE, f"missing runs: {', '.join(missing)}")
    t = s.knowledge_step

    def fmt(v: float) -> str:
        return "never" if math.isinf(v) else f"{v:.0f}"

    text = (
        f"knowledge at step {fmt(t['post'])} with post-plateau patterns vs {fmt(t['none'])} "
        f"unpatched; mean loss early-checkpoint patterns {s.mean_loss['early']:.3f} vs "
        f"untrained {s.mean_loss['init']:.3f}"
    )
    post_helps = t["post"] < t["none"] or (
        math.isinf(t["none"]) and s.mean_loss["post"] < s.mean_loss["none"]
    )
    if not post_helps:
        return Verdict(NOT_REPRODUCED, text)
    early_worse = s.mean_loss["early"] > s.mean_loss["init"]
    return Verdict(REPRODUCED if early_worse else INCONCLUSIVE, text)
