"""Tests for gateway.tools.schema: source -> Letta/Anthropic JSON schema, never executing code."""

from __future__ import annotations

import pytest

from gateway.tools import ToolSourceError, input_schema, parse_tool_source

ROLL_DICE = '''def roll_dice(num_sides: int) -> int:
    """
    Returns a random number between 1 and num_sides.

    Args:
        num_sides (int): The number of sides on the die.

    Returns:
        int: A random integer between 1 and num_sides, representing the die roll.
    """
    import random

    return random.randint(1, num_sides)
'''


def test_roll_dice_schema_exact() -> None:
    spec = parse_tool_source(ROLL_DICE)
    assert spec.name == "roll_dice"
    assert spec.description == "Returns a random number between 1 and num_sides."
    assert spec.json_schema == {
        "name": "roll_dice",
        "description": "Returns a random number between 1 and num_sides.",
        "parameters": {
            "type": "object",
            "properties": {
                "num_sides": {"type": "integer", "description": "The number of sides on the die."},
            },
            "required": ["num_sides"],
        },
    }
    assert input_schema(spec) == spec.json_schema["parameters"]


def test_input_schema_is_a_copy() -> None:
    spec = parse_tool_source(ROLL_DICE)
    schema = input_schema(spec)
    schema["properties"]["num_sides"]["type"] = "string"
    assert spec.json_schema["parameters"]["properties"]["num_sides"]["type"] == "integer"


def test_parsing_never_executes_the_source() -> None:
    src = 'raise SystemExit("executed!")\n\ndef f(x: int) -> int:\n    return x\n'
    assert parse_tool_source(src).name == "f"


RICH = '''
from typing import Literal, Optional
import typing


def search(
    query: str,
    limit: int = 10,
    ratio: float = 0.5,
    exact: bool = False,
    tags: list[str] | None = None,
    scores: typing.List[float] = [],
    meta: dict[str, int] | None = None,
    plain_list: list = None,
    plain_dict: dict = None,
    unit: Literal["c", "f"] = "c",
    level: Literal[1, 2, 3] = 1,
    cursor: Optional[str] = None,
    maybe: "int | None" = None,
    *,
    nested: list[list[int]],
    flag: bool,
) -> str:
    """Search the archive.

    This paragraph is not part of the description.

    Args:
        query: What to look for,
            over two lines.
        limit (int): Max results.
        ratio (float, optional): A ratio (between 0 and 1): careful.
        exact: Exact match only.
        tags (Optional[list[str]]): Tags to filter on.
        unit: Temperature unit.

    Returns:
        str: results. (this is not an arg)
    """
    return ""
'''


def test_rich_types_defaults_and_docs() -> None:
    spec = parse_tool_source(RICH)
    assert spec.description == "Search the archive."
    params = spec.json_schema["parameters"]
    props = params["properties"]
    assert props["query"] == {"type": "string", "description": "What to look for, over two lines."}
    assert props["limit"] == {"type": "integer", "description": "Max results.", "default": 10}
    assert props["ratio"] == {
        "type": "number",
        "description": "A ratio (between 0 and 1): careful.",
        "default": 0.5,
    }
    assert props["exact"] == {"type": "boolean", "description": "Exact match only.", "default": False}
    assert props["tags"] == {
        "type": "array",
        "items": {"type": "string"},
        "description": "Tags to filter on.",
        "default": None,
    }
    assert props["scores"] == {"type": "array", "items": {"type": "number"}, "default": []}
    assert props["meta"] == {"type": "object", "additionalProperties": {"type": "integer"}, "default": None}
    assert props["plain_list"] == {"type": "array", "default": None}
    assert props["plain_dict"] == {"type": "object", "default": None}
    assert props["unit"] == {
        "type": "string",
        "enum": ["c", "f"],
        "description": "Temperature unit.",
        "default": "c",
    }
    assert props["level"] == {"type": "integer", "enum": [1, 2, 3], "default": 1}
    assert props["cursor"] == {"type": "string", "default": None}
    assert props["maybe"] == {"type": "integer", "default": None}
    assert props["nested"] == {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
    assert props["flag"] == {"type": "boolean"}
    assert "returns" not in props and "str" not in props
    assert params["required"] == ["query", "nested", "flag"]
    assert list(props) == [p.name for p in spec.params]


def test_optional_without_default_is_not_required() -> None:
    src = "from typing import Optional\ndef f(a: Optional[int], b: int | None, c: None | str):\n    pass\n"
    spec = parse_tool_source(src)
    assert spec.json_schema["parameters"]["required"] == []
    assert spec.json_schema["parameters"]["properties"] == {
        "a": {"type": "integer"},
        "b": {"type": "integer"},
        "c": {"type": "string"},
    }
    assert all(p.nullable and not p.has_default for p in spec.params)


def test_non_literal_default_is_optional_without_default_key() -> None:
    spec = parse_tool_source("import time\ndef f(t: float = time.time()) -> None:\n    pass\n")
    assert spec.json_schema["parameters"]["properties"]["t"] == {"type": "number"}
    assert spec.json_schema["parameters"]["required"] == []


def test_mixed_and_bool_literals() -> None:
    src = (
        "from typing import Literal\n"
        "def f(a: Literal[True, False], b: Literal[1, 2.5], c: Literal['x', 1]):\n"
        "    pass\n"
    )
    props = parse_tool_source(src).json_schema["parameters"]["properties"]
    assert props["a"] == {"type": "boolean", "enum": [True, False]}
    assert props["b"] == {"type": "number", "enum": [1, 2.5]}
    assert props["c"] == {"enum": ["x", 1]}


def test_no_docstring_and_no_params() -> None:
    spec = parse_tool_source("async def ping():\n    return 'pong'\n")
    assert spec.name == "ping"
    assert spec.description == ""
    assert spec.json_schema == {
        "name": "ping",
        "description": "",
        "parameters": {"type": "object", "properties": {}, "required": []},
    }


def test_multi_line_summary_joined() -> None:
    src = 'def f(x: int):\n    """First line\n    continues here.\n\n    More.\n    """\n'
    assert parse_tool_source(src).description == "First line continues here."


def test_last_function_wins_without_name_and_name_selects() -> None:
    src = "def helper(x: int) -> int:\n    return x\n\ndef tool(y: str) -> str:\n    return helper(len(y))\n"
    assert parse_tool_source(src).name == "tool"
    assert parse_tool_source(src, name="helper").name == "helper"
    # nested functions and methods are not top-level tools
    src2 = "class A:\n    def m(self, x: int): pass\n\ndef outer(a: int):\n    def inner(b: int): pass\n"
    assert parse_tool_source(src2).name == "outer"


@pytest.mark.parametrize(
    ("source", "name", "field", "fragment"),
    [
        ("", None, "source_code", "empty"),
        ("   \n\n", None, "source_code", "empty"),
        ("def f(x: int)\n    return x\n", None, "source_code", "syntax error at line 1"),
        ("x = 1\n\ndef f(x: int):\n    return (\n", None, "source_code", "syntax error at line 4"),
        ("x = 1\n", None, "source_code", "no top-level function"),
        ("class A:\n    def f(self, x: int): pass\n", None, "source_code", "no top-level function"),
        ("def f(x: int): pass\n", "g", "name", "no top-level function named 'g'"),
        ("def f(x: int): pass\n", "not valid", "name", "not a valid tool name"),
        ("def f(x: int): pass\n", "class", "name", "not a valid tool name"),
        ("def f(x: int): pass\n", "f" * 65, "name", "not a valid tool name"),
        (
            "def roll_dice(x): pass\n",
            None,
            "source_code",
            "parameter 'x' of roll_dice has no type annotation",
        ),
        ("def f(x: int, y=3): pass\n", None, "source_code", "parameter 'y' of f has no type annotation"),
        ("def f(x: set[int]): pass\n", None, "source_code", "unsupported type annotation 'set[int]'"),
        ("def f(x: tuple): pass\n", None, "source_code", "unsupported type annotation 'tuple'"),
        ("def f(x: int | str): pass\n", None, "source_code", "unsupported type annotation 'int | str'"),
        ("def f(x: dict[int, str]): pass\n", None, "source_code", "dict keys must be str"),
        ("def f(x: list[int | None]): pass\n", None, "source_code", "only supported at the top level"),
        ("def f(x: 'not valid('): pass\n", None, "source_code", "unsupported type annotation"),
        ("def f(x: Foo): pass\n", None, "source_code", "unsupported type annotation 'Foo'"),
        ("def f(*args: int): pass\n", None, "source_code", "*args is not supported"),
        ("def f(x: int, **kw: int): pass\n", None, "source_code", "**kw is not supported"),
        ("def f(x: int, /): pass\n", None, "source_code", "positional-only"),
    ],
)
def test_errors_name_the_field(source: str, name: str | None, field: str, fragment: str) -> None:
    with pytest.raises(ToolSourceError) as info:
        parse_tool_source(source, name=name)
    err = info.value
    assert err.field == field
    assert fragment in err.message
    assert str(err).startswith(f"{field}: ")


def test_syntax_error_has_line_attribute() -> None:
    with pytest.raises(ToolSourceError) as info:
        parse_tool_source("def ok(x: int):\n    pass\n\ndef bad(:\n")
    assert info.value.line == 4


def test_non_ascii_function_name_rejected() -> None:
    with pytest.raises(ToolSourceError) as info:
        parse_tool_source("def würfeln(n: int): pass\n")
    assert info.value.field == "source_code"
    assert "not a valid tool name" in info.value.message
