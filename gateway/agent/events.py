"""Builders of run events (plain dicts, docs/internals.md) and of Letta messages from rows.

The live path builds dicts directly; `row_events` turns persisted messages back into the
events a non-streaming run would have produced (a log rebuilt after a restart), and
`letta_messages` into Letta's REST message list (grouped tool calls and returns).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from gateway.store import Approval, Message, now_iso


def run_status(status: str, stop_reason: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"message_type": "run_status", "status": status}
    if stop_reason is not None:
        event["stop_reason"] = stop_reason
    return event


def user_message(message_id: str, otid: str, content: Any, date: str) -> dict[str, Any]:
    return {
        "message_type": "user_message",
        "id": message_id,
        "otid": otid,
        "step_id": None,
        "date": date,
        "content": content,
    }


def tool_return_message(
    message_id: str, otid: str, step_id: str, returns: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "message_type": "tool_return_message",
        "id": message_id,
        "otid": otid,
        "step_id": step_id,
        "date": now_iso(),
        "tool_returns": returns,
    }


def approval_request(message_id: str, otid: str, step_id: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "message_type": "approval_request_message",
        "id": message_id,
        "otid": otid,
        "step_id": step_id,
        "date": now_iso(),
        "tool_calls": calls,
    }


def approval_response(run_id: str, approvals: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "message_type": "approval_response_message",
        "id": f"approval-{run_id}",
        "otid": f"approval-{run_id}",
        "step_id": None,
        "date": now_iso(),
        "approvals": approvals,
    }


def error_message(
    error_type: str, message: str, retryable: bool, step_id: str | None = None
) -> dict[str, Any]:
    return {
        "message_type": "error_message",
        "id": f"error-{error_type}",
        "otid": f"error-{error_type}",
        "step_id": step_id,
        "date": now_iso(),
        "error_type": error_type,
        "message": message,
        "retryable": retryable,
    }


def stop_reason(reason: str) -> dict[str, Any]:
    return {"message_type": "stop_reason", "stop_reason": reason}


def usage_statistics(usage: dict[str, int], step_count: int) -> dict[str, Any]:
    prompt = usage.get("prompt_tokens", 0)
    completion = usage.get("completion_tokens", 0)
    event: dict[str, Any] = {
        "message_type": "usage_statistics",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "step_count": step_count,
    }
    if usage.get("cached_input_tokens"):
        event["cached_input_tokens"] = usage["cached_input_tokens"]
    if usage.get("cache_write_tokens"):
        event["cache_write_tokens"] = usage["cache_write_tokens"]
    return event


def _text_of(content: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(b.get("type") == "text" for b in content):
        return "".join(b.get("text", "") for b in content)
    return content


def row_events(row: Message, *, grouped: bool = False) -> list[dict[str, Any]]:
    """One persisted message as complete events (each block one event, like stream_tokens=false).

    With `grouped`, a message's tool calls (and returns) become one Letta message with
    `tool_calls` / `tool_returns` lists, as Letta's REST API lists them.
    """
    meta = row.meta or []
    base = {"id": row.id, "step_id": row.step_id, "date": row.created_at}
    if row.role == "user":
        otid = meta[0].get("otid") if meta else row.id
        return [{"message_type": "user_message", **base, "otid": otid, "content": _text_of(row.content)}]
    if row.role == "tool":
        returns = []
        for block, info in zip(row.content, meta, strict=False):
            item = {
                "tool_call_id": block["tool_use_id"],
                "status": info.get("status", "error" if block.get("is_error") else "success"),
                "tool_return": block.get("content", ""),
            }
            for key in ("stdout", "stderr"):
                if info.get(key):
                    item[key] = [info[key]]
            if grouped:
                item["type"] = "tool"
            returns.append(item)
        otid = (meta[0].get("otid") if meta else None) or row.id
        event = {"message_type": "tool_return_message", **base, "otid": otid, "tool_returns": returns}
        if grouped and returns:
            first = returns[0]
            event.update(
                tool_call_id=first["tool_call_id"], status=first["status"], tool_return=first["tool_return"]
            )
        return [event]
    events: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(row.content):
        otid = meta[i].get("otid") if i < len(meta) else f"{row.id}-{i}"
        kind = block.get("type")
        ev: dict[str, Any] | None = None
        if kind == "text":
            ev = {"message_type": "assistant_message", "content": block["text"]}
        elif kind == "thinking":
            ev = {
                "message_type": "reasoning_message",
                "source": "reasoner_model",
                "reasoning": block.get("thinking", ""),
                "signature": block.get("signature"),
            }
        elif kind == "redacted_thinking":
            ev = {
                "message_type": "hidden_reasoning_message",
                "state": "redacted",
                "hidden_reasoning": block["data"],
            }
        elif kind == "tool_use":
            call = {
                "tool_call_id": block["id"],
                "name": block["name"],
                "arguments": orjson.dumps(block.get("input", {})).decode(),
            }
            if grouped:
                if calls:
                    calls.append(call)
                    continue
                calls.append(call)
                ev = {"message_type": "tool_call_message", "tool_call": call, "tool_calls": calls}
            else:
                ev = {"message_type": "tool_call_message", "tool_call": call}
        if ev is not None:
            events.append({**ev, **base, "otid": otid})
    return events


def letta_messages(rows: Iterable[Message], approvals: Iterable[Approval] = ()) -> list[dict[str, Any]]:
    """Persisted rows as Letta's message list. With the runs' `approvals`, a step whose calls
    needed approval also lists its `approval_request_message` (after the calls) and each
    decision's `approval_response_message` (before the returns), as the live log did."""
    asked: dict[tuple[str | None, str], Approval] = {(a.run_id, a.tool_call_id): a for a in approvals}
    out: list[dict[str, Any]] = []
    for row in rows:
        ids = [
            b.get("id") if row.role == "assistant" else b.get("tool_use_id")
            for b in row.content
            if b.get("type") in ("tool_use", "tool_result")
        ]
        gated = [asked[(row.run_id, i)] for i in ids if (row.run_id, i) in asked]
        base = {"id": row.id, "step_id": row.step_id, "date": row.created_at, "run_id": row.run_id}
        if row.role == "tool" and gated:
            decisions = [
                {
                    "tool_call_id": a.tool_call_id,
                    "approve": bool(a.decision),
                    **({"reason": a.reason} if a.reason else {}),
                }
                for a in gated
                if a.decision is not None
            ]
            if decisions:
                out.append(
                    {
                        "message_type": "approval_response_message",
                        **base,
                        "otid": f"{row.id}-approval",
                        "approvals": decisions,
                    }
                )
        for ev in row_events(row, grouped=True):
            ev["run_id"] = row.run_id
            out.append(ev)
        if row.role == "assistant" and gated:
            calls = [
                {"tool_call_id": a.tool_call_id, "name": a.name, "arguments": a.arguments} for a in gated
            ]
            out.append(
                {
                    "message_type": "approval_request_message",
                    **base,
                    "otid": f"{row.id}-approval",
                    "tool_calls": calls,
                }
            )
    return out
