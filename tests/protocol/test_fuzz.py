"""decode_command raises ProtocolError and nothing else, whatever it is given.

Hypothesis is not installed in this venv, so the inputs come from a seeded random generator:
random bytes, random JSON documents, and valid commands with fields mutated at random.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from protocol import COMMAND_TYPES, ProtocolError, decode_command
from protocol.commands import AnyCommand

from .samples import commands

SEED = 20250601


def decode_or_refuse(data: str | bytes) -> AnyCommand | ProtocolError:
    """decode_command's outcome; any exception other than ProtocolError fails the test."""
    try:
        return decode_command(data)
    except ProtocolError as error:
        assert error.message
        assert error.command_id is None or 1 <= len(error.command_id) <= 64
        return error


def random_scalar(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            -1,
            1,
            rng.randint(-(2**63), 2**64 - 1),
            rng.random() * 1e6,
            "",
            "x" * rng.randint(1, 300),
            rng.choice(COMMAND_TYPES),
            "user",
            "text",
            "\u0000\ud7ff\ue000",
            "🌍",
        ]
    )


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 4 or roll < 0.5:
        return random_scalar(rng)
    if roll < 0.75:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["type", "id", "messages", "role", "content", "text", "decisions", "approve", "run_id", "x"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """``value`` with one random change somewhere inside it."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        changed = dict(value)
        action = rng.random()
        if action < 0.2:
            del changed[key]
        elif action < 0.4:
            changed[key] = random_json(rng)
        else:
            changed[key] = mutate(rng, value[key], depth + 1)
        return changed
    if isinstance(value, list) and value and rng.random() < 0.8:
        index = rng.randrange(len(value))
        changed_list = list(value)
        changed_list[index] = mutate(rng, value[index], depth + 1)
        if rng.random() < 0.2:
            changed_list.append(random_json(rng))
        return changed_list
    return random_json(rng)


def valid_frames() -> list[dict[str, Any]]:
    return [frame for frames in commands().values() for frame in frames]


def random_inputs(rng: random.Random, count: int) -> Iterator[str | bytes]:
    frames = valid_frames()
    for _ in range(count):
        kind = rng.random()
        if kind < 0.2:
            yield rng.randbytes(rng.randint(0, 64))
        elif kind < 0.3:
            corrupted = bytearray(orjson.dumps(rng.choice(frames)))
            for _ in range(rng.randint(1, 3)):
                corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
            yield bytes(corrupted)
        elif kind < 0.5:
            yield orjson.dumps(random_json(rng))
        else:
            frame = rng.choice(frames)
            for _ in range(rng.randint(1, 3)):
                frame = mutate(rng, frame)
            data = orjson.dumps(frame)
            yield data if rng.random() < 0.5 else data.decode()


@pytest.mark.parametrize("chunk", range(4))
def test_fuzz_never_raises_anything_but_protocol_error(chunk: int) -> None:
    rng = random.Random(SEED + chunk)
    outcomes = [decode_or_refuse(data) for data in random_inputs(rng, 5000)]
    # The generator exercises both outcomes, not only refusals.
    assert any(isinstance(outcome, ProtocolError) for outcome in outcomes)
    assert any(not isinstance(outcome, ProtocolError) for outcome in outcomes)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"type":"run.start","id":"1","agent_id":"a","messages":' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"type":"ping","id":"1","x":' + b'{"a":' * 3000 + b"1" + b"}" * 3001,
        b'{"type":"run.subscribe","id":"1","run_id":"r","after":123456789012345678901234567890}',
        b'{"type":"run.subscribe","id":"1","run_id":"r","after":1e400}',
        b'{"type":"ping","id":"1","type":"nope"}',
        '{"type": "ping", "id": "\ud83c"}',
        b'{"type":"ping","id":"\\ud83c"}',
        b"\xef\xbb\xbf{}",
        b"\x00",
        b" " * 10000,
    ],
)
def test_hostile_inputs(data: str | bytes) -> None:
    assert isinstance(decode_or_refuse(data), ProtocolError), "none of these is a command"
