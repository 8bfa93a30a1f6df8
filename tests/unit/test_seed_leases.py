"""LeaseTable: the reader cap, lapsing leases, and a closing seed that waits for its readers."""

from __future__ import annotations

import threading
import time

import pytest

from peerload.errors import LeaseRefused
from peerload.seed.leases import LeaseTable


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cap_refuses_the_extra_reader_until_one_releases():
    table = LeaseTable(max_readers=2, timeout_s=30)
    first, _ = table.acquire("a"), table.acquire("b")
    with pytest.raises(LeaseRefused, match="maximum of 2 readers") as err:
        table.acquire("c")
    assert not err.value.closing and table.active() == 2
    assert table.release(first.lease_id) and not table.release(first.lease_id)
    assert table.acquire("c").reader == "c"


def test_zero_means_no_cap():
    table = LeaseTable(max_readers=0, timeout_s=30)
    assert len({table.acquire(str(i)).lease_id for i in range(50)}) == 50


def test_a_lease_lapses_after_its_timeout():
    clock = FakeClock()
    table = LeaseTable(max_readers=1, timeout_s=5, clock=clock)
    lease = table.acquire("dead reader")
    clock.now += 4.9
    with pytest.raises(LeaseRefused):
        table.acquire("b")
    clock.now += 0.2
    assert table.active() == 0 and table.acquire("b").reader == "b"
    assert not table.release(lease.lease_id)


def test_closing_refuses_new_leases_and_waits_for_open_ones():
    table = LeaseTable(max_readers=4, timeout_s=30)
    lease = table.acquire("reader")
    releaser = threading.Timer(0.3, table.release, args=(lease.lease_id,))
    releaser.start()
    started = time.monotonic()
    assert table.close(wait_s=10) == 0
    assert 0.2 < time.monotonic() - started < 5  # returned when the lease ended, not at the bound
    with pytest.raises(LeaseRefused, match="shutting down") as err:
        table.acquire("late")
    assert err.value.closing


def test_closing_gives_up_after_its_bound_and_reports_what_is_open():
    table = LeaseTable(max_readers=4, timeout_s=30)
    table.acquire("slow reader")
    assert table.close(wait_s=0.1) == 1


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        LeaseTable(max_readers=-1, timeout_s=1)
    with pytest.raises(ValueError):
        LeaseTable(max_readers=1, timeout_s=0)
