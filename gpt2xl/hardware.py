"""What the hardware can do, measured: memory bandwidth (the roofline of a batch-1 decode) and
peak memory of a piece of work.

A batch-1 decode step reads every weight once and does ~2 FLOPs per weight, so on CPUs and GPUs
alike it is bound by memory bandwidth: ``weight_bytes x decode steps/s`` against the bandwidth
measured here is how close a sampler runs to the machine's limit. Measuring the bandwidth in the
same run (rather than quoting a datasheet) makes roofline fractions from different machines
comparable.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from gpt2xl.devices import synchronize
from gpt2xl.errors import ConfigError, check_int

DEFAULT_CPU_PROBE_BYTES = 2 << 30  # 2 GiB: far beyond any last-level cache, as in PERF.md
DEFAULT_CUDA_PROBE_BYTES = 4 << 30  # beyond any GPU L2; small next to HBM
READ_METHOD = "fp32 tensor.sum() over {size}: bytes read / median time"
COPY_METHOD = "fp32 dst.copy_(src) of {size}: 2 x bytes (read + write) / median time"


@dataclass(frozen=True, kw_only=True)
class BandwidthProbe:
    """Memory bandwidth of one device, median over ``repeats`` timed passes (after one warm-up).

    ``read_bytes_per_s`` (a reduction that only reads) is the roofline basis: a decode step mostly
    reads weights. ``copy_bytes_per_s`` counts a copy's read and write bytes both; it is usually
    lower and is recorded for comparison with other tools (STREAM "copy").
    """

    device: str
    nbytes: int
    repeats: int
    read_bytes_per_s: float
    copy_bytes_per_s: float
    read_method: str
    copy_method: str
    threads: int

    def __post_init__(self) -> None:
        if self.nbytes <= 0 or self.repeats <= 0:
            raise ConfigError(f"BandwidthProbe needs nbytes > 0 and repeats > 0, got {self.nbytes}, {self.repeats}.")
        for name in ("read_bytes_per_s", "copy_bytes_per_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"BandwidthProbe.{name} must be positive and finite, got {value!r}.")

    def to_dict(self) -> dict[str, object]:
        return {
            "device": self.device,
            "nbytes": self.nbytes,
            "repeats": self.repeats,
            "read_bytes_per_s": self.read_bytes_per_s,
            "copy_bytes_per_s": self.copy_bytes_per_s,
            "read_method": self.read_method,
            "copy_method": self.copy_method,
            "threads": self.threads,
        }


def _size_text(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.2f} GiB" if nbytes >= (1 << 30) else f"{nbytes / (1 << 20):.0f} MiB"


def default_probe_bytes(device: torch.device) -> int:
    """2 GiB on CPU, capped at a quarter of the RAM available now (the copy needs two buffers and
    other processes may share the machine); 4 GiB on CUDA, capped at a quarter of free memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(1 << 20, min(DEFAULT_CUDA_PROBE_BYTES, free // 4))
    return max(1 << 20, min(DEFAULT_CPU_PROBE_BYTES, psutil.virtual_memory().available // 4))


def measure_memory_bandwidth(
    *, device: torch.device | str = "cpu", nbytes: int | None = None, repeats: int = 5
) -> BandwidthProbe:
    """Measure read and copy bandwidth on ``device`` with an fp32 buffer of ``nbytes``.

    ``nbytes`` None picks :func:`default_probe_bytes`. The copy allocates a second buffer of the
    same size, so the probe holds ``2 x nbytes`` while it runs and frees both before returning.
    Raises ConfigError for non-positive sizes or repeats.
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = default_probe_bytes(device)
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 4:
        raise ConfigError(f"nbytes must be an integer >= 4, got {nbytes!r}.")
    check_int("repeats", repeats)
    n = nbytes // 4
    nbytes = n * 4
    src = torch.ones(n, dtype=torch.float32, device=device)  # ones, not empty: pages must be touched
    dst = torch.empty_like(src)
    dst.fill_(0.0)

    def timed(fn) -> float:
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - t0

    with torch.inference_mode():
        timed(src.sum)  # warm-up: page faults, kernel selection
        read_s = statistics.median(timed(src.sum) for _ in range(repeats))
        timed(lambda: dst.copy_(src))
        copy_s = statistics.median(timed(lambda: dst.copy_(src)) for _ in range(repeats))
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    size = _size_text(nbytes)
    return BandwidthProbe(
        device=str(device),
        nbytes=nbytes,
        repeats=repeats,
        read_bytes_per_s=nbytes / read_s,
        copy_bytes_per_s=2 * nbytes / copy_s,
        read_method=READ_METHOD.format(size=size),
        copy_method=COPY_METHOD.format(size=size),
        threads=torch.get_num_threads(),
    )


# --- peak memory -------------------------------------------------------------------------------

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _can_reset_rss_peak() -> bool:
    return sys.platform.startswith("linux") and _CLEAR_REFS.exists()


def _vm_hwm_bytes() -> int | None:
    """The process's RSS high-water mark (``VmHWM``), Linux only."""
    if not _PROC_STATUS.exists():
        return None
    for line in _PROC_STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


def cpu_peak_method() -> str:
    """How :func:`peak_memory_bytes` measures on CPU here (reports state it, since a process-wide
    peak that cannot be reset includes everything the process did before)."""
    if _can_reset_rss_peak() and _vm_hwm_bytes() is not None:
        return "peak RSS (VmHWM) of the process since a reset via /proc/self/clear_refs"
    return "peak RSS (ru_maxrss) of the process since it started (cannot be reset on this OS)"


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory window: the CUDA allocator's peak stats, or the process's RSS
    high-water mark on Linux (writing ``5`` to ``/proc/self/clear_refs``; elsewhere the CPU peak
    cannot be reset and stays the process-wide one)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    if _can_reset_rss_peak():
        _CLEAR_REFS.write_text("5")


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory since :func:`reset_peak_memory`: ``torch.cuda.max_memory_allocated`` on CUDA
    (tensors only, not the allocator's cache), peak RSS of the whole process on CPU (weights,
    activations, the Python heap and libraries: what the OS had to provide)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    hwm = _vm_hwm_bytes()
    if hwm is not None:
        return hwm
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(usage if sys.platform == "darwin" else usage * 1024)  # bytes on macOS, KiB on Linux
