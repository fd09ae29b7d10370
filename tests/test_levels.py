"""The no-knowledge levels and the control stream, checked against data the stream itself makes.

F (`World.no_knowledge_loss`) is compared with a count model fitted on real stream rows: token
frequencies of each value given its attribute type (and, inside a multi-token value other than a
birth date, the value's previous tokens), scored on the eval-template probes. The count model never
sees the world's table, so it checks sampling weights, probe population, tokenisation and the
date's fields against what a language model would actually meet.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict

import numpy as np
import pytest
from scipy import stats

import kadyn
from kadyn.train import build_world

POOLS = dict(
    n_first_names=12,
    n_last_names=10,
    n_cities=6,
    n_universities=4,
    n_majors=3,
    n_companies=5,
    year_min=1990,
    year_max=1992,
    n_days=3,
    n_months=2,
)
DATE = 1  # attr_type of the birth date


def small_world(n: int = 40, seed: int = 1) -> kadyn.World:
    return kadyn.World(n_individuals=n, seed=seed, heldout=10, **POOLS)


def rows(world: kadyn.World, sampling, n_rows: int, facts: str = "real"):
    stream = kadyn.BiographyStream(
        world, batch_size=n_rows, sampling=sampling, seed=3, threads=2, facts=facts
    )
    return kadyn.to_torch(next(iter(stream)))


def values(batch) -> dict[int, list[tuple[int, ...]]]:
    """Token tuple of every value per attribute type, row by row (one biography per row)."""
    ids, types = batch["input_ids"].numpy(), batch["attr_type"].numpy()
    out: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for a in range(6):
        mask = types == a
        for r in range(ids.shape[0]):
            out[a].append(tuple(ids[r][mask[r]].tolist()))
    return out


def count_model_loss(train_rows, probe_rows) -> dict[int, float]:
    """Summed cross-entropy per value, per attribute, of a count model fitted on train_rows."""
    fitted = values(train_rows)
    probes = values(probe_rows)
    loss = {}
    for a in range(6):
        if a == DATE:
            # Day, month and year are predicted each from its own position's frequencies.
            counts = [Counter(v[j] for v in fitted[a]) for j in range(3)]
            total = len(fitted[a])
            loss[a] = float(
                np.mean(
                    [-sum(math.log(counts[j][v[j]] / total) for j in range(3)) for v in probes[a]]
                )
            )
        else:
            # Token by token given the value's previous tokens: by the chain rule, -ln p(value).
            prefix: Counter = Counter()
            for v in fitted[a]:
                for j in range(len(v) + 1):
                    prefix[v[:j]] += 1
            loss[a] = float(
                np.mean(
                    [
                        -sum(math.log(prefix[v[: j + 1]] / prefix[v[:j]]) for j in range(len(v)))
                        for v in probes[a]
                    ]
                )
            )
    return loss


@pytest.mark.parametrize("sampling", [kadyn.Uniform(), kadyn.PowerLaw(1.0)], ids=repr)
def test_statistics_only_level_is_a_count_model_fitted_on_the_stream(sampling) -> None:
    world = small_world()
    probes = 25
    fitted = rows(world, sampling, 60_000)
    probe = kadyn.to_torch(world.eval_set(max_individuals=probes))
    measured = count_model_loss(fitted, probe)
    computed = world.no_knowledge_loss(sampling, max_individuals=probes)
    for a, name in enumerate(world.attribute_names):
        # 60k rows estimate each frequency to well under 1%.
        assert computed[name] == pytest.approx(measured[a], rel=0.01, abs=0.01), name
    # And the level depends on the sampling: a power law reweights the values.
    if isinstance(sampling, kadyn.PowerLaw):
        uniform = world.no_knowledge_loss(max_individuals=probes)["mean"]
        assert abs(computed["mean"] - uniform) > 0.02


def test_joint_entropy_is_the_floor_below_the_statistics_level() -> None:
    # 30 people, 3 * 2 * 3 = 18 dates: some dates are shared, most combinations memorisable.
    world = small_world(30)
    f = world.no_knowledge_loss()
    joint = world.value_table_entropy()
    assert joint["birth_date"] < f["birth_date"] - 0.1
    for name in world.attribute_names:
        if name != "birth_date":  # single-field values: the two definitions coincide
            assert joint[name] == pytest.approx(f[name], rel=1e-9)
    # An infinite world has every value equally likely: ln(pool) bounds both from above.
    assert f["mean"] <= world.pool_entropy()["mean"] + 1e-9


def test_control_stream_keeps_the_value_statistics() -> None:
    world = small_world()
    real, control = (
        values(rows(world, kadyn.Uniform(), 20_000)),
        values(rows(world, kadyn.Uniform(), 20_000, facts="shuffled")),
    )
    for a in range(6):
        a_counts, b_counts = Counter(real[a]), Counter(control[a])
        keys = sorted(set(a_counts) | set(b_counts))
        table = np.array([[a_counts[k] for k in keys], [b_counts[k] for k in keys]])
        p = stats.chi2_contingency(table).pvalue
        assert p > 1e-3, f"attribute {a}: value frequencies differ (p = {p:.2g})"


def test_control_stream_names_carry_no_information() -> None:
    world = small_world()
    for facts, independent in (("real", False), ("shuffled", True)):
        batch = rows(world, kadyn.Uniform(), 20_000, facts=facts)
        who = batch["individual"].numpy()
        majors = values(batch)[3]
        keys = sorted(set(majors))
        table = np.zeros((world.n_individuals, len(keys)))
        for i, v in zip(who, majors):
            table[i, keys.index(v)] += 1
        p = stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue
        if independent:
            # The same person gets independent values across samples.
            assert p > 1e-3, f"control stream: major depends on the individual (p = {p:.2g})"
        else:
            assert p < 1e-12, "real stream: each person has one major"


def test_control_stream_is_deterministic_and_resumable() -> None:
    world = small_world()
    a = kadyn.BiographyStream(world, batch_size=64, seed=5, facts="shuffled", threads=1)
    first = [next(iter(a)) for _ in range(1)][0]
    state = a.state_dict()
    assert state["facts"] == "shuffled"
    b = kadyn.BiographyStream(world, batch_size=64, seed=5, facts="shuffled", threads=2)
    assert next(iter(b)).equals(first)
    with pytest.raises(ValueError, match="facts"):
        kadyn.BiographyStream(world, batch_size=64, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="unknown facts"):
        kadyn.BiographyStream(world, facts="made-up")


def test_unique_name_tokens_counts_single_owners() -> None:
    world = kadyn.World(n_individuals=60, seed=2, n_first_names=40, n_last_names=40)
    owners: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, name in enumerate(world.table()["name"].to_pylist()):
        first, middle, last = name.split()
        owners["first", first].add(i)
        owners["first", middle].add(i)
        owners["last", last].add(i)
    expected = sum(len(who) == 1 for who in owners.values())
    assert world.unique_name_tokens() == expected > 0


def _plan_sizes(scale) -> set[int]:
    """Every training-population size a scale's plans use."""
    sizes = set(scale.plateau.individuals) | set(scale.alpha.individuals)
    sizes |= set(scale.warmup.individuals)
    sizes |= {scale.hallucination.individuals, scale.finetune.individuals}
    sizes |= {scale.patching.individuals}
    return sizes


def _cpu_worlds():
    from kadyn.config import make_config
    from kadyn.experiments.scales import CPU

    tiny = make_config("tiny")
    yield "tiny", tiny.individuals, tiny, tiny.eval_individuals
    for n in sorted(_plan_sizes(CPU)):
        yield "cpu", n, make_config("tiny", **{**CPU.base, "individuals": n}), CPU.eval_cap


@pytest.mark.parametrize("world_seed", [0, 1, 2])
def test_cpu_worlds_leave_no_room_between_the_levels(world_seed: int) -> None:
    """The default preset's and the CPU suite's worlds are chosen so that no definition of the
    no-knowledge level can move the plateau: F, the value-table entropy and the infinite-world
    level agree within 3%, and no name token identifies a person on its own."""
    for where, n, config, probes in _cpu_worlds():
        world = build_world(dataclasses.replace(config, world_seed=world_seed))
        f = world.no_knowledge_loss(max_individuals=probes)["mean"]
        joint = world.value_table_entropy()["mean"]
        assert abs(f - joint) / f < 0.03, (where, n, f, joint)
        assert world.unique_name_tokens() == 0, (where, n)
