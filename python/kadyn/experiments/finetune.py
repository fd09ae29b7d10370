"""Study `finetune`: fine-tuning on new individuals forgets the old ones; replay (finding 7).

Design: per seed, one pre-training on the `train` population whose world already holds the `new`
population (the largest count of the plan), so vocabulary and world are those of fine-tuning. The
engine draws the train population independently of the number of new individuals (and the new
population of a smaller count is a prefix of the larger one), so this one pre-training serves
every count. Fine-tune runs start from its checkpoint (`init_checkpoint`: fresh optimizer, step
0), one per (seed, count, replay weight), on the `new` population at a constant small lr, with
`replay` rows of old biographies per new row; their stream seed is seed + 1000, the world seed
the pre-training's. The trainer probes old individuals (`old/attr_acc`) and new ones
(`eval/attr_acc`); `rules.judge_finetune` decides on the largest count. Beside it, which weights
move: relative change of each parameter group between the pre-trained and fine-tuned weights.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import numpy as np

from kadyn.experiments import options, rules, study
from kadyn.experiments.report import new_figure, save_study_figure
from kadyn.experiments.runner import Context, RunResult, RunSpec
from kadyn.experiments.scales import FinetunePlan

NAME = "finetune"
STREAM_OFFSET = 1000  # fine-tuning stream seed = seed + this (not the pre-training's stream)
GROUPS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp", "embeddings", "norms")


def _replay(plan: FinetunePlan) -> list[float]:
    """The plan's weights, always with 0 (the no-replay run every statistic refers to)."""
    return sorted({0.0, *(float(w) for w in plan.replay)})


def weight_groups(state: dict[str, Any]) -> dict[str, list[Any]]:
    """Tensors of a model state dict by group; the fused qkv matrix split into q, k and v."""
    groups: dict[str, list[Any]] = {g: [] for g in GROUPS}
    for name, w in state.items():
        if name.endswith("attn.qkv.weight"):
            q, k, v = w.float().chunk(3, dim=0)
            groups["attn.q"].append(q)
            groups["attn.k"].append(k)
            groups["attn.v"].append(v)
        elif name.endswith("attn.proj.weight"):
            groups["attn.o"].append(w.float())
        elif ".mlp." in name:
            groups["mlp"].append(w.float())
        elif name.startswith("embed.") or name.startswith("head."):
            groups["embeddings"].append(w.float())
        else:
            groups["norms"].append(w.float())
    return groups


def relative_change(pre: dict[str, Any], post: dict[str, Any]) -> dict[str, float]:
    """||W_ft - W_pre|| / ||W_pre|| per group (Frobenius norm over the group's tensors)."""
    a, b = weight_groups(pre), weight_groups(post)
    out = {}
    for g in GROUPS:
        if not a[g]:
            continue
        num = sum(float(((y - x) ** 2).sum()) for x, y in zip(a[g], b[g]))
        den = sum(float((x**2).sum()) for x in a[g])
        out[g] = (num / den) ** 0.5 if den > 0 else float("nan")
    return out


class FinetuneStudy:
    name = NAME
    title = "Fine-tuning forgets; replay"
    claim = (
        "fine-tuning on new individuals (constant small lr) makes old individuals' accuracy "
        "collapse in the first hundreds of steps while new ones are learned slowly; replaying "
        "old data helps later, not at the start."
    )
    plan_type = FinetunePlan

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--replay", type=options.replay, help="replay weights, e.g. 0,0.5,1")
        parser.add_argument("--individuals", type=options.size, help="N of the pre-training")
        parser.add_argument("--pretrain-steps", type=options.steps, help="pre-training steps")
        parser.add_argument(
            "--new-individuals",
            type=options.sizes,
            help="counts of new individuals fine-tuned on, e.g. 64,256 (the largest decides)",
        )
        parser.add_argument("--steps", type=options.steps, help="fine-tuning steps")
        parser.add_argument("--lr", type=options.learning_rate, help="constant fine-tuning lr")
        parser.add_argument("--seeds", type=options.seeds, help="list of seeds, e.g. 0,1,2")

    def overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        return study.plan_fields(
            replay=args.replay,
            individuals=args.individuals,
            pretrain_steps=args.pretrain_steps,
            new_individuals=args.new_individuals,
            steps=args.steps,
            lr=args.lr,
            seeds=args.seeds,
        )

    def check(self, plan: FinetunePlan) -> None:
        study.require_values(("--seeds", plan.seeds), ("--new-individuals", plan.new_individuals))
        if len(_replay(plan)) < 2:
            raise ValueError("--replay: at least one weight > 0 is needed beside no replay")
        if plan.eval_every > plan.steps:
            raise ValueError(f"--steps must be >= the eval interval {plan.eval_every}")
        if plan.pretrain_eval_every > plan.pretrain_steps:
            raise ValueError(
                f"--pretrain-steps must be >= the eval interval {plan.pretrain_eval_every}"
            )

    # -- runs ----------------------------------------------------------------------------------

    def specs(self, plan: FinetunePlan, ctx: Context) -> list[RunSpec]:
        """The runs that depend on no other run: the pre-trainings (each fine-tuning starts from
        one)."""
        return [self.pretrain_spec(plan, ctx, s) for s in plan.seeds]

    def pretrain_spec(self, plan: FinetunePlan, ctx: Context, seed: int) -> RunSpec:
        return ctx.spec(
            NAME,
            f"pretrain-n{plan.individuals}-s{seed}",
            n=plan.individuals,
            seed=seed,
            eval_every=plan.pretrain_eval_every,
            meta={"seed": seed},
            new_individuals=max(plan.new_individuals),
            steps=plan.pretrain_steps,
        )

    def finetune_specs(self, plan: FinetunePlan, ctx: Context, seed: int) -> list[RunSpec]:
        # Relative to OUT (resolved by the runner), so a moved OUT keeps its cache.
        init = f"{NAME}/{self.pretrain_spec(plan, ctx, seed).key()}/checkpoint.pt"
        specs = []
        for count in plan.new_individuals:
            for w in _replay(plan):
                spec = ctx.spec(
                    NAME,
                    f"ft-n{plan.individuals}-new{count}-replay{w:g}-s{seed}",
                    n=plan.individuals,
                    seed=seed + STREAM_OFFSET,
                    eval_every=plan.eval_every,
                    meta={"seed": seed, "count": count, "replay": w},
                    world_seed=seed,  # the pre-training's world
                    new_individuals=count,
                    init_checkpoint=init,
                    population="new",
                    replay_weight=w,
                    constant_lr=True,
                    lr=plan.lr,
                    steps=plan.steps,
                )
                specs.append(spec)
        return specs

    def execute(self, plan: FinetunePlan, ctx: Context) -> None:
        ctx.run([self.pretrain_spec(plan, ctx, s) for s in plan.seeds], f"{NAME} (pre-train)")
        ctx.run([x for s in plan.seeds for x in self.finetune_specs(plan, ctx, s)], NAME)

    # -- measurement ---------------------------------------------------------------------------

    def measure(self, plan: FinetunePlan, ctx: Context) -> study.Measured:
        import torch  # lazy: keeps `kadyn-exp --help` free of torch

        from kadyn.checkpoint import checkpoint_path, load_checkpoint

        pre_specs = [self.pretrain_spec(plan, ctx, s) for s in plan.seeds]
        ft_specs = [x for s in plan.seeds for x in self.finetune_specs(plan, ctx, s)]
        pre_results = ctx.load(pre_specs)
        ft_results = ctx.load(ft_specs)
        pre_by_seed = {s: r for s, r in zip(plan.seeds, pre_results)}
        done: dict[tuple[int, int, float], RunResult] = {
            (x.meta["seed"], x.meta["count"], x.meta["replay"]): r
            for x, r in zip(ft_specs, ft_results)
            if r is not None
        }
        runs: list[rules.FinetuneRun] = []
        notes: list[str] = []
        per_run: dict[str, Any] = {}
        changes: dict[
            str, dict[str, float]
        ] = {}  # "s{seed}-new{count}-replay{w}" -> group -> change
        weights = _replay(plan)
        for seed in plan.seeds:
            pre = pre_by_seed[seed]
            pre_state = None
            if pre is not None and checkpoint_path(pre.dir).exists():
                pre_state = load_checkpoint(checkpoint_path(pre.dir))["model"]
            for count in plan.new_individuals:
                got = {w: done.get((seed, count, w)) for w in weights}
                for w, r in got.items():
                    path = None if r is None else checkpoint_path(r.dir)
                    if pre_state is not None and path is not None and path.exists():
                        post = load_checkpoint(path)["model"]
                        with torch.no_grad():
                            changes[f"s{seed}-new{count}-replay{w:g}"] = relative_change(
                                pre_state, post
                            )
                if pre is None or any(r is None for r in got.values()):
                    continue
                none = got[0.0]
                assert none is not None
                # Old accuracy before fine-tuning: the fine-tune's step-0 eval if recorded, else
                # the pre-training's final eval (the same weights).
                first = none.records[0]
                if first["step"] == 0 and first.get("old/attr_acc") is not None:
                    old_start = float(first["old/attr_acc"])
                else:
                    old_start = float(pre.records[-1]["eval/attr_acc"])
                old = {w: r.series("old/attr_acc")[1] for w, r in got.items() if r is not None}
                new = {w: r.series("eval/attr_acc")[1] for w, r in got.items() if r is not None}
                length = min(len(v) for v in [*old.values(), *new.values()])
                run = rules.FinetuneRun(
                    seed=seed,
                    new_individuals=count,
                    old_start=old_start,
                    old_acc={w: v[:length] for w, v in old.items()},
                    new_acc={w: v[:length] for w, v in new.items()},
                )
                runs.append(run)
                per_run[f"s{seed}-new{count}"] = {
                    "seed": seed,
                    "new_individuals": count,
                    "old_start": old_start,
                    "pretrain_acc": float(pre.records[-1]["eval/attr_acc"]),
                    **rules.finetune_numbers(run),
                    "steps": none.series("old/attr_acc")[0][:length],
                }
        main = max(plan.new_individuals)
        mean_change: dict[str, dict[str, float]] = {}
        for w in weights:
            picked = [v for k, v in changes.items() if k.endswith(f"-new{main}-replay{w:g}")]
            if picked:
                mean_change[f"{w:g}"] = {
                    g: float(np.mean([p[g] for p in picked if g in p])) for g in picked[0]
                }
        if mean_change:
            top = mean_change.get("0", next(iter(mean_change.values())))
            group = max(top, key=lambda g: top[g])
            notes.append(
                f"Weights moved most (relative change, {main} new, no replay): {group} "
                f"({top[group]:.3g}); attention q/k/v/o vs MLP vs embeddings in the table."
            )
        notes.append(
            f"One pre-training per seed (world holding {main} new individuals; the train "
            "population does not depend on the count); fine-tuning at constant lr "
            f"{plan.lr:g} for {plan.steps} steps, stream seed + {STREAM_OFFSET}; replay weight = "
            "old rows per new row in each batch."
        )
        missing = 0
        return study.Measured(
            judgement=rules.judge_finetune(runs),
            results=[*pre_results, *ft_results],
            numbers={"runs": per_run, "weight_change": changes, "weight_change_main": mean_change},
            notes=notes,
            missing=missing,
            extra={"done": done, "runs": runs, "main": main, "mean_change": mean_change},
        )

    def draw(self, plan: FinetunePlan, ctx: Context, measured: study.Measured) -> Optional[str]:
        done: dict[tuple[int, int, float], RunResult] = measured.extra.get("done", {})
        runs: list[rules.FinetuneRun] = measured.extra.get("runs", [])
        main = measured.extra.get("main", max(plan.new_individuals))
        mean_change: dict[str, dict[str, float]] = measured.extra.get("mean_change", {})
        fig = new_figure(ncols=3)
        ax_old, ax_new, ax_w = fig.subplots(1, 3)
        seed = plan.seeds[0]
        for i, w in enumerate(_replay(plan)):
            r = done.get((seed, main, w))
            if r is None:
                continue
            ax_old.plot(*r.series("old/attr_acc"), color=f"C{i}", label=f"replay {w:g}")
            ax_new.plot(*r.series("eval/attr_acc"), color=f"C{i}", label=f"replay {w:g}")
        first = next((x for x in runs if x.seed == seed and x.new_individuals == main), None)
        none = done.get((seed, main, 0.0))
        if first is not None and none is not None:
            i = rules.early_index(first.old_acc[0.0], first.old_start)
            step = none.series("old/attr_acc")[0][i]
            for ax in (ax_old, ax_new):
                ax.axvline(step, color="0.6", ls=":", lw=0.8)
            ax_old.axhline(first.old_start, color="0.3", ls="--", lw=0.8, label="before")
        for ax, title in ((ax_old, "old individuals"), (ax_new, "new individuals")):
            ax.set_xlabel("fine-tuning step")
            ax.set_ylabel("eval accuracy")
            ax.set_title(f"{title}, {main} new, seed {seed} (early point dotted)", fontsize=9)
            ax.legend(fontsize=7)
        if mean_change:
            groups = list(next(iter(mean_change.values())))
            x = np.arange(len(groups))
            width = 0.8 / len(mean_change)
            for i, (weight, values) in enumerate(mean_change.items()):
                ax_w.bar(
                    x + i * width,
                    [values.get(g, 0.0) for g in groups],
                    width,
                    label=f"replay {weight}",
                )
            ax_w.set_xticks(x + 0.4 - width / 2, groups, rotation=30, fontsize=7)
            ax_w.legend(fontsize=7)
        ax_w.set_ylabel("||W_ft - W_pre|| / ||W_pre||")
        ax_w.set_title(f"which weights move ({main} new, mean over seeds)", fontsize=9)
        return save_study_figure(fig, ctx.out, NAME)

    def table(self, plan: FinetunePlan, measured: study.Measured) -> list[study.Row]:
        rows = study.registered_rows(measured.judgement)
        for w, values in measured.extra.get("mean_change", {}).items():
            text = ", ".join(f"{g} {v:.3g}" for g, v in values.items())
            rows.append((f"relative weight change, replay {w}", text, "—"))
        return rows


STUDY = FinetuneStudy()
