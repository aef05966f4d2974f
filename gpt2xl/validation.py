"""Checks every command layer runs on its options before any work: ranges, lists, output
locations, memory.

Each layer (``generation.run_generation``, the eval commands, ``python -m bench``, ``compare``)
checks all of its options through these functions before it loads a model, reads a dataset or
computes anything, so a bad value fails in milliseconds with one sentence: a
:class:`~gpt2xl.errors.ConfigError` for a value outside its domain, an
:class:`~gpt2xl.errors.OutputError` for a place that cannot be written.
"""

from __future__ import annotations

import errno
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gpt2xl.config import GPTConfig
from gpt2xl.errors import ConfigError, OutputError

T = TypeVar("T")

# torch.Generator.manual_seed takes [-2**63, 2**64); numpy's SeedSequence takes any non-negative
# int. Seeds are also stored in JSON and CSV, so they stay non-negative 63-bit integers.
SEED_MAX = 2**63 - 1


def check_int(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` when it is an integer (not a bool) in ``[minimum, maximum]``; ConfigError naming
    ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
        maximum is not None and value > maximum
    ):
        upper = "" if maximum is None else f" and <= {maximum:,}"
        raise ConfigError(f"{name} must be an integer >= {minimum}{upper}, got {value!r}.")
    return value


def check_seed(name: str, value: object) -> int:
    """A seed every generator we use accepts: an integer in ``[0, 2**63 - 1]``."""
    return check_int(name, value, minimum=0, maximum=SEED_MAX)


def check_float(
    name: str, value: object, *, minimum: float | None = None, maximum: float | None = None, hint: str = ""
) -> float:
    """``value`` as a float when it is a finite real number in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        minimum is not None and value < minimum
    ) or (maximum is not None and value > maximum):
        limits = [f">= {minimum:g}"] if minimum is not None else []
        limits += [f"<= {maximum:g}"] if maximum is not None else []
        bounds = " and ".join(limits)
        raise ConfigError(f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}.{hint}")
    return float(value)


def parse_list(text: str, *, name: str, item: Callable[[str], T], what: str = "values") -> tuple[T, ...]:
    """A comma-separated option: ``"0.5,0.8"`` → ``(item("0.5"), item("0.8"))``.

    Refused, with the option's name: an empty list, an empty item (``"0.5,,0.8"``, a trailing
    comma), an item ``item`` rejects (it may raise ValueError or ConfigError), and a repeated
    value (it would run, and be reported, twice).
    """
    parts = [p.strip() for p in text.split(",")]
    if not text.strip():
        raise ConfigError(f"{name} must list at least one of its {what}, got {text!r}.")
    if any(not p for p in parts):
        raise ConfigError(f"{name} has an empty item in {text!r}; separate {what} with single commas.")
    values: list[T] = []
    for part in parts:
        try:
            value = item(part)
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise ConfigError(f"{name}: {exc}") from exc
            raise ConfigError(f"{name} must be a comma-separated list of {what}; {part!r} is not one.") from exc
        if value in values:
            raise ConfigError(f"{name} lists {part!r} twice.")
        values.append(value)
    return tuple(values)


def output_error(path: str | Path, exc: OSError, *, what: str = "") -> OutputError:
    """One sentence for a failed write: what could not be written, why, and what to do."""
    reasons = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EFBIG: "the file size limit was reached (see `ulimit -f`)",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EISDIR: "it is a directory",
        errno.ENAMETOOLONG: "the name is too long",
    }
    reason = reasons.get(exc.errno or 0) or exc.strerror or type(exc).__name__
    label = f"{what} " if what else ""
    return OutputError(f"Cannot write {label}{path}: {reason}; choose a writable location with space to spare.")


def check_output_dir(path: str | Path, *, name: str) -> Path:
    """Create ``path`` (and its parents) if needed and prove a file can be created in it.

    Run before any computation, so an unwritable ``--run-dir`` fails at once, not after an hour.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{name} {path} is a file; pass a directory.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".gpt2xl-write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(path, exc, what=name) from exc
    return path


def check_output_file(path: str | Path, *, name: str) -> Path:
    """Prove ``path`` can be written later: its folder is writable and it is not a directory."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{name} {path} is a directory; pass a file name.")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"Cannot write {name} {path}: {path.parent} is a file, not a directory; choose another path.")
    check_output_dir(path.parent, name=f"the folder of {name}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"Cannot write {name} {path}: permission denied; choose a writable location.")
    return path


def available_memory_bytes(device: str = "cpu") -> int:
    """Memory a run on ``device`` can still take: the host's available memory (psutil's
    ``available``, so without swapping) for the CPU, the GPU's free memory for ``cuda[:N]``."""
    if device.startswith("cuda"):
        import torch  # only here: this module stays importable without torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(needed_bytes: int, *, what: str, hint: str, device: str = "cpu") -> None:
    """ConfigError when ``needed_bytes`` (an estimate of the run's peak) exceed what ``device``
    has free, instead of growing until the kernel kills the process (or CUDA runs out)."""
    available = available_memory_bytes(device)
    if needed_bytes > available:
        where = "" if device == "cpu" else f" on {device}"
        raise ConfigError(
            f"{what} needs about {needed_bytes / 2**30:,.1f} GiB but {available / 2**30:,.1f} GiB are "
            f"available{where}; {hint}"
        )


def estimate_run_bytes(
    config: GPTConfig, *, batch_size: int, seq_len: int, dtype_bytes: int, kv_cache: bool = True
) -> int:
    """A generous estimate of the peak memory of running ``batch_size`` sequences of ``seq_len``
    tokens: the weights, the KV cache (sampling holds one; scoring whole windows does not), fp32
    logits and their log-softmax over every position (scoring needs them all), and the MLP's
    activations."""
    weights = config.num_parameters() * dtype_bytes
    cache = 2 * config.n_layer * batch_size * seq_len * config.n_embd * dtype_bytes if kv_cache else 0
    logits = 2 * batch_size * seq_len * config.vocab_size * 4
    activations = 2 * batch_size * seq_len * config.mlp_width * 4
    return weights + cache + logits + activations
