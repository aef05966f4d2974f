"""Result files: versioned JSON, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpt2xl.errors import ResultError
from gpt2xl.validation import output_error

SCHEMA_VERSION = 1


def new_run_id() -> str:
    """A sortable, filesystem-safe id: UTC time to the second."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a crash or a failed
    write (no space, file size limit) never leaves a half-written file behind; a failed write
    raises OutputError saying why."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are as readable as any new file
        os.replace(tmp, path)
    except OSError as exc:
        raise output_error(path, exc) from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # gone after the rename; the leftover of a failure
    return path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_result(path: str | Path, *, kind: str, payload: dict[str, Any]) -> Path:
    """Write ``{"schema_version", "kind", **payload}`` as JSON (strict: NaN/inf are refused)."""
    doc = {"schema_version": SCHEMA_VERSION, "kind": kind, **payload}
    return write_text_atomic(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def read_result(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """Read a result file, checking its schema version (and kind, when given)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultError(f"Cannot read result file {path} ({exc.strerror}).") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        found = doc.get("schema_version") if isinstance(doc, dict) else None
        raise ResultError(f"{path} has schema_version {found!r}; this gpt2xl reads version {SCHEMA_VERSION}.")
    if kind is not None and doc.get("kind") != kind:
        raise ResultError(f"{path} holds a {doc.get('kind')!r} result, expected {kind!r}.")
    return doc
