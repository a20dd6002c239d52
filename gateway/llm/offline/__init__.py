"""The offline model: a real Anthropic-compatible Messages API with a deterministic responder.

The gateway reaches it exactly as it reaches the real API, through the official `anthropic`
SDK over HTTP (`base_url="http://host:port/<mount prefix>"`); nothing about it is a shortcut.

API
    `create_app(*, tokens_per_second=0.0, signing_key=DEFAULT_KEY) -> Starlette` serves
    `POST /v1/messages` (streaming and not) and `POST /v1/messages/count_tokens`, with
    relative routes (mount it anywhere). `app.state.stats` is an `OfflineStats`: `requests`,
    `active_streams`, `completed`, `disconnects`, `rejected`, `errors`, `output_tokens`, and
    `disconnect_times` (time.time_ns() of recent disconnects); `GET /v1/stats` returns them
    as JSON (an addition of ours, not part of the real API).
    `main(argv)` / `python -m gateway.llm.offline --host 127.0.0.1 --port 8788
    --tokens-per-second 30` runs it standalone under uvicorn.

Behaviour
    The rules (tool results reported, tools called when asked, "Reply with the message 'X'",
    long answers, thinking) are in `responder`; the validation, as strict as the API's, is in
    `validation`; the SSE framing, pacing and disconnect detection in `app`; thinking
    signatures (HMAC-SHA256 under `signing_key`) in `signing`.

Magic phrases (test hooks, read from the text of the last user turn and removed from it)
    `[[error:overloaded]]`  an `error` SSE event (`overloaded_error`) after 3 tokens; any
                            `[[error:<type>]]` works (`api_error`, ...). Non-streaming: the
                            matching HTTP status (529 for overloaded) at once.
    `[[http:529]]`          an immediate HTTP error with that status (400-599) and the API's
                            error body (529 overloaded_error, 500 api_error, 429 rate_limit_error,
                            ...). The SDK retries 429/5xx unless `max_retries=0`.
    `[[max_tokens]]`        stop with `max_tokens`, cutting mid-block: half-way through the first
                            tool call's argument JSON when a tool is called, else mid-text.
                            A request `max_tokens` smaller than the reply cuts it the same way.
    `[[tps:N]]`             pace this request at N tokens per second (0 = unpaced).
    `[[ttft:MS]]`           wait MS milliseconds before the response starts (time to first
                            token); a client leaving meanwhile counts as a disconnect.
    `[redacted]`            with thinking on, a `redacted_thinking` block instead of `thinking`.
"""

from gateway.llm.offline.app import MAX_BODY_BYTES, OfflineStats, create_app
from gateway.llm.offline.cli import main
from gateway.llm.offline.signing import (
    DEFAULT_KEY,
    seal_redacted,
    sign_thinking,
    verify_redacted,
    verify_thinking,
)

__all__ = [
    "DEFAULT_KEY",
    "MAX_BODY_BYTES",
    "OfflineStats",
    "create_app",
    "main",
    "seal_redacted",
    "sign_thinking",
    "verify_redacted",
    "verify_thinking",
]
