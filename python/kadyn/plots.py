"""The run figure `curves.png`: attribute loss and accuracy against steps, phases shaded.

The loss panel draws the statistics-only level F (where the plateau sits), the value-table entropy
(the floor that memorising which value combinations exist reaches, below F in small worlds), and,
with a twin, the no-knowledge control's curve with its seed-to-seed range: the reader can check
that the shaded plateau is flat at F in the curve itself. A log-scaled loss axis keeps the
statistics drop, the plateau and the knowledge descent all visible.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display needed), so
plotting works in headless training jobs and in threads.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from kadyn.fileio import atomic_write_bytes

PHASE_COLOURS = {1: "#f2f2f2", 2: "#fde9c8", 3: "#d9f0d3"}
PHASE_NAMES = {1: "1 statistics", 2: "2 plateau", 3: "3 knowledge"}
PROBE_LABELS = (
    ("train", "train templates"),
    ("eval", "eval templates (knowledge)"),
    ("heldout", "held-out individuals"),
    ("old", "old individuals (eval templates)"),
)


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _shade_phases(
    ax: Any,
    steps: list[int],
    start: Optional[float],
    end: Optional[float],
    onset: Optional[float],
    label: bool,
) -> None:
    first, last = steps[0], steps[-1]
    knowledge_from = end if end is not None else onset
    statistics_to = start if start is not None else knowledge_from
    bounds = [
        (1, first, statistics_to if statistics_to is not None else last),
        (2, start, end if end is not None else last),
        (3, knowledge_from, last),
    ]
    for phase, lo, hi in bounds:
        if lo is not None and hi is not None and hi > lo:
            ax.axvspan(
                lo,
                hi,
                color=PHASE_COLOURS[phase],
                zorder=0,
                lw=0,
                label=PHASE_NAMES[phase] if label else None,
            )


def plot_curves(
    records: Sequence[dict[str, Any]],
    path: Union[str, Path],
    *,
    twin: Any = None,
    control: bool = False,
    title: str = "",
) -> None:
    """Write a two-panel PNG from metrics.jsonl records (schema 2): the phases of the last record,
    F and the value-table entropy, and with `twin` (a `kadyn.twin.Twin`) the control's curve."""
    if not records:
        raise ValueError("records must hold at least one evaluation")
    steps = [r["step"] for r in records]
    last = records[-1]
    start, end = last.get("phase/plateau_start"), last.get("phase/plateau_end")
    onset = last.get("phase/knowledge_onset")
    fig = Figure(figsize=(8, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(2, 1, sharex=True)
    for i, ax in enumerate((ax_loss, ax_acc)):
        _shade_phases(ax, steps, start, end, onset, label=i == 1)
    for probe, label in PROBE_LABELS:
        xs, ys = _series(records, f"{probe}/attr_loss")
        if xs:
            ax_loss.plot(
                xs, ys, marker=".", ms=4, label=label if not control else f"{label}, control"
            )
    if twin is not None:
        mean, spread = twin.mean, twin.spread
        ax_loss.plot(
            twin.steps,
            mean,
            color="tab:purple",
            lw=1.5,
            zorder=3,
            label=f"no-knowledge twin, eval templates ({twin.seeds} seed(s))",
        )
        if spread is not None:
            ax_loss.fill_between(
                twin.steps, mean - spread, mean + spread, color="tab:purple", alpha=0.25, lw=0
            )
    level = last["no_knowledge/level"]
    ax_loss.axhline(
        level, color="black", ls="--", lw=1, label=f"statistics-only level F {level:.2f}"
    )
    floor = last.get("no_knowledge/value_table_entropy")
    if floor is not None and abs(floor - level) > 1e-3 * level:
        ax_loss.axhline(
            floor, color="black", ls=":", lw=1, label=f"value-table entropy {floor:.2f}"
        )
    ax_loss.set_yscale("log")
    ax_loss.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax_loss.yaxis.set_minor_formatter(NullFormatter())
    ax_loss.set_ylabel("attribute loss (nats per value, log scale)")
    ax_loss.legend(fontsize=8)
    for probe, label in PROBE_LABELS:
        xs, ys = _series(records, f"{probe}/attr_acc")
        if xs:
            ax_acc.plot(xs, ys, marker=".", ms=4, label=label)
    ax_acc.set_ylabel("attribute accuracy")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.legend(fontsize=8)
    if not title:
        if control:
            title = (
                "no-knowledge control: values independent of names (it can learn statistics only)"
            )
        elif start is not None:
            end_text = f"{end:.0f}" if end is not None else "…"
            title = f"plateau at F: steps {start:.0f}–{end_text}"
            title += " (knowledge read against the twin)" if twin is not None else ""
        elif onset is not None:
            title = f"no plateau; knowledge from step {onset:.0f}"
        else:
            title = "statistics phase (no plateau yet)"
    ax_loss.set_title(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(Path(path), buffer.getvalue())
