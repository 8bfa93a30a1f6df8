"""Benchmarks behind `peerload bench` (one CLI module per benchmark in `peerload.cli.bench`): data plane
(runner, cases), scaling, fleet, fan-out, control plane, replica."""
