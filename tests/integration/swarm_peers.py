"""The fan-out tests' target: `peerload.bench.fanout_target` plus two test-only fault hooks.

python swarm_peers.py MODEL NAME COORD OUT --prepared F --go F --hold F
                      [--die-after-parts K] [--hide-first-part SECONDS]

The hooks are patched into this process only: `--die-after-parts` SIGKILLs this target once it
has verified K parts (others are reading from it by then); `--hide-first-part` flips a byte of the
first part it receives before that part is verified, keeps it flipped for SECONDS while watching
which parts this target advertises, then restores it and lets the check run.
"""

from __future__ import annotations

import os
import signal
import time

from peerload.bench import fanout_target as swarm_target
from peerload.loader import striping
from peerload.parts import decode_held
from peerload.seed.availability import PartAvailability

_advertised: list[PartAvailability] = []  # the parts this process advertises


def die_after(parts: int) -> None:
    original = PartAvailability.mark

    def mark(self: PartAvailability, part: int) -> None:
        original(self, part)
        if self.held() >= parts:
            os.kill(os.getpid(), signal.SIGKILL)

    PartAvailability.mark = mark  # type: ignore[method-assign]


def hide_first_part(seconds: float, found: dict[str, object]) -> None:
    """Flip a byte of the first part to arrive, watch our advertised parts while it is flipped, restore."""
    original_verify = striping.StripedRead._verify
    original_init = PartAvailability.__init__

    def init(self: PartAvailability, count: int) -> None:
        original_init(self, count)
        _advertised.append(self)

    def verify(self: striping.StripedRead, plan: striping.PeerPlan, index: int) -> None:
        if "part" not in found:
            found["part"] = index
            piece = self.parts[index].pieces[0]
            view = self.tensor_set.regions[piece.region].view(-1)[piece.offset : piece.offset + 1]
            view ^= 0xFF
            exposed = False
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for availability in _advertised:
                    snap = availability.snapshot()
                    exposed |= index in decode_held(snap.bitmap, snap.part_count)
                time.sleep(0.01)
            found["exposed_while_unverified"] = exposed
            found["watched"] = bool(_advertised)
            view ^= 0xFF
        original_verify(self, plan, index)

    PartAvailability.__init__ = init  # type: ignore[method-assign]
    striping.StripedRead._verify = verify  # type: ignore[method-assign]


def main() -> None:
    p = swarm_target.parser()
    p.add_argument("--die-after-parts", type=int, default=0)
    p.add_argument("--hide-first-part", type=float, default=0.0)
    args = p.parse_args()
    found: dict[str, object] = {}
    if args.die_after_parts:
        die_after(args.die_after_parts)
    if args.hide_first_part:
        hide_first_part(args.hide_first_part, found)
    swarm_target.run(args, found)


if __name__ == "__main__":
    main()
