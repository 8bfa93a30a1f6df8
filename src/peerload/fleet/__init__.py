"""Emulated hosts for tests, benchmarks and demos: network namespaces with capped NICs on one machine."""

from peerload.fleet.harness import DEVICE, Fleet, Host, close_all
from peerload.fleet.roles import run_target, start_coordinator, start_file_server, start_seed

__all__ = ["DEVICE", "Fleet", "Host", "close_all", "run_target", "start_coordinator", "start_file_server", "start_seed"]
