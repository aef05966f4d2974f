"""Bandwidth probe and peak-memory helpers (small sizes; no wall-clock assertions)."""

from __future__ import annotations

import math
from datetime import datetime

import pytest
import torch

from gpt2xl.errors import ConfigError
from gpt2xl.hardware import (
    PROBE_METHODS,
    BandwidthProbe,
    cpu_peak_method,
    measure_memory_bandwidth,
    peak_memory_bytes,
    reset_peak_memory,
)


def test_bandwidth_probe_small() -> None:
    threads = torch.get_num_threads()
    probe = measure_memory_bandwidth(device="cpu", nbytes=16 << 20, repeats=3)
    assert isinstance(probe, BandwidthProbe)
    assert probe.nbytes == 16 << 20 and probe.repeats == 3 and probe.threads == threads
    assert torch.get_num_threads() == threads  # the threaded dot restores torch's thread count
    rates = probe.rates()
    assert set(rates) == set(PROBE_METHODS) == {"sum", "threaded-dot", "copy"}
    for value in rates.values():
        assert math.isfinite(value) and value > 0
    d = probe.to_dict()
    assert d["rates"] == rates and datetime.fromisoformat(d["measured_at"]).tzinfo is not None
    assert "sum" in d["methods"]["sum"] and "torch.dot" in d["methods"]["threaded-dot"] and "copy" in d["methods"]["copy"]


def test_probe_rejects_unusable_rates() -> None:
    fields = dict(device="cpu", nbytes=1 << 20, repeats=1, threads=1, measured_at="t", sum_bytes_per_s=1e9,
                  dot_bytes_per_s=1e9, copy_bytes_per_s=1e9)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError):
            BandwidthProbe(**{**fields, "dot_bytes_per_s": bad})


def test_bandwidth_probe_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError):
        measure_memory_bandwidth(device="cpu", nbytes=0)
    with pytest.raises(ConfigError):
        measure_memory_bandwidth(device="cpu", nbytes=1 << 20, repeats=0)


def test_peak_memory_grows_after_a_big_allocation() -> None:
    import mmap

    reset_peak_memory("cpu")
    before = peak_memory_bytes("cpu")
    # Fresh pages from the OS: a malloc'd buffer may reuse freed heap pages that earlier tests left
    # resident (then RSS does not grow; the suite saw that once, depending on test order).
    region = mmap.mmap(-1, 64 << 20)
    big = torch.frombuffer(region, dtype=torch.uint8)
    big.fill_(1)  # 64 MiB, touched
    after = peak_memory_bytes("cpu")
    del big
    region.close()
    assert before > 0
    assert after >= before + (48 << 20)  # most of it shows
    assert "RSS" in cpu_peak_method()
