"""Shedding: after a Redis timeout, requests are answered at once until a probe gets through."""

from __future__ import annotations

import pytest

from app.shedding import Shed, Shedder
from postback.faults import Cause, fault

TIMEOUT = fault(Cause.TIMEOUT, timeout_seconds=2)


def test_requests_go_through_while_redis_answers():
    """With no timeout seen, every request goes on to Redis, none as a probe."""
    shedder = Shedder(probe_seconds=60)
    shedder.settle(fault(Cause.OOM, timeout_seconds=2), probe=False)
    assert [shedder.admit() for _ in range(3)] == [False, False, False]


def test_after_a_timeout_requests_are_shed_during_the_hold():
    """A timeout holds the next requests back with the same fault."""
    shedder = Shedder(hold_seconds=60, probe_seconds=60)
    shedder.settle(TIMEOUT, probe=False)
    with pytest.raises(Shed) as shed:
        shedder.admit()
    assert shed.value.fault == TIMEOUT


def test_after_the_hold_one_probe_goes_and_its_answer_ends_the_outage():
    """After the hold exactly one request probes; once it is answered, all go through."""
    shedder = Shedder(hold_seconds=0, probe_seconds=60)
    shedder.settle(TIMEOUT, probe=False)
    assert shedder.admit() is True
    with pytest.raises(Shed):
        shedder.admit()
    shedder.settle(None, probe=True)
    assert shedder.admit() is False


def test_a_probe_that_times_out_starts_another_hold():
    """A probe that times out too puts requests on hold again."""
    shedder = Shedder(hold_seconds=60, probe_seconds=60)
    shedder.settle(TIMEOUT, probe=False)
    shedder._held_until = 0.0  # the hold has passed
    assert shedder.admit() is True
    shedder.settle(TIMEOUT, probe=True)
    with pytest.raises(Shed):
        shedder.admit()


def test_a_probe_that_never_reports_is_replaced():
    """A probe gone silent does not hold requests back for ever: after probe_seconds, another."""
    shedder = Shedder(hold_seconds=0, probe_seconds=0)
    shedder.settle(TIMEOUT, probe=False)
    assert shedder.admit() is True
    assert shedder.admit() is True
