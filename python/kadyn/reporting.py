"""Where a run's numbers go besides `metrics.jsonl`: TensorBoard, Weights & Biases, a CSV file,
and the console's progress display.

`kadyn-train --report-to tensorboard,wandb,csv` (any subset; default none) opens one `Reporter`
per name. Each takes `log(step, {tag: value})` and `close()`; the trainer logs the training
scalars (`train/loss`, `train/lr`, `train/grad_norm`) every --log-every steps and every numeric
field of each evaluation's metrics record (`eval/attr_loss`, `heldout/attr_acc`, ...) at its
step. Only rank 0 opens them under DDP. The writers' packages are optional, imported when asked
for: TensorBoard is the `tensorboard` extra, wandb the `wandb` extra; a missing one is an error
naming the package and the extra, raised before the run starts.

Resume: a resumed run continues where its checkpoint was taken, so what a killed run logged
after that step is dropped (TensorBoard's `purge_step`; the CSV file is rewritten without those
rows) and logged again, with no step twice. W&B resumes the same run (its id is kept in
`OUT/wandb-id`); steps it already holds are not logged again.

The console: a tqdm bar when stderr is a terminal; otherwise (a log file, a scheduler's capture)
plain lines at the same cadence, as torchtitan logs, with no carriage returns.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import math
import netrc
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, TextIO
from urllib.parse import urlparse

from kadyn.fileio import atomic_write_text

REPORT_TO = ("tensorboard", "wandb", "csv")
# The package each writer imports and the extra that installs it.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
TENSORBOARD_DIR = "tensorboard"
CSV_FILE = "scalars.csv"
CSV_HEADER = ("step", "name", "value")
WANDB_ID_FILE = "wandb-id"
# Record fields that are not metrics, or that the training scalars already carry at this step
# (`lr` is `train/lr`; the record's `train/loss` is the all-rank mean since the previous
# evaluation, a coarser reading of `train/loss`).
NOT_REPORTED = frozenset({"schema", "step", "samples", "lr", "train/loss"})


def parse_report_to(text: str) -> list[str]:
    """The writers named by a --report-to value ("" = none), in the order given."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in REPORT_TO:
            raise ValueError(
                f"--report-to must be a comma-separated subset of {', '.join(REPORT_TO)}, "
                f"got {name!r}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"--report-to names a writer twice, got {text!r}")
    return names


def require(names: Sequence[str]) -> None:
    """Raise ValueError naming the package and the extra of the first writer not installed."""
    for name in names:
        if name not in PACKAGES:
            continue
        package, extra = PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"--report-to {name} needs the {package} package: pip install 'kadyn[{extra}]'"
            )


class Reporter(Protocol):
    def log(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardReporter:
    """Event files under `OUT/tensorboard/` (`tensorboard --logdir OUT`)."""

    def __init__(self, log_dir: Path, first_step: int) -> None:
        require(["tensorboard"])
        from torch.utils.tensorboard import SummaryWriter

        if first_step == 0:  # a fresh run: the files of an attempt killed before its checkpoint
            for old in log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        # purge_step: TensorBoard hides what an earlier attempt logged from this step on.
        self.writer = SummaryWriter(str(log_dir), purge_step=first_step or None)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CsvReporter:
    """One row per scalar, `step,name,value` (long format: the tags differ between training and
    evaluation steps), e.g. `pandas.read_csv(f).pivot(index="step", columns="name")`."""

    def __init__(self, path: Path, first_step: int) -> None:
        kept: list[list[str]] = []
        if path.exists():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            kept = [r for r in rows[1:] if len(r) == 3 and _int_or_none(r[0]) is not None]
            kept = [r for r in kept if int(r[0]) < first_step]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows(kept)
        atomic_write_text(path, buffer.getvalue())
        self.file: TextIO = path.open("a", newline="")
        self.writer = csv.writer(self.file, lineterminator="\n")

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.writer.writerows([step, name, repr(float(value))] for name, value in scalars.items())
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _int_or_none(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        return None


class WandbReporter:
    """A Weights & Biases run named after OUT, with the run's config; offline (files under
    `OUT/wandb/`, `wandb sync` uploads them) when WANDB_MODE is unset and there is no API key or
    no route to the server."""

    def __init__(self, out: Path, config: Mapping[str, Any]) -> None:
        require(["wandb"])
        wandb = importlib.import_module("wandb")
        id_path = out / WANDB_ID_FILE
        if id_path.exists():
            run_id = id_path.read_text().strip()
        else:
            run_id = wandb.util.generate_id()
            atomic_write_text(id_path, run_id + "\n")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "kadyn"),
            name=out.name,
            id=run_id,
            resume="allow",
            dir=str(out),
            config=dict(config),
            mode=wandb_mode(),
        )

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


def wandb_mode() -> Optional[str]:
    """None (wandb decides) when WANDB_MODE is set or the server is usable; else "offline"."""
    if os.environ.get("WANDB_MODE"):
        return None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    if not host or not _has_api_key(host) or not _reachable(host):
        return "offline"
    return None


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


class Reporters:
    """Every writer of --report-to, as one; with none it does nothing."""

    def __init__(self, reporters: Sequence[Reporter] = ()) -> None:
        self.reporters = list(reporters)

    def log(self, step: int, scalars: Mapping[str, Optional[float]]) -> None:
        """Log the scalars that have a value (a None is a quantity this step does not have)."""
        values = {k: float(v) for k, v in scalars.items() if v is not None}
        if values:
            for reporter in self.reporters:
                reporter.log(step, values)

    def log_record(self, record: Mapping[str, Any]) -> None:
        """An evaluation's metrics record: its numeric fields, at its step; then flushed."""
        self.log(int(record["step"]), record_scalars(record))
        for reporter in self.reporters:
            flush = getattr(reporter, "flush", None)
            if flush is not None:
                flush()

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric fields of a metrics record (a null, non-finite one is left out)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key not in NOT_REPORTED
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    }


def open_reporters(
    names: Sequence[str], out: Path, config: Mapping[str, Any], first_step: int
) -> Reporters:
    """The writers `names` for run directory `out`; `first_step` is the first step this process
    logs (0 fresh, the checkpoint's step + 1 resumed): anything logged from it on is replaced."""
    reporters: list[Reporter] = []
    try:
        for name in names:
            if name == "tensorboard":
                reporters.append(TensorBoardReporter(out / TENSORBOARD_DIR, first_step))
            elif name == "csv":
                reporters.append(CsvReporter(out / CSV_FILE, first_step))
            elif name == "wandb":
                reporters.append(WandbReporter(out, config))
            else:
                raise ValueError(f"unknown --report-to writer {name!r}")
    except BaseException:
        Reporters(reporters).close()
        raise
    return Reporters(reporters)


# ----------------------------------------------------------------------------------------------
# The console


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, **values: Any) -> Any: ...

    def set_postfix_str(self, text: str) -> Any: ...

    def close(self) -> Any: ...


class LineProgress:
    """A progress display for a log that is not a terminal: one plain line every `every` units
    (and at the last), `desc n/total (p%) | elapsed, ~left | postfix`."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "",
        every: int = 1,
        write: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.total, self.n, self.desc, self.every = total, initial, desc, max(1, every)
        self.start_n, self.t0 = initial, time.perf_counter()
        self.postfix = ""
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.n // self.every > before // self.every or self.n == self.total:
            self.write(self.line())

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        done = self.n - self.start_n
        parts = [f"{self.desc} {self.n}/{self.total} ({self.n / max(self.total, 1):.0%})".strip()]
        timing = _clock(elapsed)
        if 0 < done and self.n < self.total:
            timing += f", ~{_clock(elapsed / done * (self.total - self.n))} left"
        parts.append(timing)
        if self.postfix:
            parts.append(self.postfix)
        return " | ".join(parts)

    def close(self) -> None:
        pass


def _clock(seconds: float) -> str:
    seconds = int(seconds) if math.isfinite(seconds) else 0
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress(
    total: int,
    *,
    initial: int = 0,
    desc: str = "",
    enabled: bool = True,
    every: int = 1,
    stream: Optional[TextIO] = None,
) -> Progress:
    """A tqdm bar on a terminal; `LineProgress` (a line every `every` units) on anything else;
    a disabled bar when not `enabled`."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    if enabled and not _isatty(stream):
        return LineProgress(
            total,
            initial,
            desc,
            every,
            write=lambda line: print(line, file=stream, flush=True),
        )
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not enabled,
        dynamic_ncols=True,
        file=stream,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or minimal stream
        return False
