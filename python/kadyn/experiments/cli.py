"""`kadyn-exp`: run the studies that redraw the paper's findings, and write `report.md`.

    kadyn-exp plateau --individuals 250,500,1000,2000,4000 --seeds 0,1,2
    kadyn-exp alpha --alphas 0,0.2,0.4,0.6,0.8,1 --steps 300,600
    kadyn-exp warmup | hallucination | finetune --replay 0,0.125,0.5,1 | patching | analyses
    kadyn-exp all --scale cpu --out /tmp/kadyn-exp     # every study, then the report
    kadyn-exp report --out /tmp/kadyn-exp              # rebuild report.md/.json from cached runs
    kadyn-exp pilot --out /tmp/pilot                   # seed spread on the pilot seeds, power

Every study writes OUT/<study>/study.json (its resolved plan and the scale's trainer settings)
beside its runs, so `report` can re-analyse any study from disk alone; the report always holds a
section for every study found under OUT, and report.json the same numbers with the rules' hash.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from kadyn.cli import add_version_flag
from kadyn.config import OneLineParser
from kadyn.experiments import (
    alpha,
    analyses,
    finetune,
    fit,
    hallucination,
    options,
    patching,
    plateau,
    report,
    rules,
    warmup,
)
from kadyn.experiments.runner import Context, RunFailed, cpu_count
from kadyn.experiments.scales import SCALES, get_scale, pilot_plan
from kadyn.experiments.study import Study, analyze, plan_from_dict, resolve
from kadyn.fileio import atomic_write_text

PROG = "kadyn-exp"
# Run order of `all`: warmup after alpha, whose runs it reuses.
STUDIES: dict[str, Study] = {
    s.name: s
    for s in (
        plateau.STUDY,
        alpha.STUDY,
        warmup.STUDY,
        hallucination.STUDY,
        finetune.STUDY,
        patching.STUDY,
        analyses.STUDY,
    )
}
SUITE_FILE = "suite.json"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", choices=SCALES, default="cpu", help="size preset (default cpu)")
    parser.add_argument("--out", default="runs/exp", help="output directory (default runs/exp)")
    parser.add_argument(
        "--jobs",
        type=options.int_range(1, 256),
        help="runs trained in parallel (default: cores // threads per run; 1 on gpu)",
    )
    parser.add_argument(
        "--threads",
        type=options.int_range(1, 256),
        help="torch threads per run (default: the scale's, else cores // jobs)",
    )
    stack = parser.add_mutually_exclusive_group()
    stack.add_argument(
        "--stack",
        type=options.int_range(1, 64),
        help="train up to this many runs of one model shape as one stacked model per worker "
        "(kadyn.stacked; default: the scale's, 1 on smoke and cpu, 4 on gpu)",
    )
    stack.add_argument(
        "--no-stack",
        dest="stack",
        action="store_const",
        const=1,
        help="train every run alone (its solo numbers bit for bit; same as --stack 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser: argparse.ArgumentParser = OneLineParser(
        prog=PROG,
        description="Redraw the findings of Zucchet et al. (2025) with kadyn; write report.md.",
    )
    add_version_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    studies: dict[str, argparse.ArgumentParser] = {}
    for name, study in STUDIES.items():
        p = sub.add_parser(name, help=study.title, description=f"Paper: {study.claim}")
        _add_common(p)
        study.add_arguments(p)
        studies[name] = p
    _add_common(sub.add_parser("all", help="run every study, then write the report"))
    p_pilot = sub.add_parser(
        "pilot",
        help="run every finding's plan on the pilot seeds; print the spread and the seeds a "
        "conclusive verdict needs (the power analysis behind rules.py's registrations)",
    )
    _add_common(p_pilot)
    p_pilot.add_argument(
        "--studies", nargs="+", choices=list(rules.REGISTRATIONS), help="default: every finding"
    )
    p_report = sub.add_parser("report", help="rebuild report.md from the runs under --out")
    p_report.add_argument("--out", default="runs/exp", help="output directory (default runs/exp)")
    return parser, studies


def _context(out: Path, scale_name: str, args: argparse.Namespace) -> Context:
    scale = get_scale(scale_name)
    cores = cpu_count()
    if scale.name == "gpu":
        default_jobs = 1  # one accelerator: runs would only queue on it
    else:
        # Cores split between runs: 2 one-thread runs on 2 cores (the cpu scale's threads) beat
        # 1 two-thread run for models this small, and never oversubscribe the cores.
        default_jobs = max(1, cores // (args.threads or scale.threads_per_run or 2))
    jobs = args.jobs or default_jobs
    return Context(
        out=out,
        preset=scale.preset,
        base=dict(scale.base),
        jobs=jobs,
        threads=args.threads or scale.threads_per_run,
        progress=not args.no_progress,
        stack=args.stack or scale.stack,
    )


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def run_study(
    study: Study, args: argparse.Namespace, out: Path, plan: Optional[Any] = None
) -> list[str]:
    """Resolve the plan (unless given), record it, train what is missing; returns failures."""
    scale = get_scale(args.scale)
    plan = plan or resolve(study, args, scale.plan(study.name))
    ctx = _context(out, args.scale, args)
    study_file = out / study.name / report.STUDY_FILE
    previous = report.read_study_file(out / study.name)
    info: dict[str, Any] = {
        "study": study.name,
        "scale": scale.name,
        "preset": ctx.preset,
        "base": ctx.base,
        "plan": dataclasses.asdict(plan),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_s": None,
    }
    _write_json(study_file, info)
    t0 = time.perf_counter()
    failures = []
    try:
        study.execute(plan, ctx)
    except RunFailed as e:
        failures.append(f"{study.name}: {e}")
    info["wall_s"] = time.perf_counter() - t0
    if ctx.trained == 0 and previous and previous.get("plan") == info["plan"]:
        # Everything was cached: keep the wall time of the call that trained the runs.
        info["wall_s"], info["started"] = previous.get("wall_s"), previous.get("started")
    _write_json(study_file, info)
    return failures


def analyze_study(study: Study, out: Path) -> Optional[report.Section]:
    """Re-analyse a study from its study.json and cached runs; keep the section beside it."""
    info = report.read_study_file(out / study.name)
    if info is None or "plan" not in info:  # absent, or written by the first edition
        return None
    ctx = Context(out=out, preset=info["preset"], base=info["base"], progress=False)
    section = analyze(study, plan_from_dict(study.plan_type, info["plan"]), ctx)
    section.study_wall_s = info.get("wall_s")
    report.save_section(section, out / study.name)
    return section


def write_report(out: Path, reanalyze: Sequence[str]) -> Optional[Path]:
    """report.md (and report.json) from every study under OUT: those in `reanalyze` are
    analysed afresh (figure included), the others reuse their saved section. None if OUT holds
    no study."""
    sections = []
    scales = set()
    for name, study in STUDIES.items():
        if name in reanalyze:
            section = analyze_study(study, out)
        else:
            section = report.load_section(out / name) or analyze_study(study, out)
        if section is None:
            continue
        sections.append(section)
        info = report.read_study_file(out / name)
        if info is not None:
            scales.add(info["scale"])
    if not sections:
        return None
    suite = out / SUITE_FILE
    header: dict[str, Any] = {"scales": scales}
    if suite.exists():
        header["suite_wall_s"] = json.loads(suite.read_text()).get("wall_s")
    return report.write_report(out, sections, header)


def run_independent(args: argparse.Namespace, out: Path) -> list[str]:
    """`all`'s first pass: the runs of every study that depend on no other run, in one pool and
    longest first, so that no core idles between studies (each study then finds them cached)."""
    scale = get_scale(args.scale)
    ctx = _context(out, args.scale, args)
    specs = {
        spec.key(): spec
        for name, study in STUDIES.items()
        for spec in study.specs(scale.plan(name), ctx)
    }
    try:
        ctx.run(list(specs.values()), "independent runs")
    except RunFailed as e:
        return [f"independent runs: {e}"]
    return []


def pilot(args: argparse.Namespace, out: Path) -> tuple[list[str], Path]:
    """Each finding's plan on `rules.PILOT_SEEDS`, then the power analysis: the seeds that make
    its verdict conclusive with 80% probability if the truth is the pilot's value, or the
    paper's (the centre of a two-sided claim). Writes OUT/pilot.json and prints a table."""
    scale = get_scale(args.scale)
    failures: list[str] = []
    rows = {}
    for name in args.studies or list(rules.REGISTRATIONS):
        study, reg = STUDIES[name], rules.REGISTRATIONS[name]
        plan = pilot_plan(scale, name)
        failures += run_study(study, args, out, plan)
        section = analyze_study(study, out)
        primary = None if section is None else section.numbers.get("primary")
        row: dict[str, Any] = {"primary": primary, "pilot_seeds": list(rules.PILOT_SEEDS)}
        if primary is not None:
            estimate = fit.Estimate(
                primary["value"], tuple(primary["ci"]), primary["n"], primary["method"]
            )
            region = reg.primary.region
            se, _ = fit.standard_error(estimate, rules.LEVEL)
            row["se"] = se
            row["sd_per_seed"] = se * (len(rules.PILOT_SEEDS) ** 0.5)
            k = len(rules.PILOT_SEEDS)
            row["seeds_if_truth_is_pilot"] = fit.seeds_for(
                estimate, k, region.distance_to_edge(estimate.value), level=rules.LEVEL
            )
            if all(map(math.isfinite, (region.lo, region.hi))):
                row["seeds_if_truth_is_paper"] = fit.seeds_for(
                    estimate, k, (region.hi - region.lo) / 2, level=rules.LEVEL
                )
        rows[name] = row
        print(f"{name}: {json.dumps(row)}")
    path = out / "pilot.json"
    _write_json(path, rows)
    return failures, path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser, study_parsers = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    failures: list[str] = []
    try:
        if args.command == "report":
            path = write_report(out, reanalyze=list(STUDIES))
            if path is None:
                print(
                    f"{PROG}: error: --out {out} holds no study (no */study.json)", file=sys.stderr
                )
                return 2
            print(f"wrote {path}")
            return 0
        if args.command == "pilot":
            failures, path = pilot(args, out)
        elif args.command == "all":
            t0 = time.perf_counter()
            common = ["--scale", args.scale, "--out", str(out)]
            failures += run_independent(args, out)
            for name, study in STUDIES.items():
                # Each study's own defaults (its scale plan), plus the shared options.
                study_args = study_parsers[name].parse_args(common)
                study_args.jobs, study_args.threads = args.jobs, args.threads
                study_args.stack = args.stack
                study_args.no_progress = args.no_progress
                failures += run_study(study, study_args, out)
                write_report(out, reanalyze=[name])  # a readable report after every study
            _write_json(out / SUITE_FILE, {"scale": args.scale, "wall_s": time.perf_counter() - t0})
            path = write_report(out, reanalyze=[])
        else:
            failures += run_study(STUDIES[args.command], args, out)
            path = write_report(out, reanalyze=[args.command])
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if path is not None:
        print(f"wrote {path}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
