"""The run figure `curves.png`: attribute loss and accuracy against steps, phases shaded.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display needed), so
plotting works in headless training jobs and in threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PHASE_COLOURS = {1: "#f2f2f2", 2: "#fde9c8", 3: "#d9f0d3"}
PROBE_LABELS = (
    ("train", "train templates"),
    ("eval", "eval templates (knowledge)"),
    ("heldout", "held-out individuals"),
    ("old", "old individuals (eval templates)"),
)


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _shade_phases(ax: Any, steps: list[int], start: Optional[int], end: Optional[int]) -> None:
    first, last = steps[0], steps[-1]
    bounds = [
        (1, first, start if start is not None else last),
        (2, start, end if end is not None else last),
        (3, end, last),
    ]
    for phase, lo, hi in bounds:
        if lo is not None and hi is not None and hi > lo:
            ax.axvspan(lo, hi, color=PHASE_COLOURS[phase], zorder=0, lw=0)


def plot_curves(
    records: Sequence[dict[str, Any]],
    path: Union[str, Path],
    plateau_start: Optional[int] = None,
    plateau_end: Optional[int] = None,
    title: str = "",
) -> None:
    """Write a two-panel PNG from metrics.jsonl records (needs 'step', 'no_knowledge/level' and
    the `{probe}/attr_loss`, `{probe}/attr_acc` of the probes the run has)."""
    if not records:
        raise ValueError("records must hold at least one evaluation")
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(8, 7), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(2, 1, sharex=True)
    for ax in (ax_loss, ax_acc):
        _shade_phases(ax, steps, plateau_start, plateau_end)
    for probe, label in PROBE_LABELS:
        xs, ys = _series(records, f"{probe}/attr_loss")
        if xs:
            ax_loss.plot(xs, ys, marker=".", label=label)
    level = records[-1]["no_knowledge/level"]
    ax_loss.axhline(level, color="black", ls="--", lw=1, label=f"no-knowledge level {level:.2f}")
    ax_loss.set_ylabel("attribute loss (nats per value)")
    ax_loss.set_ylim(bottom=0)
    ax_loss.legend(fontsize=8)
    for probe, label in PROBE_LABELS:
        xs, ys = _series(records, f"{probe}/attr_acc")
        if xs:
            ax_acc.plot(xs, ys, marker=".", label=label)
    ax_acc.set_ylabel("attribute accuracy")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.legend(fontsize=8)
    ax_loss.set_title(
        title or f"phases: 1 statistics | 2 plateau [{plateau_start}, {plateau_end}) | 3 knowledge"
    )
    fig.savefig(path, dpi=110)
