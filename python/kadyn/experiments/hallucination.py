"""Study `hallucination`: held-out individuals' loss and confidence as knowledge appears (finding 6).

One run (per seed) with a held-out population that is never trained on. The trainer probes the
eval templates of trained individuals and of held-out ones at every evaluation, with the mean top-1
probability on value tokens as the confidence. The paper: shortly after the plateau, held-out loss
rises above the no-knowledge baseline (confident wrong answers), with confidence lower than on
known individuals but still high.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import numpy as np

from kadyn.experiments import fit as fitting
from kadyn.experiments import options
from kadyn.experiments.report import Section, new_figure, save_study_figure, study_section
from kadyn.experiments.runner import Context, RunResult, RunSpec
from kadyn.experiments.scales import Scale

NAME = "hallucination"
TITLE = "Hallucinations on held-out individuals"
CLAIM = (
    "once knowledge appears, held-out individuals' attribute loss rises above the no-knowledge "
    "baseline (over-confident wrong answers), with confidence lower than on known individuals "
    "but still high."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--individuals", type=options.size, help="N (trained individuals)")
    parser.add_argument("--heldout", type=options.size, help="held-out individuals probed")
    parser.add_argument("--steps", type=options.steps, help="steps of the run")
    parser.add_argument("--seeds", type=options.seeds, help="list of seeds")


def resolve(args: argparse.Namespace, scale: Scale) -> dict[str, Any]:
    plan = scale.hallucination
    steps = args.steps or plan.steps
    return {
        "individuals": args.individuals or plan.individuals,
        "heldout": args.heldout or plan.heldout,
        "steps": steps,
        "seeds": list(args.seeds if args.seeds is not None else plan.seeds),
        "eval_every": min(plan.eval_every, max(1, steps // 4)),
        "eval_cap": scale.eval_cap,
    }


def specs(opts: dict[str, Any], ctx: Context) -> list[RunSpec]:
    cap = max(opts["eval_cap"], opts["heldout"])
    return [
        ctx.spec(
            NAME,
            f"n{opts['individuals']}-h{opts['heldout']}-s{seed}",
            meta={"seed": seed},
            individuals=opts["individuals"],
            heldout=opts["heldout"],
            steps=opts["steps"],
            seed=seed,
            world_seed=seed,
            eval_every=opts["eval_every"],
            checkpoint_every=opts["eval_every"] * 5,
            eval_individuals=min(cap, max(opts["individuals"], opts["heldout"])),
        )
        for seed in opts["seeds"]
    ]


def execute(opts: dict[str, Any], ctx: Context) -> None:
    ctx.run(specs(opts, ctx), NAME)


def stats(result: RunResult) -> fitting.HallucinationStats:
    records = result.records
    baseline = float(result.summary["level"])
    start = result.summary.get("plateau_start")
    end = result.summary.get("plateau_end")
    at_start = next((r for r in records if start is not None and r["step"] >= start), records[0])
    tail = records[-max(1, len(records) // 4) :]  # the last quarter of evals
    return fitting.HallucinationStats(
        baseline=baseline,
        knowledge_step=end,
        heldout_final=float(np.mean([r["heldout/attr_loss"] for r in tail])),
        heldout_plateau=float(at_start["heldout/attr_loss"]),
        confidence_heldout=float(records[-1]["heldout/confidence"]),
        confidence_known=float(records[-1]["eval/confidence"]),
        confidence_heldout_plateau=float(at_start["heldout/confidence"]),
    )


def analyze(opts: dict[str, Any], ctx: Context) -> Section:
    runs = specs(opts, ctx)
    results = ctx.load(runs)
    first: Optional[RunResult] = next((r for r in results if r is not None), None)
    if first is None:
        verdict = fitting.Verdict(fitting.INCONCLUSIVE, "no finished run")
        s = None
    else:
        s = stats(first)
        verdict = fitting.hallucination_verdict(s)

    fig = new_figure(ncols=2)
    ax_loss, ax_conf = fig.subplots(1, 2)
    for i, result in enumerate(r for r in results if r is not None):
        # The first seed in full colour and labelled; the others faint.
        for ax, key, color, label in (
            (ax_loss, "eval/attr_loss", "C0", "trained individuals"),
            (ax_loss, "heldout/attr_loss", "C3", "held-out individuals"),
            (ax_conf, "eval/confidence", "C0", "trained individuals"),
            (ax_conf, "heldout/confidence", "C3", "held-out individuals"),
        ):
            ax.plot(
                *result.series(key),
                color=color,
                alpha=1.0 if i == 0 else 0.35,
                label=label if i == 0 else None,
            )
    if first is not None:
        ax_loss.axhline(first.summary["level"], color="0.3", ls=":", label="no-knowledge baseline")
        for ax in (ax_loss, ax_conf):
            for key, style in (("plateau_start", "--"), ("plateau_end", "-")):
                if first.summary.get(key) is not None:
                    ax.axvline(first.summary[key], color="0.6", ls=style, lw=0.8)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("eval attribute loss (nats per value)")
    ax_loss.set_title("loss: trained vs held-out individuals")
    ax_loss.legend(fontsize=7)
    ax_conf.set_xlabel("step")
    ax_conf.set_ylabel("confidence (mean top-1 probability on values)")
    ax_conf.set_title("confidence (plateau start -- / end —)")
    ax_conf.legend(fontsize=7)
    figure = save_study_figure(fig, ctx.out, NAME)

    table = []
    if s is not None:
        table = [
            (
                "held-out loss − baseline (last quarter)",
                f"{s.excess:+.3f} nats ({s.excess / s.baseline:+.1%})",
                "> 0 after the plateau",
            ),
            ("held-out loss rise since plateau start", f"{s.rise:+.3f} nats", "rises"),
            ("no-knowledge baseline", f"{s.baseline:.3f} nats", "6.78 (paper's pools)"),
            (
                "confidence held-out / known (final)",
                f"{s.confidence_heldout:.3f} / {s.confidence_known:.3f}",
                "lower, still high",
            ),
            ("held-out confidence at plateau start", f"{s.confidence_heldout_plateau:.3f}", "—"),
            ("knowledge emerges at step", str(s.knowledge_step), "—"),
        ]
    return study_section(
        NAME,
        TITLE,
        CLAIM,
        results,
        verdict=verdict,
        rule=(
            f"reproduced if, after knowledge emerged, held-out loss exceeds both the baseline and "
            f"its own plateau level by more than {fitting.HALLUCINATION_MARGIN:.0%} of the "
            "baseline, and held-out confidence lies between its plateau level and the known "
            "individuals'; not reproduced if held-out loss does not exceed both; else "
            "inconclusive. Numbers from the first seed."
        ),
        table=table,
        figure=figure,
        notes=[
            "The baseline is the trained population's empirical value entropy; at small N the "
            "held-out population's values are not predicted that well even with no knowledge, "
            "hence the second comparison against the held-out loss at the plateau start.",
        ],
    )
