"""Rows -> Letta-shaped JSON."""

from __future__ import annotations

from typing import Any

from gateway.store import Agent, Run, Tool


def tool_json(tool: Tool) -> dict[str, Any]:
    return {
        "id": tool.id,
        "name": tool.name,
        "description": tool.description,
        "source_code": tool.source_code,
        "source_type": "python",
        "tool_type": "custom",
        "json_schema": tool.json_schema,
        "tags": tool.tags,
        "default_requires_approval": tool.default_requires_approval,
        "return_char_limit": tool.return_char_limit,
        "created_at": tool.created_at,
        "updated_at": tool.updated_at,
    }


def agent_json(agent: Agent, tools: list[Tool]) -> dict[str, Any]:
    settings = agent.settings or {}
    overrides = agent.approval_overrides or {}
    by_id = {t.id: t for t in tools}
    ordered = [by_id[i] for i in agent.tool_ids if i in by_id]
    rules = []
    for tool in ordered:
        required = overrides.get(tool.name, tool.default_requires_approval)
        if required:
            rules.append({"tool_name": tool.name, "type": "requires_approval"})
    return {
        "id": agent.id,
        "name": agent.name,
        "description": agent.description,
        "system": agent.system,
        "agent_type": "letta_v1_agent",
        "model": agent.model,
        "llm_config": {
            "handle": agent.model,
            "model": agent.model.partition("/")[2],
            "model_endpoint_type": "anthropic",
            "enable_reasoner": bool(settings.get("enable_reasoner")),
            "max_reasoning_tokens": settings.get("max_reasoning_tokens") or 0,
            "max_tokens": settings.get("max_tokens") or 4096,
        },
        "tools": [tool_json(t) for t in ordered],
        "tool_ids": list(agent.tool_ids),
        "tool_rules": rules,
        "approval_timeout_s": settings.get("approval_timeout_s"),
        "tags": agent.tags,
        "metadata": settings.get("metadata"),
        "active_run_id": agent.active_run_id,
        "created_at": agent.created_at,
        "updated_at": agent.updated_at,
    }


def run_json(run: Run) -> dict[str, Any]:
    usage = run.usage or {}
    prompt = usage.get("prompt_tokens", 0)
    completion = usage.get("completion_tokens", 0)
    return {
        "id": run.id,
        "agent_id": run.agent_id,
        "status": run.status,
        "stop_reason": run.stop_reason,
        "created_at": run.created_at,
        "completed_at": run.completed_at,
        "idempotency_key": run.idempotency_key,
        "epoch": run.epoch,
        "last_seq": run.last_seq,
        "error": run.error,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "step_count": run.step_count,
        },
    }
