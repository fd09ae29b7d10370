"""What every study of `kadyn-exp` provides (the `Study` protocol), and the one analysis path they
share: measure (typed numbers and the rules' judgement) → draw (the figure) → table → Section.

A study's plan is a frozen dataclass of `scales.py`; command-line options override its fields
with `dataclasses.replace`, and `study.json` stores it with `dataclasses.asdict`, read back by
`plan_from_dict`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

from kadyn.experiments import rules
from kadyn.experiments.report import Section, study_section
from kadyn.experiments.runner import Context, RunResult, RunSpec


@dataclass
class Measured:
    """What a study measured from its runs: the rules' judgement, the numbers for report.json,
    and whatever its figure and table need (`extra`)."""

    judgement: Optional[rules.Judgement]  # None for the analyses beyond the paper
    results: list[Optional[RunResult]]  # every planned run, None where not finished
    numbers: dict[str, Any] = field(default_factory=dict)  # JSON-ready
    notes: list[str] = field(default_factory=list)
    missing: int = 0  # planned runs not built yet (they depend on an unfinished run)
    extra: dict[str, Any] = field(default_factory=dict)


Row = tuple[str, str, str]  # quantity, kadyn, paper


class Study(Protocol):
    name: str
    title: str
    claim: str

    @property
    def plan_type(self) -> type:
        """The study's plan dataclass (read-only, so each study may narrow it)."""
        ...

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        """Plan fields set on the command line (None-valued options left out)."""
        ...

    def check(self, plan: Any) -> None:
        """Raise ValueError (one line, naming the option) for a plan that cannot run."""
        ...

    def specs(self, plan: Any, ctx: Context) -> list[RunSpec]:
        """The runs that depend on no other run (later stages are built from their results);
        `kadyn-exp all` trains those of every study in one pool."""
        ...

    def execute(self, plan: Any, ctx: Context) -> None: ...

    def measure(self, plan: Any, ctx: Context) -> Measured: ...

    def draw(self, plan: Any, ctx: Context, measured: Measured) -> Optional[str]:
        """Write the study's figure; its path relative to OUT."""
        ...

    def table(self, plan: Any, measured: Measured) -> list[Row]: ...


def plan_fields(**values: Any) -> dict[str, Any]:
    """Plan fields from command-line options: unset (None) ones left out, lists made sorted
    tuples (plans are frozen and hashable; the order of a grid is never meaningful)."""
    return {
        k: tuple(sorted(v)) if isinstance(v, list) else v
        for k, v in values.items()
        if v is not None
    }


def require_values(*options: tuple[str, Sequence[Any]]) -> None:
    """Raise ValueError naming the first (option, values) pair whose list is empty: a plan built
    in code can hold one, though the command line refuses it."""
    for option, values in options:
        if not values:
            raise ValueError(f"{option} needs at least one value")


def registered_rows(judgement: Optional[rules.Judgement]) -> list[Row]:
    """Table rows for the finding's registered statistics: estimate with interval, and claim."""
    if judgement is None:
        return []
    reg = rules.REGISTRATIONS[judgement.finding]

    def text(e: Optional[Any]) -> str:
        return "—" if e is None else e.text()

    rows: list[Row] = [
        (f"{reg.primary.description} (primary)", text(judgement.primary), reg.primary.region.text())
    ]
    rows += [
        (s.description, text(judgement.secondary.get(s.key)), s.region.text())
        for s in reg.secondary
    ]
    return rows


def resolve(study: Study, args: argparse.Namespace, default_plan: Any) -> Any:
    plan = dataclasses.replace(default_plan, **study.overrides(args))
    study.check(plan)
    return plan


def plan_from_dict(plan_type: type, data: dict[str, Any]) -> Any:
    """The plan saved by `dataclasses.asdict` (JSON turns tuples into lists)."""
    hints = typing.get_type_hints(plan_type)
    values = {}
    for f in dataclasses.fields(plan_type):
        if f.name not in data:
            continue
        value = data[f.name]
        if typing.get_origin(hints[f.name]) is tuple and isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return plan_type(**values)


def registration_text(reg: rules.Registration) -> str:
    second = "; ".join(f"{s.description} {s.region.text()}" for s in reg.secondary)
    text = (
        f"primary: {reg.primary.description}, claim {reg.primary.region.text()}; reproduced if "
        f"its {rules.LEVEL:.0%} interval lies inside, not reproduced if wholly outside, else "
        f"inconclusive. Secondary (reported, not deciding): {second}. Registered plan: "
        f"{reg.seeds} seeds; pilot: {reg.power_note}."
    )
    if not reg.decidable:
        text += " Registered as undecidable at this scale before its runs."
    return text


def analyze(study: Study, plan: Any, ctx: Context) -> Section:
    measured = study.measure(plan, ctx)
    figure = study.draw(plan, ctx, measured)
    judgement = measured.judgement
    if judgement is None:
        verdict = rules.Verdict("analysis", "beyond the paper: no claim to judge")
        rule = "no verdict: an analysis the paper does not make."
    else:
        verdict = judgement.verdict
        rule = registration_text(rules.REGISTRATIONS[judgement.finding])
    notes = list(measured.notes)
    if judgement is not None:
        notes += [
            f"Secondary — {v.outcome}: {v.reason}" for v in judgement.secondary_verdicts.values()
        ]
    numbers = dict(measured.numbers)
    if judgement is not None:
        numbers["primary"] = (
            None if judgement.primary is None else dataclasses.asdict(judgement.primary)
        )
        numbers["secondary"] = {
            k: None if e is None else dataclasses.asdict(e) for k, e in judgement.secondary.items()
        }
    return study_section(
        study.name,
        study.title,
        study.claim,
        measured.results,
        missing=measured.missing,
        verdict=verdict,
        rule=rule,
        table=study.table(plan, measured),
        figure=figure,
        notes=notes,
        numbers=numbers,
    )


def run_results(results: list[Optional[RunResult]]) -> list[RunResult]:
    return [r for r in results if r is not None]
