"""The trainer overrides shared by the end-to-end training tests (test_train, test_ddp).

A 24-individual world and a one-layer model, so that a run takes seconds; the biographies still
need 92 tokens, hence seq_len 96.
"""

from __future__ import annotations

from typing import Any

SMALL_RUN: dict[str, Any] = dict(
    individuals=24,
    heldout=8,
    n_first_names=30,
    n_last_names=30,
    n_cities=20,
    n_universities=10,
    n_majors=10,
    n_companies=10,
    year_min=1990,
    year_max=1999,
    n_layers=1,
    d_model=32,
    n_heads=2,
    d_mlp=64,
    batch_size=8,
    seq_len=96,
    threads=1,
    progress=False,
)
