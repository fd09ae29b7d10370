"""Study `warmup`: the warm-up curriculum against uniform and fixed-alpha sampling (finding 5).

Two stages at a fixed step budget. 1. On `selection_seed`, for each N: every warm-up configuration
(uniform on the first k < N individuals for `epochs * k` biographies, then uniform on all) and
every fixed alpha; `rules.select_best` picks the best of each by final accuracy. 2. On the scoring
seeds: uniform (alpha 0), the chosen alpha and the chosen warm-up, per N. Choosing on a seed that
is never scored keeps the selection from inflating the gain. The score is the final attribute
accuracy over all N individuals, equally weighted; `rules.judge_warmup` decides.

Fixed-alpha and uniform runs are built by the alpha study's `run_spec` (stored under OUT/alpha/),
so runs with the alpha study's exact settings are trained once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from kadyn.config import load_preset
from kadyn.experiments import alpha as alpha_study
from kadyn.experiments import options, rules, study
from kadyn.experiments.report import new_figure, save_study_figure
from kadyn.experiments.runner import Context, RunResult, RunSpec
from kadyn.experiments.scales import WarmupPlan

NAME = "warmup"
UNIFORM, ALPHA, WARMUP = "uniform", "best alpha", "warm-up"


@dataclass(frozen=True)
class Warm:
    k: int  # warm-up individuals
    epochs: int

    @property
    def label(self) -> str:
        return f"warm{self.k}x{self.epochs}"


def alpha_label(a: float) -> str:
    return f"alpha{a:g}"


def final_acc(result: Optional[RunResult]) -> Optional[float]:
    return None if result is None else float(result.records[-1]["eval/attr_acc"])


def _unique(specs: list[RunSpec]) -> list[RunSpec]:
    """Specs with distinct keys (the chosen alpha may be 0, or a seed both select and score)."""
    seen: dict[str, RunSpec] = {}
    for s in specs:
        seen.setdefault(s.key(), s)
    return list(seen.values())


class WarmupStudy:
    name = NAME
    title = "Warm-up curriculum"
    claim = (
        "first training uniformly on a few individuals, then on all, beats uniform sampling and "
        "fixed power laws at a fixed budget, more so for large N (N = 128k: 94.92% vs 63.26%)."
    )
    plan_type = WarmupPlan

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--individuals", type=options.sizes, help="list of N")
        parser.add_argument("--steps", type=options.steps, help="step budget of every run")
        parser.add_argument("--alphas", type=options.alphas, help="fixed-alpha candidates")
        parser.add_argument(
            "--indiv-warmup", type=options.sizes, help="warm-up subset sizes (each < N), swept"
        )
        parser.add_argument(
            "--epochs-warmup", type=options.epochs, help="epochs over the warm-up subset, swept"
        )
        parser.add_argument("--seeds", type=options.seeds, help="scoring seeds")
        parser.add_argument(
            "--selection-seed", type=options.seed, help="seed the configurations are chosen on"
        )

    def overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        return study.plan_fields(
            individuals=args.individuals,
            steps=args.steps,
            alphas=args.alphas,
            warmup_individuals=args.indiv_warmup,
            warmup_epochs=args.epochs_warmup,
            seeds=args.seeds,
            selection_seed=args.selection_seed,
        )

    def check(self, plan: WarmupPlan) -> None:
        study.require_values(
            ("--individuals", plan.individuals),
            ("--alphas", plan.alphas),
            ("--epochs-warmup", plan.warmup_epochs),
            ("--seeds", plan.seeds),
        )
        smallest = min(plan.individuals)
        if not any(k < smallest for k in plan.warmup_individuals):
            got = ",".join(map(str, plan.warmup_individuals)) or "none"
            raise ValueError(
                f"--indiv-warmup needs a value < the smallest N ({smallest}), got {got}"
            )
        if plan.selection_seed in plan.seeds:
            raise ValueError(
                f"--selection-seed ({plan.selection_seed}) must not be one of --seeds: a choice "
                "scored on its own seed is inflated"
            )

    # -- runs -----------------------------------------------------------------------------------

    def configs(self, plan: WarmupPlan, n: int, batch_size: int) -> list[Warm]:
        return [
            Warm(k, e)
            for k in plan.warmup_individuals
            for e in plan.warmup_epochs
            # k >= N is uniform sampling; a warm-up filling the whole budget never sees all N.
            if k < n and e * k < plan.steps * batch_size
        ]

    def warm_spec(self, plan: WarmupPlan, ctx: Context, n: int, w: Warm, seed: int) -> RunSpec:
        return ctx.spec(
            NAME,
            f"n{n}-steps{plan.steps}-{w.label}-s{seed}",
            n=n,
            seed=seed,
            eval_every=plan.eval_every,
            meta={"n": n, "seed": seed, "config": w.label},
            steps=plan.steps,
            sampling="curriculum",
            warmup_individuals=w.k,
            warmup_samples=w.epochs * w.k,
            eval_individuals=n,  # every individual, equal weight
        )

    def alpha_spec(self, plan: WarmupPlan, ctx: Context, n: int, a: float, seed: int) -> RunSpec:
        # The alpha study's eval cadence, so that these runs are its runs (same key, trained once).
        every = alpha_study.interval(n, plan.alpha_eval_divisor, (plan.steps,))
        return alpha_study.STUDY.run_spec(ctx, n, a, seed, plan.steps, every)

    def selection(self, plan: WarmupPlan, ctx: Context) -> dict[int, dict[str, RunSpec]]:
        """Stage 1: per N, label -> spec of every candidate on the selection seed."""
        batch = int({**load_preset(ctx.preset), **ctx.base}["batch_size"])
        seed = plan.selection_seed
        out: dict[int, dict[str, RunSpec]] = {}
        for n in plan.individuals:
            cands = {
                w.label: self.warm_spec(plan, ctx, n, w, seed) for w in self.configs(plan, n, batch)
            }
            cands |= {alpha_label(a): self.alpha_spec(plan, ctx, n, a, seed) for a in plan.alphas}
            out[n] = cands
        return out

    def choose(
        self, plan: WarmupPlan, ctx: Context, stage1: dict[int, dict[str, RunSpec]]
    ) -> dict[int, dict[str, Any]]:
        """Per N whose stage 1 is complete: the candidates' scores and the two choices."""
        chosen: dict[int, dict[str, Any]] = {}
        for n, cands in stage1.items():
            scores = {
                label: final_acc(r) for label, r in zip(cands, ctx.load(list(cands.values())))
            }
            warm = {k: v for k, v in scores.items() if k.startswith("warm")}
            alphas = {k: v for k, v in scores.items() if k.startswith("alpha")}
            if not warm or any(v is None for v in scores.values()):
                continue  # wait for every candidate: a choice among some would not be stable
            best_warm = rules.select_best(warm)  # type: ignore[arg-type]
            best_alpha = rules.select_best(alphas)  # type: ignore[arg-type]
            chosen[n] = {
                "scores": scores,
                "warmup": best_warm,
                "alpha": float(best_alpha.removeprefix("alpha")),
                "warm_spec": cands[best_warm],
            }
        return chosen

    def scoring(
        self, plan: WarmupPlan, ctx: Context, chosen: dict[int, dict[str, Any]]
    ) -> tuple[dict[tuple[int, int, str], RunSpec], int]:
        """Stage 2: (N, seed, arm) -> spec, and the number of runs not buildable yet."""
        specs: dict[tuple[int, int, str], RunSpec] = {}
        missing = 0
        for n in plan.individuals:
            for seed in plan.seeds:
                specs[(n, seed, UNIFORM)] = self.alpha_spec(plan, ctx, n, 0.0, seed)
                if n not in chosen:
                    missing += 2
                    continue
                c = chosen[n]
                specs[(n, seed, ALPHA)] = self.alpha_spec(plan, ctx, n, c["alpha"], seed)
                k, e = c["warmup"].removeprefix("warm").split("x")
                specs[(n, seed, WARMUP)] = self.warm_spec(plan, ctx, n, Warm(int(k), int(e)), seed)
        return specs, missing

    def specs(self, plan: WarmupPlan, ctx: Context) -> list[RunSpec]:
        """Every run buildable now: stage 1, and stage 2 where its choices are made."""
        stage1 = self.selection(plan, ctx)
        stage2, _ = self.scoring(plan, ctx, self.choose(plan, ctx, stage1))
        return _unique([s for c in stage1.values() for s in c.values()] + list(stage2.values()))

    def execute(self, plan: WarmupPlan, ctx: Context) -> None:
        stage1 = self.selection(plan, ctx)
        ctx.run(_unique([s for cands in stage1.values() for s in cands.values()]), f"{NAME} select")
        stage2, _ = self.scoring(plan, ctx, self.choose(plan, ctx, stage1))
        ctx.run(_unique(list(stage2.values())), NAME)

    # -- analysis -------------------------------------------------------------------------------

    def measure(self, plan: WarmupPlan, ctx: Context) -> study.Measured:
        stage1 = self.selection(plan, ctx)
        chosen = self.choose(plan, ctx, stage1)
        stage2, missing = self.scoring(plan, ctx, chosen)
        all_specs = _unique(
            [s for c in stage1.values() for s in c.values()] + list(stage2.values())
        )
        results = ctx.load(all_specs)
        acc = {key: final_acc(r) for key, r in zip(stage2, ctx.load(list(stage2.values())))}
        scores: list[rules.WarmupScore] = []
        for n in plan.individuals:
            for seed in plan.seeds:
                arms = [acc.get((n, seed, arm)) for arm in (UNIFORM, ALPHA, WARMUP)]
                if all(v is not None for v in arms):
                    scores.append(rules.WarmupScore(n, seed, *arms))  # type: ignore[arg-type]
        per_n = {}
        for n in plan.individuals:
            here = [s for s in scores if s.n == n]
            per_n[str(n)] = {
                "uniform": [s.uniform for s in here],
                "best_alpha": [s.best_alpha for s in here],
                "warmup": [s.warmup for s in here],
                "gain_uniform_mean": float(np.mean([s.warmup - s.uniform for s in here]))
                if here
                else None,
            }
        selection = {
            str(n): {"scores": c["scores"], "warmup": c["warmup"], "alpha": c["alpha"]}
            for n, c in chosen.items()
        }
        notes = [
            f"Configurations and the fixed alpha are chosen on seed {plan.selection_seed} and "
            f"scored on seeds {', '.join(map(str, plan.seeds))}, so the choice does not inflate "
            "the gain.",
            "Uniform and fixed-alpha runs are the alpha study's runs of these settings (OUT/alpha/).",
        ]
        unchosen = [n for n in plan.individuals if n not in chosen]
        if unchosen:
            notes.append(
                f"No choice yet for N = {', '.join(map(str, unchosen))} (selection unfinished)."
            )
        return study.Measured(
            judgement=rules.judge_warmup(scores),
            results=results,
            numbers={"selection": selection, "per_n": per_n},
            notes=notes,
            missing=missing,
            extra={"scores": scores, "chosen": chosen},
        )

    def draw(self, plan: WarmupPlan, ctx: Context, measured: study.Measured) -> Optional[str]:
        fig = new_figure(ncols=2)
        ax_acc, ax_sel = fig.subplots(1, 2)
        scores: list[rules.WarmupScore] = measured.extra["scores"]
        width = 0.27
        for i, n in enumerate(plan.individuals):
            here = [s for s in scores if s.n == n]
            for j, (arm, field) in enumerate(
                ((UNIFORM, "uniform"), (ALPHA, "best_alpha"), (WARMUP, "warmup"))
            ):
                x = i + (j - 1) * width
                values = [getattr(s, field) for s in here]
                if values:
                    ax_acc.bar(
                        x, np.mean(values), width, color=f"C{j}", label=arm if i == 0 else None
                    )
                    ax_acc.scatter([x] * len(values), values, s=10, color="k", zorder=3)
        ax_acc.set_xticks(range(len(plan.individuals)), [f"N={n}" for n in plan.individuals])
        ax_acc.set_ylabel("final accuracy, all individuals")
        ax_acc.set_title(f"{plan.steps} steps, scoring seeds (bar: mean)")
        if scores:
            ax_acc.legend(fontsize=7)
        chosen = measured.extra["chosen"]
        # Candidates differ by N (k < N): one axis over all of them, each N slightly offset.
        labels = list(dict.fromkeys(k for c in chosen.values() for k in c["scores"]))
        for i, (n, c) in enumerate(sorted(chosen.items())):
            dx = (i - (len(chosen) - 1) / 2) * 0.1
            xs = [labels.index(k) + dx for k in c["scores"]]
            ax_sel.plot(xs, list(c["scores"].values()), "o", color=f"C{i}", label=f"N={n}")
            for label in (c["warmup"], alpha_label(c["alpha"])):
                x = labels.index(label) + dx
                ax_sel.plot([x], [c["scores"][label]], "*", ms=14, color=f"C{i}")
        ax_sel.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
        ax_sel.set_ylabel("final accuracy")
        ax_sel.set_title(f"selection seed {plan.selection_seed} (★ = chosen)")
        if chosen:
            ax_sel.legend(fontsize=7)
        return save_study_figure(fig, ctx.out, NAME)

    def table(self, plan: WarmupPlan, measured: study.Measured) -> list[study.Row]:
        rows = study.registered_rows(measured.judgement)
        rows.append(("paper's gain over uniform", "—", "+31.7 points at N = 128k"))
        for n in plan.individuals:
            c = measured.extra["chosen"].get(n)
            p = measured.numbers["per_n"][str(n)]
            choice = "—" if c is None else f"{c['warmup']}, alpha {c['alpha']:g}"
            means = " / ".join(
                f"{np.mean(p[k]):.3f}" if p[k] else "—" for k in ("uniform", "best_alpha", "warmup")
            )
            rows.append((f"N={n}: chosen warm-up, alpha", choice, "—"))
            rows.append((f"N={n}: uniform / best alpha / warm-up (mean acc)", means, "—"))
        return rows


STUDY = WarmupStudy()
