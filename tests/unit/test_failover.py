"""Endpoints: a call goes to the replica in use, on to the next when that one is unreachable, and
stays where it was answered; other errors are not failed over. Replicas are scripted callables."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from peerload._failover import Endpoints


class Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class Replica:
    """Answers its name, or raises `failing` while set; counts the calls it got."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failing: grpc.StatusCode | None = None
        self.calls = 0

    def Echo(self, request: Any, timeout: float) -> str:  # noqa: N802 - a gRPC method name
        self.calls += 1
        if self.failing is not None:
            raise Failed(self.failing)
        return f"{self.name}:{request}"


def endpoints(*names: str) -> tuple[Endpoints[Replica], dict[str, Replica]]:
    replicas = {n: Replica(n) for n in names}
    return Endpoints(list(names), lambda address: address, lambda address: replicas[address]), replicas  # type: ignore[arg-type,return-value]


def test_calls_go_to_the_first_replica_while_it_answers() -> None:
    ep, replicas = endpoints("a", "b", "c")
    echo = ep.call(lambda r: r.Echo)
    assert [echo(i, timeout=1) for i in range(3)] == ["a:0", "a:1", "a:2"]
    assert (replicas["b"].calls, replicas["c"].calls) == (0, 0)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_an_unreachable_replica_fails_over_within_the_call_and_is_left(code: grpc.StatusCode) -> None:
    ep, replicas = endpoints("a", "b", "c")
    echo = ep.call(lambda r: r.Echo)
    replicas["a"].failing = code
    assert echo(1, timeout=1) == "b:1"
    assert ep.current == "b"
    assert echo(2, timeout=1) == "b:2"
    assert replicas["a"].calls == 1, "the dead replica is not tried again while b answers"
    replicas["b"].failing = code
    assert echo(3, timeout=1) == "c:3"
    replicas["a"].failing = None
    replicas["c"].failing = code
    assert echo(4, timeout=1) == "a:4", "round the list, back to the first"


def test_when_no_replica_answers_the_last_error_is_raised() -> None:
    ep, replicas = endpoints("a", "b")
    for r in replicas.values():
        r.failing = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(Failed) as caught:
        ep.call(lambda r: r.Echo)(1, timeout=1)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert (replicas["a"].calls, replicas["b"].calls) == (1, 1)


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED])
def test_a_refusal_is_an_answer_not_a_failover(code: grpc.StatusCode) -> None:
    ep, replicas = endpoints("a", "b")
    replicas["a"].failing = code
    with pytest.raises(Failed):
        ep.call(lambda r: r.Echo)(1, timeout=1)
    assert replicas["b"].calls == 0 and ep.current == "a"
