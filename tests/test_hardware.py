"""Bandwidth probe and peak-memory helpers (small sizes; no wall-clock assertions)."""

from __future__ import annotations

import math

import pytest
import torch

from gpt2xl.errors import ConfigError
from gpt2xl.hardware import (
    BandwidthProbe,
    cpu_peak_method,
    measure_memory_bandwidth,
    peak_memory_bytes,
    reset_peak_memory,
)


def test_bandwidth_probe_small() -> None:
    probe = measure_memory_bandwidth(device="cpu", nbytes=16 << 20, repeats=3)
    assert isinstance(probe, BandwidthProbe)
    assert probe.nbytes == 16 << 20 and probe.repeats == 3
    for value in (probe.read_bytes_per_s, probe.copy_bytes_per_s):
        assert math.isfinite(value) and value > 0
    assert "sum" in probe.read_method and "copy" in probe.copy_method
    assert probe.to_dict()["read_bytes_per_s"] == probe.read_bytes_per_s


def test_bandwidth_probe_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError):
        measure_memory_bandwidth(device="cpu", nbytes=0)
    with pytest.raises(ConfigError):
        measure_memory_bandwidth(device="cpu", nbytes=1 << 20, repeats=0)


def test_peak_memory_grows_after_a_big_allocation() -> None:
    reset_peak_memory("cpu")
    before = peak_memory_bytes("cpu")
    big = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
    after = peak_memory_bytes("cpu")
    del big
    assert before > 0
    assert after >= before + (48 << 20)  # most of it shows (the allocator may reuse some freed pages)
    assert "RSS" in cpu_peak_method()
