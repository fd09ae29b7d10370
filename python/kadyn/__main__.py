"""`python -m kadyn COMMAND ...`: the `kadyn` front door (kadyn.cli)."""

import sys

from kadyn.cli import main

if __name__ == "__main__":
    sys.exit(main())
