"""Request validation for the offline Messages endpoint, as strict as the real API.

`validate_request(body, key)` takes the decoded JSON body and either returns a
`MessagesRequest` or raises `ApiError(400, "invalid_request_error", message)` naming the
offending field the way the API does (`messages.1.content.0.signature: ...`). The rules:

- top level: `model` a non-empty string; `max_tokens` a positive integer (not a bool);
  `messages` a non-empty list; only the API's known keys (others are "Extra inputs are not
  permitted"); `stream` a bool; `system` a string or a list of text blocks.
- messages: roles `user`/`assistant` only, the first one `user`; consecutive messages of the
  same role are merged into one turn (as the API does) before the turn rules below; content a
  non-empty string or list (only the final assistant message may be empty); text blocks
  non-empty and not only whitespace; each block type allowed for its role.
- tool use: `tool_use` ids unique across the request; every `tool_use` of an assistant turn
  answered by a `tool_result` with the same id in the immediately following user turn; every
  `tool_result` answering a `tool_use` of the immediately preceding assistant turn, once.
- thinking: each `thinking` block's `signature` present and verified, each
  `redacted_thinking` block's `data` verified (see `signing`); `thinking.budget_tokens` >= 1024
  and < `max_tokens`; with thinking on, `temperature` only 1, no `top_k`, no forced
  `tool_choice`, and a last assistant turn holding `tool_use` must start with a thinking or
  redacted_thinking block.
- tools: a list of tools with unique names; a custom tool has a valid name and an
  `input_schema` that is an object schema; `tool_choice` of a known type naming a known tool.

Validation is one pass over the request; it also counts the request's characters, from which
`input_tokens` is derived (`chars // 4 + 1`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.llm.offline.signing import verify_redacted, verify_thinking

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    """The API's error `type` for an HTTP status."""
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


class ApiError(Exception):
    """An error the endpoint answers with `{"type":"error","error":{"type":..,"message":..}}`."""

    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for(status)


def _bad(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error")


_KNOWN_KEYS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "context_management",
        "mcp_servers",
        "output_config",
        "output_format",
        "inference_geo",
        "speed",
        "diagnostics",
        "cache_control",
        "user_profile_id",
        "workspace_id",
    }
)
_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result", "search_result", "container_upload"})
_ASSISTANT_BLOCKS = frozenset(
    {
        "text",
        "tool_use",
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)
_ALL_BLOCKS = _USER_BLOCKS | _ASSISTANT_BLOCKS
_TOOL_RESULT_PARTS = frozenset({"text", "image", "document", "search_result", "tool_reference"})
_TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_TOOL_ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_THINKING_TYPES = frozenset({"enabled", "disabled", "adaptive", "between_tools"})
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})

Block = dict[str, Any]


@dataclass(slots=True)
class Turn:
    """Consecutive messages of one role, merged. `where[k]` is the `messages.I.content.J`
    path of `blocks[k]`; `first` is the index of the turn's first message."""

    role: str
    first: int
    blocks: list[Block] = field(default_factory=list)
    where: list[str] = field(default_factory=list)


@dataclass(slots=True)
class MessagesRequest:
    """A validated request: what the responder needs, nothing more."""

    model: str
    max_tokens: int
    stream: bool
    turns: list[Turn]
    tools: dict[str, Block]
    tool_choice: str
    forced_tool: str | None
    disable_parallel: bool
    thinking: bool
    thinking_omitted: bool
    input_tokens: int


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_text(block: Block, path: str) -> int:
    text = block.get("text")
    if text is None:
        raise _bad(f"{path}.text: Field required")
    if not isinstance(text, str):
        raise _bad(f"{path}.text: Input should be a valid string")
    if not text:
        raise _bad(f"{path}.text: text content blocks must be non-empty")
    if text.isspace():
        raise _bad(f"{path}.text: text content blocks must contain non-whitespace text")
    return len(text)


def _check_tool_result(block: Block, path: str) -> int:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str):
        raise _bad(f"{path}.tool_use_id: Field required")
    if not _TOOL_ID_RE.match(tool_use_id):
        raise _bad(f"{path}.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _bad(f"{path}.is_error: Input should be a valid boolean")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return len(content or "")
    if not isinstance(content, list):
        raise _bad(f"{path}.content: Input should be a valid string or a list of content blocks")
    chars = 0
    for k, part in enumerate(content):
        part_path = f"{path}.content.{k}"
        if not isinstance(part, dict):
            raise _bad(f"{part_path}: Input should be a valid dictionary")
        kind = part.get("type")
        if kind not in _TOOL_RESULT_PARTS:
            raise _bad(f"{part_path}.type: Input tag {kind!r} does not match any of the expected tags")
        if kind == "text":
            chars += _check_text(part, part_path)
    return chars


def _check_block(block: object, role: str, path: str, key: bytes) -> int:
    """Validate one content block of a `role` message; returns its character count."""
    if not isinstance(block, dict):
        raise _bad(f"{path}: Input should be a valid dictionary")
    kind = block.get("type")
    if not isinstance(kind, str) or kind not in _ALL_BLOCKS:
        raise _bad(f"{path}.type: Input tag {kind!r} does not match any of the expected tags")
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    if kind not in allowed:
        raise _bad(f"{path}.type: `{kind}` blocks are not allowed in `{role}` messages")
    if kind == "text":
        return _check_text(block, path)
    if kind == "tool_use":
        tool_id, name, tool_input = block.get("id"), block.get("name"), block.get("input")
        if not isinstance(tool_id, str):
            raise _bad(f"{path}.id: Field required")
        if not _TOOL_ID_RE.match(tool_id):
            raise _bad(f"{path}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(name, str) or not name:
            raise _bad(f"{path}.name: Field required")
        if not isinstance(tool_input, dict):
            raise _bad(f"{path}.input: Input should be a valid dictionary")
        return len(name) + len(orjson.dumps(tool_input))
    if kind == "tool_result":
        return _check_tool_result(block, path)
    if kind == "thinking":
        thinking, signature = block.get("thinking"), block.get("signature")
        if not isinstance(thinking, str):
            raise _bad(f"{path}.thinking: Field required")
        if signature is None:
            raise _bad(f"{path}.signature: Field required")
        if not isinstance(signature, str) or not verify_thinking(thinking, signature, key):
            raise _bad(f"{path}: Invalid `signature` in `thinking` block")
        return len(thinking)
    if kind == "redacted_thinking":
        data = block.get("data")
        if not isinstance(data, str):
            raise _bad(f"{path}.data: Field required")
        if not verify_redacted(data, key):
            raise _bad(f"{path}: Invalid `data` in `redacted_thinking` block")
        return len(data) // 4
    if kind in ("image", "document") and not isinstance(block.get("source"), dict):
        raise _bad(f"{path}.source: Field required")
    return 0


def _check_system(system: object) -> int:
    if isinstance(system, str):
        return len(system)
    if not isinstance(system, list):
        raise _bad("system: Input should be a valid string or a list of text blocks")
    chars = 0
    for k, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"system.{k}.type: Input should be 'text'")
        chars += _check_text(block, f"system.{k}")
    return chars


def _check_tools(tools: object) -> tuple[dict[str, Block], int]:
    """Custom tools by name, in request order; server tools are checked but not returned."""
    if not isinstance(tools, list):
        raise _bad("tools: Input should be a valid list")
    custom: dict[str, Block] = {}
    names: set[str] = set()
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"tools.{k}: Input should be a valid dictionary")
        name = tool.get("name")
        kind = tool.get("type")
        if kind is None or kind == "custom":
            if not isinstance(name, str):
                raise _bad(f"tools.{k}.custom.name: Field required")
            if not _TOOL_NAME_RE.match(name):
                raise _bad(f"tools.{k}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
            description = tool.get("description")
            if description is not None and not isinstance(description, str):
                raise _bad(f"tools.{k}.custom.description: Input should be a valid string")
            schema = tool.get("input_schema")
            if schema is None:
                raise _bad(f"tools.{k}.custom.input_schema: Field required")
            if not isinstance(schema, dict):
                raise _bad(f"tools.{k}.custom.input_schema: Input should be a valid dictionary")
            if schema.get("type") != "object":
                raise _bad(f"tools.{k}.custom.input_schema.type: Input should be 'object'")
            properties = schema.get("properties")
            if properties is not None and not (
                isinstance(properties, dict) and all(isinstance(p, dict) for p in properties.values())
            ):
                raise _bad(f"tools.{k}.custom.input_schema.properties: Input should be an object of schemas")
            required = schema.get("required")
            if required is not None and not (
                isinstance(required, list) and all(isinstance(r, str) for r in required)
            ):
                raise _bad(f"tools.{k}.custom.input_schema.required: Input should be a list of strings")
            custom[name] = tool
        elif not isinstance(kind, str) or not isinstance(name, str):
            raise _bad(f"tools.{k}: Input should be a valid tool definition")
        if name in names:
            raise _bad("tools: Tool names must be unique.")
        names.add(name)
    return custom, len(orjson.dumps(tools))


def _merge_turns(messages: object, key: bytes) -> tuple[list[Turn], int]:
    if not isinstance(messages, list):
        raise _bad("messages: Input should be a valid list")
    if not messages:
        raise _bad("messages: at least one message is required")
    turns: list[Turn] = []
    chars = 0
    last = len(messages) - 1
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise _bad('messages: first message must use the "user" role')
        content = message.get("content")
        if content is None:
            raise _bad(f"messages.{i}.content: Field required")
        if isinstance(content, str):
            blocks: list[Any] = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            blocks = content
        else:
            raise _bad(f"messages.{i}.content: Input should be a valid string or a list of content blocks")
        if not blocks and not (i == last and role == "assistant"):
            raise _bad(
                f"messages.{i}: all messages must have non-empty content "
                "except for the optional final assistant message"
            )
        if not turns or turns[-1].role != role:
            turns.append(Turn(role=role, first=i))
        turn = turns[-1]
        for j, block in enumerate(blocks):
            path = f"messages.{i}.content.{j}" if isinstance(content, list) else f"messages.{i}.content"
            chars += _check_block(block, role, path, key)
            turn.blocks.append(block)
            turn.where.append(path)
    return turns, chars


def _check_tool_pairing(turns: list[Turn]) -> None:
    seen: set[str] = set()
    for t, turn in enumerate(turns):
        if turn.role == "assistant":
            ids: list[str] = []
            for block, path in zip(turn.blocks, turn.where, strict=True):
                if block["type"] == "tool_use":
                    if block["id"] in seen:
                        raise _bad(f"{path}: tool_use ids must be unique")
                    seen.add(block["id"])
                    ids.append(block["id"])
            if ids:
                following = turns[t + 1] if t + 1 < len(turns) else None
                answered = (
                    {b["tool_use_id"] for b in following.blocks if b["type"] == "tool_result"}
                    if following is not None
                    else set()
                )
                missing = [i for i in ids if i not in answered]
                if missing:
                    raise _bad(
                        f"messages.{turn.first}: tool_use ids were found without tool_result blocks "
                        f"immediately after: {', '.join(missing)}. Each tool_use block must have a "
                        "corresponding tool_result block in the next message."
                    )
        else:
            previous = turns[t - 1] if t > 0 else None
            asked = (
                {b["id"] for b in previous.blocks if b["type"] == "tool_use"}
                if previous is not None
                else set()
            )
            answered_here: set[str] = set()
            for block, path in zip(turn.blocks, turn.where, strict=True):
                if block["type"] != "tool_result":
                    continue
                tool_use_id = block["tool_use_id"]
                if tool_use_id not in asked:
                    raise _bad(
                        f"{path}: unexpected tool_use_id found in tool_result blocks: {tool_use_id}. "
                        "Each tool_result block must have a corresponding tool_use block in the "
                        "previous message."
                    )
                if tool_use_id in answered_here:
                    raise _bad(
                        f"{path}: each tool_use must have a single result. Found multiple "
                        f"tool_result blocks with id: {tool_use_id}"
                    )
                answered_here.add(tool_use_id)


def _check_thinking_first(turns: list[Turn]) -> None:
    for turn in reversed(turns):
        if turn.role != "assistant":
            continue
        if any(b["type"] == "tool_use" for b in turn.blocks):
            first = turn.blocks[0]["type"]
            if first not in ("thinking", "redacted_thinking"):
                raise _bad(
                    f"{turn.where[0]}.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{first}`. When `thinking` is enabled, a final `assistant` message must start "
                    "with a thinking block (preceeding the lastmost set of `tool_use` and "
                    "`tool_result` blocks). We recommend you include thinking blocks from previous "
                    "turns. To avoid this requirement, disable `thinking`."
                )
        return


def validate_request(body: object, key: bytes, *, count_only: bool = False) -> MessagesRequest:
    """Validate a decoded `/v1/messages` body (or a `count_tokens` one, without `max_tokens`)."""
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object")
    for name in body:
        if name not in _KNOWN_KEYS:
            raise _bad(f"{name}: Extra inputs are not permitted")
    model = body.get("model")
    if model is None:
        raise _bad("model: Field required")
    if not isinstance(model, str) or not model.strip() or len(model) > 256:
        raise _bad("model: Input should be a valid model name")
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not count_only:
        raise _bad("max_tokens: Field required")
    if max_tokens is not None:
        if not _is_int(max_tokens):
            raise _bad("max_tokens: Input should be a valid integer")
        if max_tokens < 1:
            raise _bad("max_tokens: Input should be greater than or equal to 1")
    if "messages" not in body:
        raise _bad("messages: Field required")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream: Input should be a valid boolean")
    turns, chars = _merge_turns(body["messages"], key)
    if "system" in body:
        chars += _check_system(body["system"])
    tools: dict[str, Block] = {}
    if body.get("tools") is not None:
        tools, tool_chars = _check_tools(body["tools"])
        chars += tool_chars
    temperature = body.get("temperature")
    if temperature is not None and (not _is_number(temperature) or not 0 <= temperature <= 1):
        raise _bad("temperature: Input should be a number between 0 and 1")
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise _bad("top_k: Input should be a non-negative integer")
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise _bad("stop_sequences: Input should be a list of strings")

    choice, forced, disable_parallel = "auto", None, False
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        if not isinstance(tool_choice, dict) or tool_choice.get("type") not in _TOOL_CHOICES:
            raise _bad("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        choice = tool_choice["type"]
        disable = tool_choice.get("disable_parallel_tool_use", False)
        if not isinstance(disable, bool):
            raise _bad("tool_choice.disable_parallel_tool_use: Input should be a valid boolean")
        disable_parallel = disable
        if choice in ("any", "tool") and not body.get("tools"):
            raise _bad("tool_choice: tool_choice may only be specified while providing tools.")
        if choice == "tool":
            forced = tool_choice.get("name")
            if not isinstance(forced, str):
                raise _bad("tool_choice.tool.name: Field required")
            if forced not in tools:
                raise _bad(f"tool_choice.tool.name: Tool '{forced}' not found in the provided tools")

    thinking_on, omitted = False, False
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in _THINKING_TYPES:
            raise _bad("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
        kind = thinking["type"]
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if budget is None:
                raise _bad("thinking.enabled.budget_tokens: Field required")
            if not _is_int(budget):
                raise _bad("thinking.enabled.budget_tokens: Input should be a valid integer")
            if budget < 1024:
                raise _bad("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
            if max_tokens is not None and budget >= max_tokens:
                raise _bad(
                    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                    "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                )
        thinking_on = kind != "disabled"
        omitted = thinking.get("display") == "omitted"
    if thinking_on:
        if temperature is not None and temperature != 1:
            raise _bad("`temperature` may only be set to 1 when thinking is enabled.")
        if top_k is not None:
            raise _bad("`top_k` must be unset when thinking is enabled.")
        if choice in ("any", "tool"):
            raise _bad("Thinking may not be enabled when tool_choice forces tool use.")

    final = turns[-1]
    if final.role == "assistant" and final.blocks:
        tail = final.blocks[-1]
        if tail["type"] == "text" and tail["text"] != tail["text"].rstrip():
            raise _bad("messages: final assistant content cannot end with trailing whitespace")
    _check_tool_pairing(turns)
    if thinking_on:
        _check_thinking_first(turns)
    return MessagesRequest(
        model=model,
        max_tokens=max_tokens or 0,
        stream=stream,
        turns=turns,
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
        disable_parallel=disable_parallel,
        thinking=thinking_on,
        thinking_omitted=omitted,
        input_tokens=chars // 4 + 1,
    )
