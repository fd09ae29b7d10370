"""The three phases, measured: the default run against the statistics-only level F and its twin.

Not a test (it trains for tens of minutes): the measurement behind the README's description of the
default run and behind the phases issue's acceptance figures. It trains

- the default preset (`tiny`) on 3 seeds, and its no-knowledge control (`--control`) on 3 seeds;
- N = 256 (the preset otherwise, 1200 steps, an eval every 20), one real run and one control
  (the preset's own N is 1024);

then reports, per real run: F and the value-table entropy; the plateau detected against F (start,
end, length, evals, max |loss - F| / F and max accuracy inside it, length at bands 5/10/20%); the
twin's mean over that plateau window and at the end, relative to F; knowledge onset read against
the twin (real curve below the twins' mean by more than their seed-to-seed range); final
accuracy, held-out loss against F, and wall time. Runs are cached: a rerun skips finished ones.

    python benches/phases.py --out runs/phases            # everything, 2 one-thread runs at a time
    python benches/phases.py --out runs/phases --jobs 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kadyn.config import load_config_file
from kadyn.evaluation import read_metrics
from kadyn.phases import band_sensitivity, detect_phases
from kadyn.twin import load_twin

SEEDS = (0, 1, 2)
# The default preset's N is 1024; N = 256 runs a shorter schedule with denser evaluations.
EXTRA_N = {256: ["--steps", "1200", "--eval-every", "20"]}


def run(out: Path, threads: int, flags: list[str]) -> Path:
    """Train one run into `out` with `kadyn-train` (skipped when its summary.json exists)."""
    if (out / "summary.json").exists():
        return out
    if out.exists():  # an interrupted run: continue it
        flags = [*flags, "--resume"]
    cmd = [sys.executable, "-m", "kadyn.train", "--out", str(out), "--threads", str(threads)]
    cmd += ["--no-progress", *flags]
    with (out.parent / f"{out.name}.log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return out


def window_mean(steps, curve, lo: float, hi: float) -> float:
    grid = np.linspace(lo, hi, 50)
    return float(np.interp(grid, steps, curve).mean())


def measure(real: Path, twins: list[Path]) -> dict[str, Any]:
    summary = json.loads((real / "summary.json").read_text())
    records = read_metrics(real / "metrics.jsonl")
    config = load_config_file(real / "config.toml")
    steps = [r["step"] for r in records]
    losses = [r["eval/attr_loss"] for r in records]
    accs = [r["eval/attr_acc"] for r in records]
    level = summary["level"]
    twin = load_twin(",".join(map(str, twins)), config)
    reference, half_width = twin.at(steps)
    final = summary["final"]
    # The run itself read its phases against the twin (it was given --twin); here they are read
    # against F too, with the trainer's default rule.
    against_f = detect_phases(
        steps, losses, level, accs, band=config.plateau_band, min_evals=config.plateau_min_evals
    )
    by_band = band_sensitivity(steps, losses, level, accs, min_evals=config.plateau_min_evals)
    start, end, onset = against_f.plateau_start, against_f.plateau_end, against_f.knowledge_onset
    out: dict[str, Any] = {
        "run": str(real),
        "individuals": config.individuals,
        "seed": config.seed,
        "F": level,
        "value_table_entropy": summary["value_table_entropy"],
        "plateau_start": start,
        "plateau_end": end,
        "plateau_length": against_f.plateau_length,
        "plateau_evals": against_f.plateau_evals,
        "plateau_max_deviation": against_f.max_deviation,
        "plateau_max_accuracy": against_f.max_accuracy,
        "plateau_length_by_band": {f"{b:g}": p.plateau_length for b, p in by_band.items()},
        "knowledge_onset": onset,
        "twin_seeds": twin.seeds,
        "twin_end_vs_F": float(twin.mean[-1] / level - 1),
        "final_eval_acc": final["eval/attr_acc"],
        "final_eval_loss": final["eval/attr_loss"],
        "final_heldout_loss": final.get("heldout/attr_loss"),
        "wall_s": summary["wall_s"],
    }
    if start is not None and end is not None:
        out["twin_window_vs_F"] = window_mean(twin.steps, twin.mean, start, end) / level - 1
        deviations = [
            abs(np.interp(s, twin.steps, twin.mean) / level - 1) for s in steps if start <= s <= end
        ]
        out["twin_window_max_vs_F"] = float(max(deviations)) if deviations else None
        out["plateau_fraction_of_onset"] = (end - start) / end
    if onset is not None:
        # The detector's lag: from the loss's last crossing of F itself before the onset (where it
        # starts to leave F) to the onset at the band's lower edge.
        crossed = None
        for (s0, l0), (s1, l1) in zip(zip(steps, losses), zip(steps[1:], losses[1:])):
            if s1 > onset:
                break
            if l0 >= level > l1:
                crossed = s0 + (l0 - level) / (l0 - l1) * (s1 - s0)
        out["onset_lag_from_F"] = None if crossed is None else onset - crossed
    # As the trainer reads a run given --twin: entered at F's band, onset once the loss is below
    # the twins' mean by more than their seed range, twice in a row.
    against_twin = detect_phases(
        steps,
        losses,
        level,
        accs,
        band=config.plateau_band,
        min_evals=config.plateau_min_evals,
        onset_level=reference,
        onset_half_width=half_width,
        confirm=2,
    )
    out["twin_detector"] = {
        "plateau_start": against_twin.plateau_start,
        "plateau_end": against_twin.plateau_end,
        "knowledge_onset": against_twin.knowledge_onset,
        "half_width_max": None if half_width is None else float(max(half_width)),
        "half_width_mean": None if half_width is None else float(np.mean(half_width)),
    }
    return out


def fmt(x: Optional[float], spec: str = ".0f") -> str:
    return "—" if x is None else format(x, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| run | N | seed | F | twin vs F (window / max / end) | plateau (start–end, evals) | "
        "max dev | max acc | plateau / T_k | length at 5/10/20% | lag from F | vs twin: plateau, onset | "
        "final acc | held-out − F | wall s |"
    )
    lines = [head, "|" + " --- |" * 15]
    for r in rows:
        b, t = r["plateau_length_by_band"], r["twin_detector"]
        lines.append(
            f"| {Path(r['run']).name} | {r['individuals']} | {r['seed']} | {r['F']:.3f} | "
            f"{fmt(r.get('twin_window_vs_F'), '+.1%')} / {fmt(r.get('twin_window_max_vs_F'), '.1%')}"
            f" / {r['twin_end_vs_F']:+.1%} | "
            f"{fmt(r['plateau_start'])}–{fmt(r['plateau_end'])} ({r['plateau_evals']}) | "
            f"{fmt(r['plateau_max_deviation'], '.1%')} | {fmt(r['plateau_max_accuracy'], '.3f')} | "
            f"{fmt(r.get('plateau_fraction_of_onset'), '.0%')} | "
            f"{' / '.join(fmt(b[k]) for k in ('0.05', '0.1', '0.2'))} | "
            f"{fmt(r.get('onset_lag_from_F'))} | "
            f"{fmt(t['plateau_start'])}–{fmt(t['plateau_end'])}, {fmt(t['knowledge_onset'])} | "
            f"{r['final_eval_acc']:.3f} | "
            f"{fmt((r['final_heldout_loss'] or 0) - r['F'], '+.2f')} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    def path(kind: str, n: Optional[int], seed: int) -> Path:
        return args.out / f"{kind}-{'tiny' if n is None else f'n{n}'}-s{seed}"

    def flags(n: Optional[int], seed: int) -> list[str]:
        extra = [] if n is None else ["--individuals", str(n), *EXTRA_N[n]]
        return ["--seed", str(seed), *extra]

    controls = [(None, s) for s in SEEDS] + [(n, 0) for n in EXTRA_N]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(
            pool.map(
                lambda c: run(path("control", *c), args.threads, [*flags(*c), "--control"]),
                controls,
            )
        )
        reals = [(None, s) for s in SEEDS] + [(n, 0) for n in EXTRA_N]

        def train_real(c: tuple[Optional[int], int]) -> Path:
            n, _ = c
            twins = [path("control", n, s) for s in (SEEDS if n is None else (0,))]
            twin = ",".join(map(str, twins))
            return run(path("real", *c), args.threads, [*flags(*c), "--twin", twin])

        list(pool.map(train_real, reals))
    rows = []
    for n, seed in reals:
        twins = [path("control", n, s) for s in (SEEDS if n is None else (0,))]
        rows.append(measure(path("real", n, seed), twins))
    (args.out / "phases.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
