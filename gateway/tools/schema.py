"""Static analysis of user tool source code into a JSON schema (Letta-style).

Contract
--------
``parse_tool_source`` is pure: it parses the source with :mod:`ast` and never
executes, imports or compiles it to bytecode. It finds one function and derives

* ``ToolSpec.name`` -- the function name (ASCII identifier, at most 64 chars,
  because Anthropic tool names must match ``^[a-zA-Z0-9_-]{1,64}$``);
* ``ToolSpec.description`` -- the first paragraph of the docstring, lines
  joined with single spaces ("" when there is no docstring);
* ``ToolSpec.json_schema`` -- Letta's shape::

      {"name": ..., "description": ...,
       "parameters": {"type": "object", "properties": {...}, "required": [...]}}

Function selection: the top-level function called ``name`` when given (if the
name is defined several times, the last definition wins, like at runtime);
otherwise the only top-level function; if there are several top-level
functions and no ``name``, the LAST one is used, as Letta does (helpers go
first, the tool goes last).

Type mapping (annotations are read syntactically; ``typing.X``/``t.X`` and
string annotations are accepted):

=============================  ===============================================
``str``/``int``/``float``/``bool``  ``string``/``integer``/``number``/``boolean``
``list``, ``list[X]``, ``List[X]``  ``array`` (with ``items`` for ``X``)
``dict``, ``dict[str, X]``      ``object`` (with ``additionalProperties``)
``Literal[a, b]``               ``enum`` (+ ``type`` when all values share one)
``X | None``, ``Optional[X]``   the schema of ``X``; the parameter is optional
``Annotated[X, ...]``           the schema of ``X``
=============================  ===============================================

A parameter is required unless it has a default or is ``Optional``. A default
that is a JSON-compatible literal is copied into the property as ``default``.
Property descriptions come from the Google-style ``Args:`` section
(``name (type): desc`` or ``name: desc``; indented continuation lines are
joined). Missing docstrings and missing argument descriptions are allowed
(the ``description`` key is then omitted from the property).

Everything else raises :class:`ToolSourceError` naming the request field at
fault (``"source_code"`` or ``"name"``) and a message meant for the end user.
"""

from __future__ import annotations

import ast
import copy
import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ToolParam", "ToolSourceError", "ToolSpec", "input_schema", "parse_tool_source"]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

_SUPPORTED = (
    "str, int, float, bool, list, list[X], dict, dict[str, X], Literal[...], "
    "Optional[X] / X | None, Annotated[X, ...]"
)

_SCALARS: dict[str, str] = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_LISTS = frozenset({"list", "List"})
_DICTS = frozenset({"dict", "Dict"})

_ARGS_HEADERS = frozenset({"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"})
_OTHER_HEADERS = frozenset(
    {
        "returns",
        "return",
        "yields",
        "yield",
        "raises",
        "raise",
        "exceptions",
        "example",
        "examples",
        "note",
        "notes",
        "attributes",
        "see also",
        "todo",
        "warning",
        "warnings",
        "references",
        "other parameters",
        "methods",
    }
)
_HEADER_RE = re.compile(r"^([A-Za-z][A-Za-z ]*):\s*$")
_ARG_LINE_RE = re.compile(r"^\*{0,2}([A-Za-z_]\w*)\s*(?:\((.*?)\))?\s*:\s*(.*)$")


class ToolSourceError(ValueError):
    """The tool source cannot be turned into a tool.

    ``field`` is the request field at fault (``"source_code"`` or ``"name"``),
    ``message`` a human-readable explanation, ``line`` the 1-based source line
    when known. ``str(err)`` is ``"<field>: <message>"``.
    """

    def __init__(self, field: str, message: str, *, line: int | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.line = line


@dataclass(frozen=True)
class ToolParam:
    """One parameter as the executor needs it.

    ``schema`` is the JSON-schema property (without ``description``/``default``
    keys mattering for validation); ``nullable`` means ``None``/``null`` is an
    accepted value (``Optional`` annotation or a ``None`` default);
    ``has_default`` means Python supplies a value when the argument is omitted.
    """

    name: str
    schema: dict[str, Any]
    required: bool
    nullable: bool
    has_default: bool


@dataclass(frozen=True)
class ToolSpec:
    """The parsed tool: name, description, Letta-shaped ``json_schema`` and ``params``.

    Treat ``json_schema`` as read-only (use :func:`input_schema` or
    ``copy.deepcopy`` to get a private copy).
    """

    name: str
    description: str
    json_schema: dict[str, Any]
    params: tuple[ToolParam, ...] = field(default=())


def input_schema(spec: ToolSpec) -> dict[str, Any]:
    """Return the Anthropic ``input_schema`` for ``spec`` (a deep copy of ``parameters``)."""
    return copy.deepcopy(spec.json_schema["parameters"])


def parse_tool_source(source_code: str, *, name: str | None = None) -> ToolSpec:
    """Parse ``source_code`` (never executing it) and build the :class:`ToolSpec`.

    See the module docstring for the selection rule and the type mapping.
    Raises :class:`ToolSourceError` for: empty source, syntax errors (with the
    line number), an invalid ``name``, no matching function, positional-only
    parameters, ``*args``/``**kwargs``, missing or unsupported annotations.
    """
    if not isinstance(source_code, str) or not source_code.strip():
        raise ToolSourceError("source_code", "source code is empty")
    if name is not None:
        _check_name("name", name)
    try:
        module = ast.parse(source_code, filename="<tool>", mode="exec")
    except SyntaxError as exc:
        line = exc.lineno
        where = f" at line {line}" if line is not None else ""
        raise ToolSourceError("source_code", f"syntax error{where}: {exc.msg}", line=line) from None
    except ValueError as exc:  # e.g. source code contains null bytes
        raise ToolSourceError("source_code", f"cannot parse source code: {exc}") from None

    func = _select_function(module, name)
    _check_name("source_code" if name is None else "name", func.name)
    doc = ast.get_docstring(func, clean=True) or ""
    description, arg_docs = _parse_docstring(doc)
    params = _build_params(func, arg_docs)

    properties: dict[str, Any] = {}
    for p in params:
        properties[p.name] = p.schema
    json_schema: dict[str, Any] = {
        "name": func.name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": properties,
            "required": [p.name for p in params if p.required],
        },
    }
    return ToolSpec(name=func.name, description=description, json_schema=json_schema, params=params)


# --------------------------------------------------------------------------- selection


_FuncNode = ast.FunctionDef | ast.AsyncFunctionDef
_Unsupported = Callable[..., ToolSourceError]


def _check_name(fieldname: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name) or keyword.iskeyword(name):
        raise ToolSourceError(
            fieldname,
            f"{name!r} is not a valid tool name (an ASCII Python identifier of at most 64 characters)",
        )


def _select_function(module: ast.Module, name: str | None) -> _FuncNode:
    funcs = [n for n in module.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    if name is not None:
        matching = [f for f in funcs if f.name == name]
        if not matching:
            found = ", ".join(sorted({f.name for f in funcs})) or "none"
            raise ToolSourceError(
                "name", f"no top-level function named {name!r} in source code (functions found: {found})"
            )
        return matching[-1]
    if not funcs:
        raise ToolSourceError("source_code", "no top-level function definition found in source code")
    return funcs[-1]


# --------------------------------------------------------------------------- parameters


def _build_params(func: _FuncNode, arg_docs: dict[str, str]) -> tuple[ToolParam, ...]:
    a = func.args
    fname = func.name
    if a.posonlyargs:
        raise ToolSourceError(
            "source_code",
            f"positional-only parameters are not supported (parameter {a.posonlyargs[0].arg!r} of {fname})",
            line=func.lineno,
        )
    if a.vararg is not None:
        raise ToolSourceError(
            "source_code",
            f"*{a.vararg.arg} is not supported in {fname}: declare each parameter",
            line=func.lineno,
        )
    if a.kwarg is not None:
        raise ToolSourceError(
            "source_code",
            f"**{a.kwarg.arg} is not supported in {fname}: declare each parameter",
            line=func.lineno,
        )

    defaults: list[ast.expr | None] = [None] * (len(a.args) - len(a.defaults)) + list(a.defaults)
    pairs: list[tuple[ast.arg, ast.expr | None]] = list(zip(a.args, defaults, strict=True))
    pairs += list(zip(a.kwonlyargs, a.kw_defaults, strict=True))

    params: list[ToolParam] = []
    for arg, default in pairs:
        pname = arg.arg
        if not _NAME_RE.match(pname):
            raise ToolSourceError(
                "source_code",
                f"parameter {pname!r} of {fname} must be an ASCII identifier of at most 64 characters",
                line=arg.lineno,
            )
        if arg.annotation is None:
            raise ToolSourceError(
                "source_code", f"parameter {pname!r} of {fname} has no type annotation", line=arg.lineno
            )
        schema, optional = _annotation_schema(arg.annotation, pname, fname, top=True)
        has_default = default is not None
        default_value: Any = _MISSING
        if default is not None:
            default_value = _literal_default(default)
        nullable = optional or (default_value is None)
        prop: dict[str, Any] = dict(schema)
        doc = arg_docs.get(pname)
        if doc:
            prop["description"] = doc
        if default_value is not _MISSING:
            prop["default"] = default_value
        params.append(
            ToolParam(
                name=pname,
                schema=prop,
                required=not (has_default or optional),
                nullable=nullable,
                has_default=has_default,
            )
        )
    return tuple(params)


class _Missing:
    pass


_MISSING: Any = _Missing()


def _literal_default(node: ast.expr) -> Any:
    """The default's value if it is a JSON-compatible literal, else ``_MISSING``."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _MISSING
    return value if _json_compatible(value) else _MISSING


def _json_compatible(value: Any) -> bool:
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return all(_json_compatible(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_compatible(v) for k, v in value.items())
    return False


def _ann_name(node: ast.expr) -> str | None:
    """``int`` -> "int", ``typing.List`` -> "List", anything else -> None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _annotation_schema(node: ast.expr, pname: str, fname: str, *, top: bool) -> tuple[dict[str, Any], bool]:
    """Return ``(schema, optional)``; ``optional`` is only ever True when ``top``."""

    def unsupported(detail: str = "") -> ToolSourceError:
        text = ast.unparse(node)
        extra = f" ({detail})" if detail else ""
        return ToolSourceError(
            "source_code",
            f"parameter {pname!r} of {fname} has unsupported type annotation {text!r}{extra}; "
            f"supported: {_SUPPORTED}",
            line=getattr(node, "lineno", None),
        )

    # String (forward-reference) annotation: parse it and recurse.
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            inner = ast.parse(node.value.strip(), mode="eval").body
        except SyntaxError:
            raise unsupported("not a valid expression") from None
        ast.copy_location(inner, node)
        return _annotation_schema(inner, pname, fname, top=top)

    # X | None / None | X
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        members = _flatten_bitor(node)
        return _union_schema(members, pname, fname, top=top, unsupported=unsupported)

    name = _ann_name(node)
    if name is not None:
        if name in _SCALARS:
            return {"type": _SCALARS[name]}, False
        if name in _LISTS:
            return {"type": "array"}, False
        if name in _DICTS:
            return {"type": "object"}, False
        raise unsupported()

    if isinstance(node, ast.Subscript):
        base = _ann_name(node.value)
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base in _LISTS:
            if len(args) != 1:
                raise unsupported("list takes one item type")
            items, _ = _annotation_schema(args[0], pname, fname, top=False)
            return {"type": "array", "items": items}, False
        if base in _DICTS:
            if len(args) != 2:
                raise unsupported("dict takes a key and a value type")
            key, _ = _annotation_schema(args[0], pname, fname, top=False)
            if key != {"type": "string"}:
                raise unsupported("dict keys must be str")
            values, _ = _annotation_schema(args[1], pname, fname, top=False)
            return {"type": "object", "additionalProperties": values}, False
        if base == "Optional":
            if len(args) != 1:
                raise unsupported("Optional takes one type")
            return _union_schema(
                [args[0], ast.Constant(value=None)], pname, fname, top=top, unsupported=unsupported
            )
        if base == "Union":
            return _union_schema(args, pname, fname, top=top, unsupported=unsupported)
        if base == "Literal":
            return _literal_schema(args, unsupported), False
        if base == "Annotated":
            if len(args) < 2:
                raise unsupported("Annotated needs a type and metadata")
            return _annotation_schema(args[0], pname, fname, top=top)
    raise unsupported()


def _flatten_bitor(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _flatten_bitor(node.left) + _flatten_bitor(node.right)
    return [node]


def _union_schema(
    members: list[ast.expr], pname: str, fname: str, *, top: bool, unsupported: _Unsupported
) -> tuple[dict[str, Any], bool]:
    non_none = [m for m in members if not _is_none(m)]
    if len(non_none) != 1 or len(non_none) == len(members):
        raise unsupported("unions other than X | None are not supported")
    if not top:
        raise unsupported("Optional is only supported at the top level of a parameter annotation")
    schema, _ = _annotation_schema(non_none[0], pname, fname, top=False)
    return schema, True


def _literal_schema(args: list[ast.expr], unsupported: _Unsupported) -> dict[str, Any]:
    values: list[Any] = []
    for arg in args:
        try:
            value = ast.literal_eval(arg)
        except (ValueError, TypeError, SyntaxError):
            raise unsupported("Literal values must be str, int, float or bool constants") from None
        if not isinstance(value, str | int | float):
            raise unsupported("Literal values must be str, int, float or bool constants")
        values.append(value)
    if not values:
        raise unsupported("Literal needs at least one value")
    schema: dict[str, Any] = {}
    if all(isinstance(v, bool) for v in values):
        schema["type"] = "boolean"
    elif all(isinstance(v, str) for v in values):
        schema["type"] = "string"
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        schema["type"] = "integer"
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        schema["type"] = "number"
    schema["enum"] = values
    return schema


# --------------------------------------------------------------------------- docstring


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Return ``(first paragraph, {arg name: description})`` of a Google-style docstring."""
    lines = doc.expandtabs().splitlines()
    summary: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or _section_header(line) is not None:
            break
        summary.append(stripped)
    description = " ".join(summary)

    arg_docs: dict[str, str] = {}
    i = 0
    while i < len(lines):
        header = _section_header(lines[i])
        if header is None or header not in _ARGS_HEADERS:
            i += 1
            continue
        header_indent = _indent(lines[i])
        i += 1
        entry_indent: int | None = None
        current: str | None = None
        parts: list[str] = []

        while i < len(lines):
            line = lines[i]
            if not line.strip():
                i += 1
                continue
            ind = _indent(line)
            if ind <= header_indent:
                break  # next section (or dedented text) ends the Args block
            if entry_indent is None:
                entry_indent = ind
            match = _ARG_LINE_RE.match(line.strip()) if ind <= entry_indent else None
            if match:
                _store_arg(arg_docs, current, parts)
                current = match.group(1)
                parts = [match.group(3).strip()]
            elif current is not None:
                parts.append(line.strip())
            i += 1
        _store_arg(arg_docs, current, parts)
    return description, arg_docs


def _store_arg(arg_docs: dict[str, str], name: str | None, parts: list[str]) -> None:
    if name is not None and name not in arg_docs:  # first mention wins
        arg_docs[name] = " ".join(p for p in parts if p)


def _section_header(line: str) -> str | None:
    match = _HEADER_RE.match(line.strip())
    if not match:
        return None
    header = " ".join(match.group(1).lower().split())
    if header in _ARGS_HEADERS or header in _OTHER_HEADERS:
        return header
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())
