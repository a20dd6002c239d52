"""Request bodies of the REST API (Letta's v1 field names). Unknown fields are ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.llm.client import parse_handle


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ToolUpsert(_Body):
    source_code: str = Field(min_length=1, max_length=200_000)
    name: str | None = None
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    default_requires_approval: bool = False
    return_char_limit: int = Field(default=50_000, ge=1, le=1_000_000)


class ToolUpdate(_Body):
    source_code: str | None = Field(default=None, min_length=1, max_length=200_000)
    description: str | None = None
    tags: list[str] | None = None
    default_requires_approval: bool | None = None
    return_char_limit: int | None = Field(default=None, ge=1, le=1_000_000)


class LLMConfig(_Body):
    model: str | None = None
    handle: str | None = None
    model_endpoint_type: str | None = None
    enable_reasoner: bool | None = None
    max_reasoning_tokens: int | None = Field(default=None, ge=1024)
    max_tokens: int | None = Field(default=None, ge=1, le=128_000)


def _check_model(value: str | None) -> str | None:
    if value is not None:
        parse_handle(value)
    return value


class AgentSettingsFields(_Body):
    description: str | None = None
    system: str | None = None
    tool_ids: list[str] | None = None
    tags: list[str] | None = None
    enable_reasoner: bool | None = None
    max_reasoning_tokens: int | None = Field(default=None, ge=1024)
    max_tokens: int | None = Field(default=None, ge=1, le=128_000)
    approval_timeout_s: float | None = Field(default=None, gt=0)
    llm_config: LLMConfig | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("model", check_fields=False)
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return _check_model(value)


class AgentCreate(AgentSettingsFields):
    name: str | None = Field(default=None, max_length=200)
    model: str | None = None


class AgentUpdate(AgentSettingsFields):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    model: str | None = None


class ApprovalSetting(_Body):
    requires_approval: bool


class MessageCreate(_Body):
    role: str = "user"
    content: str | list[dict[str, Any]]
    otid: str | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value != "user":
            raise ValueError("only 'user' messages can be sent")
        return value


class SendMessages(_Body):
    messages: list[MessageCreate] = Field(min_length=1)
    stream_tokens: bool = False
    max_steps: int | None = Field(default=None, ge=1, le=100)
    background: bool = False
    idempotency_key: str | None = None
