"""The user cache directory: built kernels, autotune choices, converted peer weights.

Everything here is derived data that can be rebuilt: deleting the directory only costs time.
``GPT2XL_CACHE_DIR`` overrides the location; otherwise ``$XDG_CACHE_HOME/gpt2xl`` or
``~/.cache/gpt2xl``.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpt2xl.errors import ConfigError

CACHE_ENV = "GPT2XL_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """``<cache root>/<parts...>``, created if needed. ConfigError when it cannot be created."""
    override = os.environ.get(CACHE_ENV)
    if override:
        root = Path(override).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "gpt2xl"
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"Cannot create the cache directory {path} ({exc.strerror}); set {CACHE_ENV} to a writable folder."
        ) from exc
    return path
