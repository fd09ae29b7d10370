"""The data engine seen from Python: determinism, exact resume, rank shards, DataLoader workers,
zero-copy hand-off to torch, and the training/eval template firewall."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

import kadyn


@pytest.fixture(scope="module")
def world() -> kadyn.World:
    return kadyn.World(n_individuals=300, seed=1, heldout=20, new=10)


def take(stream: kadyn.BiographyStream, n: int) -> list[pa.RecordBatch]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def rows(batches: list[pa.RecordBatch]) -> dict[int, list[int]]:
    """sample_index -> token ids of that row."""
    out: dict[int, list[int]] = {}
    for b in batches:
        ids = kadyn.to_torch(b)["input_ids"]
        for k, row in zip(b.column("sample_index").to_pylist(), ids.tolist()):
            out[k] = row
    return out


@pytest.mark.parametrize("packing", ["pad", "pack"])
def test_same_seed_same_bytes_whatever_the_threads(world: kadyn.World, packing: str) -> None:
    kw = dict(batch_size=32, seq_len=256, sampling=kadyn.PowerLaw(0.7), packing=packing, seed=5)
    one = take(kadyn.BiographyStream(world, threads=1, **kw), 3)
    four = take(kadyn.BiographyStream(world, threads=4, **kw), 3)
    assert all(a.equals(b) for a, b in zip(one, four))
    other_seed = take(kadyn.BiographyStream(world, threads=1, **{**kw, "seed": 6}), 1)
    assert not one[0].equals(other_seed[0])


def test_resume_from_state_dict_is_byte_identical(world: kadyn.World) -> None:
    stream = kadyn.BiographyStream(world, batch_size=16, sampling=kadyn.Uniform(), seed=3)
    full = take(stream, 6)
    first = kadyn.BiographyStream(world, batch_size=16, sampling=kadyn.Uniform(), seed=3)
    take(first, 4)
    state = first.state_dict()
    assert state["position"] == 4 * 16
    resumed = kadyn.BiographyStream(world, batch_size=16, sampling=kadyn.Uniform(), seed=3)
    resumed.load_state_dict(state)
    assert all(a.equals(b) for a, b in zip(full[4:], take(resumed, 2)))


def test_state_dict_counts_only_consumed_batches(world: kadyn.World) -> None:
    # The prefetch queue runs ahead; the state must not.
    stream = kadyn.BiographyStream(world, batch_size=8, prefetch=8)
    take(stream, 1)
    assert stream.state_dict()["position"] == 8


def test_rank_shards_are_disjoint_and_complete(world: kadyn.World) -> None:
    kw = dict(batch_size=12, sampling=kadyn.PowerLaw(1.0), seed=2)
    single = rows(take(kadyn.BiographyStream(world, **kw), 3))
    shards = [
        rows(take(kadyn.BiographyStream(world, rank=r, world_size=3, **kw), 1)) for r in range(3)
    ]
    keys = [set(s) for s in shards]
    assert all(not (keys[i] & keys[j]) for i in range(3) for j in range(i + 1, 3))
    merged = {k: v for s in shards for k, v in s.items()}
    assert merged == single


def test_elastic_resume_continues_the_global_sequence(world: kadyn.World) -> None:
    kw = dict(batch_size=6, sampling=kadyn.Uniform(), seed=4)
    single = rows(take(kadyn.BiographyStream(world, **kw), 10))  # 60 global rows
    ranks2 = [kadyn.BiographyStream(world, rank=r, world_size=2, **kw) for r in range(2)]
    seen = {}
    for s in ranks2:
        seen.update(rows(take(s, 2)))  # 24 rows
    state = ranks2[0].state_dict()
    assert state == ranks2[1].state_dict() and state["position"] == 24
    for r in range(3):
        s = kadyn.BiographyStream(world, rank=r, world_size=3, **kw)
        s.load_state_dict(state)
        seen.update(rows(take(s, 2)))  # 36 rows
    assert seen == single


def test_dataloader_workers_keep_order_without_duplicates(world: kadyn.World) -> None:
    stream = kadyn.BiographyStream(world, batch_size=8, seed=7)
    direct = take(kadyn.BiographyStream(world, batch_size=8, seed=7), 6)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    via_workers = []
    for b in loader:
        via_workers.append(b)
        if len(via_workers) == 6:
            break
    assert [b.column("sample_index").to_pylist() for b in via_workers] == [
        b.column("sample_index").to_pylist() for b in direct
    ]
    assert all(a.equals(b) for a, b in zip(direct, via_workers))
    resumed = kadyn.BiographyStream(world, batch_size=8, seed=7)
    resumed.load_state_dict(stream.state_after(via_workers[3]))
    assert take(resumed, 1)[0].equals(direct[4])


def test_to_torch_shares_memory(world: kadyn.World) -> None:
    batch = take(kadyn.BiographyStream(world, batch_size=4), 1)[0]
    tensors = kadyn.to_torch(batch)
    for name, dtype in (("input_ids", torch.int32), ("attr_type", torch.int8)):
        buffer = batch.column(name).values.buffers()[1]
        assert tensors[name].data_ptr() == buffer.address
        assert tensors[name].dtype == dtype
        assert tensors[name].shape == (4, world.max_biography_tokens)
    assert tensors["sample_index"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("start, length", [(0, 10), (5, 10), (0, 64), (60, 4), (3, 0)])
def test_to_torch_on_sliced_batches(world: kadyn.World, start: int, length: int) -> None:
    batch = next(iter(kadyn.BiographyStream(world, batch_size=64, seed=2, threads=1)))
    full = kadyn.to_torch(batch)
    part = kadyn.to_torch(batch.slice(start, length))
    for key in ("input_ids", "attr_type", "individual", "sample_index"):
        assert torch.equal(part[key], full[key][start : start + length]), key


def test_rows_are_biographies_with_tagged_values(world: kadyn.World) -> None:
    batch = take(kadyn.BiographyStream(world, batch_size=20, seed=9), 1)[0]
    t = kadyn.to_torch(batch)
    vocab = world.vocab()
    for ids, types, who in zip(t["input_ids"].tolist(), t["attr_type"].tolist(), t["individual"]):
        person = world.individual(int(who))
        assert ids[0] == world.bos_id and ids.count(world.eos_id) == 1
        # Every maximal run of one attr_type is exactly that attribute's value.
        values = {}
        i = 0
        while i < len(types):
            if types[i] >= 0:
                j = i
                while j < len(types) and types[j] == types[i]:
                    j += 1
                name = world.attribute_names[types[i]]
                assert name not in values, "one run per value"
                values[name] = " ".join(vocab[x] for x in ids[i:j])
                assert vocab[ids[j]] == ".", "punctuation is its own token after the value"
                i = j
            else:
                i += 1
        assert values == {a: person[a] for a in world.attribute_names}
        assert person["name"] in world.decode(ids)


def test_eval_sentences_never_appear_in_the_training_stream(world: kadyn.World) -> None:
    batches = take(kadyn.BiographyStream(world, batch_size=500, seed=11), 4)
    eval_sentences = {}
    for b in batches:
        for ids, who in zip(
            kadyn.to_torch(b)["input_ids"].tolist(), b.column("individual").to_pylist()
        ):
            if who not in eval_sentences:
                eval_sentences[who] = set(world.sentences(who, split="eval"))
            text = world.decode(ids).removeprefix("<bos> ").removesuffix(" <eos>")
            sentences = {s.strip() + "." for s in text.split(". ") if s.strip()}
            sentences = {s[:-1] if s.endswith("..") else s for s in sentences}
            assert len(sentences) == 6
            assert not sentences & eval_sentences[who]
            assert sentences <= set(world.sentences(who, split="train"))


def test_eval_set_uses_the_requested_templates(world: kadyn.World) -> None:
    for split in ("eval", "train"):
        probe = world.eval_set(split=split, population="train", max_individuals=25)
        assert probe.num_rows == 25
        assert probe.column("individual").to_pylist() == list(range(25))
        for i, ids in enumerate(kadyn.to_torch(probe)["input_ids"].tolist()):
            text = world.decode(ids).removeprefix("<bos> ").removesuffix(" <eos>")
            sentences = {s if s.endswith(".") else s + "." for s in text.split(". ")}
            assert sentences <= set(world.sentences(i, split=split))
    held = world.eval_set(population="heldout")
    assert held.num_rows == 20
    again = world.eval_set(population="heldout")
    assert held.equals(again), "probe sets are fixed"


def test_pack_mode_joins_biographies(world: kadyn.World) -> None:
    seq_len = 4 * world.max_biography_tokens
    batch = take(kadyn.BiographyStream(world, batch_size=8, seq_len=seq_len, packing="pack"), 1)[0]
    assert pa.types.is_list(batch.schema.field("individual").type)
    for ids, people in zip(
        kadyn.to_torch(batch)["input_ids"].tolist(), batch.column("individual").to_pylist()
    ):
        assert len(people) >= 3
        assert ids.count(world.eos_id) == len(people)
        assert ids.count(world.bos_id) == 1


def test_populations_are_disjoint(world: kadyn.World) -> None:
    names = {
        pop: {world.individual(i, pop)["name"] for i in range(world.population_size(pop))}
        for pop in ("train", "heldout", "new")
    }
    assert [len(v) for v in names.values()] == [300, 20, 10]
    assert not names["train"] & names["heldout"]
    assert not names["train"] & names["new"]
    assert not names["heldout"] & names["new"]
    stream = kadyn.BiographyStream(world, batch_size=50, population="new")
    assert max(take(stream, 1)[0].column("individual").to_pylist()) < 10


def resumable_state(world: kadyn.World, **kw: object) -> dict[str, object]:
    stream = kadyn.BiographyStream(world, batch_size=4, threads=1, **kw)  # type: ignore[arg-type]
    take(stream, 1)
    return stream.state_dict()


@pytest.mark.parametrize("state", [None, "state", 3, [("position", 0)]])
def test_load_state_dict_refuses_what_is_not_a_state(world: kadyn.World, state: object) -> None:
    with pytest.raises(TypeError, match="state must be a dict"):
        kadyn.BiographyStream(world).load_state_dict(state)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "position, error",
    [
        (True, TypeError),  # a bool is an int to Python, not a row count
        (1.0, TypeError),
        ("4", TypeError),
        (None, TypeError),
        (-1, ValueError),
        (2**63, ValueError),  # beyond the native stream's i64
    ],
)
def test_load_state_dict_refuses_a_bad_position(
    world: kadyn.World, position: object, error: type[Exception]
) -> None:
    stream = kadyn.BiographyStream(world, batch_size=4)
    state = {**stream.state_dict(), "position": position}
    with pytest.raises(error, match="position"):
        stream.load_state_dict(state)
    assert stream.position == 0, "a refused state leaves the stream as it was"


@pytest.mark.parametrize(
    "other",
    [
        dict(n_individuals=300, seed=2, heldout=20, new=10),  # another seed
        dict(n_individuals=301, seed=1, heldout=20, new=10),  # another size
        dict(n_individuals=300, seed=1, heldout=20, new=10, n_cities=799),  # another pool
    ],
)
def test_state_of_a_stream_over_another_world_is_refused(
    world: kadyn.World, other: dict[str, int]
) -> None:
    state = resumable_state(kadyn.World(**other))
    with pytest.raises(ValueError, match="state world is"):
        kadyn.BiographyStream(world, batch_size=4).load_state_dict(state)


def test_state_resumes_over_an_equal_world_built_again(world: kadyn.World) -> None:
    twin = kadyn.World(n_individuals=300, seed=1, heldout=20, new=10)
    assert kadyn.stream.world_identity(twin) == kadyn.stream.world_identity(world)
    state = resumable_state(twin, seed=3)
    resumed = kadyn.BiographyStream(world, batch_size=4, seed=3)
    resumed.load_state_dict(state)
    assert resumed.position == 4


@pytest.mark.parametrize(
    "saved, mine",
    [
        (kadyn.PowerLaw(0.5), kadyn.PowerLaw(0.7)),
        (kadyn.PowerLaw(0.5), kadyn.PowerLaw(0.5000000000000001)),  # the repr is exact
        (kadyn.Subset(10), kadyn.Subset(11)),
        (kadyn.Uniform(), kadyn.Subset(300)),
        (
            kadyn.Curriculum([(kadyn.Subset(10), 100), (kadyn.Uniform(), None)]),
            kadyn.Curriculum([(kadyn.Subset(10), 101), (kadyn.Uniform(), None)]),
        ),
    ],
)
def test_state_of_another_sampling_is_refused(
    world: kadyn.World, saved: object, mine: object
) -> None:
    state = resumable_state(world, sampling=saved)
    with pytest.raises(ValueError, match="state sampling is"):
        kadyn.BiographyStream(world, sampling=mine).load_state_dict(state)  # type: ignore[arg-type]
    kadyn.BiographyStream(world, sampling=saved).load_state_dict(state)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("seed", 4, ValueError),
        ("seed", True, TypeError),  # True == 1, but not a seed
        ("seq_len", float(100), TypeError),
        ("split", "eval", ValueError),
        ("world", None, TypeError),
        ("sampling", repr(kadyn.PowerLaw(1.0)), ValueError),
    ],
)
def test_state_field_mismatch_names_the_field(
    world: kadyn.World, field: str, value: object, error: type[Exception]
) -> None:
    stream = kadyn.BiographyStream(world, seed=1, seq_len=100)
    with pytest.raises(error, match=f"state {field}"):
        stream.load_state_dict({**stream.state_dict(), field: value})


def test_state_of_another_version_or_shape_is_refused(world: kadyn.World) -> None:
    stream = kadyn.BiographyStream(world, batch_size=4)
    state = stream.state_dict()
    assert state["version"] == kadyn.stream.STATE_VERSION == 2
    old = {k: v for k, v in state.items() if k != "world"} | {"version": 1}
    with pytest.raises(ValueError, match="version must be 2, got 1"):
        stream.load_state_dict(old)
    with pytest.raises(ValueError, match="version must be 2, got True"):
        stream.load_state_dict({**state, "version": True})
    with pytest.raises(ValueError, match="unknown fields"):
        stream.load_state_dict({**state, "batch_size": 4})
    with pytest.raises(ValueError, match=r"lacks the fields \['world'\]"):
        stream.load_state_dict({k: v for k, v in state.items() if k != "world"})
    with pytest.raises(ValueError, match="version"):
        stream.load_state_dict({"main": state})  # a TrainBatches state is not a stream state


def test_state_survives_a_weights_only_torch_round_trip(world: kadyn.World, tmp_path) -> None:
    stream = kadyn.BiographyStream(world, batch_size=4, sampling=kadyn.PowerLaw(0.7), seed=2)
    take(stream, 2)
    torch.save(stream.state_dict(), tmp_path / "state.pt")
    resumed = kadyn.BiographyStream(world, batch_size=4, sampling=kadyn.PowerLaw(0.7), seed=2)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.position == 8
