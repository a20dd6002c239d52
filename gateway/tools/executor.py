"""Run user tools in a fresh, limited subprocess.

Contract of :func:`execute_tool`
--------------------------------
* It never raises, except :class:`asyncio.CancelledError` (re-raised after the
  child's whole process group has been SIGKILLed and the child reaped). Every
  failure is a ``ToolResult(status="error", tool_return=<message>)``: invalid
  source, unknown function name, arguments that do not match the schema
  (checked *before* spawning; the message names the argument), an exception in
  the tool (``"ValueError: boom"``; the traceback goes to ``stderr``), a
  wall-clock timeout (``"timed out after 0.5s"``), a crash (killed by a signal,
  or exit without a report), an invalid ``env``.
* The child is ``sys.executable -I -c RUNNER`` (isolated mode: no PYTHON* env
  vars, no user site, no cwd on ``sys.path``; the interpreter's own
  site-packages stay importable). It never imports the gateway package. It is
  started in a new session (own process group), in a fresh temporary working
  directory that is deleted afterwards, with a minimal environment (``PATH``,
  ``LANG``, ``HOME`` and ``TMPDIR`` = the temp dir, ``PYTHONIOENCODING``) plus
  ``env``; nothing of the server's environment (API keys...) is inherited.
* The runner sets rlimits first (address space, CPU seconds = ceil(timeout)+1,
  no core files), then execs the source in a fresh module, calls the function
  with keyword arguments (awaiting it if it is a coroutine function) and writes
  one JSON report to a dedicated pipe (``pass_fds``), so user prints cannot
  corrupt it. The tool's own stdout/stderr are captured separately, each capped
  at ``output_limit_bytes`` (head and tail kept, with a ``[... N bytes
  truncated ...]`` marker in between).
* ``tool_return``: a ``str`` result as-is; any other JSON-serialisable value as
  ``json.dumps`` (``7`` -> ``"7"``, ``None`` -> ``"null"``, ``True`` ->
  ``"true"``); anything else as ``repr()``. The result is still ``success`` in
  the repr case; it is an error only if ``repr`` itself raises. Returns longer
  than ``max_return_chars`` are cut with a note.
* After the child exits (or is killed) the process group is SIGKILLed too, so
  background processes the tool started do not outlive the call.

POSIX only (process groups, ``resource``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, cast

from gateway.tools.schema import ToolParam, ToolSourceError, ToolSpec, parse_tool_source

__all__ = [
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_OUTPUT_LIMIT_BYTES",
    "MAX_RETURN_CHARS",
    "ToolCallRequest",
    "ToolResult",
    "execute_many",
    "execute_tool",
]

DEFAULT_OUTPUT_LIMIT_BYTES = 64 * 1024
DEFAULT_MEMORY_LIMIT_BYTES = 1024**3
MAX_RETURN_CHARS = 1_000_000
_REAP_GRACE_S = 2.0
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ToolResult:
    """Outcome of one tool call. ``tool_return`` is always a string."""

    status: Literal["success", "error"]
    tool_return: str
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class ToolCallRequest:
    """Arguments of one :func:`execute_tool` call, for :func:`execute_many`."""

    source_code: str
    name: str
    arguments: Mapping[str, Any] | None = None
    timeout_s: float = 30.0
    env: Mapping[str, str] | None = None


# The child-side runner. Kept tiny and dependency-free: it is compiled on every
# call. It reads {"fd", "name", "source", "kwargs", "rlimits", "max_return"} as
# JSON from stdin and writes exactly one JSON report to fd "fd".
RUNNER = r"""
import sys, os, json

def _limits(cfg):
    try:
        import resource
    except ImportError:
        return
    for key, value in cfg["rlimits"]:
        lim = getattr(resource, key, None)
        if lim is None:
            continue
        try:
            soft, hard = resource.getrlimit(lim)
            if hard != resource.RLIM_INFINITY:
                value = [min(v, hard) for v in value]
            resource.setrlimit(lim, tuple(value))
        except (ValueError, OSError):
            pass

def _report(fd, obj):
    data = json.dumps(obj).encode("ascii")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)

def _stringify(value, limit):
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except Exception:
            text = repr(value)
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > limit:
        note = "... [truncated: the return value has %d characters, limit %d]" % (len(text), limit)
        text = text[:limit] + note
    return text

def _main():
    cfg = json.loads(sys.stdin.buffer.read())
    fd = cfg["fd"]
    os.set_inheritable(fd, False)
    _limits(cfg)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8", errors="backslashreplace", line_buffering=True)
        except Exception:
            pass
    name, src = cfg["name"], cfg["source"]
    filename = "<tool %s>" % name
    import linecache, types
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    mod = types.ModuleType("__tool__")
    mod.__file__ = filename
    sys.modules["__tool__"] = mod
    try:
        exec(compile(src, filename, "exec"), mod.__dict__)
        fn = mod.__dict__.get(name)
        if not callable(fn):
            raise NameError("function %r is not defined after running the source" % name)
        result = fn(**cfg["kwargs"])
        if isinstance(result, types.CoroutineType):
            import asyncio
            result = asyncio.run(result)
        text = _stringify(result, cfg["max_return"])
    except BaseException as exc:
        import traceback
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        traceback.print_exception(type(exc), exc, tb)
        try:
            msg = str(exc)
        except Exception:
            msg = "<unprintable exception>"
        error = type(exc).__name__ + (": " + msg if msg else "")
        _report(fd, {"ok": False, "error": _stringify(error, cfg["max_return"])})
        return
    _report(fd, {"ok": True, "return": text})

code = 0
try:
    _main()
except BaseException:
    import traceback
    traceback.print_exc()
    code = 70
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except BaseException:
        pass
os._exit(code)
"""


_spec_for = lru_cache(maxsize=256)(parse_tool_source)


async def execute_tool(
    *,
    source_code: str,
    name: str,
    arguments: Mapping[str, Any] | None,
    timeout_s: float = 30.0,
    env: Mapping[str, str] | None = None,
    output_limit_bytes: int = DEFAULT_OUTPUT_LIMIT_BYTES,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
    max_return_chars: int = MAX_RETURN_CHARS,
) -> ToolResult:
    """Run function ``name`` of ``source_code`` with ``arguments`` in a subprocess.

    See the module docstring for the full contract. Only
    :class:`asyncio.CancelledError` propagates (after the child is killed and
    reaped); everything else is reported as ``status="error"``.
    """
    try:
        spec = _spec_for(source_code, name=name)
    except ToolSourceError as exc:
        return _error(f"invalid tool source ({exc.field}): {exc.message}")
    except Exception as exc:  # defensive: the parser should only raise ToolSourceError
        return _error(f"invalid tool source: {type(exc).__name__}: {exc}")

    try:
        kwargs = validate_arguments(spec, arguments)
        json.dumps(kwargs)  # what the runner receives; values in untyped lists/dicts may not encode
    except (ValueError, TypeError, RecursionError) as exc:
        return _error(str(exc) if isinstance(exc, ValueError) else f"arguments are not valid JSON: {exc}")
    if not isinstance(timeout_s, int | float) or not timeout_s > 0 or math.isinf(timeout_s):
        return _error(f"invalid timeout {timeout_s!r}: must be a positive number of seconds")

    workdir: str | None = None
    try:
        workdir = tempfile.mkdtemp(prefix="gw-tool-")
        try:
            child_env = _child_env(workdir, env)
        except ValueError as exc:
            return _error(str(exc))
        payload = {
            "name": spec.name,
            "source": source_code,
            "kwargs": kwargs,
            "max_return": max_return_chars,
            "rlimits": _rlimits(timeout_s, memory_limit_bytes),
        }
        return await _run_child(payload, workdir, child_env, timeout_s, output_limit_bytes, max_return_chars)
    except Exception as exc:  # OSError from mkdtemp/pipe/spawn, or a bug: still a result, never a raise
        return _error(f"internal error while running the tool: {type(exc).__name__}: {exc}")
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


async def execute_many(
    calls: list[ToolCallRequest], *, max_concurrency: int | None = None
) -> list[ToolResult]:
    """Run ``calls`` concurrently; results are in call order.

    ``max_concurrency`` bounds the number of simultaneous subprocesses (None:
    unbounded). Cancelling the caller cancels (and kills) every call.
    """
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(call: ToolCallRequest) -> ToolResult:
        kwargs: dict[str, Any] = {
            "source_code": call.source_code,
            "name": call.name,
            "arguments": call.arguments,
            "timeout_s": call.timeout_s,
            "env": call.env,
        }
        if sem is None:
            return await execute_tool(**kwargs)
        async with sem:
            return await execute_tool(**kwargs)

    return list(await asyncio.gather(*(one(c) for c in calls)))


# --------------------------------------------------------------------------- validation

_JSON_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def validate_arguments(spec: ToolSpec, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check ``arguments`` against ``spec`` and return the kwargs to call with.

    Raises ``ValueError`` with a message naming the offending argument: not an
    object, unknown argument, missing required argument, wrong type/enum value.
    Omitted ``Optional`` parameters without a default are passed as ``None``;
    integral floats for ``integer`` parameters (``16.0``) become ints.
    """
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise ValueError(f"arguments for tool {spec.name} must be a JSON object, got {_json_type(arguments)}")
    params = {p.name: p for p in spec.params}
    unknown = [k for k in arguments if k not in params]
    if unknown:
        expected = ", ".join(params) or "no arguments"
        raise ValueError(f"unexpected argument {unknown[0]!r} for tool {spec.name} (expected: {expected})")
    kwargs: dict[str, Any] = {}
    for p in spec.params:
        if p.name not in arguments:
            if p.required:
                raise ValueError(f"missing required argument {p.name!r} for tool {spec.name}")
            if not p.has_default:
                kwargs[p.name] = None
            continue
        kwargs[p.name] = _check_value(spec.name, p, p.name, arguments[p.name], p.schema, top=True)
    return kwargs


def _json_type(value: Any) -> str:
    for cls in type(value).__mro__:
        if cls in _JSON_TYPE_NAMES:
            return _JSON_TYPE_NAMES[cls]
    return type(value).__name__


def _check_value(
    tool: str, param: ToolParam, path: str, value: Any, schema: dict[str, Any], *, top: bool
) -> Any:
    def fail(expected: str) -> ValueError:
        got = f"{_json_type(value)} {_short_repr(value)}"
        return ValueError(f"argument {path!r} of tool {tool} must be {expected}, got {got}")

    if value is None:
        if top and param.nullable:
            return None
        raise fail(_describe(schema))
    if "enum" in schema:
        if not any(_same_json_value(value, e) for e in schema["enum"]):
            raise fail(f"one of {schema['enum']!r}")
        return value
    kind = schema.get("type")
    if kind == "string":
        if not isinstance(value, str):
            raise fail("a string")
    elif kind == "integer":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail("an integer")
    elif kind == "number":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise fail("a number")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise fail("a boolean")
    elif kind == "array":
        if not isinstance(value, list | tuple):
            raise fail("an array")
        items = schema.get("items")
        if items is None:
            return list(value)
        return [_check_value(tool, param, f"{path}[{i}]", v, items, top=False) for i, v in enumerate(value)]
    elif kind == "object":
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise fail("an object")
        values = schema.get("additionalProperties")
        if values is None:
            return dict(value)
        return {
            k: _check_value(tool, param, f"{path}[{k!r}]", v, values, top=False) for k, v in value.items()
        }
    return value


def _describe(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return f"one of {schema['enum']!r}"
    kind = schema.get("type", "a value")
    return {"integer": "an integer", "array": "an array", "object": "an object"}.get(kind, f"a {kind}")


def _same_json_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) != isinstance(b, str):
        return False
    return bool(a == b)


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return f"({text})" if len(text) <= limit else f"({text[: limit - 3]}...)"


# --------------------------------------------------------------------------- child process


def _error(message: str, stdout: str = "", stderr: str = "") -> ToolResult:
    return ToolResult(status="error", tool_return=message, stdout=stdout, stderr=stderr)


def _child_env(workdir: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        "PATH": _SAFE_PATH,
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONIOENCODING": "utf-8",
    }
    if extra:
        for key, value in extra.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise ValueError(f"invalid environment variable name {key!r}")
            if not isinstance(value, str) or "\0" in value:
                raise ValueError(f"environment variable {key!r} must be a string without NUL bytes")
            env[key] = value
    return env


def _rlimits(timeout_s: float, memory_limit_bytes: int | None) -> list[tuple[str, list[int]]]:
    cpu = math.ceil(timeout_s) + 1
    limits: list[tuple[str, list[int]]] = [("RLIMIT_CORE", [0, 0]), ("RLIMIT_CPU", [cpu, cpu + 1])]
    if memory_limit_bytes:
        limits.append(("RLIMIT_AS", [memory_limit_bytes, memory_limit_bytes]))
    return limits


class _Capture:
    """Bounded capture of a byte stream: keeps the head and the tail."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 0)
        self.head_limit = self.limit // 2
        self.tail_limit = self.limit - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 2 * self.tail_limit + 65536:
                del self.tail[: len(self.tail) - self.tail_limit]

    def text(self) -> str:
        if self.total <= self.limit:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")
        tail = bytes(self.tail[len(self.tail) - self.tail_limit :]) if self.tail_limit else b""
        omitted = self.total - len(self.head) - len(tail)
        marker = f"\n[... {omitted} bytes truncated (output limit {self.limit} bytes) ...]\n"
        return bytes(self.head).decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace")


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Feeds the child's stdout/stderr into captures and signals exit and pipe closure separately.

    (``asyncio.subprocess.Process.wait()`` only returns once every pipe is closed,
    which a background grandchild holding stdout can delay indefinitely.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, out: _Capture, err: _Capture) -> None:
        self.captures = {1: out, 2: err}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        capture = self.captures.get(fd)
        if capture is not None:
            capture.feed(data.encode() if isinstance(data, str) else data)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _ReportProtocol(asyncio.Protocol):
    """Collects the runner's JSON report (bounded by ``cap`` bytes) until EOF."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.too_big = False
        self.done: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        if self.too_big:
            return
        self.data += data
        if len(self.data) > self.cap:
            self.too_big = True
            self.data.clear()

    def eof_received(self) -> bool | None:
        self._finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _run_child(
    payload: dict[str, Any],
    workdir: str,
    env: dict[str, str],
    timeout_s: float,
    output_limit: int,
    max_return_chars: int,
) -> ToolResult:
    loop = asyncio.get_running_loop()
    out, err = _Capture(output_limit), _Capture(output_limit)
    child = _ChildProtocol(loop, out, err)
    report = _ReportProtocol(loop, 6 * max_return_chars + 65536)

    report_r, report_w = os.pipe()
    report_file = os.fdopen(report_r, "rb", buffering=0)
    report_transport: asyncio.BaseTransport | None = None
    payload["fd"] = report_w
    data = json.dumps(payload).encode("utf-8")
    try:
        try:
            report_transport, _ = await loop.connect_read_pipe(lambda: report, report_file)
            transport, _ = await loop.subprocess_exec(
                lambda: child,
                sys.executable,
                "-I",
                "-c",
                RUNNER,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                pass_fds=(report_w,),
                start_new_session=True,
            )
        finally:
            os.close(report_w)  # the child holds its own copy: EOF once it (and heirs) exit
    except Exception as exc:
        if report_transport is not None:
            report_transport.close()
        else:
            report_file.close()
        return _error(f"could not start the tool process: {type(exc).__name__}: {exc}")
    except BaseException:
        if report_transport is not None:
            report_transport.close()
        else:
            report_file.close()
        raise

    pgid = transport.get_pid()  # start_new_session: the child leads its own process group
    try:
        # Not an isinstance check: uvloop's pipe transports don't subclass WriteTransport.
        stdin = cast("asyncio.WriteTransport | None", transport.get_pipe_transport(0))
        if stdin is not None:
            stdin.write(data)  # buffered by the loop; a child dying early just drops it
            stdin.close()
        await asyncio.wait([child.exited], timeout=timeout_s)
        timed_out = not child.exited.done()
        # Kill the child if it timed out, and whatever it left behind in any case.
        _killpg(pgid)
        await asyncio.wait([child.exited], timeout=_REAP_GRACE_S)
        # Pipes reach EOF once every holder is dead (escapees via setsid are cut off below).
        await asyncio.wait([child.closed, report.done], timeout=_REAP_GRACE_S)
    except asyncio.CancelledError:
        _killpg(pgid)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([child.exited], timeout=_REAP_GRACE_S)
        raise
    finally:
        transport.close()
        report_transport.close()

    stdout, stderr = out.text(), err.text()
    if timed_out:
        return _error(f"timed out after {timeout_s:g}s", stdout, stderr)
    if report.too_big:
        return _error("the tool result was too large to transfer", stdout, stderr)
    if report.data:
        try:
            parsed = json.loads(bytes(report.data))
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("ok") is True and isinstance(parsed.get("return"), str):
            return ToolResult("success", parsed["return"], stdout, stderr)
        if isinstance(parsed, dict) and parsed.get("ok") is False and isinstance(parsed.get("error"), str):
            return _error(parsed["error"], stdout, stderr)
        return _error("the tool process sent a malformed result", stdout, stderr)
    rc = transport.get_returncode()
    if rc is not None and rc < 0:
        try:
            signame = signal.Signals(-rc).name
        except ValueError:
            signame = f"signal {-rc}"
        if -rc == signal.SIGXCPU:
            return _error(f"tool exceeded its CPU time limit ({signame})", stdout, stderr)
        return _error(f"tool process was killed by {signame}", stdout, stderr)
    return _error(f"tool process exited with code {rc} without returning a result", stdout, stderr)
