from __future__ import annotations

from protocol.codes import CLOSE_CODE_EXPLANATIONS, ERROR_CODE_RETRYABLE, RECONNECT, CloseCode, ErrorCode


def test_close_codes_are_the_spec_ones() -> None:
    sent = {1000, 1001, 1003, 1008, 1009, 1011, 4400, 4401, 4408, 4429}
    assert {int(code) for code in CloseCode} == sent | {1006}


def test_every_close_code_is_explained() -> None:
    assert set(CLOSE_CODE_EXPLANATIONS) == set(CloseCode)
    assert all(CLOSE_CODE_EXPLANATIONS.values())
    assert CloseCode.SLOW_CONSUMER.explanation == CLOSE_CODE_EXPLANATIONS[CloseCode.SLOW_CONSUMER]


def test_clients_reconnect_after_exactly_the_spec_codes() -> None:
    assert {int(code) for code in RECONNECT} == {1001, 1006, 1011, 4408, 4429}
    for code in (1003, 1008, 1009, 4400, 4401, 1000):
        assert code not in RECONNECT
        assert not CloseCode(code).reconnect
    assert 4408 in RECONNECT  # plain ints work, as a client receives them
    assert CloseCode.GOING_AWAY.reconnect


def test_error_codes_are_the_spec_ones() -> None:
    assert {str(code) for code in ErrorCode} == {
        "bad_request",
        "unknown_type",
        "not_found",
        "agent_busy",
        "approval_not_pending",
        "run_finished",
        "rate_limited",
        "too_many_subscriptions",
        "internal",
    }


def test_every_error_code_has_a_default_retryable() -> None:
    assert set(ERROR_CODE_RETRYABLE) == set(ErrorCode)
    retryable = {code for code in ErrorCode if code.retryable}
    assert retryable == {ErrorCode.AGENT_BUSY, ErrorCode.RATE_LIMITED, ErrorCode.INTERNAL}
