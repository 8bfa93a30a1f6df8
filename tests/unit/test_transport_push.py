"""Push requests and staging slots (peerload.transport._push): pure, no agents."""

from __future__ import annotations

import numpy as np
import pytest

from peerload.transport import _push


def test_a_push_request_survives_encoding_with_its_ops_and_metadata():
    rows = np.array([(0x1000, 4096, 0, 0x9000), (0x5000, 17, 1, 0xA000)], dtype=np.uint64)
    req = _push.PushRequest("ab12:3", False, True, rows, b"nixlSerDes...md")
    back = _push.decode(_push.encode(req))
    assert (back.id, back.src_cuda, back.last, back.metadata) == ("ab12:3", False, True, b"nixlSerDes...md")
    assert back.rows.tolist() == rows.tolist()


@pytest.mark.parametrize(
    "msg",
    [
        b"peerload:xfer:ab",
        _push.PUSH,
        _push.PUSH + b"\x05\x00\x00\x00{bad}",
        _push.PUSH + b"\x0b\x00\x00\x00" + b'{"id": "x"}',
    ],
)
def test_a_malformed_push_request_is_refused(msg):
    with pytest.raises(ValueError):
        _push.decode(msg)


def test_a_request_whose_ops_are_cut_short_is_refused():
    req = _push.PushRequest("a:0", False, False, np.ones((3, 4), dtype=np.uint64), b"")
    with pytest.raises(ValueError, match="ops"):
        _push.decode(_push.encode(req)[:-8])


def test_answers_name_their_request_and_why_nothing_was_written():
    assert _push.answer_id(_push.PUSHED + b"ab:1") == ("ab:1", None)
    assert _push.answer_id(_push.unpushed("ab:2", "no such range")) == ("ab:2", "no such range")
    assert _push.answer_id(b"peerload:done:ab") is None


def test_a_slot_given_up_stays_out_of_use_until_its_request_is_answered():
    slots = _push.Slots(2)
    a, b = slots.take("a"), slots.take("b")
    assert {a, b} == {0, 1} and slots.take("c") is None
    slots.give_up("a")  # its server may still write into slot a
    slots.answered("b")
    assert slots.take("c") == b and slots.take("d") is None
    assert slots.quarantined == {"a"}
    slots.answered("a")  # the late answer: the server is done with it
    assert slots.quarantined == set() and slots.take("d") == a


def test_only_a_taken_slot_can_be_quarantined():
    slots = _push.Slots(1)
    slots.give_up("never-taken")
    assert slots.quarantined == set() and slots.free == 1
