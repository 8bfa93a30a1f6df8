"""Benchmarks behind `peerload bench`: data plane (runner, cases), scaling, control plane."""
