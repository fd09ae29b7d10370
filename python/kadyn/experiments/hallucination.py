"""Study `hallucination`: held-out individuals' loss and confidence as knowledge appears (finding 6).

Design: per seed, a real run with a held-out population that is never trained on, and its
no-knowledge twin: the same spec with `control=True` (values drawn independently of names), so
the level "no knowledge" is measured at the same steps instead of assumed. Both probe the eval
templates of trained and held-out individuals at every evaluation (confidence = mean top-1
probability on value tokens). Per pair, `rules.HallucinationRun`: held-out loss over the last
quarter of evals against the twin's, confidence known / held-out, and the name-match share: how
often the real model's answer for a held-out individual is the value of the trained individual
whose name shares most tokens with it, against the chance of matching a random trained one.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Optional

import numpy as np

from kadyn.experiments import options, rules, study
from kadyn.experiments.report import new_figure, save_study_figure
from kadyn.experiments.runner import Context, RunResult, RunSpec
from kadyn.experiments.scales import HallucinationPlan

NAME = "hallucination"


def _last_quarter(result: RunResult, key: str) -> tuple[list[int], float]:
    """The steps of the last quarter of evals and the mean of `key` over them."""
    steps, values = result.series(key)
    k = max(1, len(steps) // 4)
    return steps[-k:], float(np.mean(values[-k:]))


def _mean_at(result: RunResult, key: str, steps: list[int]) -> float:
    """Mean of `key` over the given steps (the twin's evals share the real run's cadence)."""
    by_step = dict(zip(*result.series(key)))
    values = [by_step[s] for s in steps if s in by_step]
    return float(np.mean(values)) if values else math.nan


def _plateau_record(result: RunResult) -> dict[str, Any]:
    """The real run's first eval at or after its plateau start (else its first eval)."""
    start = result.summary.get("plateau_start")
    if start is None:
        return result.records[0]
    return next((r for r in result.records if r["step"] >= start), result.records[0])


def _value_tokens(batch: Any) -> dict[int, dict[int, tuple[int, ...]]]:
    """individual -> attribute -> its value's tokens, from an eval-set batch (one row each)."""
    ids = batch.column("input_ids").to_pylist()
    attr = batch.column("attr_type").to_pylist()
    who = batch.column("individual").to_pylist()
    out: dict[int, dict[int, tuple[int, ...]]] = {}
    for row_ids, row_attr, i in zip(ids, attr, who):
        values: dict[int, list[int]] = {}
        for tok, a in zip(row_ids, row_attr):
            if a >= 0:
                values.setdefault(a, []).append(tok)
        out.setdefault(int(i), {k: tuple(v) for k, v in values.items()})
    return out


def name_match(result: RunResult, ctx: Context) -> dict[str, Optional[float]]:
    """Name-match shares and coverage from the real run's final checkpoint.

    For each held-out individual and each attribute whose held-out value is one token, the
    model's argmax at the position predicting that token is its answer. name_match: share of
    answers equal to the value of the trained individual with the most name tokens in common
    (ties: lowest index); chance: the same share averaged over all trained individuals (the
    answer's frequency among them). coverage: share of those held-out values found among the
    trained individuals' values of the same attribute.
    """
    import torch

    from kadyn.checkpoint import checkpoint_path, load_model
    from kadyn.config import make_config
    from kadyn.train import build_world

    none: dict[str, Optional[float]] = {"name_match": None, "chance": None, "coverage": None}
    path = checkpoint_path(result.dir)
    if not path.exists():
        return none
    config = make_config(result.spec.preset, **result.spec.overrides)
    world = build_world(config)
    model, _ = load_model(path)
    held_batch = world.eval_set(
        split="eval", population="heldout", seq_len=config.seq_len, seed=config.world_seed
    )
    trained = _value_tokens(
        world.eval_set(
            split="eval", population="train", seq_len=config.seq_len, seed=config.world_seed
        )
    )
    n_train = world.population_size("train")
    names = [set(world.encode(world.individual(i, "train")["name"])) for i in range(n_train)]
    ids = torch.tensor(held_batch.column("input_ids").to_pylist(), dtype=torch.long)
    attr = torch.tensor(held_batch.column("attr_type").to_pylist(), dtype=torch.long)
    who = held_batch.column("individual").to_pylist()
    with torch.no_grad():
        answers = []
        for i in range(0, ids.shape[0], 64):
            answers.append(model.logits(ids[i : i + 64]).argmax(-1))
        argmax = torch.cat(answers)
    matched, chance, covered = [], [], []
    seen: set[tuple[int, int]] = set()
    for row in range(ids.shape[0]):
        h = int(who[row])
        h_name = set(world.encode(world.individual(h, "heldout")["name"]))
        nearest = max(range(n_train), key=lambda j: (len(h_name & names[j]), -j))
        row_attr = attr[row].tolist()
        for a in set(x for x in row_attr if x >= 0):
            positions = [t for t, x in enumerate(row_attr) if x == a]
            if len(positions) != 1 or (h, a) in seen or positions[0] == 0:
                continue  # single-token values only, each (individual, attribute) once
            seen.add((h, a))
            t = positions[0]
            answer = (int(argmax[row, t - 1]),)
            matched.append(trained[nearest].get(a) == answer)
            chance.append(np.mean([trained[j].get(a) == answer for j in trained]))
            truth = (int(ids[row, t]),)
            covered.append(any(trained[j].get(a) == truth for j in trained))
    if not matched:
        return none
    return {
        "name_match": float(np.mean(matched)),
        "chance": float(np.mean(chance)),
        "coverage": float(np.mean(covered)),
    }


class HallucinationStudy:
    name = NAME
    title = "Hallucinations on held-out individuals"
    claim = (
        "once knowledge appears, held-out individuals' attribute loss rises above the "
        "no-knowledge level (over-confident wrong answers), with confidence lower than on known "
        "individuals but still high."
    )
    plan_type = HallucinationPlan

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--individuals", type=options.size, help="N (trained individuals)")
        parser.add_argument("--heldout", type=options.size, help="held-out individuals probed")
        parser.add_argument("--steps", type=options.steps, help="steps of each run")
        parser.add_argument("--seeds", type=options.seeds, help="list of seeds, e.g. 0,1,2")

    def overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        return study.plan_fields(
            individuals=args.individuals, heldout=args.heldout, steps=args.steps, seeds=args.seeds
        )

    def check(self, plan: HallucinationPlan) -> None:
        study.require_values(("--seeds", plan.seeds))
        if plan.eval_every > plan.steps:
            raise ValueError(
                f"--steps must be >= the eval interval {plan.eval_every}, got {plan.steps}"
            )

    def specs(self, plan: HallucinationPlan, ctx: Context) -> list[RunSpec]:
        return [s for pair in self.pairs(plan, ctx) for s in pair]

    def pairs(self, plan: HallucinationPlan, ctx: Context) -> list[tuple[RunSpec, RunSpec]]:
        """Per seed: (real run, its control twin)."""
        pairs = []
        for seed in plan.seeds:
            common: dict[str, Any] = dict(
                n=plan.individuals,
                seed=seed,
                eval_every=plan.eval_every,
                heldout=plan.heldout,
                steps=plan.steps,
                # every held-out individual probed, even past the scale's cap
                eval_individuals=max(plan.heldout, min(plan.individuals, ctx.eval_cap)),
            )
            name = f"n{plan.individuals}-h{plan.heldout}-s{seed}"
            real = ctx.spec(NAME, name, meta={"seed": seed}, **common)
            twin = ctx.spec(NAME, f"{name}-control", meta={"seed": seed}, control=True, **common)
            pairs.append((real, twin))
        return pairs

    def execute(self, plan: HallucinationPlan, ctx: Context) -> None:
        ctx.run(self.specs(plan, ctx), NAME)

    def measure(self, plan: HallucinationPlan, ctx: Context) -> study.Measured:
        pairs = self.pairs(plan, ctx)
        results = ctx.load([s for pair in pairs for s in pair])
        runs: list[rules.HallucinationRun] = []
        per_seed: dict[str, Any] = {}
        notes: list[str] = []
        shown: list[tuple[RunResult, RunResult]] = []
        for i, (real_spec, _) in enumerate(pairs):
            real, twin = results[2 * i], results[2 * i + 1]
            if real is None or twin is None:
                continue
            seed = real_spec.meta["seed"]
            steps, held = _last_quarter(real, "heldout/attr_loss")
            at_plateau = _plateau_record(real)
            final = real.records[-1]
            match = name_match(real, ctx)
            run = rules.HallucinationRun(
                seed=seed,
                level=float(final["no_knowledge/level"]),
                heldout_loss=held,
                twin_heldout_loss=_mean_at(twin, "heldout/attr_loss", steps),
                confidence_known=float(final["eval/confidence"]),
                confidence_heldout=float(final["heldout/confidence"]),
                confidence_heldout_plateau=float(at_plateau["heldout/confidence"]),
                name_match=match["name_match"],
                name_match_chance=match["chance"],
            )
            runs.append(run)
            shown.append((real, twin))
            per_seed[str(seed)] = {
                **{k: getattr(run, k) for k in run.__dataclass_fields__},
                "coverage": match["coverage"],
                "plateau_start": real.summary.get("plateau_start"),
                "plateau_end": real.summary.get("plateau_end"),
                "knowledge_onset": real.summary.get("knowledge_onset"),
            }
            if match["name_match"] is None:
                notes.append(
                    f"seed {seed}: name match not measured (no checkpoint or no single-token values)"
                )
        coverage = [v["coverage"] for v in per_seed.values() if v["coverage"] is not None]
        if coverage and min(coverage) < 1.0:
            notes.append(
                f"coverage: only {min(coverage):.0%} of held-out single-token values occur among "
                "trained individuals (the design wants every one): name matching is bounded by it."
            )
        notes.append(
            "No-knowledge level measured by a control twin per seed (same spec, `control`: values "
            "independent of names), compared on the same last quarter of evals."
        )
        return study.Measured(
            judgement=rules.judge_hallucination(runs),
            results=results,
            numbers={
                "per_seed": per_seed,
                "coverage": float(np.mean(coverage)) if coverage else None,
            },
            notes=notes,
            extra={"pairs": shown, "coverage": coverage},
        )

    def draw(
        self, plan: HallucinationPlan, ctx: Context, measured: study.Measured
    ) -> Optional[str]:
        pairs: list[tuple[RunResult, RunResult]] = measured.extra.get("pairs", [])
        fig = new_figure(ncols=2)
        ax_loss, ax_conf = fig.subplots(1, 2)
        for i, (real, twin) in enumerate(pairs):
            alpha, first = (1.0, True) if i == 0 else (0.35, False)  # the first seed labelled
            for ax, result, key, color, label in (
                (ax_loss, real, "eval/attr_loss", "C0", "real: trained"),
                (ax_loss, real, "heldout/attr_loss", "C3", "real: held-out"),
                (ax_loss, twin, "heldout/attr_loss", "0.4", "no-knowledge twin: held-out"),
                (ax_conf, real, "eval/confidence", "C0", "known individuals"),
                (ax_conf, real, "heldout/confidence", "C3", "held-out individuals"),
            ):
                ax.plot(
                    *result.series(key), color=color, alpha=alpha, label=label if first else None
                )
        if pairs:
            real = pairs[0][0]
            ax_loss.axhline(real.summary["level"], color="0.3", ls=":", label="F")
            for ax in (ax_loss, ax_conf):
                for key, style in (("plateau_start", "--"), ("plateau_end", "-")):
                    if real.summary.get(key) is not None:
                        ax.axvline(real.summary[key], color="0.6", ls=style, lw=0.8)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("eval attribute loss (nats per value)")
        ax_loss.set_title("loss: trained, held-out, twin's held-out")
        ax_loss.legend(fontsize=7)
        ax_conf.set_xlabel("step")
        ax_conf.set_ylabel("confidence (mean top-1 probability on values)")
        ax_conf.set_title("confidence (plateau start -- / end —)")
        ax_conf.legend(fontsize=7)
        return save_study_figure(fig, ctx.out, NAME)

    def table(self, plan: HallucinationPlan, measured: study.Measured) -> list[study.Row]:
        rows = study.registered_rows(measured.judgement)
        coverage = measured.numbers.get("coverage")
        rows.append(
            (
                "held-out single-token values seen in training",
                "—" if coverage is None else f"{coverage:.0%}",
                "all (design)",
            )
        )
        return rows


STUDY = HallucinationStudy()
