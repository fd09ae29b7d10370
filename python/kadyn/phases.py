"""Phase detection on an attribute-loss curve: statistics (1), plateau (2), knowledge (3).

The paper (Zucchet et al. 2025, Fig. 1) describes three phases of the attribute loss: a fast drop
to the no-knowledge baseline, a plateau at the baseline, then a descent below it as knowledge
emerges. kadyn measures them on the evaluation curve with a fixed band of +-`tolerance` around the
baseline (10% by default):

- the plateau starts at the first eval whose loss is within the band
  (|loss - baseline| <= tolerance * baseline); everything before it is phase 1;
- the plateau ends at the first later eval whose loss is below (1 - tolerance) * baseline: that
  eval and every later one are phase 3 (knowledge); evals in between are phase 2, including noisy
  ones that briefly leave the band upwards (a blip does not restart the plateau);
- if the loss jumps from above the band to below it between two evals, the plateau was shorter than
  the eval spacing: start = end = that eval;
- a curve still above the band has no plateau yet (start None), one still inside has no end yet.

The rule is causal: the phase of an eval depends only on the evals up to it, so running the
detector during training gives the same answer as running it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

STATISTICS, PLATEAU, KNOWLEDGE = 1, 2, 3


@dataclass
class Phases:
    phase: list[int]  # one of 1, 2, 3 per eval
    plateau_start: Optional[int]  # step of the first in-band eval
    plateau_end: Optional[int]  # step of the first eval of the knowledge phase

    @property
    def plateau_length(self) -> Optional[int]:
        if self.plateau_start is None or self.plateau_end is None:
            return None
        return self.plateau_end - self.plateau_start


def detect_phases(
    steps: Sequence[int], losses: Sequence[float], baseline: float, tolerance: float = 0.1
) -> Phases:
    if len(steps) != len(losses):
        raise ValueError(
            f"steps and losses must have the same length, got {len(steps)}, {len(losses)}"
        )
    if not baseline > 0:
        raise ValueError(f"baseline must be > 0, got {baseline}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    upper, lower = (1 + tolerance) * baseline, (1 - tolerance) * baseline
    phase: list[int] = []
    start: Optional[int] = None
    end: Optional[int] = None
    for step, loss in zip(steps, losses):
        if start is None and loss <= upper:
            start = step
        if start is not None and end is None and loss < lower:
            end = step
        phase.append(STATISTICS if start is None else PLATEAU if end is None else KNOWLEDGE)
    return Phases(phase, start, end)
