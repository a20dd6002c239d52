"""Helpers shared by the stream tests: read a fixture, cut it into chunks, replay it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def split_random(data: bytes, seed: int, max_size: int = 40) -> Iterator[bytes]:
    """`data` in chunks of 1..max_size bytes (seeded, so failures reproduce)."""
    rng = random.Random(seed)
    i = 0
    while i < len(data):
        n = rng.randint(1, max_size)
        yield data[i : i + n]
        i += n


def chunkings(data: bytes, seeds: int = 8) -> dict[str, list[bytes]]:
    """The ways a body is cut: whole, byte by byte, and random sizes."""
    ways = {"whole": [data], "bytewise": [data[i : i + 1] for i in range(len(data))]}
    for seed in range(seeds):
        ways[f"random{seed}"] = list(split_random(data, seed))
    return ways
