"""Study `finetune`: fine-tuning on new individuals forgets the old ones; replay (finding 7).

Stage 1 pre-trains on the `train` population (the world also holds the `new` population from the
start, so the vocabulary and the world are the same in both stages). Stage 2 starts one run per
replay weight from the pre-trained checkpoint (`init_checkpoint`: fresh optimizer, step 0), on the
`new` population at a constant small learning rate, with `replay` rows of old biographies per row
of new ones in each batch. The trainer probes old individuals (`old/attr_acc`) and new ones
(`eval/attr_acc`) at every evaluation. The paper: old accuracy collapses in the first hundreds of
steps while new individuals are learned slowly; replay helps later, not at the start.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Optional

from kadyn.experiments import fit as fitting
from kadyn.experiments import options
from kadyn.experiments.report import Section, new_figure, save_study_figure, study_section
from kadyn.experiments.runner import Context, RunResult, RunSpec
from kadyn.experiments.scales import Scale

NAME = "finetune"
TITLE = "Fine-tuning forgets; replay"
CLAIM = (
    "fine-tuning on new individuals (constant small lr) makes old individuals' accuracy collapse "
    "in the first hundreds of steps while new ones are learned slowly; replaying old data helps "
    "later, not at the start."
)
EARLY_FRACTION = 0.1  # the early point: the first eval at >= 10% of the fine-tuning steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replay", type=options.replay, help="replay weights, e.g. 0,0.125,0.5,1")
    parser.add_argument("--individuals", type=options.size, help="N of the pre-training")
    parser.add_argument("--pretrain-steps", type=options.steps, help="pre-training steps")
    parser.add_argument("--new-individuals", type=options.size, help="individuals fine-tuned on")
    parser.add_argument("--steps", type=options.steps, help="fine-tuning steps")
    parser.add_argument("--lr", type=options.learning_rate, help="constant fine-tuning lr")


def resolve(args: argparse.Namespace, scale: Scale) -> dict[str, Any]:
    plan = scale.finetune
    replay = sorted(set([0.0] + list(args.replay if args.replay is not None else plan.replay)))
    steps = args.steps or plan.steps
    pretrain_steps = args.pretrain_steps or plan.pretrain_steps
    return {
        "individuals": args.individuals or plan.individuals,
        "pretrain_steps": pretrain_steps,
        "new_individuals": args.new_individuals or plan.new_individuals,
        "steps": steps,
        "lr": args.lr or plan.lr,
        "replay": replay,
        "eval_every": min(plan.eval_every, max(1, steps // 10)),
        "pretrain_eval_every": min(plan.pretrain_eval_every, pretrain_steps),
        "eval_cap": scale.eval_cap,
    }


def _world(opts: dict[str, Any]) -> dict[str, Any]:
    return {
        "individuals": opts["individuals"],
        "new_individuals": opts["new_individuals"],
        "eval_individuals": min(
            opts["eval_cap"], max(opts["individuals"], opts["new_individuals"])
        ),
    }


def pretrain_spec(opts: dict[str, Any], ctx: Context) -> RunSpec:
    every = opts["pretrain_eval_every"]
    return ctx.spec(
        NAME,
        f"pretrain-n{opts['individuals']}",
        **_world(opts),
        steps=opts["pretrain_steps"],
        eval_every=every,
        checkpoint_every=every,
        seed=0,
        world_seed=0,
    )


def finetune_specs(opts: dict[str, Any], ctx: Context) -> list[RunSpec]:
    # Relative to OUT (resolved by the runner), so a moved OUT keeps its cache.
    init = f"{NAME}/{pretrain_spec(opts, ctx).key()}/checkpoint.pt"
    return [
        ctx.spec(
            NAME,
            f"ft-new{opts['new_individuals']}-replay{w:g}",
            meta={"replay": w},
            **_world(opts),
            init_checkpoint=init,
            population="new",
            replay_weight=float(w),
            constant_lr=True,
            lr=opts["lr"],
            steps=opts["steps"],
            eval_every=opts["eval_every"],
            checkpoint_every=opts["eval_every"] * 5,
            seed=1,
            world_seed=0,
        )
        for w in opts["replay"]
    ]


def execute(opts: dict[str, Any], ctx: Context) -> None:
    ctx.run([pretrain_spec(opts, ctx)], f"{NAME} (pre-train)")
    ctx.run(finetune_specs(opts, ctx), NAME)


def _at(result: RunResult, step: int, key: str) -> float:
    """The value of `key` at the first eval at or after `step`."""
    record = next((r for r in result.records if r["step"] >= step), result.records[-1])
    return float(record[key])


def analyze(opts: dict[str, Any], ctx: Context) -> Section:
    pre = ctx.load([pretrain_spec(opts, ctx)])[0]
    runs = finetune_specs(opts, ctx)
    results = ctx.load(runs)
    early = max(1, math.ceil(EARLY_FRACTION * opts["steps"]))
    by_w = {s.meta["replay"]: r for s, r in zip(runs, results) if r is not None}
    stats: Optional[fitting.FinetuneStats] = None
    if 0.0 in by_w:
        stats = fitting.FinetuneStats(
            old_start=_at(by_w[0.0], 0, "old/attr_acc"),
            old_early={w: _at(r, early, "old/attr_acc") for w, r in by_w.items()},
            old_final={w: float(r.records[-1]["old/attr_acc"]) for w, r in by_w.items()},
            new_early={w: _at(r, early, "eval/attr_acc") for w, r in by_w.items()},
            new_final={w: float(r.records[-1]["eval/attr_acc"]) for w, r in by_w.items()},
        )
        verdict = fitting.finetune_verdict(stats)
    else:
        verdict = fitting.Verdict(fitting.INCONCLUSIVE, "the run without replay did not finish")

    fig = new_figure(ncols=2)
    ax_old, ax_new = fig.subplots(1, 2)
    for i, (w, r) in enumerate(sorted(by_w.items())):
        ax_old.plot(*r.series("old/attr_acc"), color=f"C{i}", label=f"replay {w:g}")
        ax_new.plot(*r.series("eval/attr_acc"), color=f"C{i}", label=f"replay {w:g}")
    for ax, title in ((ax_old, "old individuals"), (ax_new, "new individuals")):
        ax.axvline(early, color="0.6", ls=":", lw=0.8)
        ax.set_xscale("symlog", linthresh=max(1, opts["eval_every"]))
        ax.set_xlim(left=0)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("eval accuracy")
        ax.set_title(f"{title} (early point dotted)")
        ax.legend(fontsize=7)
    figure = save_study_figure(fig, ctx.out, NAME)

    table = []
    if pre is not None:
        table.append(
            (
                "pre-training: eval accuracy",
                f"{pre.records[-1]['eval/attr_acc']:.3f} after {opts['pretrain_steps']} steps",
                "—",
            )
        )
    if stats is not None:
        for w in sorted(stats.old_early):
            table.append(
                (
                    f"replay {w:g}: old acc start → early → end",
                    f"{stats.old_start:.3f} → {stats.old_early[w]:.3f} → {stats.old_final[w]:.3f}",
                    "collapses early" if w == 0 else "kept better later",
                )
            )
            table.append(
                (
                    f"replay {w:g}: new acc early → end",
                    f"{stats.new_early[w]:.3f} → {stats.new_final[w]:.3f}",
                    "learned slowly" if w == 0 else "—",
                )
            )
        table.append(
            (
                "forgetting (old acc lost), no replay / max replay, at the end",
                f"{stats.old_start - stats.old_final[0.0]:.3f} / "
                f"{stats.old_start - stats.old_final[max(stats.old_final)]:.3f}",
                "—",
            )
        )
    return study_section(
        NAME,
        TITLE,
        CLAIM,
        [pre] + results,
        verdict=verdict,
        rule=(
            f"inconclusive if pre-training reached < {fitting.MIN_PRETRAINED_ACC:.0%} old "
            f"accuracy; reproduced if without replay at least "
            f"{fitting.COLLAPSE_FRACTION:.0%} of old accuracy is lost by the early point (step "
            f"{early}) while new accuracy there is below half the pre-trained old accuracy, and "
            f"the largest replay keeps ≥ {fitting.MIN_REPLAY_GAIN:.0%} more old accuracy at the "
            f"end, its early gain being at most {fitting.EARLY_REPLAY_SHARE:.0%} of that; "
            "not reproduced if little is forgotten (< "
            f"{fitting.NO_FORGETTING_FRACTION:.0%} lost early and at the end) or replay keeps "
            "nothing at the end; else inconclusive."
        ),
        table=table,
        figure=figure,
        notes=[
            f"Fine-tuning: {opts['new_individuals']} new individuals, constant lr {opts['lr']:g}, "
            f"{opts['steps']} steps; replay weight = old rows per new row in each batch.",
        ],
    )
