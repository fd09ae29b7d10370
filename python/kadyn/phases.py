"""Phase detection on an attribute-loss curve: statistics (1), plateau (2), knowledge (3).

The paper (Zucchet et al. 2025, Fig. 1) describes three phases of the attribute loss: a fast drop
to the no-knowledge level F (the model has learnt the value statistics), a plateau *at* F with
accuracy near 0, then a descent below F as knowledge of individuals emerges. The paper does not
spell out how it measures them; this module's rule is the following.

Inputs, one value per evaluation: ``steps`` (strictly increasing), ``losses``, optionally
``accuracies``; ``level`` is F, a float or one value per eval (e.g. the curve of a control run that
cannot know individuals, evaluated at the same steps: the "twin"). The band around the level
has half-width ``band * level`` (relative), or ``half_width`` nats when given (a float or one
value per eval, e.g. the twin's seed-to-seed spread); ``half_width`` replaces ``band``. An eval
is *in band* if ``|loss - level| <= half-width``, *above* if ``loss > level + half-width``,
*below* if ``loss < level - half-width``.

1. Knowledge onset T_k is the first eval that is below the band, or in band with
   ``accuracy >= max_acc`` (accuracy is only used when given). Accuracy on an eval above the band
   triggers nothing. T_k is interpolated linearly between the previous eval and the onset eval:
   at the lower band edge for the loss trigger (where ``loss - (level - half-width)`` crosses 0),
   at ``accuracy = max_acc`` for the accuracy trigger (but never before the loss crossed the upper
   band edge, if the previous eval was above the band). An onset at the first eval is its step.
   T_k is final: the onset eval and every later one are KNOWLEDGE, even if the loss comes back
   into the band. T_k is reported with or without a plateau.
2. Before onset, a *candidate plateau* is a run of consecutive in-band evals (each with
   accuracy < max_acc, which holds for every in-band eval before onset). It becomes *the plateau*
   (is confirmed) once it holds ``min_evals`` evals. An eval above the band ends the run, confirmed
   or not: the paper's plateau is flat, every eval inside it is in band. The next in-band run has
   to be confirmed again.
3. ``plateau_start`` is where the loss crossed the upper band edge on entering the confirmed run,
   interpolated between the last eval above the band and the run's first eval (the run's first
   step if it starts at the curve's first eval). If a confirmed plateau is in progress at onset,
   ``plateau_end = knowledge_onset``. If not, there is no plateau (start = end = None): a curve
   that drops through the band without ``min_evals`` consecutive in-band evals gets none.
4. Labels: evals before the plateau's first eval (before onset if there is no plateau) are
   STATISTICS, the confirmed plateau's evals PLATEAU, the onset eval and later ones KNOWLEDGE.
   Evals of a run that is not confirmed yet are STATISTICS.

Causality: the result for evals 0..i depends only on those evals, so the trainer can call the
detector after every eval. Values already reported change only in these ways: the labels of the
current unconfirmed run switch from STATISTICS to PLATEAU when it is confirmed; and before onset,
an eval above the band withdraws a confirmed plateau (``plateau_start`` back to None, its labels
back to STATISTICS) until a later run is confirmed. ``knowledge_onset`` and ``plateau_end``, once
reported, never change, nor does ``plateau_start`` once onset is reported or while the loss stays
at or below the upper band edge.

Detector lag: onset is marked when the loss is ``band * level`` (or ``half_width``) below F, so
T_k lags the true departure from F by the time the loss takes to fall that far; interpolation
removes the part due to eval spacing, not this one. A plateau is likewise entered at the upper band
edge, before the loss reaches F. Both shift with the band, so report the plateau at several bands
(`band_sensitivity`) or against a twin (``onset_level``). Measured on the default run (3 seeds,
`benches/phases.py`): 143-159 steps from the loss's last crossing of F to the 5%-band onset, and
the run separates from its no-knowledge twin about 300 steps before that onset.

Against a twin (``onset_level``, ``onset_half_width``, ``confirm``): the plateau is still entered
at F's band, and only the loss trigger of the onset moves to ``onset_level - onset_half_width``.
Changed after seeing the first real-vs-twin runs (the rules above, band 5%, ``min_evals`` 3,
``max_acc`` 0.05, were fixed from the issue before any run): (1) with the twin's curve as the
plateau's level, a real run sits "on the plateau" from step 0, since both share the statistics
drop, which contradicts phase 1; (2) a fourth seed falls below the range of three by chance on
about one eval in four to fourteen, so a single eval below the twin's range declared knowledge by
chance; the twin trigger therefore needs ``confirm`` = 2 evals in a row (the trainer passes 2 with
a twin, 1 without, which leaves the F rule as it was fixed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

STATISTICS, PLATEAU, KNOWLEDGE = 1, 2, 3

Numbers = Union[float, Sequence[float]]


@dataclass
class Phases:
    phase: list[int]  # STATISTICS, PLATEAU or KNOWLEDGE, one per eval
    plateau_start: Optional[float]  # interpolated step where the loss entered the band
    plateau_end: Optional[float]  # = knowledge_onset when a plateau exists
    knowledge_onset: Optional[float]  # T_k, with or without a plateau
    band: float  # relative band used (ignored by the rule when half_width was given)
    max_deviation: Optional[float] = None  # max |loss - level| / level over the plateau's evals
    max_accuracy: Optional[float] = None  # max accuracy over the plateau's evals (if given)

    @property
    def plateau_length(self) -> Optional[float]:
        return plateau_length(self.plateau_start, self.plateau_end)

    @property
    def plateau_evals(self) -> int:
        return sum(p == PLATEAU for p in self.phase)


def plateau_length(start: Optional[float], end: Optional[float]) -> Optional[float]:
    """Steps from the plateau's start to its end (the knowledge onset); None unless both exist.
    The one definition: the trainer's summary, the studies and the report all use it."""
    if start is None or end is None:
        return None
    return float(end) - float(start)


def _per_eval(name: str, value: Numbers, n: int) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(
            f"{name} must be a number or have one value per eval ({n}), got {len(values)}"
        )
    return values


def _band(
    level: tuple[str, Numbers], half_width: tuple[str, Optional[Numbers]], band: float, n: int
) -> tuple[list[float], list[float]]:
    """A band's centre and half-width per eval ((name, value) pairs, for the error messages):
    +-band x centre unless a half-width is given."""
    (level_name, level_value), (width_name, width_value) = level, half_width
    centre = _per_eval(level_name, level_value, n)
    if not all(v > 0 and math.isfinite(v) for v in centre):
        raise ValueError(f"{level_name} must be finite and > 0 (each value), got {level_value}")
    if width_value is None:
        return centre, [band * v for v in centre]
    width = _per_eval(width_name, width_value, n)
    if not all(h > 0 and math.isfinite(h) for h in width):
        raise ValueError(f"{width_name} must be finite and > 0 (each value), got {width_value}")
    return centre, width


def _crossing(s0: float, s1: float, d0: float, d1: float) -> float:
    """Step where a quantity linear between (s0, d0) and (s1, d1) crosses 0, clamped to [s0, s1]."""
    if d0 == d1:  # no crossing inside: the quantity was already past 0 at s0, or reaches it at s1
        return s0 if d0 <= 0 else s1
    t = min(max(d0 / (d0 - d1), 0.0), 1.0)
    return s0 + t * (s1 - s0)


def detect_phases(
    steps: Sequence[float],
    losses: Sequence[float],
    level: Numbers,
    accuracies: Optional[Sequence[float]] = None,
    *,
    band: float = 0.05,
    half_width: Optional[Numbers] = None,
    min_evals: int = 3,
    max_acc: float = 0.05,
    onset_level: Optional[Numbers] = None,
    onset_half_width: Optional[Numbers] = None,
    confirm: int = 1,
) -> Phases:
    """Phases of an attribute-loss curve; the rule is in the module docstring.

    `onset_level` (a twin's curve, one value per eval) moves the loss trigger of the onset: the
    loss is *below* when under `onset_level - onset_half_width` (default: band x onset_level)
    instead of under F's band, while the plateau is still entered at F's band. So a run that
    tracks a no-knowledge twin down through F's band is read as on the plateau until it separates
    from the twin by more than the twin's noise. `confirm` evals in a row must be below for the
    loss trigger (2 against a twin, whose seed range a fourth seed leaves by chance now and then);
    an unconfirmed eval below counts as in the current run.
    """
    n = len(steps)
    if len(losses) != n:
        raise ValueError(f"steps and losses must have the same length, got {n}, {len(losses)}")
    if accuracies is not None and len(accuracies) != n:
        raise ValueError(f"accuracies must have one value per eval ({n}), got {len(accuracies)}")
    if not 0 < band < 1:
        raise ValueError(f"band must be in (0, 1), got {band}")
    if isinstance(min_evals, bool) or not isinstance(min_evals, int) or min_evals < 1:
        raise ValueError(f"min_evals must be an integer >= 1, got {min_evals!r}")
    if isinstance(confirm, bool) or not isinstance(confirm, int) or confirm < 1:
        raise ValueError(f"confirm must be an integer >= 1, got {confirm!r}")
    if not 0 < max_acc <= 1:
        raise ValueError(f"max_acc must be in (0, 1], got {max_acc}")
    lvl, hw = _band(("level", level), ("half_width", half_width), band, n)
    if not all(math.isfinite(x) for x in losses):
        raise ValueError("losses must be finite")
    if accuracies is not None and not all(0 <= a <= 1 for a in accuracies):
        raise ValueError("accuracies must be in [0, 1]")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError("steps must be strictly increasing")

    upper = [v + h for v, h in zip(lvl, hw)]
    lower = [v - h for v, h in zip(lvl, hw)]
    if onset_level is not None:
        ref, ref_hw = _band(
            ("onset_level", onset_level), ("onset_half_width", onset_half_width), band, n
        )
        lower = [v - h for v, h in zip(ref, ref_hw)]
    elif onset_half_width is not None:
        raise ValueError("onset_half_width needs onset_level")
    run_first: Optional[int] = None  # first eval of the current in-band run
    plateau_first: Optional[int] = None  # first eval of the confirmed plateau in progress
    onset_index: Optional[int] = None
    onset: Optional[float] = None
    for i in range(n):
        loss = losses[i]
        acc = accuracies[i] if accuracies is not None else None
        below = loss < lower[i]
        # Against a twin, one eval below its noise band is not yet knowledge: the next
        # `confirm - 1` evals must stay below too (reported once they are, back-dated to here).
        ahead = range(i, i + confirm)
        if below and ahead[-1] < n and all(losses[j] < lower[j] for j in ahead):
            onset_index = i
            if i > 0:
                onset = _crossing(
                    steps[i - 1], steps[i], losses[i - 1] - lower[i - 1], loss - lower[i]
                )
            break
        if loss > upper[i]:  # above the band: ends any run, confirmed or not
            run_first = plateau_first = None
            continue
        if acc is not None and acc >= max_acc:  # in band, accuracy trigger
            onset_index = i
            if i > 0:
                assert accuracies is not None
                onset = _crossing(
                    steps[i - 1], steps[i], max_acc - accuracies[i - 1], max_acc - acc
                )
                if losses[i - 1] > upper[i - 1]:  # not before the loss entered the band
                    entered = _crossing(
                        steps[i - 1], steps[i], losses[i - 1] - upper[i - 1], loss - upper[i]
                    )
                    onset = max(onset, entered)
            break
        if run_first is None:
            run_first = i
        if plateau_first is None and i - run_first + 1 >= min_evals:
            plateau_first = run_first
    if onset_index is not None and onset is None:
        onset = float(steps[onset_index])

    stop = n if onset_index is None else onset_index
    plateau_start: Optional[float] = None
    max_deviation: Optional[float] = None
    max_accuracy: Optional[float] = None
    if plateau_first is None:
        phase = [STATISTICS] * stop
    else:
        a = plateau_first
        if a == 0:
            plateau_start = float(steps[0])
        else:
            plateau_start = _crossing(
                steps[a - 1], steps[a], losses[a - 1] - upper[a - 1], losses[a] - upper[a]
            )
        phase = [STATISTICS] * a + [PLATEAU] * (stop - a)
        max_deviation = max(abs(losses[j] - lvl[j]) / lvl[j] for j in range(a, stop))
        if accuracies is not None:
            max_accuracy = max(accuracies[a:stop])
    phase += [KNOWLEDGE] * (n - stop)
    return Phases(
        phase=phase,
        plateau_start=plateau_start,
        plateau_end=onset if plateau_start is not None else None,
        knowledge_onset=onset,
        band=band,
        max_deviation=max_deviation,
        max_accuracy=max_accuracy,
    )


def band_sensitivity(
    steps: Sequence[float],
    losses: Sequence[float],
    level: Numbers,
    accuracies: Optional[Sequence[float]] = None,
    bands: Sequence[float] = (0.05, 0.10, 0.20),
    **kw,
) -> dict[float, Phases]:
    """`detect_phases` at each relative band in `bands` (other keywords passed on)."""
    if kw.get("half_width") is not None:
        raise ValueError(
            "half_width replaces band; band_sensitivity varies band, so pass no half_width"
        )
    return {b: detect_phases(steps, losses, level, accuracies, band=b, **kw) for b in bands}
