"""The run lifecycle table: legal moves, illegal ones raise, and it agrees with the protocol."""

from __future__ import annotations

import pytest

from gateway.runs.lifecycle import (
    LIFECYCLE,
    STOP_ACTIONS,
    TERMINAL,
    TRANSITIONS,
    Action,
    IllegalTransition,
    Status,
    advance,
    diagram,
    is_terminal,
)
from protocol.runs import TERMINAL_STATUS, RunStatus, StopReason


def test_happy_paths() -> None:
    assert advance("queued", Action.START) is Status.RUNNING
    assert advance("running", Action.PARK) is Status.AWAITING_APPROVAL
    assert advance("awaiting_approval", Action.RESUME) is Status.RUNNING
    assert advance("running", Action.COMPLETE) is Status.COMPLETED


@pytest.mark.parametrize("status", sorted(TERMINAL))
@pytest.mark.parametrize("action", list(Action))
def test_terminal_statuses_have_no_way_out(status: Status, action: Action) -> None:
    assert is_terminal(status)
    with pytest.raises(IllegalTransition):
        advance(status, action)


def test_illegal_moves_raise() -> None:
    with pytest.raises(IllegalTransition, match="resume from queued"):
        advance("queued", Action.RESUME)
    with pytest.raises(IllegalTransition):
        advance("running", Action.START)
    with pytest.raises(IllegalTransition):
        advance("cancelling", Action.CANCEL)  # ack-only, never a run's status
    with pytest.raises(IllegalTransition):
        advance("nonsense", Action.START)


def test_every_stop_reason_ends_in_the_protocols_terminal_status() -> None:
    assert set(STOP_ACTIONS) == {r.value for r in StopReason}
    for reason, terminal in TERMINAL_STATUS.items():
        assert advance("running", STOP_ACTIONS[reason]) == terminal


def test_lifecycle_covers_every_status_but_cancelling() -> None:
    assert {s.value for s in LIFECYCLE} == {s.value for s in RunStatus} - {"cancelling"}


def test_diagram_is_drawn_from_the_table() -> None:
    text = diagram()
    for src, moves in TRANSITIONS.items():
        for action, dst in moves.items():
            assert f"{src.value} --> {dst.value}: {action.value}" in text
