"""The no-knowledge twin: finished `kadyn-train --control` runs read back as a reference curve.

A control run trains the same model on a stream whose values are drawn independently of the names
(`BiographyStream(..., facts="shuffled")`), so it can learn the value statistics but no individual.
Its eval-probe attribute loss is the measured no-knowledge level at every step: it checks the
computed level F and shows how far a model without individual knowledge drifts below F later (by
memorising the population's value table). With several control seeds, their mean is the reference
and their range at each step the band that a real run must leave to count as knowing something.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from kadyn.config import TrainConfig, load_config_file
from kadyn.evaluation import METRICS, read_metrics

# What must match between a real run and its twin for the curves to be comparable: the world (every
# field of the config's "world" group), the probes, and the sampling distribution whose statistics
# the twin learns.
MATCHING_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata["group"] == "world") + (
    "population",
    "sampling",
    "alpha",
    "warmup_individuals",
    "warmup_samples",
    "eval_individuals",
    "seq_len",
)


@dataclass
class Twin:
    """Eval-probe loss curves of one or more control runs, on a shared step grid."""

    runs: list[str]
    steps: np.ndarray  # (n,) the first run's eval steps
    curves: np.ndarray  # (seeds, n) each run's loss interpolated at `steps`

    @property
    def seeds(self) -> int:
        return self.curves.shape[0]

    @property
    def mean(self) -> np.ndarray:
        return self.curves.mean(0)

    @property
    def spread(self) -> Optional[np.ndarray]:
        """Seed-to-seed range (max - min) per step; None with a single run."""
        if self.seeds < 2:
            return None
        return self.curves.max(0) - self.curves.min(0)

    def at(self, steps: Sequence[float]) -> tuple[list[float], Optional[list[float]]]:
        """The reference level and its half-width (the spread) at `steps`; past the twin's last
        eval the curve is held at its last value."""
        level = np.interp(steps, self.steps, self.mean).tolist()
        spread = self.spread
        half = None if spread is None else np.interp(steps, self.steps, spread).tolist()
        return level, half


def load_twin(spec: str, config: Optional[TrainConfig] = None) -> Twin:
    """Control runs named in `spec` (comma-separated run folders), checked against `config`."""
    runs = [r.strip() for r in spec.split(",") if r.strip()]
    if not runs:
        raise ValueError(f"--twin must name at least one run folder, got {spec!r}")
    curves: list[tuple[np.ndarray, np.ndarray]] = []
    for run in runs:
        folder = Path(run)
        metrics, saved = folder / METRICS, folder / "config.toml"
        if not metrics.is_file() or not saved.is_file():
            raise ValueError(f"--twin {run}: not a kadyn-train run (no {METRICS} / config.toml)")
        twin_config = load_config_file(saved)
        if not twin_config.control:
            raise ValueError(f"--twin {run}: not a control run (train it with --control)")
        if config is not None:
            for name in MATCHING_FIELDS:
                mine, theirs = getattr(config, name), getattr(twin_config, name)
                if mine != theirs:
                    flag = "--" + name.replace("_", "-")
                    raise ValueError(
                        f"--twin {run}: {flag} is {theirs!r} there, {mine!r} here; "
                        "a twin must share the world, probes and sampling"
                    )
        points = [(r["step"], r["eval/attr_loss"]) for r in read_metrics(metrics)]
        if len(points) < 2:
            raise ValueError(f"--twin {run}: needs at least 2 evaluations, has {len(points)}")
        steps, losses = np.array(points, dtype=float).T
        curves.append((steps, losses))
    grid = curves[0][0]
    stacked = np.stack([np.interp(grid, s, loss) for s, loss in curves])
    return Twin(runs=runs, steps=grid, curves=stacked)
