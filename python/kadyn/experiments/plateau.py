"""Study `plateau`: plateau length against the number of individuals N (paper finding 2).

One constant-lr run per (N, seed), capped at `max_steps` and stopped at the knowledge onset (nothing
after it enters the measurement), evaluated every N // eval_divisor steps so that every plateau is
resolved by a similar number of evals. Per run: the plateau length (`phases.plateau_length`) and
the knowledge onset; `rules.judge_plateau` fits both as c · N^β and decides on β of the length.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import numpy as np
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from kadyn import phases
from kadyn.experiments import fit, options, rules, study
from kadyn.experiments.report import new_figure, save_study_figure
from kadyn.experiments.runner import Context, RunResult, RunSpec
from kadyn.experiments.scales import PlateauPlan

NAME = "plateau"
MIN_PLATEAU_EVALS = 20  # fewer evals resolve the plateau's ends too coarsely for a slope


def eval_every(plan: PlateauPlan, n: int) -> int:
    # Evals scale with N, so each plateau (≈ linear in N) gets a similar number of points.
    return max(1, n // plan.eval_divisor)


def plateau_evals(result: RunResult) -> int:
    """Evals inside the detected plateau [start, end). Counted by step, not by the records'
    "phase" field: that label is causal, so the first evals of a plateau were written as
    statistics before the plateau was confirmed."""
    start, end = result.summary.get("plateau_start"), result.summary.get("plateau_end")
    if start is None or end is None:
        return 0
    return sum(start <= r["step"] < end for r in result.records)


def _fit(points: list[tuple[int, float]]) -> Optional[fit.PowerLawFit]:
    usable = [(n, v) for n, v in points if v is not None and v > 0]
    if len({n for n, _ in usable}) < 2:
        return None
    ns, vs = zip(*usable)
    return fit.fit_power_law(ns, vs, level=rules.LEVEL)


def _fit_numbers(f: Optional[fit.PowerLawFit]) -> Optional[dict[str, Any]]:
    if f is None:
        return None
    return {"c": f.c, "beta": f.beta, "beta_ci": list(f.beta_ci), "r2": f.r2, "points": f.n_points}


def _mean(values: list[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


class PlateauStudy:
    name = NAME
    title = "Plateau length vs N"
    claim = (
        "the plateau grows almost linearly with the number of individuals: plateau ≈ "
        f"{rules.PAPER_C} · N^{rules.PAPER_BETA} steps (N = 4k–256k, R² ≈ 0.998)."
    )
    plan_type = PlateauPlan

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--individuals", type=options.sizes, help="list of N, e.g. 256,512")
        parser.add_argument("--seeds", type=options.seeds, help="list of seeds, e.g. 0,1,2")
        parser.add_argument("--max-steps", type=options.steps, help="step cap of every run")

    def overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        return study.plan_fields(
            individuals=args.individuals, seeds=args.seeds, max_steps=args.max_steps
        )

    def check(self, plan: PlateauPlan) -> None:
        study.require_values(("--individuals", plan.individuals), ("--seeds", plan.seeds))

    def specs(self, plan: PlateauPlan, ctx: Context) -> list[RunSpec]:
        return [
            ctx.spec(
                NAME,
                f"n{n}-s{seed}",
                n=n,
                seed=seed,
                eval_every=eval_every(plan, n),
                stop_after_knowledge=0,
                meta={"n": n, "seed": seed},
                steps=plan.max_steps,
                eval_individuals=min(n, plan.eval_individuals),
            )
            for n in plan.individuals
            for seed in plan.seeds
        ]

    def execute(self, plan: PlateauPlan, ctx: Context) -> None:
        ctx.run(self.specs(plan, ctx), NAME)

    def measure(self, plan: PlateauPlan, ctx: Context) -> study.Measured:
        specs = self.specs(plan, ctx)
        results = ctx.load(specs)
        runs: list[rules.PlateauRun] = []
        evals: dict[str, int] = {}
        for spec, result in zip(specs, results):
            if result is None:
                continue
            s = result.summary
            n, seed = spec.meta["n"], spec.meta["seed"]
            length = phases.plateau_length(s.get("plateau_start"), s.get("plateau_end"))
            runs.append(rules.PlateauRun(n, seed, length=length, onset=s.get("knowledge_onset")))
            evals[spec.name] = plateau_evals(result)
        length_fit = _fit([(r.n, r.length) for r in runs])  # type: ignore[misc]
        onset_fit = _fit([(r.n, r.onset) for r in runs])  # type: ignore[misc]
        per_n = {}
        for n in plan.individuals:
            here = [r for r in runs if r.n == n]
            lengths = [r.length for r in here if r.length is not None]
            onsets = [r.onset for r in here if r.onset is not None]
            per_n[str(n)] = {
                "lengths": lengths,
                "length_mean": _mean(lengths),
                "onsets": onsets,
                "onset_mean": _mean(onsets),
            }
        notes = [
            "Plateau = steps from entering the no-knowledge band to the knowledge onset "
            "(`kadyn.phases`, the one definition); a run stops at the onset.",
            "The model, pools and N are far smaller than the paper's, so c is not comparable; "
            "β is.",
        ]
        no_plateau = [r for r in runs if r.length is None]
        if no_plateau:
            notes.append(
                f"{len(no_plateau)} run(s) reached knowledge without a detected plateau "
                "(left out of the length fit, kept in the onset fit)."
            )
        starts = {
            n: _mean([r.onset - r.length for r in runs if r.n == n and r.length is not None])  # type: ignore[operator]
            for n in plan.individuals
        }
        if any(v is not None for v in starts.values()):
            # Why length and onset scale differently: the plateau is the onset minus the
            # statistics phase, whose length barely depends on N.
            notes.append(
                "Plateau start (mean over seeds): "
                + ", ".join(f"N={n}: {v:.0f}" for n, v in starts.items() if v is not None)
                + ". The plateau starts at a few hundred steps at every N, while the onset grows "
                "with N: at small N the plateau is a short remainder between the two, which "
                "steepens the slope of its length beside that of the onset."
            )
        coarse = sorted(name for name, k in evals.items() if 0 < k < MIN_PLATEAU_EVALS)
        if coarse:
            notes.append(
                f"{len(coarse)} run(s) had fewer than {MIN_PLATEAU_EVALS} evals inside the "
                f"plateau: {', '.join(coarse)}."
            )
        return study.Measured(
            judgement=rules.judge_plateau(runs),
            results=results,
            numbers={
                "per_n": per_n,
                "plateau_evals": evals,
                "fit_length": _fit_numbers(length_fit),
                "fit_onset": _fit_numbers(onset_fit),
            },
            notes=notes,
            extra={"specs": specs, "runs": runs, "fits": (length_fit, onset_fit)},
        )

    def draw(self, plan: PlateauPlan, ctx: Context, measured: study.Measured) -> Optional[str]:
        fig = new_figure(ncols=2)
        ax_fit, ax_curves = fig.subplots(1, 2)
        runs: list[rules.PlateauRun] = measured.extra["runs"]
        grid = np.geomspace(min(plan.individuals), max(plan.individuals), 50)
        for key, color, label, f in (
            ("length", "C0", "plateau length", measured.extra["fits"][0]),
            ("onset", "C1", "knowledge onset", measured.extra["fits"][1]),
        ):
            points = [(r.n, getattr(r, key)) for r in runs if (getattr(r, key) or 0) > 0]
            if points:
                ax_fit.scatter(*zip(*points), s=18, color=color, label=f"{label} (runs)", zorder=3)
            if f is not None:
                ax_fit.plot(
                    grid, f.predict(grid), color=color, label=f"fit {f.c:.3g}·N^{f.beta:.2f}"
                )
        ax_fit.plot(
            grid,
            rules.PAPER_C * grid**rules.PAPER_BETA,
            "--",
            color="0.5",
            label=f"paper {rules.PAPER_C}·N^{rules.PAPER_BETA} (other scale)",
        )
        ax_fit.set_xscale("log")
        ax_fit.set_yscale("log")
        # The sizes actually run, in plain numbers, instead of decades the data never reach.
        ax_fit.set_xticks(list(plan.individuals), [str(n) for n in plan.individuals])
        ax_fit.xaxis.set_minor_formatter(NullFormatter())
        ax_fit.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax_fit.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax_fit.set_xlabel("individuals N")
        ax_fit.set_ylabel("steps")
        ax_fit.set_title("plateau length and knowledge onset vs N")
        ax_fit.legend(fontsize=7)
        seed = plan.seeds[0]
        for i, (spec, result) in enumerate(zip(measured.extra["specs"], measured.results)):
            if result is None or spec.meta["seed"] != seed:
                continue
            steps, losses = result.series("eval/attr_loss")
            _, levels = result.series("no_knowledge/level")
            ratio = np.array(losses) / np.array(levels)
            ax_curves.plot(steps, ratio, color=f"C{i % 10}", label=f"N={spec.meta['n']}")
        ax_curves.axhline(1.0, color="0.3", lw=0.8, ls=":")
        ax_curves.set_xscale("symlog", linthresh=10)
        ax_curves.set_xlim(left=0)
        ax_curves.set_xlabel("step")
        ax_curves.set_ylabel("eval attribute loss / F")
        ax_curves.set_title(f"curves (seed {seed}), stopped at knowledge")
        if ax_curves.lines[1:]:
            ax_curves.legend(fontsize=7)
        return save_study_figure(fig, ctx.out, NAME)

    def table(self, plan: PlateauPlan, measured: study.Measured) -> list[study.Row]:
        rows = study.registered_rows(measured.judgement)
        length_fit, _ = measured.extra["fits"]
        if length_fit is not None:
            rows.append(("prefactor c (length)", f"{length_fit.c:.3g}", "0.43 (other scale)"))
            rows.append(("R² (log-log, length)", f"{length_fit.r2:.3f}", "≈ 0.998"))
        per_n = measured.numbers["per_n"]

        def means(key: str) -> str:
            parts = [f"N={n}: {v[key]:.0f}" for n, v in per_n.items() if v[key] is not None]
            return ", ".join(parts) or "—"

        rows.append(("mean plateau (steps)", means("length_mean"), "—"))
        rows.append(("mean knowledge onset (step)", means("onset_mean"), "—"))
        rows.append(("N range", f"{min(plan.individuals)}–{max(plan.individuals)}", "4k–256k"))
        rows.append(("seeds", str(len(plan.seeds)), "—"))
        return rows


STUDY = PlateauStudy()
