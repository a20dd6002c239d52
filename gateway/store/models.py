"""Tables of the gateway's state. Portable across SQLite and PostgreSQL.

Messages keep the Anthropic content blocks exactly as the model produced them (thinking
signatures included), so the next request is rebuilt from the table with no conversion
loss. `pos` gives a total order of an agent's history.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Tool(Base):
    __tablename__ = "tools"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    source_code: Mapped[str] = mapped_column(Text)
    json_schema: Mapped[dict[str, Any]]
    tags: Mapped[list[Any]]
    default_requires_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    return_char_limit: Mapped[int] = mapped_column(Integer, default=50000)
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    system: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(String(200))
    tool_ids: Mapped[list[Any]]
    # tool name -> requires_approval, overriding the tool's own default.
    approval_overrides: Mapped[dict[str, Any]]
    tags: Mapped[list[Any]]
    settings: Mapped[dict[str, Any]]  # max_tokens, enable_reasoner, max_reasoning_tokens, approval_timeout_s
    # The run holding the agent; set and cleared with a conditional UPDATE so two starts can't both win.
    active_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("agent_id", "idempotency_key", name="uq_runs_agent_idempotency"),
        Index("ix_runs_agent_status", "agent_id", "status"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(32))
    stop_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    request: Mapped[dict[str, Any]]  # messages, stream_tokens, max_steps
    usage: Mapped[dict[str, Any]]
    step_count: Mapped[int] = mapped_column(Integer, default=0)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)  # of the event log, written when the run ends
    epoch: Mapped[str] = mapped_column(String(64))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[str] = mapped_column(String(40))
    completed_at: Mapped[str | None] = mapped_column(String(40), nullable=True)


class Step(Base):
    __tablename__ = "steps"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    agent_id: Mapped[str] = mapped_column(String(64))
    number: Mapped[int] = mapped_column(Integer)
    stop_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    usage: Mapped[dict[str, Any]]
    created_at: Mapped[str] = mapped_column(String(40))


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_agent_pos", "agent_id", "pos"), Index("ix_messages_run", "run_id"))
    pos: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"))
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    step_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    role: Mapped[str] = mapped_column(String(16))  # user | assistant | tool
    content: Mapped[list[Any]]  # Anthropic content blocks; tool rows hold tool_result blocks
    # Per block: otid, and for tool rows the status/stdout/stderr the client saw.
    meta: Mapped[list[Any]]
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[str] = mapped_column(String(40))


class Approval(Base):
    """A tool call waiting for (or given) a person's decision. Durable: survives restarts."""

    __tablename__ = "approvals"
    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    tool_call_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    step_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    arguments: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer)
    decision: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    requested_at: Mapped[str] = mapped_column(String(40))
    decided_at: Mapped[str | None] = mapped_column(String(40), nullable=True)
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)  # its tool_return is persisted
