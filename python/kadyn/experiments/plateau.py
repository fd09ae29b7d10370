"""Study `plateau`: plateau length against the number of individuals N (paper finding 2).

One run per (N, seed), all with the same cosine horizon so that only N changes; a run stops as
soon as the trainer's phase detector (`kadyn.phases`) sees knowledge emerge, since nothing after the
plateau's end enters the measurement. The plateau length (end - start) is fitted as c * N^beta on
log-log axes, with a t-based interval on beta and a bootstrap interval over seeds.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import numpy as np
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from kadyn.experiments import fit as fitting
from kadyn.experiments import options
from kadyn.experiments.report import Section, new_figure, save_study_figure, study_section
from kadyn.experiments.runner import Context, RunResult, RunSpec
from kadyn.experiments.scales import Scale

NAME = "plateau"
TITLE = "Plateau length vs N"
CLAIM = (
    "the plateau grows almost linearly with the number of individuals: "
    f"plateau ≈ {fitting.PAPER_C} · N^{fitting.PAPER_BETA} steps (N = 4k–256k, R² ≈ 0.998)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--individuals", type=options.sizes, help="list of N, e.g. 250,500,1000")
    parser.add_argument("--seeds", type=options.seeds, help="list of seeds, e.g. 0,1,2")
    parser.add_argument("--max-steps", type=options.steps, help="cosine horizon of every run")


def resolve(args: argparse.Namespace, scale: Scale) -> dict[str, Any]:
    plan = scale.plateau
    return {
        "individuals": list(args.individuals or plan.individuals),
        "seeds": list(args.seeds if args.seeds is not None else plan.seeds),
        "max_steps": args.max_steps or plan.max_steps,
        "eval_divisor": plan.eval_divisor,
        "min_eval_every": plan.min_eval_every,
        "eval_cap": scale.eval_cap,
    }


def eval_every(n: int, opts: dict[str, Any]) -> int:
    # Evals scale with N so each plateau is resolved by a similar number of points.
    return max(opts["min_eval_every"], n // opts["eval_divisor"])


def specs(opts: dict[str, Any], ctx: Context) -> list[RunSpec]:
    out = []
    for n in opts["individuals"]:
        every = eval_every(n, opts)
        for seed in opts["seeds"]:
            out.append(
                ctx.spec(
                    NAME,
                    f"n{n}-s{seed}",
                    stop_after_knowledge=0,
                    meta={"n": n, "seed": seed},
                    individuals=n,
                    seed=seed,
                    world_seed=seed,
                    steps=opts["max_steps"],
                    eval_every=every,
                    checkpoint_every=every * 5,
                    eval_individuals=min(n, opts["eval_cap"]),
                )
            )
    return out


def execute(opts: dict[str, Any], ctx: Context) -> None:
    ctx.run(specs(opts, ctx), NAME)


def plateau_length(result: RunResult) -> Optional[int]:
    start, end = result.summary.get("plateau_start"), result.summary.get("plateau_end")
    if start is None or end is None:
        return None
    return int(end) - int(start)


def analyze(opts: dict[str, Any], ctx: Context) -> Section:
    runs = specs(opts, ctx)
    results = ctx.load(runs)
    ns, lengths, seeds = [], [], []
    unfinished, zero = 0, 0
    for spec, result in zip(runs, results):
        if result is None:
            continue
        length = plateau_length(result)
        if length is None:
            unfinished += 1
        elif length <= 0:
            zero += 1  # knowledge appeared between two evals: no measurable plateau
        else:
            ns.append(spec.meta["n"])
            lengths.append(length)
            seeds.append(spec.meta["seed"])
    fit: Optional[fitting.PowerLawFit] = None
    if len(set(ns)) >= 2:
        fit = fitting.fit_power_law(ns, lengths, groups=seeds)
    verdict = fitting.plateau_verdict(fit)

    fig = new_figure(ncols=2)
    ax_fit, ax_curves = fig.subplots(1, 2)
    if ns:
        ax_fit.scatter(ns, lengths, s=18, color="C0", label="runs (one per seed)", zorder=3)
        grid = np.geomspace(min(opts["individuals"]), max(opts["individuals"]), 50)
        if fit is not None:
            ax_fit.plot(
                grid,
                fit.predict(grid),
                color="C0",
                label=f"fit {fit.c:.3g}·N^{fit.beta:.2f}",
            )
        ax_fit.plot(
            grid,
            fitting.PAPER_C * grid**fitting.PAPER_BETA,
            "--",
            color="0.5",
            label=f"paper {fitting.PAPER_C}·N^{fitting.PAPER_BETA} (other scale)",
        )
    ax_fit.set_xscale("log")
    ax_fit.set_yscale("log")
    # Label the sizes actually run, in plain numbers, instead of decades the data never reach.
    ax_fit.set_xticks(opts["individuals"], [str(n) for n in opts["individuals"]])
    ax_fit.xaxis.set_minor_formatter(NullFormatter())
    for axis in (ax_fit.yaxis.set_major_formatter, ax_fit.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%g"))
    ax_fit.set_xlabel("individuals N")
    ax_fit.set_ylabel("plateau length (steps)")
    ax_fit.set_title("plateau length vs N")
    if ns:
        ax_fit.legend(fontsize=7)
    else:
        ax_fit.text(0.5, 0.5, "no finished plateau", ha="center", transform=ax_fit.transAxes)
    for i, (spec, result) in enumerate(zip(runs, results)):
        if result is None or spec.meta["seed"] != opts["seeds"][0]:
            continue
        steps, losses = result.series("eval/attr_loss")
        base = result.summary["level"]
        ax_curves.plot(
            steps, np.array(losses) / base, color=f"C{i % 10}", label=f"N={spec.meta['n']}"
        )
    ax_curves.axhline(1.0, color="0.3", lw=0.8, ls=":")
    ax_curves.set_xscale("symlog", linthresh=10)
    ax_curves.set_xlim(left=0)
    ax_curves.set_xlabel("step")
    ax_curves.set_ylabel("eval attribute loss / no-knowledge baseline")
    ax_curves.set_title(f"curves (seed {opts['seeds'][0]}), stopped at knowledge")
    ax_curves.legend(fontsize=7)
    figure = save_study_figure(fig, ctx.out, NAME)

    per_n = {n: float(np.mean([v for m, v in zip(ns, lengths) if m == n])) for n in sorted(set(ns))}
    table = []
    if fit is not None:
        lo, hi = fit.beta_ci
        boot = (
            f"; seed bootstrap [{fit.bootstrap_ci[0]:.2f}, {fit.bootstrap_ci[1]:.2f}]"
            if fit.bootstrap_ci
            else ""
        )
        table += [
            ("exponent β", f"{fit.beta:.3f} (95% t-CI [{lo:.2f}, {hi:.2f}]{boot})", "0.81"),
            ("prefactor c", f"{fit.c:.3g}", "0.43"),
            ("R² (log-log)", f"{fit.r2:.3f}", "≈ 0.998"),
        ]
    table += [
        (
            "mean plateau (steps)",
            ", ".join(f"N={n}: {v:.0f}" for n, v in per_n.items()) or "—",
            "—",
        ),
        ("N range", f"{min(opts['individuals'])}–{max(opts['individuals'])}", "4k–256k"),
        ("seeds", str(len(opts["seeds"])), "5"),
    ]
    notes = [
        "Plateau = steps from the first eval within ±10% of the baseline to the first eval below "
        "90% of it (the trainer's `kadyn.phases` detector); a run stops at that eval.",
        "The model, pools and N are far smaller than the paper's, so c is not comparable; β is.",
    ]
    if unfinished:
        notes.append(
            f"{unfinished} run(s) did not leave the plateau within {opts['max_steps']} steps."
        )
    if zero:
        notes.append(f"{zero} run(s) had no measurable plateau (left out of the fit).")
    return study_section(
        NAME,
        TITLE,
        CLAIM,
        results,
        verdict=verdict,
        rule=(
            f"reproduced if β ∈ [{fitting.BETA_BAND[0]}, {fitting.BETA_BAND[1]}] with its 95% "
            f"t-interval above {fitting.BETA_REFUTED_BELOW}; not reproduced if the interval lies "
            f"outside [{fitting.BETA_REFUTED_BELOW}, {fitting.BETA_REFUTED_ABOVE}]; inconclusive "
            f"otherwise or with fewer than {fitting.MIN_SIZES} sizes."
        ),
        table=table,
        figure=figure,
        notes=notes,
    )
