"""Devices and dtypes: names users type, checks that fail with one clear sentence."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

from gpt2xl.dtypes import DTYPES, check_dtype_name
from gpt2xl.errors import ConfigError, DeviceError

# The names of gpt2xl.dtypes (the one vocabulary) as torch dtypes.
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, spec.torch_name) for name, spec in DTYPES.items()}


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype of a user's dtype name; ConfigError for an unknown name."""
    return TORCH_DTYPES[check_dtype_name(name)]


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in TORCH_DTYPES.items() if v == dtype)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; DeviceError when CUDA is asked for and absent."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device {name!r}; use cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"Unsupported device {name!r}; use cpu, cuda or cuda:N.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise DeviceError(
                f"CUDA was requested but no CUDA device is usable (torch {torch.__version__}, {build}); "
                "use --device cpu, or install a CUDA build of torch on a GPU host."
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{name} was requested but only {torch.cuda.device_count()} CUDA device(s) exist.")
    return device


def check_dtype_supported(device: torch.device, dtype: torch.dtype) -> None:
    """Raise DeviceError when ``device`` cannot run GPT-2's ops in ``dtype``.

    Probes the ops the model uses (matmul, LayerNorm, SDPA, softmax) on tiny tensors rather than
    guessing from CPU flags; cached per (device, dtype).
    """
    reason = _dtype_probe(str(device), dtype)
    if reason is not None:
        raise DeviceError(
            f"{dtype_name(dtype)} is not supported on {device} here ({reason}); choose another --dtype."
        )


@functools.cache
def _dtype_probe(device: str, dtype: torch.dtype) -> str | None:
    if device.startswith("cuda") and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    try:
        x = torch.ones(1, 2, 4, 8, device=device, dtype=dtype)  # (B, nh, T, hs)
        w = torch.ones(8, 8, device=device, dtype=dtype)
        y = F.scaled_dot_product_attention(x, x, x, is_causal=True)
        y = F.layer_norm(F.linear(y, w), (8,))
        y = torch.softmax(y.float(), dim=-1)
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    if not torch.isfinite(y).all():
        return "the probe computation returned non-finite values"
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the OS reports (empty where /proc/cpuinfo does not exist)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return frozenset()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def kernel_cpu_flags() -> list[str]:
    """The CPU flags that decide matmul kernels (every avx*/amx* flag, fma and f16c; asimd and
    sve on Arm): printed beside every speed, since hosts differ from session to session."""
    return sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "sve")) or f in ("fma", "f16c", "asimd"))


def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU has matmul instructions for ``dtype`` (bf16: AVX512-BF16 or AMX-BF16;
    fp16: AVX512-FP16 or AMX-FP16). Without them torch still runs the dtype, emulated: correct
    but often slower than fp32, so a throughput profile may leave it out."""
    if dtype == torch.float32:
        return True
    wanted = {torch.bfloat16: {"avx512_bf16", "amx_bf16"}, torch.float16: {"avx512_fp16", "amx_fp16"}}
    return bool(wanted.get(dtype, set()) & cpu_flags())


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a timer read afterwards measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU model as the OS reports it, or the platform's processor string."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """Human name of the hardware behind ``device`` (GPU name, or CPU model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()
