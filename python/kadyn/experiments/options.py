"""argparse value types of `kadyn-exp`: lists and numbers checked against an allowed range.

Each factory returns a `type=` callable that raises `argparse.ArgumentTypeError` with the allowed
range; argparse prefixes the option's name, so a bad value ends in one line such as
`kadyn-exp plateau: error: argument --individuals: must be integers in [8, 10000000], got '0,5'`.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

MAX_INDIVIDUALS = 10_000_000
MAX_STEPS = 10_000_000


def _split(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ValueError("empty item")
    return parts


def int_list(lo: int, hi: int, what: str = "integers") -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = [int(p) for p in _split(text)]
        except ValueError:
            values = None
        if values is None or any(not lo <= v <= hi for v in values):
            raise argparse.ArgumentTypeError(
                f"must be comma-separated {what} in [{lo}, {hi}], got {text!r}"
            )
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"must not repeat a value, got {text!r}")
        return values

    return parse


def float_list(lo: float, hi: float, what: str = "numbers") -> Callable[[str], list[float]]:
    def parse(text: str) -> list[float]:
        try:
            values = [float(p) for p in _split(text)]
        except ValueError:
            values = None
        if values is None or any(not (math.isfinite(v) and lo <= v <= hi) for v in values):
            raise argparse.ArgumentTypeError(
                f"must be comma-separated {what} in [{lo:g}, {hi:g}], got {text!r}"
            )
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"must not repeat a value, got {text!r}")
        return values

    return parse


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {text!r}")
        return value

    return parse


def float_range(lo: float, hi: float, lo_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        ok = value is not None and math.isfinite(value) and value <= hi
        ok = ok and (value > lo if lo_open else value >= lo)  # type: ignore[operator]
        if not ok:
            bracket = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(
                f"must be a number in {bracket}{lo:g}, {hi:g}], got {text!r}"
            )
        assert value is not None
        return value

    return parse


# The option types shared by the studies.
sizes = int_list(8, MAX_INDIVIDUALS, "integers (individuals)")
seeds = int_list(0, 2**31 - 1, "integers (seeds)")
budgets = int_list(1, MAX_STEPS, "integers (steps)")
alphas = float_list(0.0, 5.0, "exponents")
replay = float_list(0.0, 64.0, "replay weights")
size = int_range(8, MAX_INDIVIDUALS)
steps = int_range(1, MAX_STEPS)
seed = int_range(0, 2**31 - 1)
epochs = int_list(1, 10_000, "integers (epochs)")
learning_rate = float_range(0.0, 1.0, lo_open=True)
