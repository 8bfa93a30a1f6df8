"""A fleet simulator: the loader's own part policy driven with simulated time (`peerload simulate`)."""

from peerload.sim.fleet import MODES, SimConfig, SimResult, simulate

__all__ = ["MODES", "SimConfig", "SimResult", "simulate"]
