"""REST routes under /v1, following Letta's paths and field names.

Errors: 404 `{"detail": "..."}` for unknown ids; 422 `{"detail": [{"loc", "msg", "type"}]}`
for invalid bodies (which field, why), as Letta's FastAPI server answers; 400 for bodies
that are not JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import __version__
from gateway.agent.events import letta_messages
from gateway.api.schemas import AgentCreate, AgentUpdate, ApprovalSetting, ToolUpdate, ToolUpsert
from gateway.api.serialize import agent_json, run_json, tool_json
from gateway.errors import GatewayError
from gateway.tools import ToolSourceError, parse_tool_source

if TYPE_CHECKING:
    from gateway.app import Gateway

B = TypeVar("B", bound=BaseModel)


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class HTTPError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail


def invalid(field: str, message: str, kind: str = "value_error") -> HTTPError:
    return HTTPError(422, [{"loc": ["body", *field.split(".")], "msg": message, "type": kind}])


async def body(request: Request, model: type[B]) -> B:
    raw = await request.body()
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPError(
            422, [{"loc": ["body"], "msg": "the body must be a JSON object", "type": "dict_type"}]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = [
            {"loc": ["body", *[str(p) for p in e["loc"]]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False)
        ]
        raise HTTPError(422, detail) from None


def gw(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def endpoint(fn: Any) -> Any:
    async def wrapped(request: Request) -> Response:
        try:
            result = await fn(request)
        except HTTPError as exc:
            return JSON({"detail": exc.detail}, status_code=exc.status)
        except GatewayError as exc:
            status = 404 if exc.code == "not_found" else 409 if exc.code == "agent_busy" else 400
            return JSON(
                {
                    "detail": exc.message,
                    "code": exc.code,
                    **({"details": exc.details} if exc.details else {}),
                },
                status_code=status,
            )
        return result if isinstance(result, Response) else JSON(result)

    wrapped.__name__ = fn.__name__
    return wrapped


# -- health ------------------------------------------------------------------------------------


@endpoint
async def health(request: Request) -> Any:
    return {"status": "ok", "version": __version__}


# -- tools -------------------------------------------------------------------------------------


def spec_fields(source_code: str, name: str | None) -> dict[str, Any]:
    try:
        spec = parse_tool_source(source_code, name=name)
    except ToolSourceError as exc:
        raise invalid(
            exc.field if exc.field.startswith("source_code") else f"source_code.{exc.field}", exc.message
        ) from None
    return {
        "name": spec.name,
        "source_code": source_code,
        "json_schema": spec.json_schema,
        "description": spec.description,
    }


@endpoint
async def upsert_tool(request: Request) -> Any:
    data = await body(request, ToolUpsert)
    fields = spec_fields(data.source_code, data.name)
    if data.description:
        fields["description"] = data.description
        fields["json_schema"] = {**fields["json_schema"], "description": data.description}
    tool = await gw(request).store.upsert_tool(
        **fields,
        tags=data.tags,
        default_requires_approval=data.default_requires_approval,
        return_char_limit=data.return_char_limit,
    )
    return tool_json(tool)


@endpoint
async def list_tools(request: Request) -> Any:
    return [tool_json(t) for t in await gw(request).store.list_tools()]


async def _row(request: Request, kind: str) -> Any:
    """The tool, agent or run named by the path's `{kind}_id`, or a 404 naming it."""
    ident = request.path_params[f"{kind}_id"]
    row = await getattr(gw(request).store, f"get_{kind}")(ident)
    if row is None:
        raise HTTPError(404, f"{kind} {ident!r} not found")
    return row


async def _tool(request: Request) -> Any:
    return await _row(request, "tool")


@endpoint
async def get_tool(request: Request) -> Any:
    return tool_json(await _tool(request))


@endpoint
async def update_tool(request: Request) -> Any:
    tool = await _tool(request)
    data = await body(request, ToolUpdate)
    fields: dict[str, Any] = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
    if data.source_code is not None:
        spec = spec_fields(data.source_code, tool.name)
        fields.update(json_schema=spec["json_schema"], description=data.description or spec["description"])
    fields["name"] = tool.name
    updated = await gw(request).store.upsert_tool(**fields)
    return tool_json(updated)


@endpoint
async def delete_tool(request: Request) -> Any:
    if not await gw(request).store.delete_tool(request.path_params["tool_id"]):
        raise HTTPError(404, f"tool {request.path_params['tool_id']!r} not found")
    return {}


# -- agents ------------------------------------------------------------------------------------


async def _agent(request: Request) -> Any:
    return await _row(request, "agent")


async def _agent_json(request: Request, agent: Any) -> dict[str, Any]:
    return agent_json(agent, await gw(request).store.list_tools(agent.tool_ids))


async def _check_tools(request: Request, tool_ids: list[str]) -> None:
    known = {t.id for t in await gw(request).store.list_tools(tool_ids)}
    for i, tool_id in enumerate(tool_ids):
        if tool_id not in known:
            raise invalid(f"tool_ids.{i}", f"tool {tool_id!r} not found")


def _settings(data: AgentCreate | AgentUpdate, current: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    settings = dict(current)
    model = data.model
    cfg = data.llm_config
    if cfg is not None:
        if model is None and (cfg.handle or cfg.model):
            handle = cfg.handle or (cfg.model if "/" in (cfg.model or "") else f"anthropic/{cfg.model}")
            model = handle
        for key in ("enable_reasoner", "max_reasoning_tokens", "max_tokens"):
            value = getattr(cfg, key)
            if value is not None:
                settings[key] = value
    for key in ("enable_reasoner", "max_reasoning_tokens", "max_tokens", "approval_timeout_s", "metadata"):
        value = getattr(data, key)
        if value is not None:
            settings[key] = value
    if model is not None:
        from gateway.llm.client import UnknownModel, parse_handle

        try:
            parse_handle(model)
        except UnknownModel as exc:
            raise invalid("model", str(exc)) from None
    return settings, model


@endpoint
async def create_agent(request: Request) -> Any:
    data = await body(request, AgentCreate)
    settings, model = _settings(data, {})
    tool_ids = data.tool_ids or []
    await _check_tools(request, tool_ids)
    agent = await gw(request).store.create_agent(
        name=data.name or "agent",
        description=data.description,
        system=data.system or "",
        model=model or "anthropic/claude-sonnet-4-6",
        tool_ids=list(dict.fromkeys(tool_ids)),
        approval_overrides={},
        tags=data.tags or [],
        settings=settings,
    )
    return await _agent_json(request, agent)


@endpoint
async def list_agents(request: Request) -> Any:
    store = gw(request).store
    agents = await store.list_agents()
    tools = await store.list_tools()
    return [agent_json(a, tools) for a in agents]


@endpoint
async def get_agent(request: Request) -> Any:
    return await _agent_json(request, await _agent(request))


@endpoint
async def update_agent(request: Request) -> Any:
    agent = await _agent(request)
    data = await body(request, AgentUpdate)
    settings, model = _settings(data, agent.settings or {})
    fields: dict[str, Any] = {"settings": settings}
    if model is not None:
        fields["model"] = model
    for key in ("name", "description", "system", "tags"):
        value = getattr(data, key)
        if value is not None:
            fields[key] = value
    if data.tool_ids is not None:
        await _check_tools(request, data.tool_ids)
        fields["tool_ids"] = list(dict.fromkeys(data.tool_ids))
    updated = await gw(request).store.update_agent(agent.id, **fields)
    return await _agent_json(request, updated)


@endpoint
async def delete_agent(request: Request) -> Any:
    agent = await _agent(request)
    if agent.active_run_id:
        raise GatewayError(
            "agent_busy",
            "the agent has an active run; cancel it first",
            details={"active_run_id": agent.active_run_id},
        )
    await gw(request).store.delete_agent(agent.id)
    return {}


@endpoint
async def set_tool_approval(request: Request) -> Any:
    agent = await _agent(request)
    data = await body(request, ApprovalSetting)
    name = request.path_params["tool_name"]
    tools = await gw(request).store.list_tools(agent.tool_ids)
    if name not in {t.name for t in tools}:
        raise HTTPError(404, f"tool {name!r} is not attached to agent {agent.id!r}")
    overrides = {**(agent.approval_overrides or {}), name: data.requires_approval}
    updated = await gw(request).store.update_agent(agent.id, approval_overrides=overrides)
    if updated is None:
        raise HTTPError(404, f"agent {agent.id!r} not found")
    return agent_json(updated, tools)


@endpoint
async def attach_tool(request: Request) -> Any:
    agent = await _agent(request)
    tool = await _tool(request)
    ids = list(dict.fromkeys([*agent.tool_ids, tool.id]))
    return await _agent_json(request, await gw(request).store.update_agent(agent.id, tool_ids=ids))


@endpoint
async def detach_tool(request: Request) -> Any:
    agent = await _agent(request)
    ids = [i for i in agent.tool_ids if i != request.path_params["tool_id"]]
    return await _agent_json(request, await gw(request).store.update_agent(agent.id, tool_ids=ids))


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(
            422, [{"loc": ["query", name], "msg": "must be an integer", "type": "int_parsing"}]
        ) from None
    if not lo <= value <= hi:
        raise HTTPError(
            422, [{"loc": ["query", name], "msg": f"must be between {lo} and {hi}", "type": "value_error"}]
        )
    return value


@endpoint
async def list_agent_messages(request: Request) -> Any:
    """Letta semantics: with no cursor, the newest `limit` messages in chronological order;
    `after`/`before` are message ids; `order=desc` lists newest first."""
    agent = await _agent(request)
    store = gw(request).store
    limit = _int_param(request, "limit", 100, 1, 1000)
    order = request.query_params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise HTTPError(422, [{"loc": ["query", "order"], "msg": "must be 'asc' or 'desc'", "type": "enum"}])
    cursors: dict[str, int | None] = {}
    for name in ("after", "before"):
        ident = request.query_params.get(name)
        if ident:
            pos = await store.message_pos(ident)
            if pos is None:
                raise HTTPError(404, f"message {ident!r} not found")
            cursors[name] = pos
    if "after" in cursors:
        rows = await store.list_messages(
            agent_id=agent.id, after_pos=cursors["after"], before_pos=cursors.get("before"), limit=limit
        )
    else:
        rows = await store.list_messages(
            agent_id=agent.id, before_pos=cursors.get("before"), limit=limit, descending=True
        )
        rows.reverse()
    store = gw(request).store
    messages = letta_messages(rows, await store.approvals_of(r.run_id for r in rows))
    if order == "desc":
        messages.reverse()
    return messages


# -- runs --------------------------------------------------------------------------------------


async def _run(request: Request) -> Any:
    return await _row(request, "run")


@endpoint
async def get_run(request: Request) -> Any:
    return run_json(await _run(request))


@endpoint
async def list_runs(request: Request) -> Any:
    agent_id = request.query_params.get("agent_id")
    statuses = request.query_params.getlist("statuses") or None
    return [run_json(r) for r in await gw(request).store.list_runs(agent_id=agent_id, statuses=statuses)]


@endpoint
async def list_run_messages(request: Request) -> Any:
    run = await _run(request)
    store = gw(request).store
    return letta_messages(await store.list_messages(run_id=run.id), await store.approvals(run.id))


@endpoint
async def cancel_run(request: Request) -> Any:
    run = await _run(request)
    status = await gw(request).manager.cancel(run.id, request.query_params.get("mode", "immediate"))
    return {"run_id": run.id, "status": status}


routes = [
    Route("/v1/health", health, methods=["GET"]),
    Route("/v1/health/", health, methods=["GET"]),
    Route("/v1/tools/", upsert_tool, methods=["PUT", "POST"]),
    Route("/v1/tools/", list_tools, methods=["GET"]),
    Route("/v1/tools/{tool_id}", get_tool, methods=["GET"]),
    Route("/v1/tools/{tool_id}", update_tool, methods=["PATCH"]),
    Route("/v1/tools/{tool_id}", delete_tool, methods=["DELETE"]),
    Route("/v1/agents/", create_agent, methods=["POST"]),
    Route("/v1/agents/", list_agents, methods=["GET"]),
    Route("/v1/agents/{agent_id}", get_agent, methods=["GET"]),
    Route("/v1/agents/{agent_id}", update_agent, methods=["PATCH"]),
    Route("/v1/agents/{agent_id}", delete_agent, methods=["DELETE"]),
    Route("/v1/agents/{agent_id}/tools/approval/{tool_name}", set_tool_approval, methods=["PATCH"]),
    Route("/v1/agents/{agent_id}/tools/attach/{tool_id}", attach_tool, methods=["PATCH"]),
    Route("/v1/agents/{agent_id}/tools/detach/{tool_id}", detach_tool, methods=["PATCH"]),
    Route("/v1/agents/{agent_id}/messages", list_agent_messages, methods=["GET"]),
    Route("/v1/runs/", list_runs, methods=["GET"]),
    Route("/v1/runs/{run_id}", get_run, methods=["GET"]),
    Route("/v1/runs/{run_id}/messages", list_run_messages, methods=["GET"]),
    Route("/v1/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
]
