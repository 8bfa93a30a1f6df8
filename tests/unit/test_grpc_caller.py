"""The client-side Caller: UNAVAILABLE retried with the one jittered backoff, other codes raised typed.

The RPC is a plain function here (a fake for the network): it fails with the status codes the
test picks, so each attempt and each wait can be counted without a server.
"""

from __future__ import annotations

import random

import grpc
import pytest

from peerload._grpc import REJECTED, Caller
from peerload.errors import CoordinatorError, CoordinatorUnavailable


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _caller(retries: int, seed: int, waits: list[float]) -> Caller:
    return Caller(
        "test:1",
        timeout_s=1,
        retries=retries,
        error=CoordinatorError,
        unreachable=CoordinatorUnavailable,
        rng=random.Random(seed),
        sleep=waits.append,
    )


def _down(request: object, timeout: float) -> object:
    raise _Failed(grpc.StatusCode.UNAVAILABLE, "down")


def test_unavailable_waits_jittered_doubling_delays_capped_at_two_seconds() -> None:
    waits: list[float] = []
    with pytest.raises(CoordinatorUnavailable, match="after 7 attempts"):
        _caller(6, 1, waits)("ListSources", _down, None)
    steps = [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert len(waits) == len(steps)
    assert all(step / 2 <= w <= step for w, step in zip(waits, steps, strict=True)), waits
    other: list[float] = []
    with pytest.raises(CoordinatorUnavailable):
        _caller(6, 2, other)("ListSources", _down, None)
    # Two clients that lost the server at the same moment do not retry at the same instants.
    assert all(a != b for a, b in zip(waits, other, strict=True))


def test_other_codes_are_raised_at_once_without_waiting() -> None:
    waits: list[float] = []
    calls: list[object] = []

    def invalid(request: object, timeout: float) -> object:
        calls.append(request)
        raise _Failed(grpc.StatusCode.INVALID_ARGUMENT, "worker: is required")

    with pytest.raises(CoordinatorError) as info:
        _caller(3, 1, waits)("PublishMetadata", invalid, "req")
    assert not isinstance(info.value, CoordinatorUnavailable)
    assert (info.value.code, info.value.details, info.value.address) == (
        "INVALID_ARGUMENT",
        "worker: is required",
        "test:1",
    )
    assert calls == ["req"] and waits == []


def test_a_reply_that_says_no_is_rejected_not_ok() -> None:
    error = _caller(0, 1, [])("PublishMetadata", lambda request, timeout: "reply", None)
    assert error == "reply"
    rejected = _caller(0, 1, []).rejected("PublishMetadata", "quota")
    assert isinstance(rejected, CoordinatorError) and rejected.code == REJECTED != "OK"
    assert "PublishMetadata failed with REJECTED: quota" in str(rejected)
