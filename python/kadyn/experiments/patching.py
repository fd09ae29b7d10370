"""Study `patching`: do recall circuits form during the plateau? Attention patching (finding 3).

Stage 1 trains a reference run and snapshots its weights at every evaluation. Stage 2 trains fresh
twin models (another seed) whose softmax attention patterns are, in every layer, those of one
reference snapshot run on the very same batch: the model's replaceable-attention path
(`attention_override`) with the patterns detached, so no gradient reaches the twin's queries and
keys, and a fresh optimizer since the twin starts at step 0. The snapshots are chosen from the
reference's detected phases: untrained (step 0), plateau start, mid-plateau, late plateau, after
the plateau. An unpatched twin is the comparison. The paper: post-plateau patterns remove the
plateau; the earliest trained patterns are worse than untrained ones.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Optional

import numpy as np

from kadyn.experiments import fit as fitting
from kadyn.experiments import options
from kadyn.experiments.report import Section, new_figure, save_study_figure, study_section
from kadyn.experiments.runner import Context, RunResult, RunSpec, snapshot_path
from kadyn.experiments.scales import Scale

NAME = "patching"
TITLE = "Attention patching"
CLAIM = (
    "a model trained with the attention patterns of a post-plateau checkpoint has no plateau; "
    "later-in-plateau patterns help more; patterns from early in training are worse than "
    "untrained ones."
)
SOURCES = ("init", "early", "mid", "late", "post")
# Where in the reference's plateau each source sits (fraction of its length from the start).
PLATEAU_FRACTION = {"early": 0.0, "mid": 0.5, "late": 0.85}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--individuals", type=options.size, help="N of the reference and twins")
    parser.add_argument(
        "--steps", type=options.steps, help="lr schedule length of the reference and twins"
    )
    parser.add_argument("--seed", type=options.seed, help="seed of the reference (twins: +1)")


def resolve(args: argparse.Namespace, scale: Scale) -> dict[str, Any]:
    plan = scale.patching
    steps = args.steps or plan.steps
    return {
        "individuals": args.individuals or plan.individuals,
        "steps": steps,
        "after_knowledge": plan.after_knowledge,
        "eval_every": min(plan.eval_every, max(1, steps // 4)),
        "seed": plan.seed if args.seed is None else args.seed,
        "sources": list(plan.sources),
        "eval_cap": scale.eval_cap,
    }


def _common(opts: dict[str, Any]) -> dict[str, Any]:
    return {
        "individuals": opts["individuals"],
        "steps": opts["steps"],
        "eval_every": opts["eval_every"],
        "checkpoint_every": opts["eval_every"] * 5,
        "eval_individuals": min(opts["individuals"], opts["eval_cap"]),
        "world_seed": opts["seed"],
    }


def reference_spec(opts: dict[str, Any], ctx: Context) -> RunSpec:
    return ctx.spec(
        NAME,
        f"reference-n{opts['individuals']}-s{opts['seed']}",
        snapshot_models=True,
        stop_after_knowledge=opts["after_knowledge"],
        seed=opts["seed"],
        **_common(opts),
    )


def source_steps(reference: RunResult, sources: list[str]) -> dict[str, int]:
    """The reference's evaluated step behind each source, from its detected phases."""
    steps = [int(r["step"]) for r in reference.records]
    last = steps[-1]
    start = reference.summary.get("plateau_start")
    end = reference.summary.get("plateau_end")
    start = int(start) if start is not None else last // 4
    end = int(end) if end is not None else last
    targets = {"init": 0, "post": min(last, end + max(1, (end - start) // 2))}
    for name, fraction in PLATEAU_FRACTION.items():
        targets[name] = start + round(fraction * (end - start))

    def snap(target: int) -> int:  # the first evaluated step at or after the target
        return next((s for s in steps if s >= target), last)

    return {name: snap(targets[name]) for name in sources}


def twin_specs(opts: dict[str, Any], ctx: Context, reference: RunResult) -> list[RunSpec]:
    ref = reference_spec(opts, ctx)
    # Twins train as long as the reference did, on the same lr schedule.
    stop = int(reference.records[-1]["step"])
    twins = [
        ctx.spec(
            NAME,
            "twin-none",
            meta={"source": "none"},
            stop_at_step=stop,
            seed=opts["seed"] + 1,
            **_common(opts),
        )
    ]
    for name, step in source_steps(reference, opts["sources"]).items():
        path = snapshot_path(ref.run_dir(ctx.out), step).relative_to(ctx.out)
        twins.append(
            ctx.spec(
                NAME,
                f"twin-{name}-step{step}",
                patch_checkpoint=str(path),
                stop_at_step=stop,
                meta={"source": name, "source_step": step},
                seed=opts["seed"] + 1,
                **_common(opts),
            )
        )
    return twins


def execute(opts: dict[str, Any], ctx: Context) -> None:
    reference = ctx.run([reference_spec(opts, ctx)], f"{NAME} (reference)")[0]
    ctx.run(twin_specs(opts, ctx, reference), NAME)


def knowledge_step(result: RunResult) -> float:
    end = result.summary.get("plateau_end")
    return math.inf if end is None else float(end)


def analyze(opts: dict[str, Any], ctx: Context) -> Section:
    ref_spec = reference_spec(opts, ctx)
    reference = ctx.load([ref_spec])[0]
    twins: list[RunSpec] = twin_specs(opts, ctx, reference) if reference is not None else []
    results = ctx.load(twins)
    done = {s.meta["source"]: (s, r) for s, r in zip(twins, results) if r is not None}
    stats = fitting.PatchingStats(
        knowledge_step={k: knowledge_step(r) for k, (_, r) in done.items()},
        mean_loss={k: float(np.mean(r.series("eval/attr_loss")[1])) for k, (_, r) in done.items()},
    )
    verdict = fitting.patching_verdict(stats)

    fig = new_figure(ncols=2)
    ax_twins, ax_ref = fig.subplots(1, 2)
    order = ["none"] + [s for s in SOURCES if s in done]
    for i, name in enumerate(k for k in order if k in done):
        spec, result = done[name]
        steps, losses = result.series("eval/attr_loss")
        base = result.summary["level"]
        label = (
            "no patching" if name == "none" else f"{name} (ref. step {spec.meta['source_step']})"
        )
        style = "--" if name == "none" else "-"
        colour = "k" if name == "none" else f"C{i}"
        ax_twins.plot(steps, np.array(losses) / base, style, color=colour, label=label)
    ax_twins.axhline(1.0, color="0.3", ls=":", lw=0.8)
    ax_twins.set_xlabel("step")
    ax_twins.set_ylabel("eval attribute loss / baseline")
    ax_twins.set_title("twins with patched attention")
    ax_twins.legend(fontsize=7)
    if reference is not None:
        steps, losses = reference.series("eval/attr_loss")
        ax_ref.plot(steps, np.array(losses) / reference.summary["level"], color="k")
        for i, name in enumerate(k for k in order if k in done and k != "none"):
            ax_ref.axvline(
                done[name][0].meta["source_step"], color=f"C{i + 1}", ls="--", label=name
            )
        ax_ref.axhline(1.0, color="0.3", ls=":", lw=0.8)
        ax_ref.legend(fontsize=7)
    ax_ref.set_xlabel("step")
    ax_ref.set_ylabel("eval attribute loss / baseline")
    ax_ref.set_title("reference run and the patched-in checkpoints")
    figure = save_study_figure(fig, ctx.out, NAME)

    def fmt_step(v: Optional[float]) -> str:
        return "never" if v is None or math.isinf(v) else f"{v:.0f}"

    table = []
    if reference is not None:
        table.append(
            (
                "reference plateau (start → end)",
                f"{reference.summary.get('plateau_start')} → {reference.summary.get('plateau_end')}",
                "—",
            )
        )
    for name in order:
        if name in done:
            spec, _ = done[name]
            where = "" if name == "none" else f" (ref. step {spec.meta['source_step']})"
            table.append(
                (
                    f"{name}{where}: knowledge at step / mean loss",
                    f"{fmt_step(stats.knowledge_step[name])} / {stats.mean_loss[name]:.3f}",
                    {
                        "none": "plateau",
                        "post": "no plateau",
                        "early": "worse than untrained",
                        "init": "—",
                    }.get(name, "helps more later"),
                )
            )
    return study_section(
        NAME,
        TITLE,
        CLAIM,
        [reference] + results,
        verdict=verdict,
        rule=(
            "reproduced if the twin with post-plateau patterns reaches knowledge (loss < 90% of "
            "the baseline) before the unpatched twin, and the twin with plateau-start patterns "
            "has a higher mean eval loss than the one with untrained (step 0) patterns; not "
            "reproduced if post-plateau patterns do not speed knowledge up; else inconclusive."
        ),
        table=table,
        figure=figure,
        notes=[
            "All layers are patched; twins use seed + 1 so they do not start as the reference.",
            "`early` is the reference's plateau start, the analogue of the paper's steps 500–1k.",
        ],
        # without the reference, the twins are not even planned yet: count them as missing
        missing=len(opts["sources"]) + 1 if reference is None else 0,
    )
