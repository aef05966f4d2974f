"""Native CPU kernels, compiled on first use on the machine that runs them.

``linear_small.cpp`` holds a few-row linear layer (decode steps, short prefills) that streams the
weights over all torch threads. It is built with ``torch.utils.cpp_extension`` and ``-march=native`` into the user cache
(``gpt2xl.cache``), keyed by the source, the compiler, torch and this CPU's model and flags, so a
host never runs code compiled for another. Where no compiler works, :func:`native` returns None,
:func:`unavailable_reason` says why, and callers keep PyTorch's own kernels.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import torch

from gpt2xl.cache import cache_dir
from gpt2xl.devices import cpu_flags, cpu_name

SOURCE = Path(__file__).with_name("linear_small.cpp")
DISABLE_ENV = "GPT2XL_NATIVE"  # "0" disables the native kernels (a torch-only run)
MARCH_ENV = "GPT2XL_NATIVE_MARCH"  # -march= value, default "native"; "haswell" builds the AVX2 path


def _march() -> str:
    return os.environ.get(MARCH_ENV, "native")


def _compiler_version() -> str:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return "none"
    try:
        # Not checked: a compiler that prints its version and exits non-zero still names itself.
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
        return out.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


@functools.cache
def build_key() -> str:
    """What the compiled module depends on: source, -march, compiler, torch, CPU model and flags."""
    parts = [
        SOURCE.read_text(),
        _march(),
        _compiler_version(),
        torch.__version__,
        cpu_name(),
        " ".join(sorted(cpu_flags())),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@functools.cache
def _build() -> tuple[ModuleType | None, str | None]:
    if os.environ.get(DISABLE_ENV) == "0":
        return None, f"disabled by {DISABLE_ENV}=0"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return None, "no C++ compiler on PATH"
    from torch.utils import cpp_extension

    key = build_key()
    where = cache_dir("kernels", key)
    try:
        module = cpp_extension.load(
            name=f"gpt2xl_linear_small_{key}",
            sources=[str(SOURCE)],
            build_directory=str(where),
            extra_cflags=["-O3", f"-march={_march()}", "-fopenmp"],
            extra_ldflags=["-fopenmp"],  # libgomp.so.1: the runtime torch has loaded already
            verbose=False,
        )
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as exc:
        # Not swallowed: the reason is recorded in every result that would have used the kernels.
        first = str(exc).strip().splitlines()
        return None, f"build failed in {where}: {first[-1] if first else type(exc).__name__}"
    return module, None


def native() -> ModuleType | None:
    """The compiled module (building it on first call: ~30 s, then cached), or None."""
    return _build()[0]


def unavailable_reason() -> str | None:
    """Why :func:`native` is None (None when it is available)."""
    return _build()[1]


def native_isa() -> str | None:
    module = native()
    return module.isa() if module is not None else None


def linear_small(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through the native kernel; ``weight`` contiguous ``[out, in]``,
    fp32 or bf16, on CPU. Results differ from ``F.linear`` only by summation order."""
    module = native()
    if module is None:  # callers route here only when native() is available
        raise RuntimeError(f"the native kernels are unavailable: {unavailable_reason()}")
    lead = x.shape[:-1]
    y = module.linear_small(x.reshape(-1, x.shape[-1]).contiguous(), weight, bias)  # (R, out)
    return y.view(*lead, weight.shape[0])
