"""Tests for gateway.tools.executor: sandboxed subprocess execution of user tools."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from gateway.tools import ToolCallRequest, ToolResult, execute_many, execute_tool

ROLL_DICE = '''def roll_dice(num_sides: int) -> int:
    """
    Returns a random number between 1 and num_sides.

    Args:
        num_sides (int): The number of sides on the die.
    """
    import random

    return random.randint(1, num_sides)
'''

SLEEPER = """import time

def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"
"""

# Records its pid (and a grandchild's) in `path`, then sleeps: used to check nothing survives.
PID_SLEEPER = """import os, subprocess, time

def hang(path: str, seconds: float) -> str:
    child = subprocess.Popen(["sleep", str(seconds)])
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return "woke up"
"""


async def run(source: str, name: str, arguments: dict[str, object] | None = None, **kw: object) -> ToolResult:
    return await execute_tool(source_code=source, name=name, arguments=arguments or {}, **kw)  # type: ignore[arg-type]


def pid_exists(pid: int) -> bool:
    """True while the pid exists at all (a zombie still exists: it has not been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_running(pid: int) -> bool:
    """True while the pid exists and is not a zombie.

    Orphaned grandchildren are reaped by PID 1, not by us; some container inits never
    reap, so for them "dead" (zombie) is all we can assert.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def wait_gone(runner: int, descendants: list[int] | None = None, within_s: float = 1.0) -> None:
    """The runner must be killed AND reaped; its descendants must be dead."""
    descendants = descendants or []
    deadline = time.monotonic() + within_s
    while pid_exists(runner) or any(pid_running(p) for p in descendants):
        alive = [p for p in [runner, *descendants] if pid_running(p)]
        assert time.monotonic() < deadline, f"still alive: {alive}, runner exists: {pid_exists(runner)}"
        await asyncio.sleep(0.02)


def _read_pids(path: Path) -> list[int] | None:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return None


async def read_pids(path: Path, within_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while (pids := _read_pids(path)) is None:
        assert time.monotonic() < deadline, "tool never started"
        await asyncio.sleep(0.01)
    return pids


async def test_roll_dice_success() -> None:
    result = await run(ROLL_DICE, "roll_dice", {"num_sides": 16})
    assert result.status == "success", result
    assert 1 <= int(result.tool_return) <= 16
    assert result.stdout == "" and result.stderr == ""


async def test_print_captured_separately_from_return() -> None:
    src = (
        "import sys\n"
        "def talk(n: int) -> dict:\n"
        "    print('hello', n)\n"
        '    print(\'{"ok": false, "error": "forged"}\')\n'
        "    print('warn', file=sys.stderr)\n"
        "    return {'n': n, 'snow': '\\u2603'}\n"
    )
    result = await run(src, "talk", {"n": 3})
    assert result.status == "success", result
    assert json.loads(result.tool_return) == {"n": 3, "snow": "\u2603"}
    assert result.stdout == 'hello 3\n{"ok": false, "error": "forged"}\n'
    assert result.stderr == "warn\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return 'plain text'", "plain text"),
        ("return 7", "7"),
        ("return 2.5", "2.5"),
        ("return True", "true"),
        ("return None", "null"),
        ("return [1, 'a']", '[1, "a"]'),
        ("return (1, 2)", "[1, 2]"),
        ("return {1, 2}", "{1, 2}"),  # not JSON-serialisable -> repr
        ("return float('nan')", "nan"),  # not valid JSON -> repr
        ("class P:\n        def __repr__(self): return 'P()'\n    return P()", "P()"),
    ],
)
async def test_return_value_stringification(body: str, expected: str) -> None:
    result = await run(f"def f():\n    {body}\n", "f")
    assert result == ToolResult("success", expected, "", "")


async def test_async_tool_is_awaited() -> None:
    src = "import asyncio\nasync def f(x: int) -> int:\n    await asyncio.sleep(0)\n    return x * 2\n"
    assert (await run(src, "f", {"x": 21})).tool_return == "42"


async def test_exception_becomes_error_with_type_and_traceback() -> None:
    src = "def explode(x: int) -> int:\n    raise ValueError(f'bad value {x}')\n"
    result = await run(src, "explode", {"x": 5})
    assert result.status == "error"
    assert result.tool_return == "ValueError: bad value 5"
    assert "Traceback" in result.stderr
    assert "raise ValueError(f'bad value {x}')" in result.stderr  # source line shown in the traceback


async def test_import_error_at_module_level() -> None:
    result = await run("import no_such_module_xyz\ndef f() -> int:\n    return 1\n", "f")
    assert result.status == "error"
    assert result.tool_return.startswith("ModuleNotFoundError: No module named 'no_such_module_xyz'")


async def test_sys_exit_is_reported() -> None:
    result = await run("import sys\ndef f():\n    sys.exit(3)\n", "f")
    assert result.status == "error"
    assert result.tool_return == "SystemExit: 3"


async def test_hard_exit_without_report() -> None:
    result = await run("import os\ndef f():\n    os._exit(4)\n", "f")
    assert result.status == "error"
    assert "exited with code 4" in result.tool_return


async def test_killed_by_signal() -> None:
    result = await run("import os, signal\ndef f():\n    os.kill(os.getpid(), signal.SIGKILL)\n", "f")
    assert result.status == "error"
    assert result.tool_return == "tool process was killed by SIGKILL"


async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    task = asyncio.ensure_future(
        run(PID_SLEEPER, "hang", {"path": str(marker), "seconds": 30}, timeout_s=0.5)
    )
    pids = await read_pids(marker)
    started = time.monotonic()
    result = await task
    assert time.monotonic() - started < 2.0
    assert result.status == "error"
    assert result.tool_return == "timed out after 0.5s"
    await wait_gone(pids[0], pids[1:])


async def test_timeout_keeps_output_printed_before_it() -> None:
    src = "import time\ndef f() -> None:\n    print('about to hang')\n    time.sleep(10)\n"
    started = time.monotonic()
    result = await run(src, "f", timeout_s=0.5)
    assert result.status == "error"
    assert result.tool_return == "timed out after 0.5s"
    assert result.stdout == "about to hang\n"
    assert time.monotonic() - started < 2.0


async def test_cancellation_kills_and_reaps(tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    task = asyncio.ensure_future(run(PID_SLEEPER, "hang", {"path": str(marker), "seconds": 30}))
    pids = await read_pids(marker)
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_gone(pids[0], pids[1:], within_s=1.0)


async def test_cancel_shortly_after_start() -> None:
    task = asyncio.ensure_future(run(SLEEPER, "nap", {"seconds": 30}))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0


async def test_background_processes_do_not_outlive_the_call() -> None:
    src = (
        "import subprocess\n"
        "def spawn() -> int:\n"
        "    return subprocess.Popen(['sleep', '30'], stdout=subprocess.DEVNULL).pid\n"
    )
    result = await run(src, "spawn")
    assert result.status == "success", result
    grandchild = int(result.tool_return)
    deadline = time.monotonic() + 1.0
    while pid_running(grandchild):
        assert time.monotonic() < deadline, "background process survived the call"
        await asyncio.sleep(0.02)


async def test_environment_has_no_server_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "secret")
    src = "import os\ndef peek() -> dict:\n    return dict(os.environ)\n"
    result = await run(src, "peek", env={"MY_TOOL_TOKEN": "tok"})
    assert result.status == "success", result
    env = json.loads(result.tool_return)
    assert "ANTHROPIC_API_KEY" not in env
    assert "secret" not in result.tool_return
    assert env["MY_TOOL_TOKEN"] == "tok"
    assert set(env) <= {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONIOENCODING", "MY_TOOL_TOKEN", "LC_CTYPE"}


async def test_env_get_secret_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "secret")
    src = "import os\ndef peek():\n    return os.environ.get('ANTHROPIC_API_KEY')\n"
    result = await run(src, "peek")
    assert result == ToolResult("success", "null", "", "")


async def test_runs_in_fresh_temp_dir_that_is_removed() -> None:
    src = (
        "import os\n"
        "def where() -> list:\n"
        "    open('scratch.txt', 'w').write('x')\n"
        "    return [os.getcwd(), os.environ['HOME']]\n"
    )
    result = await run(src, "where")
    cwd, home = json.loads(result.tool_return)
    assert cwd == home
    assert cwd != os.getcwd()
    assert not Path(cwd).exists()  # noqa: ASYNC240


async def test_invalid_env_is_an_error() -> None:
    result = await run(ROLL_DICE, "roll_dice", {"num_sides": 6}, env={"A=B": "x"})
    assert result.status == "error"
    assert "invalid environment variable name" in result.tool_return


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({}, "missing required argument 'num_sides' for tool roll_dice"),
        ({"num_sides": 6, "colour": "red"}, "unexpected argument 'colour' for tool roll_dice"),
        ({"num_sides": "six"}, "'num_sides' of tool roll_dice must be an integer, got string ('six')"),
        ({"num_sides": True}, "argument 'num_sides' of tool roll_dice must be an integer, got boolean"),
        ({"num_sides": None}, "argument 'num_sides' of tool roll_dice must be an integer, got null"),
    ],
)
async def test_bad_arguments_name_the_argument(arguments: dict[str, object], fragment: str) -> None:
    result = await run(ROLL_DICE, "roll_dice", arguments)
    assert result.status == "error"
    assert fragment in result.tool_return


async def test_arguments_not_an_object() -> None:
    result = await execute_tool(source_code=ROLL_DICE, name="roll_dice", arguments=[6])  # type: ignore[arg-type]
    assert result.status == "error"
    assert "must be a JSON object" in result.tool_return


async def test_nested_and_enum_argument_validation() -> None:
    src = (
        "from typing import Literal, Optional\n"
        "def f(xs: list[int], req_opt: Optional[str], unit: Literal['c', 'f'] = 'c',\n"
        "      note: Optional[str] = None, maybe: int | None = 3) -> list:\n"
        "    return [xs, unit, note, maybe, req_opt]\n"
    )
    bad = await run(src, "f", {"xs": [1, "2"]})
    assert bad.status == "error"
    assert "argument 'xs[1]' of tool f must be an integer, got string ('2')" in bad.tool_return
    bad_enum = await run(src, "f", {"xs": [], "unit": "k"})
    assert "argument 'unit' of tool f must be one of ['c', 'f'], got string ('k')" in bad_enum.tool_return
    ok = await run(src, "f", {"xs": [1, 2.0], "maybe": None})
    assert ok.status == "success", ok
    assert json.loads(ok.tool_return) == [[1, 2], "c", None, None, None]  # req_opt omitted -> None


async def test_untyped_list_with_non_json_value() -> None:
    result = await run("def f(xs: list) -> int:\n    return len(xs)\n", "f", {"xs": [object()]})
    assert result.status == "error"
    assert "arguments are not valid JSON" in result.tool_return


async def test_unknown_function_name() -> None:
    result = await run(ROLL_DICE, "roll_die", {"num_sides": 6})
    assert result.status == "error"
    assert "no top-level function named 'roll_die'" in result.tool_return


async def test_invalid_source() -> None:
    result = await run("def f(x):\n    return x\n", "f", {"x": 1})
    assert result.status == "error"
    assert "parameter 'x' of f has no type annotation" in result.tool_return


async def test_large_output_truncated() -> None:
    src = (
        "import sys\n"
        "def noisy() -> str:\n"
        "    sys.stdout.write('A' * 100_000 + 'B' * 100_000 + 'END')\n"
        "    sys.stderr.write('e' * 300_000)\n"
        "    return 'done'\n"
    )
    result = await run(src, "noisy")
    assert result.status == "success"
    assert result.tool_return == "done"
    assert len(result.stdout) < 64 * 1024 + 200
    assert result.stdout.startswith("A" * 1000)
    assert result.stdout.endswith("B" * 1000 + "END")
    assert "bytes truncated (output limit 65536 bytes)" in result.stdout
    assert len(result.stderr) < 64 * 1024 + 200
    assert "truncated" in result.stderr


async def test_large_return_truncated() -> None:
    result = await run("def big() -> str:\n    return 'x' * 50\n", "big", max_return_chars=10)
    assert result.tool_return.startswith("x" * 10 + "... [truncated: the return value has 50 characters")


async def test_memory_limit() -> None:
    src = "def hog() -> int:\n    return len(bytearray(3 * 1024 ** 3))\n"
    result = await run(src, "hog", memory_limit_bytes=512 * 1024**2)
    assert result.status == "error"
    assert result.tool_return.startswith("MemoryError")


async def test_three_calls_run_concurrently() -> None:
    calls = [ToolCallRequest(SLEEPER, "nap", {"seconds": 0.5}) for _ in range(3)]
    calls.append(ToolCallRequest(ROLL_DICE, "roll_dice", {"num_sides": "x"}))
    started = time.monotonic()
    results = await execute_many(calls)
    elapsed = time.monotonic() - started
    assert [r.status for r in results] == ["success", "success", "success", "error"]
    assert [r.tool_return for r in results[:3]] == ["rested"] * 3
    assert elapsed < 1.4, elapsed


async def test_execute_many_keeps_order() -> None:
    src = "import time\ndef f(i: int, d: float) -> int:\n    time.sleep(d)\n    return i\n"
    calls = [ToolCallRequest(src, "f", {"i": i, "d": 0.3 - 0.1 * i}) for i in range(3)]
    results = await execute_many(calls, max_concurrency=2)
    assert [r.tool_return for r in results] == ["0", "1", "2"]


def test_works_under_uvloop() -> None:
    """The gateway serves on uvloop, whose subprocess/pipe transports differ from asyncio's."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[ToolResult, ToolResult, float]:
        ok = await run(ROLL_DICE, "roll_dice", {"num_sides": 6})
        slow = await run(SLEEPER, "nap", {"seconds": 10}, timeout_s=0.3)
        task = asyncio.ensure_future(run(SLEEPER, "nap", {"seconds": 30}))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ok, slow, time.monotonic() - started

    ok, slow, cancel_s = uvloop.run(scenario())
    assert ok.status == "success" and 1 <= int(ok.tool_return) <= 6
    assert slow.tool_return == "timed out after 0.3s"
    assert cancel_s < 1.0
