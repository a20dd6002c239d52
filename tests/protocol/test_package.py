"""Drift guards over the package as a whole: no I/O imports, and a doc row for every name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import protocol
from protocol import COMMAND_TYPES, EVENT_TYPES, CloseCode, ErrorCode, RunStatus, StopReason

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "protocol"
DOC = (ROOT / "docs" / "protocol.md").read_text()
IO_LIBRARIES = {
    "asyncio",
    "starlette",
    "websockets",
    "anthropic",
    "sqlalchemy",
    "httpx",
    "uvicorn",
    "redis",
    "socket",
}


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_io_imports(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        assert not {name.split(".")[0] for name in names} & IO_LIBRARIES, f"{path.name}: {names}"


def test_importing_the_package_loads_no_io_library() -> None:
    code = "import sys, protocol, protocol.schema; print(' '.join(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert not {name.split(".")[0] for name in loaded} & (IO_LIBRARIES - {"socket"})


def test_public_names_are_exported() -> None:
    for name in protocol.__all__:
        assert hasattr(protocol, name), name


@pytest.mark.parametrize("name", COMMAND_TYPES)
def test_every_command_has_a_doc_row(name: str) -> None:
    assert f"| `{name}` |" in DOC


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_every_event_has_a_doc_row(name: str) -> None:
    assert f"| `{name}` |" in DOC


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_has_a_doc_row(code: ErrorCode) -> None:
    assert f"| `{code}` | {str(code.retryable).lower()} |" in DOC


@pytest.mark.parametrize("code", list(CloseCode))
def test_every_close_code_has_a_doc_row(code: CloseCode) -> None:
    row = next(line for line in DOC.splitlines() if line.startswith(f"| {int(code)} |"))
    assert row.endswith("| no |") != code.reconnect


def test_every_status_and_stop_reason_is_documented() -> None:
    for name in [*RunStatus, *StopReason]:
        assert f"`{name}`" in DOC
