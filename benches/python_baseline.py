"""The plain-Python baseline that `kadyn-bench` compares the stream against.

What one would write without a data engine: the same world (templates, names, values and each
individual's train templates, read from `kadyn.World`), biographies rendered as text with
`str.format`, tokenized word by word through a dict lookup, `<pad>`-filled to `seq_len` in numpy
arrays (int32 token ids, int8 attribute types). Sampling is uniform through `random.Random`: the
baseline is about throughput, so it matches the stream's data, not its exact sample sequence.

    python benches/python_baseline.py   # prints rows/s of this generator
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np

PUNCTUATION = '.,;:!?()"'


def split_words(text: str) -> list[str]:
    """Whitespace-separated words with punctuation peeled off both ends (as the Rust vocab does)."""
    out: list[str] = []
    for word in text.split():
        start = len(word) - len(word.lstrip(PUNCTUATION))
        end = max(len(word.rstrip(PUNCTUATION)), start)
        out.extend(word[:start])
        if end > start:
            out.append(word[start:end])
        out.extend(word[end:])
    return out


class PythonBaseline:
    """Batches of `(input_ids, attr_type, individual, sample_index)` numpy arrays."""

    def __init__(self, world: Any, seq_len: int = 128, seed: int = 0, split: str = "train") -> None:
        self.seq_len = seq_len
        self.pad_id, self.bos_id, self.eos_id = world.pad_id, world.bos_id, world.eos_id
        self.ids = {word: i for i, word in enumerate(world.vocab())}
        self.attributes = list(world.attribute_names)
        self.templates = {a: world.templates(a) for a in self.attributes}
        self.people = [world.individual(i) for i in range(world.n_individuals)]
        self.split = split
        self.rng = random.Random(seed)
        self.position = 0

    def tokenize(self, text: str) -> list[int]:
        return [self.ids[w] for w in split_words(text)]

    def biography(self, person: dict[str, Any]) -> tuple[list[int], list[int]]:
        """Token ids and attribute types of one biography: <bos>, six sentences, <eos>."""
        ids, types = [self.bos_id], [-1]
        order = list(range(len(self.attributes)))
        self.rng.shuffle(order)
        for a in order:
            attr = self.attributes[a]
            template = self.templates[attr][
                self.rng.choice(person[f"{self.split}_templates"][attr])
            ]
            before, after = template.split("{value}")
            head = self.tokenize(before.format(name=person["name"]))
            value = self.tokenize(person[attr])
            tail = self.tokenize(after)
            ids += head + value + tail
            types += [-1] * len(head) + [a] * len(value) + [-1] * len(tail)
        ids.append(self.eos_id)
        types.append(-1)
        return ids, types

    def batch(self, batch_size: int) -> dict[str, np.ndarray]:
        input_ids = np.full((batch_size, self.seq_len), self.pad_id, dtype=np.int32)
        attr_type = np.full((batch_size, self.seq_len), -1, dtype=np.int8)
        individual = np.empty(batch_size, dtype=np.uint32)
        for r in range(batch_size):
            who = self.rng.randrange(len(self.people))
            ids, types = self.biography(self.people[who])
            input_ids[r, : len(ids)] = ids
            attr_type[r, : len(types)] = types
            individual[r] = who
        sample_index = np.arange(self.position, self.position + batch_size, dtype=np.uint64)
        self.position += batch_size
        return {
            "input_ids": input_ids,
            "attr_type": attr_type,
            "individual": individual,
            "sample_index": sample_index,
        }


if __name__ == "__main__":
    import kadyn

    gen = PythonBaseline(kadyn.World(n_individuals=1000), seq_len=128)
    start, rows = time.perf_counter(), 0
    while time.perf_counter() - start < 3.0:
        rows += len(gen.batch(1024)["sample_index"])
    print(f"plain Python: {rows / (time.perf_counter() - start):,.0f} rows/s")
