"""The fleet simulator: bandwidth arithmetic, the three modes, seed failures, determinism."""

from __future__ import annotations

import pytest

from peerload.sim import SimConfig, simulate

MiB = 1 << 20
BASE = {"model_bytes": 64 * MiB, "part_bytes": 4 * MiB, "nic_bps": 64 * MiB, "dt": 0.002}


def test_one_target_takes_size_over_nic_plus_its_costs():
    r = simulate(SimConfig(targets=1, start_s=0.25, setup_s=0.01, **BASE))
    # 1 s of bytes, 0.25 s before the first read; two reads in flight hide half the per-part costs
    assert 1.25 < r.last_s < 1.25 + 16 * 0.01 + 0.05
    assert r.origin_copies == 1.0 and r.restarted_bytes == 0


def test_without_fan_out_the_seed_serves_every_copy():
    r = simulate(SimConfig(targets=4, mode="single", **BASE))
    assert r.origin_copies == 4.0
    assert r.last_s == pytest.approx(4.0, rel=0.05)


def test_the_swarm_serves_about_one_copy_and_finishes_near_one_target_time():
    big = {**BASE, "model_bytes": 256 * MiB, "dt": 0.005}  # 4 s a copy: discovery lag (0.5 s) is small
    one = simulate(SimConfig(targets=1, mode="swarm", **big))
    single = simulate(SimConfig(targets=8, mode="single", **big))
    swarm = simulate(SimConfig(targets=8, mode="swarm", **big))
    assert single.origin_copies == 8.0 and swarm.origin_copies < 2.5
    assert swarm.last_s < 2 * one.last_s and swarm.last_s < 0.25 * single.last_s


def test_striping_spreads_targets_over_several_seeds():
    r = simulate(SimConfig(targets=4, mode="striping", seeds=4, **BASE))
    assert r.last_s == pytest.approx(1.0, rel=0.1)  # four seeds' NICs serve four targets at full rate
    assert r.origin_copies == 4.0


def test_a_seed_failure_costs_only_the_parts_in_flight():
    r = simulate(SimConfig(targets=4, seeds=2, seed_failures=[(0, 0.3)], **BASE))
    assert len(r.finished) == 4 and 0 < r.restarted_bytes <= 4 * 2 * 4 * MiB


def test_every_seed_failing_early_strands_the_targets():
    with pytest.raises(RuntimeError, match="unfinished"):
        simulate(SimConfig(targets=2, seed_failures=[(0, 0.0)], max_time_s=5, **BASE))


def test_the_fabric_cap_bounds_all_reads_together():
    free = simulate(SimConfig(targets=4, **BASE))
    capped = simulate(SimConfig(targets=4, fabric_bps=64 * MiB, **BASE))
    assert capped.last_s > 3.5 > free.last_s  # 4 x 64 MiB through 64 MiB/s takes >= 4 s


def test_same_seed_same_result_and_bad_config_is_refused():
    a = simulate(SimConfig(targets=6, rng_seed=3, **BASE))
    b = simulate(SimConfig(targets=6, rng_seed=3, **BASE))
    assert a.finished == b.finished and a.origin_bytes == b.origin_bytes
    with pytest.raises(ValueError, match="mode"):
        SimConfig(targets=1, mode="gossip")


def test_the_simulated_loader_has_the_real_loaders_defaults():
    from peerload.loader import striping
    from peerload.settings import Settings

    config, settings = SimConfig(targets=1), Settings()
    assert (config.max_sources, config.seed_max_readers, config.part_bytes) == (
        settings.max_parallel_sources,
        settings.seed_max_readers,
        settings.chunk_bytes,
    )
    assert (config.max_reading, config.poll_s, config.discover_s) == (
        striping.MAX_READING_PER_SOURCE,
        striping.POLL_S,
        striping.DISCOVER_S,
    )
