"""The JSON Schema export is deterministic, complete and checked in up to date."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import orjson
import pytest

from protocol import COMMAND_TYPES, EVENT_TYPES, SERVER_FRAME_TYPES
from protocol.schema import dumps_schema, main, protocol_schema

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "protocol.schema.json"


def test_checked_in_schema_is_up_to_date() -> None:
    assert CHECKED_IN.read_bytes() == dumps_schema(), "run `make schema` and commit docs/protocol.schema.json"


def test_schema_is_deterministic() -> None:
    assert dumps_schema() == dumps_schema()
    text = dumps_schema().decode()
    assert text.endswith("}\n")
    assert list(orjson.loads(text)) == sorted(orjson.loads(text))


def test_schema_is_draft_2020_12_and_covers_every_frame() -> None:
    schema = protocol_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["oneOf"] == [{"$ref": "#/$defs/Command"}, {"$ref": "#/$defs/ServerFrame"}]
    defs = schema["$defs"]
    assert set(defs["Command"]["discriminator"]["mapping"]) == set(COMMAND_TYPES)
    assert set(defs["ServerFrame"]["discriminator"]["mapping"]) == set(SERVER_FRAME_TYPES)
    assert set(defs["RunEvent"]["discriminator"]["mapping"]) == set(EVENT_TYPES)
    assert set(schema["x-ack-results"]) == set(COMMAND_TYPES)
    assert schema["x-reconnect"] == [1001, 1006, 1011, 4408, 4429]
    # Every reference resolves.
    refs = {ref for ref in _refs(schema)}
    assert {ref.removeprefix("#/$defs/") for ref in refs} <= set(defs)


def test_commands_are_open_and_server_frames_closed() -> None:
    defs = protocol_schema()["$defs"]
    assert "additionalProperties" not in defs["RunStart"]
    assert defs["EventFrame"]["additionalProperties"] is False
    assert defs["AssistantMessage"]["additionalProperties"] is False


def test_descriptions_are_plain_text() -> None:
    text = dumps_schema().decode()
    assert ":class:" not in text and "``" not in text


def test_main_writes_to_a_path(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    assert main([str(target)]) == 0
    assert target.read_bytes() == dumps_schema()


def test_main_writes_to_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buffer))
    assert main([]) == 0
    assert buffer.getvalue() == dumps_schema()


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []
