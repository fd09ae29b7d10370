"""Study `patching`: do recall circuits form during the plateau? Attention patching (finding 3).

Design: per seed, a reference run snapshots its weights at every evaluation and stops
`after_knowledge` steps past its knowledge phase. Sources are chosen from its detected phases:
init (step 0), statistics (half way to the plateau start), plateau_start, plateau_mid (50% into
the plateau), plateau_late (85%), post (end + half the plateau's length, capped at the last
step), each snapped to the first evaluated step at or after its target (quarters of the onset
when no plateau was detected). Stage 2 trains twins (seed + 1000) whose attention patterns are,
in every layer, those of one snapshot run on the same batch, plus one unpatched twin; twins stop
at their own knowledge onset, or at 1.25x the reference's last step (past the reference's onset
plus its seed spread, so the unpatched twin's onset is observed, not cut).
`rules.judge_patching` compares knowledge onsets (censored at a twin's last step) and mean losses.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import numpy as np

from kadyn.experiments import options, rules, study
from kadyn.experiments.report import new_figure, save_study_figure
from kadyn.experiments.runner import Context, RunResult, RunSpec, snapshot_path
from kadyn.experiments.scales import PatchingPlan

NAME = "patching"
TWIN_OFFSET = 1000  # twins' seed = reference seed + this: they must not start as the reference
PLATEAU_FRACTION = {"plateau_start": 0.0, "plateau_mid": 0.5, "plateau_late": 0.85}
# Without a plateau: the sources at these fractions of the onset (or of the last step).
ONSET_FRACTION = {
    "statistics": 0.25,
    "plateau_start": 0.25,
    "plateau_mid": 0.5,
    "plateau_late": 0.75,
}


def source_steps(reference: RunResult, sources: tuple[str, ...]) -> tuple[dict[str, int], bool]:
    """The reference's evaluated step behind each source; and whether a plateau was found."""
    steps = [int(r["step"]) for r in reference.records]
    last = steps[-1]
    start = reference.summary.get("plateau_start")
    end = reference.summary.get("plateau_end")
    onset = reference.summary.get("knowledge_onset")
    targets: dict[str, float] = {"init": 0}
    plateau = start is not None and end is not None
    if start is not None and end is not None:
        length = end - start
        targets["statistics"] = start / 2
        for name, fraction in PLATEAU_FRACTION.items():
            targets[name] = start + fraction * length
        targets["post"] = min(last, end + max(1, length / 2))
    else:
        horizon = float(onset) if onset is not None else float(last)
        for name, fraction in ONSET_FRACTION.items():
            targets[name] = fraction * horizon
        targets["post"] = min(last, horizon + max(1, horizon / 4))

    def snap(target: float) -> int:  # the first evaluated step at or after the target
        return next((s for s in steps if s >= target), last)

    return {name: snap(targets[name]) for name in sources}, plateau


class PatchingStudy:
    name = NAME
    title = "Attention patching"
    claim = (
        "a model trained with the attention patterns of a post-plateau checkpoint has no "
        "plateau; later-in-plateau patterns help more; patterns from early in training are worse "
        "than untrained ones."
    )
    plan_type = PatchingPlan

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--individuals", type=options.size, help="N of the reference and twins")
        parser.add_argument("--steps", type=options.steps, help="step cap of the reference")
        parser.add_argument(
            "--seeds", type=options.seeds, help="seeds of the references (twins: +1000)"
        )

    def overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        return study.plan_fields(individuals=args.individuals, steps=args.steps, seeds=args.seeds)

    def check(self, plan: PatchingPlan) -> None:
        study.require_values(("--seeds", plan.seeds))
        unknown = [s for s in plan.sources if s not in rules.PATCHING_SOURCES]
        if unknown:
            raise ValueError(
                f"sources must be among {', '.join(rules.PATCHING_SOURCES)}: {unknown}"
            )
        if plan.eval_every > plan.steps:
            raise ValueError(f"--steps must be >= the eval interval {plan.eval_every}")

    # -- runs ----------------------------------------------------------------------------------

    def specs(self, plan: PatchingPlan, ctx: Context) -> list[RunSpec]:
        """The runs that can be planned before any training (the twins depend on them)."""
        return [self.reference_spec(plan, ctx, s) for s in plan.seeds]

    def reference_spec(self, plan: PatchingPlan, ctx: Context, seed: int) -> RunSpec:
        return ctx.spec(
            NAME,
            f"reference-n{plan.individuals}-s{seed}",
            n=plan.individuals,
            seed=seed,
            eval_every=plan.eval_every,
            snapshot_models=True,
            stop_after_knowledge=plan.after_knowledge,
            meta={"seed": seed},
            steps=plan.steps,
        )

    def twin_specs(
        self, plan: PatchingPlan, ctx: Context, seed: int, reference: RunResult
    ) -> list[RunSpec]:
        ref_dir = self.reference_spec(plan, ctx, seed).run_dir(ctx.out)
        last = int(reference.records[-1]["step"])
        # Past the reference's end, so the unpatched onset (another seed) is seen, not cut.
        # Twins stop at their own onset (what is measured), or at 1.25x the reference's length:
        # past the reference's onset plus its seed-to-seed spread (about 15% in the pilot).
        stop = (5 * last) // 4
        common: dict[str, Any] = dict(
            n=plan.individuals,
            seed=seed + TWIN_OFFSET,
            eval_every=plan.eval_every,
            stop_at_step=stop,
            stop_after_knowledge=0,
            world_seed=seed,  # the reference's world: its patterns are of these biographies
            steps=max(plan.steps, stop),
        )
        twins = [
            ctx.spec(NAME, f"twin-none-s{seed}", meta={"seed": seed, "source": "none"}, **common)
        ]
        steps, _ = source_steps(reference, plan.sources)
        for name, step in steps.items():
            path = snapshot_path(ref_dir, step).relative_to(ctx.out)
            twins.append(
                ctx.spec(
                    NAME,
                    f"twin-{name}-step{step}-s{seed}",
                    patch_checkpoint=str(path),
                    meta={"seed": seed, "source": name, "source_step": step},
                    **common,
                )
            )
        return twins

    def execute(self, plan: PatchingPlan, ctx: Context) -> None:
        refs = ctx.run(
            [self.reference_spec(plan, ctx, s) for s in plan.seeds], f"{NAME} (reference)"
        )
        twins = [x for s, r in zip(plan.seeds, refs) for x in self.twin_specs(plan, ctx, s, r)]
        ctx.run(twins, NAME)

    # -- measurement ---------------------------------------------------------------------------

    def measure(self, plan: PatchingPlan, ctx: Context) -> study.Measured:
        refs = ctx.load([self.reference_spec(plan, ctx, s) for s in plan.seeds])
        results: list[Optional[RunResult]] = list(refs)
        missing = 0
        runs: list[rules.PatchingRun] = []
        per_seed: dict[str, Any] = {}
        notes: list[str] = []
        done_by_seed: dict[int, dict[str, tuple[RunSpec, RunResult]]] = {}
        for seed, ref in zip(plan.seeds, refs):
            if ref is None:
                missing += len(plan.sources) + 1  # twins are not planned before their reference
                continue
            twins = self.twin_specs(plan, ctx, seed, ref)
            loaded = ctx.load(twins)
            results += loaded
            done = {t.meta["source"]: (t, r) for t, r in zip(twins, loaded) if r is not None}
            done_by_seed[seed] = done
            steps, plateau = source_steps(ref, plan.sources)
            if not plateau:
                notes.append(
                    f"seed {seed}: the reference has no detected plateau; sources placed at "
                    "quarters of its knowledge onset (or of its last step)."
                )
            onset: dict[str, float] = {}
            censored: list[str] = []
            for source, (_, r) in done.items():
                k = r.summary.get("knowledge_onset")
                if k is None:  # never within the run: censored at its last step
                    k = r.records[-1]["step"]
                    censored.append(source)
                onset[source] = float(max(k, 1))  # a log ratio needs a positive step
            # Over the steps every twin of this seed ran (they stop at their own onsets), so that
            # the comparison is over the same window.
            window = min((r.records[-1]["step"] for _, r in done.values()), default=0)
            mean_loss = {
                source: float(
                    np.mean([v for t, v in zip(*r.series("eval/attr_loss")) if t <= window])
                )
                for source, (_, r) in done.items()
            }
            runs.append(rules.PatchingRun(seed=seed, onset=onset, mean_loss=mean_loss))
            per_seed[str(seed)] = {
                "reference": {
                    k: ref.summary.get(k)
                    for k in ("plateau_start", "plateau_end", "knowledge_onset")
                }
                | {"last_step": ref.records[-1]["step"]},
                "source_steps": steps,
                "onset": onset,
                "censored": censored,
                "mean_loss": mean_loss,
            }
            if censored:
                notes.append(
                    f"seed {seed}: no knowledge onset within the run for {', '.join(censored)} "
                    "(counted at the twin's last step: a lower bound)."
                )
        notes.append(
            f"All layers patched; twins use seed + {TWIN_OFFSET} and the reference's world, and "
            "stop at their own knowledge onset or at 1.25x the reference's last step; mean losses "
            "are compared over the steps every twin of the seed ran."
        )
        return study.Measured(
            judgement=rules.judge_patching(runs),
            results=results,
            numbers={"per_seed": per_seed},
            notes=notes,
            missing=missing,
            extra={"done": done_by_seed, "runs": runs},
        )

    def draw(self, plan: PatchingPlan, ctx: Context, measured: study.Measured) -> Optional[str]:
        done_by_seed: dict[int, dict[str, tuple[RunSpec, RunResult]]] = measured.extra.get(
            "done", {}
        )
        runs: list[rules.PatchingRun] = measured.extra.get("runs", [])
        order = ["none", *[s for s in rules.PATCHING_SOURCES if s in plan.sources]]
        fig = new_figure(ncols=2)
        ax_loss, ax_onset = fig.subplots(1, 2)
        if done_by_seed:
            seed = next(iter(done_by_seed))
            done = done_by_seed[seed]
            for i, name in enumerate(order):
                if name not in done:
                    continue
                spec, r = done[name]
                label = (
                    "no patching" if name == "none" else f"{name} (step {spec.meta['source_step']})"
                )
                ax_loss.plot(
                    *r.series("eval/attr_loss"),
                    "--" if name == "none" else "-",
                    color="k" if name == "none" else f"C{i}",
                    label=label,
                )
            if done:  # the reference's seed may have no finished twin yet
                first = next(iter(done.values()))[1]
                ax_loss.axhline(first.summary["level"], color="0.3", ls=":", lw=0.8, label="F")
            ax_loss.set_title(f"twins, seed {seed}", fontsize=9)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("eval attribute loss")
        if done_by_seed:
            ax_loss.legend(fontsize=7)
        for run in runs:
            xs = [i for i, s in enumerate(order) if s in run.onset]
            ax_onset.plot(
                xs, [run.onset[order[i]] for i in xs], "o", alpha=0.8, label=f"seed {run.seed}"
            )
        ax_onset.set_xticks(range(len(order)), order, rotation=30, fontsize=7)
        ax_onset.set_ylabel("knowledge onset (step; censored at the end)")
        ax_onset.set_title("onset per source, in training order", fontsize=9)
        if runs:
            ax_onset.legend(fontsize=7)
        return save_study_figure(fig, ctx.out, NAME)

    def table(self, plan: PatchingPlan, measured: study.Measured) -> list[study.Row]:
        return study.registered_rows(measured.judgement)


STUDY = PatchingStudy()
