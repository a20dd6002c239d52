"""Signatures for thinking and redacted-thinking blocks, so that passing them back can be checked.

The real API signs every `thinking` block and encrypts every `redacted_thinking` block, and it
rejects a request whose thinking blocks were altered. The offline model does the same with an
HMAC-SHA256 under a signing key:

- `thinking.signature` is `base64(HMAC(key, b"thinking\\0" + utf8(thinking)))`.
- `redacted_thinking.data` is `base64(payload + HMAC(key, b"redacted\\0" + payload))`, the
  payload being opaque bytes (the hidden reasoning text).

Both verifiers return a bool and never raise, whatever the input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

DEFAULT_KEY = b"agent-gateway offline model signing key"
_MAC_SIZE = 32
_THINKING_TAG = b"thinking\0"
_REDACTED_TAG = b"redacted\0"


def sign_thinking(thinking: str, key: bytes = DEFAULT_KEY) -> str:
    """The `signature` the offline model gives a thinking block with this exact text."""
    mac = hmac.new(key, _THINKING_TAG + thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def verify_thinking(thinking: str, signature: str, key: bytes = DEFAULT_KEY) -> bool:
    """True when `signature` is the one `sign_thinking` gives `thinking` under `key`."""
    return hmac.compare_digest(sign_thinking(thinking, key), signature)


def seal_redacted(payload: bytes, key: bytes = DEFAULT_KEY) -> str:
    """The `data` of a redacted_thinking block carrying `payload`."""
    mac = hmac.new(key, _REDACTED_TAG + payload, hashlib.sha256).digest()
    return base64.b64encode(payload + mac).decode("ascii")


def verify_redacted(data: str, key: bytes = DEFAULT_KEY) -> bool:
    """True when `data` came from `seal_redacted` under `key`, unchanged."""
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    if len(raw) <= _MAC_SIZE:
        return False
    payload, mac = raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]
    expected = hmac.new(key, _REDACTED_TAG + payload, hashlib.sha256).digest()
    return hmac.compare_digest(mac, expected)
