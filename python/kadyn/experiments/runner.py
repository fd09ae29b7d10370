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

Stacking (`stack` > 1, `kadyn-exp --stack K`; `--no-stack` is K = 1): runs that may share one
stacked model (`kadyn.stacked`: same model shape, batch, steps and lr schedule; any seed, N,
sampling...) are trained up to K at a time in one worker, each member still writing its own
directory and result.json as a solo run would. Runs patched from a reference checkpoint
(`patch_checkpoint`) train solo: the stack has no attention override. A killed group restarts from
its members' checkpoints: members whose checkpoints stand at one step stack again, a member
alone at its step resumes solo (a member's checkpoint is a solo run's). A member that fails
fails alone; should the stack fail as a whole (a damaged checkpoint, say), its members train solo
from what it saved, each failing or not on its own. A stacked member equals its solo run up to
float rounding, not bit for bit: `--no-stack` for runs that must repeat a solo run's numbers
exactly.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import fcntl
import functools
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
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from kadyn import reporting
from kadyn.fileio import atomic_write_text

if TYPE_CHECKING:  # kadyn.config at run time only: keeps `kadyn-exp --help` light
    from kadyn.config import TrainConfig

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


def spec_config(
    spec: RunSpec, out: Path, run_dir: Path, threads: int, resume: bool = False
) -> TrainConfig:
    """The trainer config of `spec`'s run in `run_dir` (checkpoint paths resolved under OUT)."""
    from kadyn.config import make_config

    overrides = dict(spec.overrides)
    if overrides.get("init_checkpoint"):
        overrides["init_checkpoint"] = str(out / overrides["init_checkpoint"])
    return make_config(
        spec.preset,
        **overrides,
        out=str(run_dir),
        resume=resume,
        progress=False,
        threads=threads,
    )


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


def _prepare_dir(run_dir: Path) -> bool:
    """Whether the run resumes from its checkpoint; one killed before its first checkpoint is
    wiped (nothing to resume)."""
    from kadyn.checkpoint import checkpoint_path

    resume = checkpoint_path(run_dir).exists()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return resume


def _eval_hook(spec: RunSpec, run_dir: Path) -> Callable[[int, dict, Any], None]:
    """The trainer's on_eval for `spec`: snapshots, and the early stops (raising _StopRun)."""
    from kadyn.checkpoint import save_checkpoint

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

    return on_eval


def _write_result(
    spec: RunSpec, run_dir: Path, summary: Optional[dict[str, Any]], wall_s: float
) -> dict[str, Any]:
    """result.json of a run that finished (`summary`, the trainer's) or stopped early (None: the
    summary is read from its last evaluation)."""
    stopped = summary is None
    if summary is None:
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
    summary["run_wall_s"] = wall_s
    summary["spec"] = asdict(spec)
    _write_json(run_dir / RESULT, summary)
    return summary


def _execute_locked(spec: RunSpec, run_dir: Path, out: Path, threads: int) -> dict[str, Any]:
    from kadyn.train import train

    done = run_dir / RESULT
    if done.exists():  # finished by another process between the first check and the lock
        return json.loads(done.read_text())
    resume = _prepare_dir(run_dir)
    config = spec_config(spec, out, run_dir, threads, resume)
    source = _attention_source(spec, out, config.device) if spec.patch_checkpoint else None
    t0 = time.perf_counter()
    with open(run_dir / LOG, "a") as log, contextlib.redirect_stderr(log):
        try:
            summary: Optional[dict[str, Any]] = train(
                config, on_eval=_eval_hook(spec, run_dir), attention_source=source
            )
        except _StopRun:
            summary = None
    return _write_result(spec, run_dir, summary, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# Stacked groups


def stackable(spec: RunSpec) -> bool:
    """Whether a run may train as a stack member (the stack has no attention override)."""
    return spec.patch_checkpoint is None


def plan_groups(specs: Sequence[RunSpec], out: Path, stack: int) -> list[list[int]]:
    """Indices of `specs` (in order) cut into units of work: runs that may share a stack
    (`kadyn.stacked.stack_key` of their configs) in groups of up to `stack`, consecutive in
    `specs` order (so runs of similar cost stack together), the others alone."""
    if stack <= 1:
        return [[i] for i in range(len(specs))]
    from kadyn.stacked import stack_key

    open_groups: dict[Any, list[int]] = {}
    units: list[list[int]] = []
    for i, spec in enumerate(specs):
        try:
            key = stack_key(spec_config(spec, out, spec.run_dir(out), threads=1))
        except ValueError:  # a bad override: the run fails alone, saying why
            key = None
        if key is None or not stackable(spec):
            units.append([i])
            continue
        group = open_groups.get(key)
        if group is None or len(group) == stack:
            group = open_groups[key] = []
            units.append(group)
        group.append(i)
    return units


def execute_group(specs: Sequence[RunSpec], out: str, threads: int) -> list[Optional[str]]:
    """Train (or resume) `specs` as stacked groups and write each one's result.json; returns,
    per spec, None or why it failed (the others complete). Top-level and argument-picklable."""
    root = Path(out)
    errors: list[Optional[str]] = [None] * len(specs)
    with contextlib.ExitStack() as locks:
        held = []
        for i, spec in enumerate(specs):
            run_dir = spec.run_dir(root)
            if (run_dir / RESULT).exists():
                continue
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            lock = locks.enter_context(open(run_dir.parent / f".{run_dir.name}{LOCK}", "w"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                errors[i] = _describe_failure(
                    spec, RuntimeError(f"{run_dir} is being trained by another process")
                )
                continue
            if not (run_dir / RESULT).exists():  # not finished meanwhile by another process
                held.append(i)
        # Members stack again only with members whose checkpoints stand at the same step.
        by_step: dict[int, list[int]] = {}
        for i in held:
            run_dir = specs[i].run_dir(root)
            step = _checkpoint_step(run_dir) if _prepare_dir(run_dir) else 0
            by_step.setdefault(step, []).append(i)
        for members in by_step.values():
            failures = _train_group([specs[i] for i in members], root, threads)
            for i, failure in zip(members, failures):
                errors[i] = failure
    return errors


def _checkpoint_step(run_dir: Path) -> int:
    """The step of a run's checkpoint; -1 if it does not load (the run then trains alone and
    reports the damage itself)."""
    from kadyn.checkpoint import CheckpointError, load_checkpoint

    try:
        return int(load_checkpoint(run_dir)["train_state"]["step"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return -1


def _train_group(specs: list[RunSpec], out: Path, threads: int) -> list[Optional[str]]:
    """One stack of locked, prepared runs; alone, or should the stack fail, each solo (resuming
    from what the stack saved)."""
    from kadyn.checkpoint import checkpoint_path
    from kadyn.stacked import train_stacked

    def solo(spec: RunSpec) -> Optional[str]:
        try:
            _execute_locked(spec, spec.run_dir(out), out, threads)
            return None
        except Exception as e:  # noqa: BLE001 - one failed run must not sink the others
            return _describe_failure(spec, e)

    if len(specs) == 1:
        return [solo(specs[0])]
    run_dirs = [s.run_dir(out) for s in specs]
    configs = [
        spec_config(s, out, d, threads, resume=checkpoint_path(d).exists())
        for s, d in zip(specs, run_dirs)
    ]
    t0 = time.perf_counter()
    with contextlib.ExitStack() as files:
        logs = [files.enter_context(open(d / LOG, "a")) for d in run_dirs]
        # Lines of one member go to its own log; whatever else reaches stderr (warnings) to all.
        with contextlib.redirect_stderr(_Tee(logs)):
            try:
                outcomes = train_stacked(
                    configs,
                    on_eval=[_eval_hook(s, d) for s, d in zip(specs, run_dirs)],
                    logs=[_line_writer(f) for f in logs],
                )
            except Exception as e:  # noqa: BLE001 - the stack failed as a whole: train them solo
                for f in logs:
                    f.write(f"stacked training failed ({e}); training this run alone\n")
                outcomes = None
    if outcomes is None:
        return [solo(spec) for spec in specs]
    wall = time.perf_counter() - t0
    failures: list[Optional[str]] = []
    for spec, run_dir, outcome in zip(specs, run_dirs, outcomes):
        if isinstance(outcome, dict) or isinstance(outcome, _StopRun):
            summary = outcome if isinstance(outcome, dict) else None
            _write_result(spec, run_dir, summary, wall)
            failures.append(None)
        else:
            failures.append(_describe_failure(spec, outcome))
    return failures


class _Tee:
    """A write-only text stream copying to several files."""

    def __init__(self, files: Sequence[Any]) -> None:
        self.files = files

    def write(self, text: str) -> int:
        for f in self.files:
            f.write(text)
        return len(text)

    def flush(self) -> None:
        for f in self.files:
            f.flush()


def _line_writer(f: Any) -> Callable[[str], None]:
    def write(line: str) -> None:
        f.write(line + "\n")
        f.flush()

    return write


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
    stack: int = 1,
) -> list[RunResult]:
    """Complete every run (skipping finished ones) and return their results in `specs` order.
    `stack` > 1 trains runs that can share a stacked model up to `stack` at a time in one worker.

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
    units = [[todo[j] for j in unit] for unit in plan_groups([specs[i] for i in todo], out, stack)]
    # Split the cores between parallel runs: oversubscribed OpenMP threads slow everything down.
    threads = threads or max(1, cpu_count() // max(1, jobs))
    errors: list[str] = []
    # A tqdm bar on a terminal; in a log, a plain line per finished run.
    bar = reporting.progress(
        len(specs), initial=len(specs) - len(todo), desc=desc, enabled=progress
    )

    def finish(unit: list[int], failures: Sequence[Optional[str]]) -> None:
        for i, failure in zip(unit, failures):
            if failure is not None:
                errors.append(failure)
                continue
            result = load_result(specs[i], out)
            assert result is not None
            result.cached = False
            results[i] = result
            bar.update(1)

    def submit(unit: list[int]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if len(unit) == 1:
            return execute, (specs[unit[0]], str(out), threads)
        return execute_group, ([specs[i] for i in unit], str(out), threads)

    def failures_of(unit: list[int], call: Callable[[], Any]) -> list[Optional[str]]:
        try:
            value = call()
        except Exception as e:  # noqa: BLE001 - one failed run must not sink the others
            return [_describe_failure(specs[i], e) for i in unit]
        return [None] if len(unit) == 1 else list(value)

    if jobs <= 1 or len(units) <= 1:
        for unit in units:
            bar.set_postfix_str(", ".join(specs[i].name for i in unit))
            fn, args = submit(unit)
            finish(unit, failures_of(unit, functools.partial(fn, *args)))
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=jobs, mp_context=ctx, initializer=_die_with_parent
        ) as pool:
            futures = {pool.submit(*_flat(submit(unit))): tuple(unit) for unit in units}
            for future in cf.as_completed(futures):
                unit = list(futures[future])
                finish(unit, failures_of(unit, future.result))
    bar.close()
    if errors:
        raise RunFailed(f"{len(errors)} run(s) failed:\n" + "\n".join(errors))
    return [results[i] for i in range(len(specs))]


def _flat(call: tuple[Callable[..., Any], tuple[Any, ...]]) -> tuple[Any, ...]:
    return (call[0], *call[1])


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
    stack: int = 1  # runs per stacked group (kadyn.stacked); 1 = every run alone
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
            return run_all(
                specs, self.out, self.jobs, self.threads, desc, self.progress, self.stack
            )
        finally:
            self.trained += before - sum(load_result(s, self.out) is None for s in specs)

    def load(self, specs: Sequence[RunSpec]) -> list[Optional[RunResult]]:
        return [load_result(s, self.out) for s in specs]
