"""Study `analyses`: three analyses beyond the paper, on one uniform and one power-law run.

Both runs share N, steps, seed and eval cadence, count every individual's training exposures
(`--count-exposures`: `exposures-<step>.npy` at each eval) and save the weights at every eval
(`model-<step>.pt`). No verdict: the paper makes none of these claims.

1. Knowledge vs exposures. At every eval snapshot, each probed individual's accuracy on the
   eval-template probe (share of its six values with every token argmax-correct, the metrics'
   definition) is paired with its exposure count. If one exposure count explained knowledge, the
   accuracy-vs-exposures curves of the two runs would coincide: we report their mean absolute
   difference over exposure bins (log2 bins, pooled over all evals, and at the last eval), and per
   bin the first step at which individuals with that many exposures are known (mean accuracy
   >= 50%). Under uniform sampling exposures grow with time for everyone; under a power law the
   head is seen far more often, so a bin that becomes known at very different steps in the two runs
   means time (the shared statistics and the plateau) matters beyond the count.
2. Where attention looks. Snapshots in the statistics phase, the plateau and the knowledge phase
   (the mid eval of each, split at the run's final plateau boundaries: the per-eval "phase" label is
   causal and calls a plateau's first evals statistics; the labels are the fallback when no plateau
   was found). The eval-probe rows go through `GPT.hidden_states(return_attention=True)`; at each
   position predicting a value's first token, each layer's attention mass (mean over heads and
   positions) is split into the individual's name tokens (anywhere before), the other tokens of the
   value's sentence (its template words: the engine does not mark which words name the attribute)
   and the rest.
3. Per-attribute curves: `{probe}/{attribute}/attr_loss|attr_acc` of the train-template and
   eval-template probes against steps, and the final train-minus-eval template gap per attribute.

Unfinished runs are left out of every analysis (the section says how many finished); a finished
run without snapshots or counts (made by an older trainer) is reported as such in the notes.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from kadyn.experiments import options, study
from kadyn.experiments.report import new_figure, save_study_figure
from kadyn.experiments.runner import Context, RunResult, RunSpec, snapshot_path
from kadyn.experiments.scales import AnalysesPlan

NAME = "analyses"
KNOWN = 0.5  # mean accuracy at which a group of individuals counts as known
MIN_BIN = 3  # (individual, eval) points a bin needs to enter a comparison
ATTENTION_ROWS = 64  # probe rows through the attention read-out: enough for a stable mean
PHASES = ("statistics", "plateau", "knowledge")
SHARES = ("name", "sentence", "rest")
SHARE_LABELS = {
    "name": "name tokens",
    "sentence": "value's sentence (template words)",
    "rest": "rest",
}


def exposure_bins(max_count: int) -> np.ndarray:
    """Edges 0, 1, 2, 4, 8, ... past `max_count`: bin b holds counts in [edges[b], edges[b+1])."""
    edges = [0, 1]
    while edges[-1] <= max_count:
        edges.append(edges[-1] * 2)
    return np.array(edges)


def bin_label(lo: int, hi: int) -> str:
    return str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}"


@dataclass
class RunAnalysis:
    """What the three analyses take from one finished run."""

    label: str  # "uniform" or "power"
    result: RunResult
    steps: list[int] = field(default_factory=list)  # evals with a snapshot and exposure counts
    accuracy: dict[int, np.ndarray] = field(default_factory=dict)  # step -> (probed,) accuracy
    exposures: dict[int, np.ndarray] = field(default_factory=dict)  # step -> (probed,) counts
    attention: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> step, layers


# ----------------------------------------------------------------------------------------------
# Reading a run back: its world, probe, snapshots


def _probe(run_dir: Path) -> tuple[Any, Any, Any, Any]:
    """(config, world, input_ids, attr_type) of the run's eval-template probe: the rows the trainer
    scores as `eval/...`, row i being individual i of the trained population."""
    import kadyn
    from kadyn.config import load_config_file
    from kadyn.train import build_world

    config = load_config_file(run_dir / "config.toml")
    world = build_world(config)
    batch = kadyn.to_torch(
        world.eval_set(
            split="eval",
            population=config.population,
            max_individuals=config.eval_individuals,
            seq_len=config.seq_len,
            seed=config.world_seed,
        )
    )
    return config, world, batch["input_ids"].long(), batch["attr_type"].clone()


def individual_accuracy(model: Any, ids: Any, attr: Any, pad_id: int, batch: int) -> np.ndarray:
    """Per row: the share of its values whose every token the model predicts right (argmax)."""
    import torch

    from kadyn.metrics import value_scores
    from kadyn.model import next_token_targets

    correct = np.zeros(ids.shape[0])
    count = np.zeros(ids.shape[0])
    with torch.no_grad():
        for i in range(0, ids.shape[0], batch):
            x, a = ids[i : i + batch], attr[i : i + batch]
            out = model(x, next_token_targets(x, pad_id))
            scores = value_scores(out.token_ce, out.token_correct, a)
            rows = scores.row.cpu().numpy() + i
            np.add.at(correct, rows, scores.correct.cpu().numpy().astype(float))
            np.add.at(count, rows, 1.0)
    return correct / np.maximum(count, 1.0)


def attention_shares(
    model: Any, ids: Any, attr: Any, name_tokens: Sequence[set[int]], period: int
) -> list[dict[str, float]]:
    """Per layer: the mean attention mass (over heads and value-predicting positions) on the
    individual's name tokens, on the other tokens of the value's sentence, and on the rest."""
    import torch

    with torch.no_grad():
        _, patterns = model.hidden_states(ids, return_attention=True)
    assert patterns is not None
    sums = np.zeros((len(patterns), len(SHARES)))
    queries = 0
    for row in range(ids.shape[0]):
        tokens = ids[row].tolist()
        types = attr[row].tolist()
        is_name = torch.tensor([t in name_tokens[row] for t in tokens])
        for q in range(len(tokens) - 1):
            # Position q predicts token q + 1: the first token of a value.
            if types[q + 1] < 0 or types[q] == types[q + 1]:
                continue
            # The sentence starts after the previous period (or <bos>, position 0).
            start = max((i for i in range(q) if tokens[i] == period), default=0) + 1
            sentence = torch.zeros(len(tokens), dtype=torch.bool)
            sentence[start : q + 1] = True
            sentence &= ~is_name
            for layer, pattern in enumerate(patterns):
                att = pattern[row, :, q, :].float()  # (heads, keys)
                name = att[:, is_name].sum(-1).mean().item()
                words = att[:, sentence].sum(-1).mean().item()
                total = att.sum(-1).mean().item()
                sums[layer] += (name, words, total - name - words)
            queries += 1
    shares = sums / max(queries, 1)
    return [dict(zip(SHARES, map(float, layer))) for layer in shares]


def phase_steps(result: RunResult, available: Sequence[int]) -> dict[str, Optional[int]]:
    """The mid eval (among `available`) of the statistics phase, the plateau and knowledge."""
    records = [r for r in result.records if r["step"] in set(available)]
    if not records:
        return {p: None for p in PHASES}
    last = result.records[-1]
    start, end = last.get("phase/plateau_start"), last.get("phase/plateau_end")
    if start is not None:
        # The final boundaries, not the causal per-eval labels (see the module docstring).
        stop = math.inf if end is None else end
        groups = {
            "statistics": [r["step"] for r in records if r["step"] < start],
            "plateau": [r["step"] for r in records if start <= r["step"] < stop],
            "knowledge": [r["step"] for r in records if r["step"] >= stop],
        }
    else:
        groups = {
            name: [r["step"] for r in records if r.get("phase") == i + 1]
            for i, name in enumerate(PHASES)
        }
    # Step 0 is the untrained model, not the statistics phase, unless it is all there is.
    if len(groups["statistics"]) > 1:
        groups["statistics"] = [s for s in groups["statistics"] if s > 0]
    return {p: (g[len(g) // 2] if g else None) for p, g in groups.items()}


def curve_steps(result: RunResult, available: Sequence[int]) -> dict[str, int]:
    """The evals drawn in the exposure panel: plateau start, mid-plateau, knowledge onset and the
    end (the first available eval at or after each); quartiles of the run without a plateau."""
    if not available:
        return {}
    last = result.records[-1]
    start, end = last.get("phase/plateau_start"), last.get("phase/plateau_end")
    final = available[-1]
    if start is not None:
        wanted = {"plateau start": start}
        if end is not None:
            wanted["mid-plateau"] = (start + end) / 2
            wanted["knowledge onset"] = end
        else:
            wanted["mid-plateau"] = (start + final) / 2
    else:
        wanted = {f"{q}% of the run": final * q / 100 for q in (25, 50, 75)}
    wanted["end"] = final
    return {k: next(s for s in available if s >= v) for k, v in wanted.items() if v <= final}


def analyse_run(label: str, result: RunResult) -> tuple[RunAnalysis, list[str]]:
    """Accuracy and exposures at every eval with a snapshot, and the attention shares."""
    from kadyn.checkpoint import load_model
    from kadyn.train import read_exposures

    run = RunAnalysis(label, result)
    notes: list[str] = []
    config, world, ids, attr = _probe(result.dir)
    for record in result.records:
        step = record["step"]
        path = snapshot_path(result.dir, step)
        counts = read_exposures(result.dir, step)
        if not path.exists() or counts is None:
            continue
        model, _ = load_model(path)
        run.steps.append(step)
        run.accuracy[step] = individual_accuracy(
            model, ids, attr, world.pad_id, config.eval_batch_size
        )
        run.exposures[step] = counts[: ids.shape[0]]
    if not run.steps:
        notes.append(f"{label} run: no model snapshots with exposure counts; left out.")
        return run, notes
    rows = min(ATTENTION_ROWS, ids.shape[0])
    # The individual's own name tokens (first, middle, last); row i probes individual i.
    names = [set(world.encode(world.individual(i, config.population)["name"])) for i in range(rows)]
    (period,) = world.encode(".")
    for phase, step in phase_steps(result, run.steps).items():
        if step is None:
            continue
        model, _ = load_model(snapshot_path(result.dir, step))
        shares = attention_shares(model, ids[:rows], attr[:rows], names, period)
        run.attention[phase] = {"step": step, "layers": shares}
    missing = [p for p in PHASES if p not in run.attention]
    if missing:
        notes.append(f"{label} run: no snapshot in phase(s) {', '.join(missing)}.")
    return run, notes


# ----------------------------------------------------------------------------------------------
# Analysis 1: accuracy against exposures


def binned(
    counts: np.ndarray, accuracy: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(mean accuracy, points) per exposure bin; NaN where a bin is empty."""
    which = np.digitize(counts, edges) - 1
    n = len(edges) - 1
    points = np.bincount(which, minlength=n)[:n]
    total = np.bincount(which, weights=accuracy, minlength=n)[:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(points > 0, total / points, np.nan), points


def pooled(run: RunAnalysis, steps: Sequence[int], edges: np.ndarray) -> tuple[Any, Any]:
    counts = np.concatenate([run.exposures[s] for s in steps])
    accuracy = np.concatenate([run.accuracy[s] for s in steps])
    return binned(counts, accuracy, edges)


def curve_gap(a: tuple[Any, Any], b: tuple[Any, Any]) -> tuple[Optional[float], int]:
    """Mean |accuracy difference| over the bins both curves fill with >= MIN_BIN points."""
    (acc_a, n_a), (acc_b, n_b) = a, b
    both = (n_a >= MIN_BIN) & (n_b >= MIN_BIN)
    if not both.any():
        return None, 0
    return float(np.mean(np.abs(acc_a[both] - acc_b[both]))), int(both.sum())


def known_steps(run: RunAnalysis, edges: np.ndarray) -> list[Optional[int]]:
    """Per exposure bin: the first eval at which the individuals in it are known (mean accuracy
    >= KNOWN over >= MIN_BIN of them)."""
    first: list[Optional[int]] = [None] * (len(edges) - 1)
    for step in run.steps:
        acc, points = binned(run.exposures[step], run.accuracy[step], edges)
        for b in range(len(first)):
            if first[b] is None and points[b] >= MIN_BIN and acc[b] >= KNOWN:
                first[b] = step
    return first


def exposures_to_know(curve: tuple[Any, Any], edges: np.ndarray) -> Optional[int]:
    """The lower edge of the first bin whose pooled accuracy reaches KNOWN."""
    acc, points = curve
    for b in range(len(acc)):
        if points[b] >= MIN_BIN and acc[b] >= KNOWN:
            return int(edges[b])
    return None


def _floats(values: np.ndarray) -> list[Optional[float]]:
    return [None if not np.isfinite(v) else float(v) for v in values]


# ----------------------------------------------------------------------------------------------
# Analysis 3: per-attribute curves


def attribute_names(result: RunResult) -> list[str]:
    """Attributes with eval-probe entries, in the order of the records' keys."""
    names = []
    for key in result.records[-1]:
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval" and parts[2] == "attr_loss":
            names.append(parts[1])
    return names


def attribute_finals(result: RunResult) -> dict[str, dict[str, Optional[float]]]:
    final = result.records[-1]
    out = {}
    for name in attribute_names(result):
        entry: dict[str, Optional[float]] = {}
        for probe in ("train", "eval"):
            for metric, key in (("loss", "attr_loss"), ("acc", "attr_acc")):
                entry[f"{probe}_{metric}"] = final.get(f"{probe}/{name}/{key}")
        for metric in ("loss", "acc"):
            t, e = entry[f"train_{metric}"], entry[f"eval_{metric}"]
            entry[f"gap_{metric}"] = None if t is None or e is None else t - e
        out[name] = entry
    return out


# ----------------------------------------------------------------------------------------------
# The study


class AnalysesStudy:
    name = NAME
    title = "Beyond the paper"
    claim = (
        "no claim: analyses the paper does not make. (1) Does one exposure count explain knowledge "
        "under uniform and power-law sampling alike? (2) Where does attention look, at the "
        "positions predicting a value, in the statistics phase, the plateau and knowledge? "
        "(3) How do the six attributes and the train / held-out templates differ?"
    )
    plan_type = AnalysesPlan

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--individuals", type=options.size, help="N of both runs")
        parser.add_argument("--steps", type=options.steps, help="steps of both runs")
        parser.add_argument(
            "--alpha", type=options.float_range(0.0, 5.0), help="exponent of the power-law run"
        )
        parser.add_argument("--seed", type=options.seed, help="seed of both runs")

    def overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        return study.plan_fields(
            individuals=args.individuals, steps=args.steps, alpha=args.alpha, seed=args.seed
        )

    def check(self, plan: AnalysesPlan) -> None:
        if plan.alpha <= 0:
            raise ValueError(f"--alpha must be > 0 (0 is the uniform run), got {plan.alpha}")
        if plan.individuals < 1:
            raise ValueError(f"--individuals must be >= 1, got {plan.individuals}")
        if plan.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {plan.steps}")

    def specs(self, plan: AnalysesPlan, ctx: Context) -> list[RunSpec]:
        common: dict[str, Any] = dict(
            n=plan.individuals,
            seed=plan.seed,
            # At least a few evals even when --steps is cut below the scale's cadence.
            eval_every=max(1, min(plan.eval_every, plan.steps // 4)),
            snapshot_models=True,
            steps=plan.steps,
            count_exposures=True,
            train_probe=True,  # the train-vs-eval template gap needs it
        )
        tag = f"n{plan.individuals}-s{plan.seed}"
        return [
            ctx.spec(NAME, f"uniform-{tag}", meta={"label": "uniform"}, **common),
            ctx.spec(
                NAME,
                f"power{plan.alpha:g}-{tag}",
                meta={"label": "power"},
                sampling="power",
                alpha=plan.alpha,
                **common,
            ),
        ]

    def execute(self, plan: AnalysesPlan, ctx: Context) -> None:
        ctx.run(self.specs(plan, ctx), NAME)

    def measure(self, plan: AnalysesPlan, ctx: Context) -> study.Measured:
        specs = self.specs(plan, ctx)
        results = ctx.load(specs)
        notes = [
            "Accuracy per individual: the share of its six values (eval-template probe) with "
            "every token predicted right; exposures: biographies of it in the training batches "
            "so far. Bins double in width (0, 1, 2-3, 4-7, ...); a comparison uses bins with >= "
            f"{MIN_BIN} (individual, eval) points in both runs; known = mean accuracy >= "
            f"{KNOWN:.0%}.",
            "Attention: the engine does not mark which template words name the attribute, so the "
            "'sentence' share is every token of the value's sentence before the value, excluding "
            "the name tokens (template words); 'name' is the individual's name tokens anywhere "
            "before the position (every sentence repeats the name); mean over heads and the "
            f"positions predicting each value's first token of the first {ATTENTION_ROWS} probe "
            "rows.",
            # The probe takes the first k individuals, and P(i) ~ (i+1)^-alpha.
            "Probes hold the first min(N, eval cap) individuals: under power-law sampling those "
            "are the most frequent, so the power run's per-attribute levels are not comparable "
            "with the uniform run's; the exposure analysis is per individual and is unaffected.",
        ]
        runs: dict[str, RunAnalysis] = {}
        for spec, result in zip(specs, results):
            label = spec.meta["label"]
            if result is None:
                notes.append(f"{label} run not finished: left out.")
                continue
            run, run_notes = analyse_run(label, result)
            notes += run_notes
            if run.steps:
                runs[label] = run

        numbers: dict[str, Any] = {"runs": {}}
        top = max(
            (int(c.max()) for r in runs.values() for c in r.exposures.values() if c.size),
            default=0,
        )
        edges = exposure_bins(top)
        labels = [bin_label(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]
        curves: dict[str, dict[str, Any]] = {}
        for label, run in runs.items():
            pool = pooled(run, run.steps, edges)
            at = curve_steps(run.result, run.steps)
            curves[label] = {
                "pooled": pool,
                "end": pooled(run, run.steps[-1:], edges),
                "steps": {name: (step, pooled(run, [step], edges)) for name, step in at.items()},
                "known": known_steps(run, edges),
            }
            numbers["runs"][label] = {
                "dir": run.result.dir.name,
                "evals": len(run.steps),
                "exposure_bins": labels,
                "accuracy_pooled": _floats(pool[0]),
                "points_pooled": [int(n) for n in pool[1]],
                "accuracy_at": {
                    name: {"step": step, "accuracy": _floats(curve[0])}
                    for name, (step, curve) in curves[label]["steps"].items()
                },
                "known_step": dict(zip(labels, curves[label]["known"])),
                "exposures_to_know": exposures_to_know(pool, edges),
                "attention": run.attention,
                "attributes": attribute_finals(run.result),
                "plateau_start": run.result.summary.get("plateau_start"),
                "plateau_end": run.result.summary.get("plateau_end"),
            }
        comparison: dict[str, Any] = {}
        if len(curves) == 2:
            gap, bins = curve_gap(curves["uniform"]["pooled"], curves["power"]["pooled"])
            gap_end, bins_end = curve_gap(curves["uniform"]["end"], curves["power"]["end"])
            comparison = {
                "gap_pooled": gap,
                "bins_pooled": bins,
                "gap_end": gap_end,
                "bins_end": bins_end,
            }
        elif results.count(None) < len(results):
            notes.append("Only one run has snapshots and counts: no uniform/power comparison.")
        numbers["comparison"] = comparison
        return study.Measured(
            judgement=None,
            results=results,
            numbers=numbers,
            notes=notes,
            extra={"runs": runs, "curves": curves, "edges": edges, "labels": labels},
        )

    def draw(self, plan: AnalysesPlan, ctx: Context, measured: study.Measured) -> Optional[str]:
        runs: dict[str, RunAnalysis] = measured.extra["runs"]
        finished = [r for r in measured.results if r is not None]
        if not finished:
            return None
        fig = new_figure(ncols=3, nrows=2, width=5.0, height=3.8)
        (ax_exp, ax_known, ax_att), (ax_loss, ax_acc, ax_gap) = fig.subplots(2, 3)
        colors = {"uniform": "C0", "power": "C3"}
        names = {"uniform": "uniform", "power": f"power law α={plan.alpha:g}"}
        labels: list[str] = measured.extra["labels"]
        x = np.arange(len(labels))

        # 1. accuracy vs exposures: pooled over every eval (thick) and at chosen evals (thin).
        for label, curve in measured.extra["curves"].items():
            acc, points = curve["pooled"]
            keep = points >= MIN_BIN
            ax_exp.plot(
                x[keep],
                acc[keep],
                "-o",
                color=colors[label],
                lw=2,
                ms=4,
                label=f"{names[label]}, all evals",
            )
            for j, (name, (step, (acc_s, pts_s))) in enumerate(curve["steps"].items()):
                keep = pts_s >= 1
                ax_exp.plot(
                    x[keep],
                    acc_s[keep],
                    ls=":",
                    marker="osD^v"[j % 5],
                    ms=3,
                    lw=0.8,
                    color=colors[label],
                    alpha=0.6,
                    label=f"{label}: {name} ({step})",
                )
            known = [np.nan if s is None else s for s in curve["known"]]
            ax_known.plot(x, known, "-o", color=colors[label], label=names[label])
        for ax in (ax_exp, ax_known):
            ax.set_xticks(x, labels, rotation=45, fontsize=7)
            ax.set_xlabel("exposures (biographies seen)")
        ax_exp.set_ylim(-0.03, 1.03)
        ax_exp.set_ylabel("eval-template accuracy")
        ax_exp.set_title("knowledge vs exposures")
        ax_exp.legend(fontsize=5.5, ncol=2)
        ax_known.set_ylabel(f"first step with accuracy ≥ {KNOWN:.0%}")
        ax_known.set_title("when individuals with k exposures are known")
        ax_known.legend(fontsize=7)

        # 2. attention shares by layer and phase (bars: phases x layers, stacked shares).
        ticks, tick_labels, pos = [], [], 0.0
        hatches = {"uniform": "", "power": "//"}
        for label, run in runs.items():
            for phase in PHASES:
                if phase not in run.attention:
                    continue
                for layer, shares in enumerate(run.attention[phase]["layers"]):
                    bottom = 0.0
                    for k, share in enumerate(SHARES):
                        ax_att.bar(
                            pos,
                            shares[share],
                            bottom=bottom,
                            color=f"C{k + 4}",
                            hatch=hatches[label],
                            edgecolor="white",
                            width=0.8,
                            label=SHARE_LABELS[share] if pos == 0 else None,
                        )
                        bottom += shares[share]
                    ticks.append(pos)
                    tick_labels.append(f"{label[0]}:{phase[:4]} L{layer}")
                    pos += 1
                pos += 0.5
        ax_att.set_xticks(ticks, tick_labels, rotation=90, fontsize=6)
        ax_att.set_ylabel("attention mass from value-predicting positions")
        ax_att.set_title("where attention looks (u = uniform, p = power)")
        ax_att.legend(fontsize=6)

        # 3. per-attribute curves of the first finished run; the gap bars for both.
        first = runs.get("uniform") or next(iter(runs.values()), None)
        source = first.result if first is not None else finished[0]
        for i, name in enumerate(attribute_names(source)):
            for ax, metric in ((ax_loss, "attr_loss"), (ax_acc, "attr_acc")):
                for probe, style in (("eval", "-"), ("train", "--")):
                    ax.plot(
                        *source.series(f"{probe}/{name}/{metric}"),
                        ls=style,
                        color=f"C{i}",
                        lw=1,
                        label=name if probe == "eval" else None,
                    )
        ax_loss.set_ylabel("attribute loss (nats per value)")
        ax_loss.set_yscale("log")
        ax_acc.set_ylabel("attribute accuracy")
        for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.set_xlabel("step")
            ax.set_title(f"{what} per attribute ({source.spec.meta['label']}; — eval, -- train)")
            ax.legend(fontsize=6)
        width = 0.4
        for j, result in enumerate(finished):
            finals = attribute_finals(result)
            gaps = [v["gap_acc"] if v["gap_acc"] is not None else np.nan for v in finals.values()]
            ax_gap.bar(
                np.arange(len(finals)) + (j - 0.5) * width,
                gaps,
                width,
                color=colors[result.spec.meta["label"]],
                label=names[result.spec.meta["label"]],
            )
            ax_gap.set_xticks(np.arange(len(finals)), list(finals), rotation=30, fontsize=7)
        ax_gap.axhline(0, color="0.3", lw=0.8)
        ax_gap.set_ylabel("final accuracy: train − eval templates")
        ax_gap.set_title("template gap per attribute (end)")
        ax_gap.legend(fontsize=7)
        return save_study_figure(fig, ctx.out, NAME)

    def table(self, plan: AnalysesPlan, measured: study.Measured) -> list[study.Row]:
        rows: list[study.Row] = []
        numbers = measured.numbers
        runs = numbers.get("runs", {})
        comparison = numbers.get("comparison", {})
        if comparison.get("gap_pooled") is not None:
            rows.append(
                (
                    "accuracy gap uniform vs power at equal exposures (mean |Δ|, all evals)",
                    f"{comparison['gap_pooled']:.3f} over {comparison['bins_pooled']} bins",
                    "—",
                )
            )
        if comparison.get("gap_end") is not None:
            rows.append(
                (
                    "same, at the last eval",
                    f"{comparison['gap_end']:.3f} over {comparison['bins_end']} bins",
                    "—",
                )
            )

        def both(get: Any) -> str:
            return " / ".join(
                f"{label} {get(runs[label])}" for label in ("uniform", "power") if label in runs
            )

        if runs:
            rows.append(
                (
                    f"exposures at which accuracy reaches {KNOWN:.0%} (all evals)",
                    both(lambda r: r["exposures_to_know"]),
                    "—",
                )
            )
            labels = next(iter(runs.values()))["exposure_bins"]
            for b in labels:
                steps = {k: r["known_step"].get(b) for k, r in runs.items()}
                if any(s is not None for s in steps.values()):
                    rows.append(
                        (
                            f"first step known with {b} exposures",
                            both(lambda r, b=b: r["known_step"].get(b)),
                            "—",
                        )
                    )
        for label, run in runs.items():
            for phase, entry in run["attention"].items():
                for layer, shares in enumerate(entry["layers"]):
                    rows.append(
                        (
                            f"{label}, {phase} (step {entry['step']}), layer {layer}: attention "
                            "on name / sentence words / rest",
                            " / ".join(f"{shares[s]:.2f}" for s in SHARES),
                            "—",
                        )
                    )
        for label, run in runs.items():
            for name, v in run["attributes"].items():
                if v["eval_acc"] is None or v["gap_acc"] is None or v["gap_loss"] is None:
                    continue
                rows.append(
                    (
                        f"{label}, {name}: final eval loss / acc; train − eval templates "
                        "loss / acc",
                        f"{v['eval_loss']:.3f} / {v['eval_acc']:.3f}; "
                        f"{v['gap_loss']:+.3f} / {v['gap_acc']:+.3f}",
                        "—",
                    )
                )
        return rows


STUDY = AnalysesStudy()
