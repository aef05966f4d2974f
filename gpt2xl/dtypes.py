"""The dtype names users type (``--dtype fp32``), with the torch dtype each stands for and its size.

The one dtype vocabulary of every layer: :mod:`gpt2xl.devices` maps these names to torch dtypes,
the bench profiles and ``python -m bench`` check names against it. Torch-free, so that option
checks run before torch is imported (importing torch takes about a second).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt2xl.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class DtypeSpec:
    torch_name: str  # the attribute of ``torch``: torch.float32, …
    bytes: int  # bytes per element, for memory estimates


DTYPES: dict[str, DtypeSpec] = {
    "fp32": DtypeSpec(torch_name="float32", bytes=4),
    "fp16": DtypeSpec(torch_name="float16", bytes=2),
    "bf16": DtypeSpec(torch_name="bfloat16", bytes=2),
}
DTYPE_NAMES: tuple[str, ...] = tuple(DTYPES)


def check_dtype_name(name: str) -> str:
    """``name`` when it is one of :data:`DTYPE_NAMES`; ConfigError listing them otherwise."""
    if name not in DTYPES:
        raise ConfigError(f"Unknown dtype {name!r}; choose one of: {', '.join(DTYPE_NAMES)}.")
    return name
