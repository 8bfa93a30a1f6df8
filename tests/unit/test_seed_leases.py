"""LeaseTable: the reader cap, lapsing leases, and a closing seed that waits for its readers."""

from __future__ import annotations

import threading

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


# Only a bound on waits for a state that must come (a broken build fails instead of hanging).
HANG_S = 60.0


def test_closing_refuses_new_leases_and_waits_for_open_ones():
    table = LeaseTable(max_readers=4, timeout_s=3600)
    lease = table.acquire("reader")
    still_open: list[int] = []
    closer = threading.Thread(target=lambda: still_open.append(table.close(wait_s=3600)))
    closer.start()
    assert table.wait_draining(HANG_S), "close() never waited for the open lease"
    assert closer.is_alive() and table.closing
    with pytest.raises(LeaseRefused, match="shutting down") as err:
        table.acquire("late")
    assert err.value.closing
    assert table.release(lease.lease_id)
    closer.join(HANG_S)
    assert still_open == [0]  # returned because the lease ended, not at its bound (an hour)


def test_closing_with_nothing_open_returns_at_once():
    table = LeaseTable(max_readers=4, timeout_s=30)
    table.release(table.acquire("done").lease_id)
    assert table.close(wait_s=3600) == 0 and table.close_waits == 0


def test_closing_gives_up_after_its_bound_and_reports_what_is_open():
    table = LeaseTable(max_readers=4, timeout_s=30)
    table.acquire("slow reader")
    assert table.close(wait_s=0.1) == 1
    assert table.close_waits >= 1  # it waited before giving up


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        LeaseTable(max_readers=-1, timeout_s=1)
    with pytest.raises(ValueError):
        LeaseTable(max_readers=1, timeout_s=0)
