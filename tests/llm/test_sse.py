"""SSEDecoder and SSEJsonDecoder, replayed on the recorded transcripts in fixtures/."""

from __future__ import annotations

import orjson
import pytest

from gateway.llm.sse import SSEDataError, SSEDecoder, SSEJsonDecoder
from tests.llm.sse_replay import FIXTURES, chunkings, split_random

ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.sse"))
LINE_ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def decode_all(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    decoder = SSEDecoder()
    out: list[tuple[str, bytes]] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def reference_decode(body: bytes) -> list[tuple[str, bytes]]:
    """A slow, line-by-line reading of the WHATWG event-stream rules, to compare against."""
    text = body.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    events: list[tuple[str, bytes]] = []
    event, data = "", None
    lines = text.split("\n")
    for line in lines[:-1]:  # the last piece has no line end yet
        if line == "":
            if data is not None:
                events.append((event or "message", "\n".join(data).encode()))
            event, data = "", None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data = [*(data or []), value]
    return events


@pytest.mark.parametrize("ending", sorted(LINE_ENDINGS))
@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixture_decodes_the_same_however_it_is_chunked(name: str, ending: str) -> None:
    body = (FIXTURES / name).read_bytes().replace(b"\n", LINE_ENDINGS[ending])
    expected = reference_decode(body)
    assert expected, "every fixture holds events"
    for way, chunks in chunkings(body).items():
        assert decode_all(chunks) == expected, way


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_fixture_event_is_a_json_object_named_by_its_type(name: str) -> None:
    for event, data in decode_all([(FIXTURES / name).read_bytes()]):
        payload = orjson.loads(data)
        assert isinstance(payload, dict)
        assert event in (payload["type"], "message")


def test_text_fixture_events_in_order() -> None:
    events = decode_all([(FIXTURES / "text.sse").read_bytes()])
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[3][1] == (
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}'
    )


def test_multiline_data_is_joined_with_newlines() -> None:
    body = b'event: x\ndata: {"a":\ndata:  1,\ndata:"b": 2}\n\n'
    assert decode_all([body]) == [("x", b'{"a":\n 1,\n"b": 2}')]


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert decode_all([b"data:   {}  \n\n"]) == [("message", b"  {}  ")]
    assert decode_all([b"data:{}\n\n"]) == [("message", b"{}")]


def test_comments_id_retry_and_unknown_fields_are_ignored() -> None:
    body = b": hello\nid: 7\nretry: 1000\nfoo: bar\nevent: ping\ndata: {}\n:trailing\n\n"
    assert decode_all([body]) == [("ping", b"{}")]


def test_an_event_without_data_is_not_dispatched() -> None:
    assert decode_all([b"event: ping\n\n: comment only\n\nid: 3\n\n"]) == []


def test_empty_data_is_dispatched_as_empty_bytes() -> None:
    assert decode_all([b"event: a\ndata:\n\nevent: b\ndata\n\n"]) == [("a", b""), ("b", b"")]


def test_event_name_defaults_to_message() -> None:
    assert decode_all([b"data: 1\n\nevent:\ndata: 2\n\n"]) == [("message", b"1"), ("message", b"2")]


def test_extra_blank_lines_between_events_are_harmless() -> None:
    body = b"\n\n\nevent: a\ndata: 1\n\n\n\n\nevent: b\ndata: 2\n\n\n"
    assert decode_all([body]) == [("a", b"1"), ("b", b"2")]


def test_leading_bom_is_skipped_even_split_across_chunks() -> None:
    body = b"\xef\xbb\xbfevent: a\ndata: 1\n\n"
    assert decode_all([body]) == [("a", b"1")]
    assert decode_all([body[:1], body[1:2], body[2:]]) == [("a", b"1")]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    assert decode_all([b"data: 1\r", b"\n\r", b"\n", b"data: 2\r\n\r\n"]) == [
        ("message", b"1"),
        ("message", b"2"),
    ]
    # An empty chunk between "\r" and "\n" does not separate them.
    assert decode_all([b"data: 1\r", b"", b"\n\r\n"]) == [("message", b"1")]


def test_lone_cr_line_endings() -> None:
    assert decode_all([b"event: a\rdata: 1\r\r"]) == [("a", b"1")]
    assert decode_all([b"event: a\r", b"data: 1\r", b"\r"]) == [("a", b"1")]


def test_unicode_split_inside_a_character() -> None:
    body = 'data: {"t":"wörld ☀"}\n\n'.encode()
    split = body.index("☀".encode()) + 1
    assert decode_all([body[:split], body[split:]]) == [("message", '{"t":"wörld ☀"}'.encode())]


def test_pending_reports_an_unfinished_event() -> None:
    decoder = SSEDecoder()
    assert not decoder.pending
    assert decoder.feed(b"event: a\ndata: 1\n\nevent: b\ndata: 2") == [("a", b"1")]
    assert decoder.pending
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [("b", b"2")]
    assert not decoder.pending


def test_a_long_event_in_many_chunks() -> None:
    payload = b'{"text":"' + b"x" * 100_000 + b'"}'
    body = b"event: big\ndata: " + payload + b"\n\n"
    assert decode_all(list(split_random(body, seed=1, max_size=512))) == [("big", payload)]


# -- SSEJsonDecoder -----------------------------------------------------------------------


def collect(chunks: list[bytes]) -> list[dict[str, object]]:
    feed = SSEJsonDecoder().feed
    return [obj for chunk in chunks for obj in feed(chunk)]


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_json_decoder_yields_the_payloads(name: str) -> None:
    body = (FIXTURES / name).read_bytes()
    expected = [orjson.loads(data) for _, data in reference_decode(body)]
    for way, chunks in chunkings(body).items():
        assert collect(chunks) == expected, way


def test_json_decoder_skips_empty_data_and_fills_a_missing_type() -> None:
    body = b'event: ping\ndata:\n\nevent: ping\ndata:   \n\nevent: ping\ndata: {}\n\ndata: {"type": "x"}\n\n'
    assert collect([body]) == [{"type": "ping"}, {"type": "x"}]


def test_json_decoder_padded_json() -> None:
    assert collect([b'event: ping\ndata:   {"type": "ping"}  \n\n']) == [{"type": "ping"}]


def test_json_decoder_rejects_invalid_json() -> None:
    with pytest.raises(SSEDataError, match=r"'message_start'.*not valid JSON"):
        collect([b'event: message_start\ndata: {"type": \n\n'])


def test_json_decoder_rejects_a_non_object() -> None:
    with pytest.raises(SSEDataError, match="list, not an object"):
        collect([b"data: [1, 2]\n\n"])


def test_json_decoder_drops_an_unfinished_last_event() -> None:
    assert collect([b'data: {"type": "a"}\n\ndata: {"type": "b"}\n']) == [{"type": "a"}]


def test_the_events_before_a_bad_one_in_the_same_chunk_are_kept() -> None:
    body = b'data: {"type": "a"}\n\ndata: {"type": "b"}\n\ndata: {oops\n\ndata: {"type": "c"}\n\n'
    with pytest.raises(SSEDataError, match="not valid JSON") as caught:
        SSEJsonDecoder().feed(body)
    assert caught.value.before == [{"type": "a"}, {"type": "b"}]
