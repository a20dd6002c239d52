"""Command handlers of one connection: one method per command type, found by a table."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway import __version__
from gateway.broker import find_log
from gateway.errors import GatewayError, not_found
from gateway.runs.lifecycle import is_terminal
from gateway.ws.connection import Connection
from protocol import commands as cmd
from protocol.codec import decode_command, encode_ack, encode_error
from protocol.codes import CloseCode, ErrorCode
from protocol.errors import CommandError

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.ws")

Handler = Callable[[Any], Awaitable[dict[str, Any] | None]]


class Dispatcher:
    def __init__(self, gateway: Gateway, conn: Connection) -> None:
        self.gateway = gateway
        self.conn = conn
        self.greeted = False
        conn.on_finished = self._finished
        self.handlers: dict[str, Handler] = {
            "hello": self.hello,
            "run.start": self.run_start,
            "run.subscribe": self.run_subscribe,
            "run.unsubscribe": self.run_unsubscribe,
            "run.cancel": self.run_cancel,
            "approval.respond": self.approval_respond,
            "ping": self.ping,
        }

    async def handle(self, text: str) -> bool:
        """Handle one frame; False when it was refused (bad input or a failed command)."""
        conn = self.conn
        try:
            command = decode_command(text)
        except CommandError as exc:
            if not self.greeted:
                conn.close(CloseCode.PROTOCOL_VIOLATION, "the first frame must be a valid hello")
                return False
            conn.reply(
                encode_error(exc.command_id, exc.code, exc.message, exc.retryable, exc.details or None)
            )
            return False
        if not self.greeted and command.type != "hello":
            conn.close(CloseCode.PROTOCOL_VIOLATION, "hello must be the first frame")
            return False
        try:
            result = await self.handlers[command.type](command)
        except GatewayError as exc:
            conn.reply(encode_error(command.id, ErrorCode(exc.code), exc.message, exc.retryable, exc.details))
            return False
        except PoolTimeout:
            conn.reply(
                encode_error(command.id, ErrorCode.RATE_LIMITED, "the gateway is overloaded; retry", True)
            )
            return False
        except Exception:
            log.exception("command %s failed", command.type)
            conn.reply(encode_error(command.id, ErrorCode.INTERNAL, "internal error", True))
            return False
        if result is not None:
            conn.reply(encode_ack(command.id, result))
        return True

    def _finished(self, run_id: str) -> None:
        """The writer passed `run_id`'s terminal event: nothing more will come."""
        self.gateway.broker.detach(run_id, self.conn)

    def detach_all(self) -> None:
        for run_id in list(self.conn.subscriptions):
            self.gateway.broker.detach(run_id, self.conn)
        self.conn.subscriptions.clear()

    # -- handlers ----------------------------------------------------------------------------

    async def hello(self, command: cmd.Hello) -> dict[str, Any] | None:
        settings = self.gateway.settings
        if self.greeted:
            raise GatewayError("bad_request", "hello was already received on this connection")
        if settings.auth_token is not None and command.token != settings.auth_token:
            self.conn.close(CloseCode.AUTHENTICATION_FAILED, "authentication failed")
            return None
        self.greeted = True
        return {
            "connection_id": self.conn.id,
            "protocol": "agentgw.v1",
            "server": {"name": "agent-gateway", "version": __version__},
            "heartbeat_s": settings.heartbeat_s,
            "limits": {
                "max_frame_bytes": settings.max_frame_bytes,
                "max_subscriptions": settings.max_subscriptions,
            },
        }

    async def run_start(self, command: cmd.RunStart) -> None:
        if len(self.conn.subscriptions) >= self.gateway.settings.max_subscriptions:
            raise self._too_many()
        messages = [m.model_dump(exclude_none=True) for m in command.messages]
        run, _created = await self.gateway.manager.start(
            command.agent_id,
            messages,
            stream_tokens=command.stream_tokens,
            max_steps=command.max_steps,
            idempotency_key=command.idempotency_key,
            if_busy=command.if_busy.value,
        )
        info = self.gateway.broker.info(run.id)
        self.conn.reply(
            encode_ack(
                command.id,
                {"run_id": run.id, "epoch": info.epoch if info else run.epoch, "status": run.status},
            )
        )
        if run.id not in self.conn.subscriptions:
            await self._attach(run.id, 0)
        return None

    async def run_subscribe(self, command: cmd.RunSubscribe) -> None:
        run_id = command.run_id
        run = await self.gateway.store.get_run(run_id)
        if run is None:
            raise not_found("run", run_id)
        if (
            run_id not in self.conn.subscriptions
            and len(self.conn.subscriptions) >= self.gateway.settings.max_subscriptions
        ):
            raise self._too_many()
        broker = self.gateway.broker
        info = await find_log(broker, run_id, live=not is_terminal(run.status))
        if info is None:
            # The log is gone (retention, or lost with a restart): only persisted messages remain.
            self.conn.reply(
                encode_ack(
                    command.id,
                    {
                        "run_id": run_id,
                        "status": run.status,
                        "last_seq": run.last_seq,
                        "epoch": run.epoch,
                        "recovered": False,
                    },
                )
            )
            return None
        after = command.after
        recovered = (
            command.epoch is None or command.epoch == info.epoch
        ) and info.first_seq - 1 <= after <= info.last_seq
        if not recovered:
            after = info.last_seq
        if run_id in self.conn.subscriptions:
            broker.detach(run_id, self.conn)
            self.conn.subscriptions.discard(run_id)
            self.conn.stop_replay(run_id)
        self.conn.reply(
            encode_ack(
                command.id,
                {
                    "run_id": run_id,
                    "status": run.status,
                    "last_seq": info.last_seq,
                    "epoch": info.epoch,
                    "recovered": recovered,
                },
            )
        )
        await self._attach(run_id, after)
        return None

    async def run_unsubscribe(self, command: cmd.RunUnsubscribe) -> dict[str, Any]:
        self.gateway.broker.detach(command.run_id, self.conn)
        self.conn.subscriptions.discard(command.run_id)
        self.conn.stop_replay(command.run_id)
        return {}

    async def run_cancel(self, command: cmd.RunCancel) -> dict[str, Any]:
        status = await self.gateway.manager.cancel(command.run_id, command.mode.value)
        return {"run_id": command.run_id, "status": status}

    async def approval_respond(self, command: cmd.ApprovalRespond) -> dict[str, Any]:
        decisions = [d.model_dump() for d in command.decisions]
        pending = await self.gateway.manager.respond(command.run_id, decisions)
        return {"run_id": command.run_id, "pending": pending}

    async def ping(self, command: cmd.Ping) -> dict[str, Any]:
        return {}

    # -- helpers -----------------------------------------------------------------------------

    async def _attach(self, run_id: str, after: int) -> None:
        self.conn.subscriptions.add(run_id)
        if await self.gateway.broker.attach(run_id, self.conn, after) is None:
            # The log vanished since it was found (expired): nothing to follow.
            self.conn.subscriptions.discard(run_id)

    def _too_many(self) -> GatewayError:
        limit = self.gateway.settings.max_subscriptions
        return GatewayError(
            "too_many_subscriptions", f"a connection may follow at most {limit} runs", retryable=False
        )
