"""Persisted history -> a Messages API request that is always valid.

Rules applied while building (PROTOCOL.md section 5, DESIGN.md invariants):
- consecutive turns of one role are merged (a failed run's input followed by a new one);
- every assistant `tool_use` is answered by a `tool_result` in the next user turn; a missing
  one (a crash mid-step) gets an error result, an orphan result is dropped;
- tool results come first in their user turn, as the API requires;
- thinking and redacted-thinking blocks pass through untouched, signatures included;
- empty turns are skipped and the conversation starts with a user turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from gateway.store import Agent, Tool
from gateway.store.store import HistoryTuple

INTERRUPTED = "error: the tool call was interrupted before it returned"


def user_content(content: str | list[Any]) -> list[dict[str, Any]]:
    """A run.start message's content as Anthropic blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        part = part if isinstance(part, dict) else dict(part)
        if part.get("type") == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image":
            blocks.append({"type": "image", "source": part.get("source", {})})
    return blocks


def _turns(rows: Iterable[HistoryTuple]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    loads = orjson.loads
    for _pos, _id, row_role, blob, _partial in rows:
        content = loads(blob)  # a fresh list: the turn may be extended in place
        if not content:
            continue
        role = "assistant" if row_role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(content)
        else:
            turns.append({"role": role, "content": content})
    return turns


def build_messages(rows: Iterable[HistoryTuple]) -> list[dict[str, Any]]:
    turns = _turns(rows)
    out: list[dict[str, Any]] = []
    pending: list[str] = []  # tool_use ids of the previous assistant turn
    for turn in turns:
        if turn["role"] == "assistant":
            if pending:  # assistant follows assistant's tool calls with no results between
                out.append({"role": "user", "content": [_interrupted(i) for i in pending]})
            if not out:
                continue  # the conversation must open with a user turn
            out.append(turn)
            pending = [b["id"] for b in turn["content"] if b.get("type") == "tool_use"]
            continue
        results = {b["tool_use_id"]: b for b in turn["content"] if b.get("type") == "tool_result"}
        others = [b for b in turn["content"] if b.get("type") != "tool_result"]
        answered = [results[i] if i in results else _interrupted(i) for i in pending]
        content = answered + others
        pending = []
        if content:
            out.append({"role": "user", "content": content})
    if pending:
        out.append({"role": "user", "content": [_interrupted(i) for i in pending]})
    return out


def _interrupted(tool_use_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_use_id, "content": INTERRUPTED, "is_error": True}


def build_request(agent: Agent, tools: list[Tool], rows: Iterable[HistoryTuple]) -> dict[str, Any]:
    """The keyword arguments of `messages.create` for the agent's next step."""
    settings = agent.settings or {}
    max_tokens = int(settings.get("max_tokens") or 4096)
    request: dict[str, Any] = {"model": "", "max_tokens": max_tokens, "messages": build_messages(rows)}
    if agent.system:
        request["system"] = agent.system
    if tools:
        request["tools"] = [
            {"name": t.name, "description": t.description or t.name, "input_schema": input_schema_of(t)}
            for t in tools
        ]
    if settings.get("enable_reasoner"):
        budget = int(settings.get("max_reasoning_tokens") or 1024)
        budget = max(1024, min(budget, max_tokens - 1))
        if budget < max_tokens:
            request["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return request


def input_schema_of(tool: Tool) -> dict[str, Any]:
    schema = tool.json_schema or {}
    params = schema.get("parameters")
    if isinstance(params, dict):
        return params
    return {"type": "object", "properties": {}}


__all__ = ["build_messages", "build_request", "user_content"]
