"""The world: pools, tokenizer, baseline, and the errors raised for bad input."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

import kadyn


def test_world_is_a_pure_function_of_its_seed() -> None:
    a, b = kadyn.World(n_individuals=50, seed=3), kadyn.World(n_individuals=50, seed=3)
    c = kadyn.World(n_individuals=50, seed=4)
    assert [a.individual(i) for i in range(50)] == [b.individual(i) for i in range(50)]
    assert [a.individual(i) for i in range(50)] != [c.individual(i) for i in range(50)]
    assert a.vocab() == b.vocab()


def test_paper_pools_and_templates() -> None:
    w = kadyn.World(n_individuals=10)
    assert w.attribute_names == [
        "birth_place",
        "birth_date",
        "university",
        "major",
        "company",
        "current_location",
    ]
    for attr in w.attribute_names:
        templates = w.templates(attr)
        assert len(templates) == 25 and len(set(templates)) == 25
        assert all(
            t.index("{name}") < t.index("{value}") and t.endswith("{value}.") for t in templates
        )
    person = w.individual(0)
    assert len(person["train_templates"]["major"]) == 20
    assert len(person["eval_templates"]["major"]) == 5
    assert sorted(person["train_templates"]["major"] + person["eval_templates"]["major"]) == list(
        range(25)
    )
    assert len(person["name"].split()) == 3
    # The paper's no-knowledge baseline for its pools: ln 800, ln(201·12·31), ln 200, ...
    expected = (
        2 * math.log(800) + math.log(201 * 12 * 31) + math.log(200) + math.log(100) + math.log(500)
    ) / 6
    assert w.pool_entropy()["mean"] == pytest.approx(expected)
    assert expected == pytest.approx(6.78, abs=0.01)


def test_value_table_entropy_matches_brute_force() -> None:
    w = kadyn.World(n_individuals=120, seed=5, heldout=30, n_cities=10, n_majors=4)
    for population, n in (("train", 120), ("heldout", 30)):
        got = w.value_table_entropy(population)
        for attr in w.attribute_names:
            counts = Counter(w.individual(i, population)[attr] for i in range(n))
            entropy = -sum(c / n * math.log(c / n) for c in counts.values())
            assert got[attr] == pytest.approx(entropy, abs=1e-12)
        assert got["mean"] == pytest.approx(sum(got[a] for a in w.attribute_names) / 6)


def test_tokenizer_is_closed_and_round_trips() -> None:
    w = kadyn.World(n_individuals=20)
    vocab = w.vocab()
    assert vocab[:3] == ["<pad>", "<bos>", "<eos>"] and len(vocab) == w.vocab_size
    assert len(set(vocab)) == len(vocab)
    person = w.individual(0)
    text = f"{person['name']} works for {person['company']}."
    ids = w.encode(text)
    assert vocab[ids[-1]] == "." and w.decode(ids) == text
    with pytest.raises(KeyError, match="Zzyzx"):
        w.encode("Zzyzx")


def test_save_vocab(tmp_path: Path) -> None:
    w = kadyn.World(n_individuals=5)
    w.save_vocab(tmp_path / "vocab.json")
    saved = json.loads((tmp_path / "vocab.json").read_text())
    assert saved["tokens"] == w.vocab() and saved["eos_id"] == w.eos_id
    with pytest.raises(OSError, match="no/such/dir"):
        w.save_vocab(tmp_path / "no/such/dir/vocab.json")


def test_table_lists_every_individual() -> None:
    w = kadyn.World(n_individuals=15, heldout=4)
    table = w.table("heldout")
    assert table.num_rows == 4
    assert table.column("name").to_pylist() == [
        w.individual(i, "heldout")["name"] for i in range(4)
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_individuals=0), "n_individuals must be in 1..="),
        (dict(n_individuals=-5), "n_individuals must be in 1..="),
        (
            dict(n_individuals=10**7, n_first_names=10, n_last_names=10),
            "n_individuals \\+ heldout \\+ new must be <= 500",
        ),
        (dict(n_cities=801), "n_cities must be in 1..=800"),
        (dict(n_first_names=0), "n_first_names must be in 1..="),
        (dict(year_min=2000, year_max=1990), "year_max must be >= year_min"),
        (dict(heldout=-1), "heldout must be in 0..="),
    ],
)
def test_bad_world_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kadyn.World(**kwargs)


@pytest.fixture(scope="module")
def small() -> kadyn.World:
    return kadyn.World(n_individuals=30, heldout=5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size must be in 1..="),
        (dict(seq_len=20), "seq_len must be >= \\d+ \\(the longest biography"),
        (dict(rank=2, world_size=2), "rank must be in 0..1, got 2"),
        (dict(rank=0, world_size=0), "world_size must be >= 1, got 0"),
        (dict(split="test"), 'unknown split "test"; expected one of train, eval'),
        (dict(population="old"), 'unknown population "old"; expected one of train, heldout, new'),
        (dict(population="new"), "population must be a population the World was built with"),
        (dict(packing="zip"), 'unknown packing "zip"'),
        (dict(sampling=kadyn.Subset(31)), "Subset.n must be in 1..=30"),
        (dict(threads=0), "threads must be in 1..="),
    ],
)
def test_bad_stream_arguments(small: kadyn.World, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kadyn.BiographyStream(small, **kwargs)


def test_bad_sampling_arguments() -> None:
    with pytest.raises(ValueError, match="alpha must be >= 0 and finite, got -1"):
        kadyn.PowerLaw(-1)
    with pytest.raises(ValueError, match="alpha must be >= 0 and finite, got NaN"):
        kadyn.PowerLaw(float("nan"))
    with pytest.raises(ValueError, match="n must be in 1..="):
        kadyn.Subset(0)
    with pytest.raises(ValueError, match="the last phase must be open-ended"):
        kadyn.Curriculum([(kadyn.Subset(3), 100)])
    with pytest.raises(ValueError, match="for every phase but the last"):
        kadyn.Curriculum([(kadyn.Subset(3), None), (kadyn.Uniform(), None)])
    with pytest.raises(ValueError, match="phases must be a non-empty list"):
        kadyn.Curriculum([])
    with pytest.raises(TypeError, match="sampling must be kadyn.Uniform"):
        kadyn.Curriculum([("uniform", None)])


def test_bad_lookups(small: kadyn.World) -> None:
    with pytest.raises(KeyError, match="individual 30 does not exist; allowed: 0..30"):
        small.individual(30)
    with pytest.raises(ValueError, match="unknown population"):
        small.individual(0, "everyone")
    with pytest.raises(ValueError, match="unknown attribute"):
        small.templates("age")
    with pytest.raises(KeyError, match="token id 99999"):
        small.decode([99999])
    with pytest.raises(TypeError):
        small.no_knowledge_loss(sampling="zipf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_individuals must be in 1..="):
        small.no_knowledge_loss(max_individuals=0)
    with pytest.raises(ValueError, match="n_days must be in 1..=31"):
        kadyn.World(n_individuals=5, n_days=32)
    with pytest.raises(ValueError, match="n_months"):
        kadyn.World(n_individuals=5, n_months=0)
    with pytest.raises(ValueError, match="seq_len must be >="):
        small.eval_set(seq_len=5)
