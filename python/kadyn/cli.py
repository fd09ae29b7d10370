"""`kadyn`: one front door to every command, and the `--version` they all answer.

    kadyn train ...    # = kadyn-train   (kadyn.train)
    kadyn gen ...      # = kadyn-gen     (the Rust generator, through kadyn.gen)
    kadyn exp ...      # = kadyn-exp     (kadyn.experiments.cli)
    kadyn bench ...    # = kadyn-bench   (kadyn.bench)
    kadyn export ...   # = kadyn-export  (kadyn.export)

`python -m kadyn ...` is the same. The `kadyn-*` console scripts stay, as aliases. A subcommand's
module is imported only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional, Sequence

from kadyn._native import __version__

# name -> (module, function, what it does); the function takes argv and returns an exit status.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("kadyn.train", "main", "train a model on biography streams (kadyn-train)"),
    "gen": ("kadyn.gen", "main", "write a dataset folder of biographies (kadyn-gen)"),
    "exp": (
        "kadyn.experiments.cli",
        "main",
        "run the paper's studies, write report.md (kadyn-exp)",
    ),
    "bench": ("kadyn.bench", "main", "measure the data engine and the trainer (kadyn-bench)"),
    "export": ("kadyn.export", "main", "a run's model as a Hugging Face folder (kadyn-export)"),
}
USAGE = "usage: kadyn [--version] {" + ",".join(COMMANDS) + "} ..."


def version_line(prog: str) -> str:
    """What `PROG --version` prints (kadyn-gen, in Rust, prints the same form)."""
    return f"{prog} {__version__}"


def add_version_flag(parser: argparse.ArgumentParser, prog: Optional[str] = None) -> None:
    parser.add_argument(
        "--version",
        action="version",
        version=version_line(prog or parser.prog),
        help="print the version and exit",
    )


def help_text() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {what}" for name, (_, _, what) in COMMANDS.items()]
    return (
        f"{USAGE}\n\nKnowledge-acquisition dynamics: the data engine, trainer and studies of kadyn."
        "\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n`kadyn COMMAND --help` for a command's options.\n"
    )


def command(name: str) -> Callable[[list[str]], int]:
    module, function, _ = COMMANDS[name]
    fn: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    return fn


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`kadyn COMMAND ARGS...`: runs the command with ARGS; returns its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(help_text(), end="", file=sys.stderr)
        return 2
    first, rest = args[0], args[1:]
    if first in ("-h", "--help"):
        print(help_text(), end="")
        return 0
    if first == "--version":
        print(version_line("kadyn"))
        return 0
    if first not in COMMANDS:
        choices = ", ".join(COMMANDS)
        print(f"kadyn: error: unknown command {first!r} (choose from {choices})", file=sys.stderr)
        return 2
    try:
        return int(command(first)(rest) or 0)
    except SystemExit as e:  # argparse's --help, --version and usage errors
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        raise


if __name__ == "__main__":
    sys.exit(main())
