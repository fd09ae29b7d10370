"""Runs of the experiment suite: cached, resumable, optionally in parallel, with a progress bar.

A run is a `RunSpec`: trainer overrides on top of a preset, plus what the suite adds around
`kadyn.train.train` (stop once knowledge has emerged; patch attention patterns from a reference
checkpoint). Its directory is `OUT/<study>/<name>-<hash>`, the hash covering everything that
changes what the run computes, so a changed scale or option never reuses a stale run.

- finished: the directory holds `result.json` (written last, atomically): the run is skipped;
- killed: the trainer's checkpoint is there: the run resumes from it (exact resume);
- killed before its first checkpoint: the directory is wiped and the run starts again.

Runs execute in this process when `jobs == 1` (no interpreter start-up, and tests can count
calls), else in a spawn-context process pool: fork after torch has started threads can deadlock.
Each run's trainer log goes to `train.log` in its directory, so parallel runs do not interleave.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tqdm import tqdm

from kadyn.fileio import atomic_write_text

RESULT = "result.json"
LOG = "train.log"
LOCK = ".lock"
CHECKPOINT_EVERY_EVALS = 5  # a killed run loses at most this many evals of work


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study."""

    study: str
    name: str  # readable part of the directory name, e.g. "n500-s0"
    overrides: dict[str, Any]  # TrainConfig fields over the preset (not out/resume/progress)
    preset: str = "tiny"
    # Stop this many steps after the knowledge onset (the plateau's end); None = never.
    stop_after_knowledge: Optional[int] = None
    # Stop at the first evaluation at or after this step (the lr schedule still spans `steps`).
    stop_at_step: Optional[int] = None
    # Attention patching: layers' patterns come from this checkpoint run on the same batch.
    # Checkpoint paths (here and an `init_checkpoint` override) are relative to OUT, so that a
    # moved OUT keeps its cache.
    patch_checkpoint: Optional[str] = None
    patch_layers: tuple[int, ...] = ()
    # Save the weights at every evaluation, step 0 included (`model-<step>.pt`): the trainer's
    # kept checkpoints start after the first step, and patching needs the untrained patterns.
    snapshot_models: bool = False
    meta: dict[str, Any] = field(default_factory=dict)  # labels for analysis; not hashed

    def key(self) -> str:
        payload = {
            "preset": self.preset,
            "overrides": self.overrides,
            "stop_after_knowledge": self.stop_after_knowledge,
            "patch_checkpoint": self.patch_checkpoint,
            "patch_layers": list(self.patch_layers),
            "snapshot_models": self.snapshot_models,
        }
        if self.stop_at_step is not None:  # left out when unset: keys of runs without it stay put
            payload["stop_at_step"] = self.stop_at_step
        digest = hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"

    def run_dir(self, out: Path) -> Path:
        return Path(out) / self.study / self.key()


@dataclass
class RunResult:
    spec: RunSpec
    dir: Path
    records: list[dict[str, Any]]  # metrics.jsonl, one per evaluation
    summary: dict[str, Any]  # the trainer's summary, plus 'stopped_early'
    cached: bool = False  # found finished on disk, not trained by this call

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pairs = [(r["step"], r[key]) for r in self.records if r.get(key) is not None]
        return [p[0] for p in pairs], [float(p[1]) for p in pairs]


class RunFailed(RuntimeError):
    """One or more runs raised; the others were completed."""


class _StopRun(Exception):
    """Raised from the eval callback to end a run early (knowledge has emerged)."""


def snapshot_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"model-{step:07d}.pt"


def _read_records(run_dir: Path) -> list[dict[str, Any]]:
    from kadyn.train import read_metrics  # lazy: keeps `kadyn-exp --help` free of torch

    return read_metrics(run_dir / "metrics.jsonl")


def load_result(spec: RunSpec, out: Path) -> Optional[RunResult]:
    """The finished run of `spec` under `out`, or None if it has not finished."""
    run_dir = spec.run_dir(out)
    done = run_dir / RESULT
    if not done.exists():
        return None
    summary = json.loads(done.read_text())
    return RunResult(spec, run_dir, _read_records(run_dir), summary, cached=True)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def _attention_source(spec: RunSpec, out: Path, device_name: str) -> Callable[[Any], dict]:
    """Patterns of the reference checkpoint on the very batch the twin is trained on."""
    import torch

    from kadyn.checkpoint import load_model

    want_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if want_cuda else "cpu")
    assert spec.patch_checkpoint is not None
    reference, _ = load_model(out / spec.patch_checkpoint, map_location=device)
    reference.to(device)
    layers = spec.patch_layers or tuple(range(reference.config.n_layers))

    @torch.no_grad()
    def source(input_ids: torch.Tensor) -> dict:
        _, patterns = reference.hidden_states(input_ids.to(device).long(), return_attention=True)
        assert patterns is not None
        return {layer: patterns[layer] for layer in layers}

    return source


def execute(spec: RunSpec, out: str, threads: int) -> dict[str, Any]:
    """Train (or resume) one run to completion and write its result.json; returns the summary.

    Top-level and argument-picklable, so that a spawn-context pool can call it.
    """
    run_dir = spec.run_dir(Path(out))
    done = run_dir / RESULT
    if done.exists():
        return json.loads(done.read_text())
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    # One process per run: a second suite on the same OUT must not train it at the same time.
    with open(run_dir.parent / f".{run_dir.name}{LOCK}", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{run_dir} is being trained by another process") from None
        return _execute_locked(spec, run_dir, Path(out), threads)


def _execute_locked(spec: RunSpec, run_dir: Path, out: Path, threads: int) -> dict[str, Any]:
    from kadyn.checkpoint import checkpoint_path, save_checkpoint
    from kadyn.config import make_config
    from kadyn.train import train

    done = run_dir / RESULT
    if done.exists():  # finished by another process between the first check and the lock
        return json.loads(done.read_text())
    resume = checkpoint_path(run_dir).exists()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to resume
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = dict(spec.overrides)
    if overrides.get("init_checkpoint"):
        overrides["init_checkpoint"] = str(out / overrides["init_checkpoint"])
    config = make_config(
        spec.preset,
        **overrides,
        out=str(run_dir),
        resume=resume,
        progress=False,
        threads=threads,
    )
    stopped = False

    def on_eval(step: int, record: dict, model: Any) -> None:
        if spec.snapshot_models:
            state = {"model": model.state_dict(), "model_config": vars(model.config).copy()}
            save_checkpoint({**state, "step": step}, snapshot_path(run_dir, step))
        # The onset, not the plateau's end: a run that reaches knowledge without a detected
        # plateau must stop too (onset = plateau end whenever there is a plateau).
        onset = record.get("phase/knowledge_onset")
        if spec.stop_after_knowledge is not None and onset is not None:
            if step >= onset + spec.stop_after_knowledge:
                raise _StopRun
        if spec.stop_at_step is not None and step >= spec.stop_at_step:
            raise _StopRun

    source = _attention_source(spec, out, config.device) if spec.patch_checkpoint else None
    t0 = time.perf_counter()
    with open(run_dir / LOG, "a") as log, contextlib.redirect_stderr(log):
        try:
            summary = train(config, on_eval=on_eval, attention_source=source)
        except _StopRun:
            stopped = True
            records = _read_records(run_dir)
            summary = {
                "out": str(run_dir),
                "steps": records[-1]["step"],
                "level": records[-1]["no_knowledge/level"],
                "plateau_start": records[-1]["phase/plateau_start"],
                "plateau_end": records[-1]["phase/plateau_end"],
                "knowledge_onset": records[-1]["phase/knowledge_onset"],
                "final": records[-1],
            }
    summary["stopped_early"] = stopped
    summary["run_wall_s"] = time.perf_counter() - t0
    summary["spec"] = asdict(spec)
    _write_json(done, summary)
    return summary


def _die_with_parent() -> None:
    """Pool initializer: a worker gets SIGTERM when the suite dies (Linux), instead of training
    on as an orphan while a restarted suite resumes the same run."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def run_all(
    specs: Sequence[RunSpec],
    out: Path,
    jobs: int = 1,
    threads: Optional[int] = None,
    desc: str = "runs",
    progress: bool = True,
) -> list[RunResult]:
    """Complete every run (skipping finished ones) and return their results in `specs` order.

    Raises RunFailed after all runs were attempted if any of them raised.
    """
    out = Path(out)
    keys = [s.key() for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{desc}: two runs share a key; runs must differ in their settings")
    results: dict[int, RunResult] = {}
    todo = []
    for i, spec in enumerate(specs):
        cached = load_result(spec, out)
        if cached is not None:
            results[i] = cached
        else:
            todo.append(i)
    # Longest first: the last runs to start are short, so no core idles long at the end.
    todo.sort(key=lambda i: -expected_cost(specs[i]))
    # Split the cores between parallel runs: oversubscribed OpenMP threads slow everything down.
    threads = threads or max(1, cpu_count() // max(1, jobs))
    errors: list[str] = []
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=desc, disable=not progress)

    def finish(i: int) -> None:
        result = load_result(specs[i], out)
        assert result is not None
        result.cached = False
        results[i] = result
        bar.update(1)

    if jobs <= 1 or len(todo) <= 1:
        for i in todo:
            bar.set_postfix_str(specs[i].name)
            try:
                execute(specs[i], str(out), threads)
                finish(i)
            except Exception as e:  # noqa: BLE001 - one failed run must not sink the others
                errors.append(_describe_failure(specs[i], e))
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=jobs, mp_context=ctx, initializer=_die_with_parent
        ) as pool:
            futures = {pool.submit(execute, specs[i], str(out), threads): i for i in todo}
            for future in cf.as_completed(futures):
                i = futures[future]
                try:
                    future.result()
                    finish(i)
                except Exception as e:  # noqa: BLE001
                    errors.append(_describe_failure(specs[i], e))
    bar.close()
    if errors:
        raise RunFailed(f"{len(errors)} run(s) failed:\n" + "\n".join(errors))
    return [results[i] for i in range(len(specs))]


def expected_cost(spec: RunSpec) -> float:
    """A run's relative cost for ordering: individuals x steps (a run stopped at knowledge
    onset takes time roughly proportional to N, and so does an evaluation)."""
    return float(spec.overrides.get("individuals", 1)) * float(spec.overrides.get("steps", 1))


def _describe_failure(spec: RunSpec, e: BaseException) -> str:
    last = traceback.format_exception_only(type(e), e)[-1].strip()
    return f"  {spec.study}/{spec.key()}: {last} (log: {spec.study}/{spec.key()}/{LOG})"


@dataclass
class Context:
    """Where and how a study's runs execute: OUT, the scale's shared trainer settings, jobs."""

    out: Path
    preset: str
    base: dict[str, Any]
    jobs: int = 1
    threads: Optional[int] = None
    progress: bool = True
    trained: int = 0  # runs trained (not found cached) through this context

    @property
    def eval_cap(self) -> int:
        return int(self.base.get("eval_individuals", 512))

    def spec(
        self,
        study: str,
        name: str,
        *,
        n: int,
        seed: int,
        eval_every: int,
        stop_after_knowledge: Optional[int] = None,
        stop_at_step: Optional[int] = None,
        patch_checkpoint: Optional[str] = None,
        snapshot_models: bool = False,
        meta: Optional[dict[str, Any]] = None,
        **overrides: Any,
    ) -> RunSpec:
        """The one place a run is set up: the scale's base, then the shared defaults (N, seed and
        world seed, evaluation and checkpoint cadence, probed individuals capped by the scale),
        then the study's own overrides."""
        shared: dict[str, Any] = {
            "individuals": n,
            "seed": seed,
            "world_seed": seed,
            "eval_every": eval_every,
            "checkpoint_every": eval_every * CHECKPOINT_EVERY_EVALS,
            "eval_individuals": min(n, self.eval_cap),
        }
        return RunSpec(
            study=study,
            name=name,
            overrides={**self.base, **shared, **overrides},
            preset=self.preset,
            stop_after_knowledge=stop_after_knowledge,
            stop_at_step=stop_at_step,
            patch_checkpoint=patch_checkpoint,
            snapshot_models=snapshot_models,
            meta=meta or {},
        )

    def run(self, specs: Sequence[RunSpec], desc: str) -> list[RunResult]:
        before = sum(load_result(s, self.out) is None for s in specs)
        try:
            return run_all(specs, self.out, self.jobs, self.threads, desc, self.progress)
        finally:
            self.trained += before - sum(load_result(s, self.out) is None for s in specs)

    def load(self, specs: Sequence[RunSpec]) -> list[Optional[RunResult]]:
        return [load_result(s, self.out) for s in specs]
