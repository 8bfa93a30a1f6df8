"""Our p2p.proto (P2pService and WorkerService) has the official modelexpress 0.7.0 messages and
methods exactly: names, field numbers, types and labels."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ORACLE = Path(__file__).resolve().parents[1] / "mx" / "proto_fields.py"


def proto_shape(which: str) -> dict:
    """The shape of one side's p2p.proto, read in its own process (the two cannot share a pool)."""
    out = subprocess.run([sys.executable, str(ORACLE), which], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_p2p_proto_equals_the_official_one() -> None:
    if importlib.util.find_spec("modelexpress") is None:
        pytest.skip("modelexpress==0.7.0 (the oracle) is not installed; `make install` adds it")
    official, ours = proto_shape("official"), proto_shape("peerload")
    assert ours["package"] == official["package"] == "model_express.p2p"
    assert set(ours["messages"]) == set(official["messages"])
    for name, fields in official["messages"].items():
        assert ours["messages"][name] == fields, name
    assert ours["services"] == official["services"]
    assert {"P2pService", "WorkerService"} <= set(ours["services"])


def test_source_status_names_every_wire_status() -> None:
    """wire.SourceStatus is spelled out for type checkers; it must stay the .proto's enum."""
    from peerload._gen.model_express import p2p_pb2 as pb
    from peerload.wire import SourceStatus

    wire = {name.removeprefix("SOURCE_STATUS_"): value for name, value in pb.SourceStatus.items()}
    assert {s.name: s.value for s in SourceStatus} == wire
