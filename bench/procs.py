"""Spawning and measuring the processes of a benchmark run.

Every server runs in its own process, bound to 127.0.0.1 on a free port, with the
file-descriptor limit raised to the hard limit and a parent-death signal, so that nothing
outlives the benchmark even if it is killed. `Proc.stop` sends SIGINT (a graceful stop,
which lets a profiler write its output), then SIGKILL after a bounded wait.

CPU is read from /proc through psutil (user + system of the process, children excluded);
its resolution is the kernel's clock tick (10 ms), so measurement windows must hold at
least about half a second of CPU to be precise to 2%.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"


@dataclass
class Source:
    """Where the servers import `gateway` and `protocol` from: this work tree by default, or
    a revision exported with `git archive` (`use_revision`), so that a run measures a commit
    and not whatever is being edited."""

    root: Path = ROOT
    revision: str | None = None


SOURCE = Source()


def use_revision(rev: str, workdir: Path) -> str:
    """Export `rev`'s gateway/, protocol/ and web/ to workdir/src; returns the full commit id."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    src = workdir / "src"
    src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "gateway", "protocol", "web"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    SOURCE.root, SOURCE.revision = src, commit
    return commit


def python_path(env: dict[str, str]) -> str:
    """The exported source first (when measuring a revision), then this tree (for `bench`)."""
    parts = [str(SOURCE.root)] if SOURCE.root != ROOT else []
    return os.pathsep.join([*parts, str(ROOT), env.get("PYTHONPATH", "")])


LLM_HTTP_BACKENDS = ("aiohttp", "httpx")


def llm_http() -> str:
    """The SDK HTTP backend (`GATEWAY_LLM_HTTP`, default aiohttp) that the gateway and the SDK
    floor are both started with: this process's environment is otherwise not passed on."""
    name = (os.environ.get("GATEWAY_LLM_HTTP") or LLM_HTTP_BACKENDS[0]).strip().lower()
    if name not in LLM_HTTP_BACKENDS:
        raise SystemExit(f"GATEWAY_LLM_HTTP must be one of {', '.join(LLM_HTTP_BACKENDS)}, got {name!r}")
    return name


def tree_state() -> dict[str, Any]:
    """The commit of this work tree and whether gateway/ or protocol/ differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {
        "head": git("rev-parse", "HEAD"),
        "dirty_files": git("status", "--porcelain", "--", "gateway", "protocol").splitlines(),
        "measured": SOURCE.revision or "work tree",
    }


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup() -> None:  # runs in the child between fork and exec
    raise_nofile()
    with contextlib.suppress(Exception):  # Linux: die with the parent
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:.0f} s")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def ps(self) -> psutil.Process:
        return psutil.Process(self.popen.pid)

    def cpu(self) -> float:
        """User + system CPU seconds of the process so far."""
        t = self.ps().cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return int(self.ps().memory_info().rss)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def spawn(name: str, argv: list[str], port: int, workdir: Path, env: dict[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GATEWAY_"))}
    full_env["PYTHONPATH"] = python_path(full_env)
    full_env.update(env or {})
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv, cwd=SOURCE.root, env=full_env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_child_setup
        )
    proc = Proc(name, popen, port, log)
    try:
        wait_port(port, popen)
    except Exception:
        proc.stop(5)
        raise RuntimeError(f"{name} did not start:\n{proc.tail()}") from None
    return proc


def start_upstream(workdir: Path, port: int | None = None) -> Proc:
    """The offline model (`gateway.llm.offline`) with the bench's tap, unpaced by default."""
    port = port or free_port()
    return spawn("upstream", [PYTHON, "-m", "bench.upstream", "--port", str(port)], port, workdir)


def start_gateway(workdir: Path, upstream_port: int, *, profile: Path | None = None) -> Proc:
    """`gateway serve`, pointed at the external offline model as a real deployment points at
    Anthropic: `ANTHROPIC_BASE_URL` and an API key, so runs take the `anthropic/*` route (and
    `offline/*` goes to the same model through GATEWAY_OFFLINE_URL)."""
    port = free_port()
    data = workdir / f"gateway-data-{port}"
    args = ["serve", "--port", str(port), "--data-dir", str(data)]
    if profile is None:
        argv = [PYTHON, "-m", "gateway.cli", *args]
    else:
        argv = [
            PYTHON,
            "-m",
            "pyinstrument",
            "-r",
            "pyisession",
            "-o",
            str(profile),
            "-m",
            "gateway.cli",
            *args,
        ]
    env = {
        "ANTHROPIC_BASE_URL": f"http://{HOST}:{upstream_port}",
        "ANTHROPIC_API_KEY": "bench-offline-model",
        "GATEWAY_OFFLINE_URL": f"http://{HOST}:{upstream_port}",
        "GATEWAY_LLM_MAX_RETRIES": "0",
        "GATEWAY_LLM_HTTP": llm_http(),  # the same backend as the SDK floor's
    }
    return spawn("gateway", argv, port, workdir, env)


def start_plain(workdir: Path) -> Proc:
    """The baseline: a bare ASGI websocket app under uvicorn with the gateway's settings."""
    port = free_port()
    return spawn("plainws", [PYTHON, "-m", "bench.plainws", "--port", str(port)], port, workdir)


def run_json(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run a helper process that prints one JSON object on its last stdout line."""
    import orjson

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GATEWAY_"))}
    env["PYTHONPATH"] = python_path(env)
    done = subprocess.run(
        argv,
        cwd=SOURCE.root,
        env=env,
        capture_output=True,
        timeout=timeout,
        preexec_fn=_child_setup,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{argv[:4]} failed ({done.returncode}):\n{done.stderr.decode(errors='replace')[-3000:]}"
        )
    lines = done.stdout.decode().strip().splitlines()
    return dict(orjson.loads(lines[-1]))


class SdkWorker:
    """The SDK floor as a long-lived worker (`bench.sdkfloor --serve`): one JSON job per line."""

    def __init__(self, model_url: str, workdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GATEWAY_"))}
        env["PYTHONPATH"] = python_path(env)
        env["GATEWAY_LLM_HTTP"] = llm_http()  # the same backend as the gateway's
        self.log = workdir / "sdkfloor.log"
        with self.log.open("wb") as err:
            self.popen = subprocess.Popen(
                [PYTHON, "-m", "bench.sdkfloor", "--url", model_url, "--serve"],
                cwd=SOURCE.root,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                preexec_fn=_child_setup,
            )

    def job(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one job; blocking (call it from a thread). Kills the worker on timeout."""
        import threading

        import orjson

        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(orjson.dumps(job) + b"\n")
        self.popen.stdin.flush()
        timer = threading.Timer(timeout, self.popen.kill)
        timer.start()
        try:
            line = self.popen.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            raise RuntimeError(f"the SDK floor worker died:\n{self.log.read_text(errors='replace')[-3000:]}")
        result = dict(orjson.loads(line))
        if "error" in result:
            raise RuntimeError(f"SDK floor job {job} failed: {result['error']}")
        return result

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(OSError):
                assert self.popen.stdin is not None
                self.popen.stdin.close()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
