"""User-defined tools: static schema extraction and sandboxed subprocess execution.

* :func:`parse_tool_source` turns Letta-style Python source into a :class:`ToolSpec`
  (JSON schema) without executing it; :func:`input_schema` gives the Anthropic
  ``input_schema``.
* :func:`execute_tool` / :func:`execute_many` run a tool in a fresh, limited
  subprocess and always return a :class:`ToolResult` (never raise, except
  ``asyncio.CancelledError``).
"""

from __future__ import annotations

from gateway.tools.executor import ToolCallRequest, ToolResult, execute_many, execute_tool
from gateway.tools.schema import ToolParam, ToolSourceError, ToolSpec, input_schema, parse_tool_source

__all__ = [
    "ToolCallRequest",
    "ToolParam",
    "ToolResult",
    "ToolSourceError",
    "ToolSpec",
    "execute_many",
    "execute_tool",
    "input_schema",
    "parse_tool_source",
]
