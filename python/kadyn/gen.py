"""`kadyn-gen`: writes a dataset of the stream's rows as a folder any reader opens (README,
"Datasets on disk"): `data/shard-*.parquet`, `world/world.parquet`, `vocab.json`, a `README.md`
card declaring the Hugging Face configs, and `manifest.json`.

The generator is the Rust `kadyn_gen` crate, linked into the native module; this console script
only hands it the command line. `python -m kadyn.gen ...` works too. Shard-parallel:
`kadyn-gen ... --part I/N --out DIR` writes the I-th of N blocks of shards (N processes side by
side), then `kadyn-gen merge DIR` verifies them all and writes the rest; the folder is then
byte-identical to a one-process run.

Exit status: 0 done, 1 failed (one `kadyn-gen: error: ...` line says why), 2 bad option, 75 the
output directory is locked by another process (`--out DIR/.kadyn.lock`, shared with kadyn-train;
retry later or choose another `--out`), 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from kadyn import _native


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `kadyn-gen` with `argv` (default: `sys.argv[1:]`); returns its exit status (the
    console-script wrapper passes it to `sys.exit`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    # stdout/stderr are written by Rust: flush Python's buffers first so lines keep their order.
    sys.stdout.flush()
    sys.stderr.flush()
    return _native.gen_main(args)


if __name__ == "__main__":
    sys.exit(main())
