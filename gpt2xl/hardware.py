"""What the hardware can do, measured: memory bandwidth (the roofline of a batch-1 decode) and
peak memory of a piece of work.

A batch-1 decode step reads every weight once and does ~2 FLOPs per weight, so on CPUs and GPUs
alike it is bound by memory bandwidth: ``weight_bytes x decode steps/s`` against the bandwidth
measured here is how close a sampler runs to the machine's limit.

No single probe is the machine's limit: on a shared VM the bandwidth switches between slow and
fast states from minute to minute, and a tuned engine can stream faster than ``tensor.sum()``.
So a probe measures three ways (``sum``, a threaded dot product over per-thread chunks, and a
copy), and a benchmark probes several times and takes the best of every probe and every engine
as its roofline basis (see ``bench.records.roofline_basis``).
"""

from __future__ import annotations

import functools
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch

from gpt2xl.devices import synchronize
from gpt2xl.errors import ConfigError
from gpt2xl.validation import check_int

# 2 GiB: 64x the 32 MiB L3 of this project's 2-vCPU EPYC hosts (lscpu), and beyond the largest
# last-level cache on sale (1152 MiB, a 3D V-Cache EPYC 9684X): the probe streams from memory.
DEFAULT_CPU_PROBE_BYTES = 2 << 30
DEFAULT_CUDA_PROBE_BYTES = 4 << 30  # beyond any GPU L2; small next to HBM
# How each method counts bytes (the ``{…}`` are filled per probe); the keys are the method names
# stored in results.
PROBE_METHODS: dict[str, str] = {
    "sum": "fp32 tensor.sum() over {size} on {threads} torch thread(s): bytes read / median time",
    "threaded-dot": (
        "{threads} thread(s), each torch.dot of its own contiguous chunk of {size} (torch at one intra-op "
        "thread meanwhile; one whole-buffer torch.dot on CUDA): bytes read / median time"
    ),
    "copy": "fp32 dst.copy_(src) of {size}: 2 x bytes (read + write) / median time",
}


@dataclass(frozen=True, kw_only=True)
class BandwidthProbe:
    """Memory bandwidth of one device at one moment, per method: the median over ``repeats`` timed
    passes (after one warm-up) of each method in :data:`PROBE_METHODS`.

    ``sum_bytes_per_s`` and ``dot_bytes_per_s`` only read; ``copy_bytes_per_s`` counts a copy's
    read and write bytes both (STREAM "copy"). :meth:`rates` names them as results store them.
    """

    device: str
    nbytes: int
    repeats: int
    threads: int
    measured_at: str  # ISO-8601 UTC time the probe finished
    sum_bytes_per_s: float
    dot_bytes_per_s: float
    copy_bytes_per_s: float

    def __post_init__(self) -> None:
        if self.nbytes <= 0 or self.repeats <= 0:
            raise ConfigError(f"BandwidthProbe needs nbytes > 0 and repeats > 0, got {self.nbytes}, {self.repeats}.")
        for name, value in self.rates().items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"BandwidthProbe rate {name!r} must be positive and finite, got {value!r}.")

    def rates(self) -> dict[str, float]:
        """``{method: bytes/s}`` with the method names of :data:`PROBE_METHODS`."""
        return {"sum": self.sum_bytes_per_s, "threaded-dot": self.dot_bytes_per_s, "copy": self.copy_bytes_per_s}

    def to_dict(self) -> dict[str, object]:
        size = _size_text(self.nbytes)
        return {
            "device": self.device,
            "nbytes": self.nbytes,
            "repeats": self.repeats,
            "threads": self.threads,
            "measured_at": self.measured_at,
            "rates": self.rates(),
            "methods": {name: text.format(size=size, threads=self.threads) for name, text in PROBE_METHODS.items()},
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


def _threaded_dot_s(src: torch.Tensor, threads: int, median_s: Callable[[Callable[[], object]], float]) -> float:
    """Median seconds of a streaming read spread over ``threads`` OS threads: each runs a
    single-threaded ``torch.dot`` over its own contiguous chunk (ops release the GIL), torch at
    one intra-op thread meanwhile so the threads do not oversubscribe the cores. MKL's one dot or
    gemv over a whole buffer may stay on one thread, and a batched ``bmm`` of per-thread chunks
    read only 2-3 GB/s on a Zen 5 host where ``sum`` read 20: hence real threads."""
    if src.device.type == "cuda" or threads <= 1:
        return median_s(lambda: torch.dot(src, src))
    chunks = [c for c in src.chunk(threads) if c.numel()]
    with ThreadPoolExecutor(max_workers=len(chunks), thread_name_prefix="gpt2xl-probe") as pool:

        def run() -> None:
            for future in [pool.submit(torch.dot, c, c) for c in chunks]:
                future.result()

        torch.set_num_threads(1)
        try:
            return median_s(run)
        finally:
            torch.set_num_threads(threads)


def measure_memory_bandwidth(
    *, device: torch.device | str = "cpu", nbytes: int | None = None, repeats: int = 5
) -> BandwidthProbe:
    """Measure ``sum``, threaded-dot and copy bandwidth on ``device`` with an fp32 buffer of ``nbytes``.

    ``nbytes`` None picks :func:`default_probe_bytes`. The copy allocates a second buffer of the
    same size, so the probe holds ``2 x nbytes`` while it runs and frees both before returning.
    During the threaded dot torch runs one intra-op thread per call (restored afterwards), so the
    threads stream side by side instead of oversubscribing the cores.
    Raises ConfigError for non-positive sizes or repeats.
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = default_probe_bytes(device)
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 4:
        raise ConfigError(f"nbytes must be an integer >= 4, got {nbytes!r}.")
    check_int("repeats", repeats)
    threads = torch.get_num_threads()
    n = nbytes // 4
    nbytes = n * 4
    src = torch.ones(n, dtype=torch.float32, device=device)  # ones, not empty: pages must be touched
    dst = torch.empty_like(src)
    dst.fill_(0.0)

    def median_s(fn: Callable[[], object]) -> float:
        def timed() -> float:
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            return time.perf_counter() - t0

        timed()  # warm-up: page faults, kernel selection
        # Never below the clock's resolution: a rate is bytes / this, and must stay finite.
        return max(statistics.median(timed() for _ in range(repeats)), time.get_clock_info("perf_counter").resolution)

    with torch.inference_mode():
        sum_s = median_s(src.sum)
        dot_s = _threaded_dot_s(src, threads, median_s)
        copy_s = median_s(functools.partial(dst.copy_, src))
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return BandwidthProbe(
        device=str(device),
        nbytes=nbytes,
        repeats=repeats,
        threads=threads,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sum_bytes_per_s=nbytes / sum_s,
        dot_bytes_per_s=nbytes / dot_s,
        copy_bytes_per_s=2 * nbytes / copy_s,
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
