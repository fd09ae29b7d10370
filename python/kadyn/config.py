"""The trainer's configuration: a typed dataclass, TOML presets, and argparse flags derived from it.

Every field of `TrainConfig` is at once a TOML key (presets in `kadyn/presets/*.toml`, and the
`config.toml` written beside each run) and a command-line flag (`d_model` -> `--d-model`). Field
metadata carries the help text, the group the field is written under, allowed choices and the
numeric range, so that validation errors name the flag and the allowed range in one line.

`kadyn-train --config FILE` layers a TOML file (a run's config.toml, or a few keys) between the
preset and the flags; `--print-config` prints the result. A run's config.toml ends with a
[provenance] table (`run_provenance`: versions, git commit, device, command line) that is never
read back as settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

from kadyn._native import MAX_SEQ_LEN
from kadyn._native import __version__ as VERSION
from kadyn.cli import add_version_flag
from kadyn.reporting import parse_report_to

SAMPLINGS = ("uniform", "power", "curriculum")
POPULATIONS = ("train", "new")
DEVICES = ("auto", "cpu", "cuda")
PACKINGS = ("pad", "pack")
PROVENANCE = "provenance"  # config.toml's table of how a run was run (not read back as settings)


def _f(default: Any, help: str, group: str, **checks: Any) -> Any:
    """A dataclass field with its help text, TOML group and validation rules in the metadata."""
    return field(default=default, metadata={"help": help, "group": group, **checks})


@dataclass
class TrainConfig:
    """All knobs of a training run. Defaults are the `tiny` preset's (CPU, minutes)."""

    # --- run ---
    preset: str = _f("tiny", "preset (kadyn/presets/<name>.toml) giving the defaults", "run")
    out: str = _f("", "output directory (default runs/<preset>-<timestamp>)", "run")
    resume: bool = _f(False, "continue from the last checkpoint in --out", "run")
    init_checkpoint: str = _f(
        "", "start from this checkpoint's weights (fresh optimizer, step 0): fine-tuning", "run"
    )
    device: str = _f("auto", "auto (cuda if available), cpu or cuda", "run", choices=DEVICES)
    threads: int = _f(2, "torch intra-op threads on CPU", "run", ge=1)
    data_threads: int = _f(1, "threads of the Rust batch builder", "run", ge=1)
    seed: int = _f(0, "seed of the initialisation and of the sample stream", "run", ge=0)
    progress: bool = _f(
        True,
        "show progress: a tqdm bar on a terminal, else a plain line every --log-every steps",
        "run",
    )
    log_every: int = _f(
        10,
        "steps between reads of the training loss and gradient norm (progress line, --report-to's "
        "training scalars and the non-finite check; the only host syncs between evaluations)",
        "run",
        ge=1,
    )
    report_to: str = _f(
        "",
        "also log to these, comma-separated: tensorboard (OUT/tensorboard/), wandb, csv "
        "(OUT/scalars.csv): training loss, lr and grad norm every --log-every steps, the "
        "knowledge metrics at each evaluation",
        "run",
    )
    allow_nonfinite: bool = _f(
        False,
        "keep training after a non-finite loss (metrics record it as null) instead of stopping",
        "run",
    )
    compile: bool = _f(
        True,
        "torch.compile the training step (inductor; on CPU it needs a C++ compiler): tiny-preset "
        "steps 1.2-1.3x faster after 20-30 s of compiling on a cold cache (~2 s warm), so runs of "
        "fewer than 2000 steps (kadyn.train.COMPILE_MIN_STEPS) stay eager",
        "run",
    )
    twin: str = _f(
        "",
        "finished --control run(s), comma-separated: drawn beside this run, and the phases are "
        "read as separation from their curve (band: their seed-to-seed range)",
        "run",
    )
    # --- world ---
    world_seed: int = _f(0, "seed of the world (who has which attributes, probes)", "world", ge=0)
    individuals: int = _f(800, "N: individuals in the training population", "world", ge=1)
    heldout: int = _f(100, "held-out individuals (hallucination probes); 0 = none", "world", ge=0)
    new_individuals: int = _f(0, "individuals of the 'new' population (fine-tuning)", "world", ge=0)
    n_first_names: int = _f(100, "first/middle-name pool size", "world", ge=1)
    n_last_names: int = _f(100, "last-name pool size", "world", ge=1)
    n_cities: int = _f(100, "city pool size (birth place, current location)", "world", ge=1)
    n_universities: int = _f(50, "university pool size", "world", ge=1)
    n_majors: int = _f(50, "major pool size", "world", ge=1)
    n_companies: int = _f(100, "company pool size", "world", ge=1)
    year_min: int = _f(1950, "first birth year", "world", ge=0)
    year_max: int = _f(2000, "last birth year", "world", ge=0)
    n_days: int = _f(31, "birth days 1..N (small worlds shrink the calendar)", "world", ge=1, le=31)
    n_months: int = _f(12, "birth months: the first N of the year", "world", ge=1, le=12)
    # --- data ---
    data: str = _f(
        "",
        "train on this kadyn-gen dataset's rows, in order, instead of the live stream: its world, "
        "sampling, population, --control and row length replace the flags'",
        "data",
    )
    population: str = _f("train", "population trained on", "data", choices=POPULATIONS)
    sampling: str = _f("uniform", "distribution over individuals", "data", choices=SAMPLINGS)
    alpha: float = _f(
        0.0, "power-law exponent: P(i) ~ i^-alpha (implies --sampling power)", "data", ge=0
    )
    warmup_individuals: int = _f(
        0, "curriculum: first train on this many individuals (--sampling curriculum)", "data", ge=0
    )
    warmup_samples: int = _f(
        0,
        "curriculum: for this many biographies, then on all (--sampling curriculum)",
        "data",
        ge=0,
    )
    control: bool = _f(
        False,
        "train the no-knowledge control: each value drawn from the population independently of "
        "the name (the stream's facts='shuffled'); its curve is the level F, measured",
        "data",
    )
    replay_weight: float = _f(
        0.0,
        "with --population new: rows of 'train' biographies per row of 'new' ones in each batch",
        "data",
        ge=0,
    )
    batch_size: int = _f(
        32, "global batch size (biographies per step, over all ranks)", "data", ge=1
    )
    seq_len: int = _f(
        100, "tokens per row (a biography is padded to this)", "data", ge=8, le=MAX_SEQ_LEN
    )
    packing: str = _f(
        "pad", "pad: one biography per row; pack: joined with <eos>", "data", choices=PACKINGS
    )
    # --- model ---
    n_layers: int = _f(2, "transformer blocks", "model", ge=1)
    d_model: int = _f(128, "residual width", "model", ge=8)
    n_heads: int = _f(4, "attention heads (d_model / n_heads must be even for RoPE)", "model", ge=1)
    d_mlp: int = _f(512, "MLP hidden width", "model", ge=1)
    tie_embeddings: bool = _f(True, "share the input embedding and the output head", "model")
    rope_base: float = _f(10000.0, "RoPE base frequency", "model", gt=0)
    # --- optimisation ---
    steps: int = _f(1500, "optimizer steps", "optim", ge=1)
    lr: float = _f(3e-3, "peak learning rate", "optim", gt=0)
    min_lr_ratio: float = _f(0.1, "cosine decay ends at this fraction of --lr", "optim", ge=0, le=1)
    constant_lr: bool = _f(False, "keep the learning rate at --lr (no decay)", "optim")
    beta1: float = _f(0.9, "AdamW beta1", "optim", ge=0, lt=1)
    beta2: float = _f(0.95, "AdamW beta2", "optim", ge=0, lt=1)
    weight_decay: float = _f(0.1, "AdamW weight decay (matrices of the blocks only)", "optim", ge=0)
    grad_clip: float = _f(1.0, "clip the gradient norm to this; 0 = off", "optim", ge=0)
    # --- evaluation and checkpoints ---
    eval_every: int = _f(50, "steps between knowledge evaluations", "eval", ge=1)
    eval_individuals: int = _f(256, "cap on probed individuals per probe set", "eval", ge=1)
    eval_batch_size: int = _f(128, "rows per forward pass during evaluation", "eval", ge=1)
    train_probe: bool = _f(
        True,
        "also probe the training templates at each evaluation (off: an evaluation costs about "
        "half, for runs that only measure knowledge on the eval templates)",
        "eval",
    )
    checkpoint_every: int = _f(
        0, "steps between checkpoints; 0 = at every evaluation", "eval", ge=0
    )
    keep_checkpoints: bool = _f(
        False, "also keep checkpoint-<step>.pt files, not only the last one", "eval"
    )
    count_exposures: bool = _f(
        False,
        "count each trained individual's biographies seen in training; write "
        "exposures-<step>.npy at every evaluation",
        "eval",
    )
    peak_tflops: float = _f(989.0, "accelerator peak (bf16 dense) for the MFU figure", "eval", gt=0)
    plateau_band: float = _f(
        0.05, "phase detector: plateau = loss within +-band x F (relative)", "eval", gt=0, lt=1
    )
    plateau_min_evals: int = _f(
        3, "phase detector: in-band evals needed to call a flat stretch a plateau", "eval", ge=1
    )

    def validate(self) -> None:
        """Raise ValueError naming the flag and the allowed range for the first bad field."""
        for f in fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            flag = flag_name(f.name)
            if "choices" in meta and value not in meta["choices"]:
                allowed = ", ".join(meta["choices"])
                raise ValueError(f"{flag} must be one of {allowed}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{flag} must be finite, got {value}")
            for key, op, ok in (
                ("gt", ">", lambda v, b: v > b),
                ("ge", ">=", lambda v, b: v >= b),
                ("lt", "<", lambda v, b: v < b),
                ("le", "<=", lambda v, b: v <= b),
            ):
                if key in meta and not ok(value, meta[key]):
                    raise ValueError(f"{flag} must be {op} {meta[key]}, got {value}")
        if self.d_model % self.n_heads != 0 or (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                f"--d-model must be a multiple of 2 * --n-heads ({2 * self.n_heads}), "
                f"got {self.d_model}"
            )
        # The attention kernels (Triton tiles) support head dims 16..128.
        if not 16 <= self.d_model // self.n_heads <= 128:
            raise ValueError(
                f"--d-model / --n-heads must be in 16..128 (the attention kernel's head sizes), "
                f"got {self.d_model} / {self.n_heads}"
            )
        if self.year_max < self.year_min:
            raise ValueError(
                f"--year-max must be >= --year-min ({self.year_min}), got {self.year_max}"
            )
        # One meaning per flag (as kadyn-gen): --alpha is power-law sampling, --warmup-* a
        # curriculum; given with another sampling they would silently do nothing.
        if self.alpha > 0 and self.sampling != "power":
            raise ValueError(
                f"--alpha {self.alpha:g} means --sampling power; it conflicts with "
                f"--sampling {self.sampling}"
            )
        if self.sampling != "curriculum":
            for name in ("warmup_individuals", "warmup_samples"):
                if getattr(self, name):
                    raise ValueError(
                        f"{flag_name(name)} needs --sampling curriculum, got --sampling "
                        f"{self.sampling}"
                    )
        if self.sampling == "curriculum":
            if not 1 <= self.warmup_individuals <= self.individuals:
                raise ValueError(
                    f"--warmup-individuals must be in [1, {self.individuals}] with --sampling "
                    f"curriculum, got {self.warmup_individuals}"
                )
            if self.warmup_samples < 1:
                raise ValueError(
                    f"--warmup-samples must be >= 1 with --sampling curriculum, "
                    f"got {self.warmup_samples}"
                )
        if self.population == "new" and self.new_individuals < 1:
            raise ValueError(
                f"--new-individuals must be >= 1 with --population new, got {self.new_individuals}"
            )
        if self.replay_weight > 0 and self.population != "new":
            raise ValueError(
                f"--replay-weight needs --population new (it replays 'train'), "
                f"got {self.replay_weight}"
            )
        if self.replay_weight > 0 and self.batch_size < 2:
            raise ValueError(
                f"--batch-size must be >= 2 with --replay-weight, got {self.batch_size}"
            )
        if self.resume and not self.out:
            raise ValueError("--resume needs --out DIR (the run to continue)")
        if self.resume and self.init_checkpoint:
            raise ValueError("--init-checkpoint cannot be combined with --resume")
        if self.control and self.twin:
            raise ValueError("--twin draws a control beside a real run; --control trains one")
        parse_report_to(self.report_to)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields that may differ between a checkpoint and the run resuming it: where and how it runs and
# how often it is saved, not what it computes.
RESUMABLE_FIELDS = frozenset(
    {
        "out",
        "resume",
        "device",
        "threads",
        "data_threads",
        "progress",
        "log_every",
        "report_to",
        "allow_nonfinite",
        "compile",
        "peak_tflops",
        "twin",
        "checkpoint_every",
        "keep_checkpoints",
    }
)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_map() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(TrainConfig)}


def _check_types(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check TOML values against the dataclass field types (ints are accepted for floats)."""
    known = _field_map()
    out = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{source}: unknown option {key!r}")
        expected = type(known[key].default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ValueError(
                f"{source}: {key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
            )
        out[key] = value
    return out


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    """Presets group keys in tables ([model], [optim], ...); the groups are only for reading."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            if k in flat:
                raise ValueError(f"option {k!r} given twice")
            flat[k] = v
    return flat


def read_toml(text: str, source: str) -> dict[str, Any]:
    """The settings of a preset or config file; a run's [provenance] table is not among them."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{source}: invalid TOML ({e})") from None
    doc.pop(PROVENANCE, None)
    return _check_types(_flatten(doc), source)


def read_provenance(path: Path) -> dict[str, Any]:
    """The [provenance] table of a run's config.toml ({} if it has none)."""
    return dict(tomllib.loads(Path(path).read_text()).get(PROVENANCE, {}))


def preset_names() -> list[str]:
    root = resources.files("kadyn.presets")
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise ValueError(f"--preset must be one of {', '.join(names)}, got {name!r}")
    text = (resources.files("kadyn.presets") / f"{name}.toml").read_text()
    return read_toml(text, f"preset {name}")


def make_config(preset: str = "tiny", **overrides: Any) -> TrainConfig:
    """The preset's values with `overrides` on top (programmatic counterpart of the CLI)."""
    values = load_preset(preset)
    values["preset"] = preset
    values.update(_check_types(overrides, "make_config"))
    return TrainConfig(**values)


def load_config_file(path: Path) -> TrainConfig:
    return TrainConfig(**read_toml(Path(path).read_text(), str(path)))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def to_toml(config: TrainConfig, provenance: Optional[Mapping[str, Any]] = None) -> str:
    """Serialise grouped like the presets; tomllib reads it back to an equal config. With
    `provenance`, a last [provenance] table records it (what ran it, not what it computes:
    `read_toml`, and so --config and --resume, ignore it)."""
    groups: dict[str, list[str]] = {}
    for f in fields(config):
        line = f"{f.name} = {_toml_value(getattr(config, f.name))}"
        groups.setdefault(f.metadata["group"], []).append(line)
    if provenance:
        groups[PROVENANCE] = [
            f"{key} = {_toml_value(value)}"
            for key, value in provenance.items()
            if value is not None
        ]
    return "\n".join(f"[{g}]\n" + "\n".join(lines) + "\n" for g, lines in groups.items())


def run_provenance(device: str, command: Sequence[str]) -> dict[str, Any]:
    """What a run's config.toml records of how it was run: the kadyn, torch and Python versions,
    the git commit of kadyn's source when it runs from a checkout (and whether that has
    uncommitted changes), the resolved device and the command line."""
    import torch

    commit, dirty = git_commit(Path(__file__).parent)
    return {
        "kadyn": VERSION,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "device": device,
        "command": shlex.join(command),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def git_commit(source_dir: Path) -> tuple[Optional[str], Optional[bool]]:
    """(HEAD commit, has uncommitted changes) of the checkout that holds `source_dir` as tracked
    files; (None, None) when it is not one (an installed wheel) or git is missing or fails."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(source_dir), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )

    try:
        # A wheel unpacked in a virtualenv inside some other repository is not that repository's
        # code: the package's own files must be tracked.
        git("ls-files", "--error-unmatch", "--", "__init__.py")
        commit = git("rev-parse", "HEAD").stdout.strip()
        changes = git("status", "--porcelain", "--untracked-files=no").stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(changes.strip())


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage on error; one line naming the problem is easier to read."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(prog: str = "kadyn-train") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description="Train a transformer on synthetic biographies and track knowledge acquisition.",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        group_name = f.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        group = groups[group_name]
        kind = type(f.default)
        # default=SUPPRESS: only flags actually given appear in the namespace, so they can be
        # layered over a preset (or over a resumed run's saved config).
        kwargs: dict[str, Any] = {"help": f.metadata["help"], "default": argparse.SUPPRESS}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = f.name.upper()
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
                kwargs.pop("metavar")
        group.add_argument(flag_name(f.name), dest=f.name, **kwargs)
    meta = parser.add_argument_group("configuration")
    meta.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="read settings from this TOML file (a run's config.toml, or a few keys of one) over "
        "its preset; flags override it",
    )
    meta.add_argument(
        "--print-config",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the resolved settings (TOML, as config.toml holds them) and exit",
    )
    add_version_flag(parser, prog)
    return parser


# Flags of the command line that are not settings of the run.
CLI_ONLY = ("config", "print_config")


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[TrainConfig, dict[str, Any]]:
    """Parse flags over their preset; returns the config and the explicitly given flags (with
    --config FILE and --print-config, if given, under `config` and `print_config`).

    Layers, each over the one before: the preset; --config FILE's settings; the flags. With
    --resume, the base is the run's saved config.toml instead of the preset, so that
    `kadyn-train --out DIR --resume` continues whatever DIR was started with.
    """
    given = vars(build_parser().parse_args(argv))
    cli = {key: given.pop(key) for key in CLI_ONLY if key in given}
    from_file = load_toml_file(Path(cli["config"]), "--config") if "config" in cli else {}
    for layer in (from_file, given):
        if "alpha" in layer and "sampling" not in layer:
            layer["sampling"] = "power"  # --alpha A is power-law sampling, as in kadyn-gen
    over = {**from_file, **given}
    if over.get("resume") and over.get("out"):
        base = saved_config(Path(over["out"]))
        if base is not None:
            return TrainConfig(**{**base, **over}), {**given, **cli}
    preset = over.get("preset", TrainConfig.preset)
    values = load_preset(preset)
    values["preset"] = preset
    values.update(over)
    return TrainConfig(**values), {**given, **cli}


def load_toml_file(path: Path, what: str) -> dict[str, Any]:
    """The settings a TOML file holds; a missing or unreadable file is a ValueError naming it."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{what} {path}: {e.strerror or e}") from None
    return read_toml(text, str(path))


def saved_config(run_dir: Path) -> Optional[dict[str, Any]]:
    """A run's own settings: its config.toml, or if that is gone, the config its checkpoint
    holds (the checkpoint is what a resume continues); None for a directory with neither."""
    path = run_dir / "config.toml"
    if path.exists():
        return load_config_file(path).to_dict()
    from kadyn.checkpoint import CheckpointError, checkpoint_path, load_checkpoint

    if not checkpoint_path(run_dir).exists():
        return None
    try:
        saved = load_checkpoint(checkpoint_path(run_dir))["config"]
    except (CheckpointError, KeyError):
        return None  # the resume itself reports the damaged checkpoint
    return _check_types({k: v for k, v in saved.items() if k in _field_map()}, "checkpoint")
