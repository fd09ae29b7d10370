"""`report.md`: one section per study — figure, measured numbers beside the paper's, verdict.

Studies hand back a `Section`; the report is rebuilt from every study found under OUT (each keeps
a `study.json`), so running one study refreshes its section without dropping the others'.
Figures use matplotlib's object API on the Agg canvas (no pyplot state, no display).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kadyn.experiments import rules
from kadyn.experiments.rules import Verdict
from kadyn.fileio import atomic_write, atomic_write_text

REPORT = "report.md"
REPORT_JSON = "report.json"
STUDY_FILE = "study.json"
SECTION_FILE = "section.json"


@dataclass
class Section:
    study: str
    title: str
    claim: str  # the paper's finding, in a sentence
    verdict: Verdict
    rule: str  # the registered rule in words (the code in rules.py is the authority)
    table: list[tuple[str, str, str]] = field(default_factory=list)  # quantity, kadyn, paper
    figure: Optional[str] = None  # path relative to OUT
    notes: list[str] = field(default_factory=list)
    runs: int = 0
    finished: int = 0
    train_s: float = 0.0  # summed wall time of the runs
    study_wall_s: Optional[float] = None  # wall time of the last `kadyn-exp <study>` call
    numbers: dict[str, Any] = field(default_factory=dict)  # measured numbers, for report.json


def save_section(section: Section, study_dir: Path) -> None:
    """Keep the analysed section beside the study, so other studies' commands can reuse it."""
    atomic_write_text(Path(study_dir) / SECTION_FILE, json.dumps(asdict(section), indent=1))


def load_section(study_dir: Path) -> Optional[Section]:
    path = Path(study_dir) / SECTION_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data["verdict"] = Verdict(**data["verdict"])
    data["table"] = [tuple(row) for row in data["table"]]
    return Section(**data)


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.8) -> Figure:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_study_figure(fig: Figure, out: Path, study: str) -> str:
    """Write the study's figure atomically to OUT/<study>/<study>.png; the path relative to OUT."""
    relative = f"{study}/{study}.png"
    atomic_write(Path(out) / relative, lambda f: fig.savefig(f, format="png", dpi=110))
    return relative


def render_section(section: Section) -> str:
    lines = [f"## {section.title}", "", f"*Paper:* {section.claim}", ""]
    lines += [f"**Verdict:** {section.verdict.line()}", ""]
    if section.figure:
        lines += [f"![{section.study}]({section.figure})", ""]
    if section.table:
        lines += ["| quantity | kadyn | paper |", "| --- | --- | --- |"]
        lines += [f"| {q} | {m} | {p} |" for q, m, p in section.table]
        lines.append("")
    lines += [f"*Rule:* {section.rule}", ""]
    wall = f", study wall time {section.study_wall_s / 60:.1f} min" if section.study_wall_s else ""
    lines.append(
        f"*Runs:* {section.finished}/{section.runs} finished, "
        f"{section.train_s / 60:.1f} min of training{wall}."
    )
    lines.append("")
    lines += [f"- {note}" for note in section.notes]
    if section.notes:
        lines.append("")
    return "\n".join(lines)


def write_report(
    out: Path, sections: Sequence[Section], header: Optional[dict[str, Any]] = None
) -> Path:
    """Write OUT/report.md from `sections` (in the given order) and return its path."""
    header = header or {}
    lines = [
        "# kadyn experiment report",
        "",
        "Reproduction of Zucchet et al. (2025), *How do language models learn facts?*, with the "
        "kadyn data engine and trainer. Verdicts are computed by the pre-registered rules in "
        "`kadyn/experiments/rules.py`; the numbers come from the runs under this directory.",
        "",
        f"Rules version {rules.RULES_VERSION}, hash `{rules.rules_hash()}`; every interval is "
        f"{rules.LEVEL:.0%}.",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.",
    ]
    if header.get("scales"):
        lines.append(f"Scale(s): {', '.join(sorted(header['scales']))}.")
    walls = [s.study_wall_s for s in sections if s.study_wall_s is not None]
    if walls:
        lines.append(
            "Study wall times (each from the call that trained its runs; under `kadyn-exp all` "
            "they leave out its first pass, which trains every study's independent runs "
            "together) sum to "
            f"{sum(walls) / 60:.1f} min: "
            + ", ".join(f"{s.study} {s.study_wall_s / 60:.1f}" for s in sections if s.study_wall_s)
            + "."
        )
    if header.get("suite_wall_s") is not None:
        lines.append(
            f"Wall time of the last `kadyn-exp all`: {header['suite_wall_s'] / 60:.1f} min."
        )
    lines.append("")
    summary = ["| study | verdict |", "| --- | --- |"]
    summary += [f"| {s.title} | {s.verdict.outcome} |" for s in sections]
    lines += summary + [""]
    lines += [render_section(s) for s in sections]
    path = Path(out) / REPORT
    atomic_write_text(path, "\n".join(lines))
    write_report_json(out, sections, header)
    return path


def write_report_json(
    out: Path, sections: Sequence[Section], header: Optional[dict[str, Any]] = None
) -> Path:
    """report.json: each study's verdict and numbers, with the rules' version and hash."""
    header = header or {}
    data = {
        "rules_version": rules.RULES_VERSION,
        "rules_hash": rules.rules_hash(),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "scales": sorted(header.get("scales", [])),
        "suite_wall_s": header.get("suite_wall_s"),
        "studies": {
            s.study: {
                "title": s.title,
                "verdict": s.verdict.outcome,
                "reason": s.verdict.reason,
                "numbers": s.numbers,
                "runs": s.runs,
                "finished": s.finished,
                "train_s": s.train_s,
                "study_wall_s": s.study_wall_s,
            }
            for s in sections
        },
    }
    path = Path(out) / REPORT_JSON
    atomic_write_text(path, json.dumps(data, indent=1, default=str))
    return path


def read_study_file(study_dir: Path) -> Optional[dict[str, Any]]:
    path = study_dir / STUDY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def study_section(
    study: str,
    title: str,
    claim: str,
    results: Sequence[Any],
    *,
    missing: int = 0,
    **fields: Any,
) -> Section:
    """A study's section, its run counts taken from its list of Optional[RunResult].

    `missing` counts planned runs that are not in `results` yet (they depend on a run not done).
    """
    done = [r for r in results if r is not None]
    seconds = sum(float(r.summary.get("run_wall_s", r.summary.get("wall_s", 0.0))) for r in done)
    return Section(
        study=study,
        title=title,
        claim=claim,
        runs=len(results) + missing,
        finished=len(done),
        train_s=seconds,
        **fields,
    )
