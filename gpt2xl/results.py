"""Result files: versioned JSON written atomically, checked against a schema when read, and run
directories written as one set.

- :func:`write_bytes_atomic` / :func:`write_text_atomic` / :func:`write_result`: one file, via a
  temporary file and a rename.
- :func:`schema_problem` (with :class:`Maybe`): where a parsed result departs from a schema.
- :func:`run_dir_lock`: one writer per run directory at a time; a second one fails at once.
- :func:`staged_files`: a SET of result files (JSON, CSV, plots, report) built in a staging
  directory and moved into the run directory together, with a manifest (name, size, sha256 of
  each file) written last; :func:`manifest_problems` checks a run directory against it.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpt2xl.errors import OutputError, ResultError
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


# --------------------------------------------------------------------------------------------
# schema checks: the fields a reader relies on (others may be present)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Maybe:
    """Schema node: the field may be absent or null; otherwise it matches ``node``."""

    node: object


# Schema nodes: ``str``/``int``/``dict`` (any object), ``float`` (any JSON number), ``[node]``
# (an array of node), ``{key: node}`` (an object with these keys; the key ``"*"`` stands for
# every key not named), or :class:`Maybe`.
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object"}


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        text = repr(value)
        return f"the string {text if len(text) <= 40 else text[:37] + '...'}"
    return "an array" if isinstance(value, list) else "an object"


def _field(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def schema_problem(value: object, node: object, where: str = "") -> str | None:
    """Where and how ``value`` (parsed JSON) departs from schema ``node``, or None when it fits;
    ``where`` is the dotted path of ``value`` (empty at the top)."""
    if isinstance(node, Maybe):
        return None if value is None else schema_problem(value, node.node, where)
    if isinstance(node, (dict, list)):
        members = _members(value, node, where)
        if isinstance(members, str):
            return members
        problems = (schema_problem(v, n, w) for v, n, w in members)
        return next((problem for problem in problems if problem is not None), None)
    # ``float`` stands for any JSON number; true and false are neither numbers nor integers.
    wanted = (int, float) if node is float else node
    if isinstance(value, bool) or not isinstance(value, wanted):  # type: ignore[arg-type]
        return f"{where} must be {_JSON_NAMES[node]}, got {_json_kind(value)}"  # type: ignore[index]
    return None


def _members(
    value: object, node: dict[str, object] | list[object], where: str
) -> str | list[tuple[object, object, str]]:
    """(value, schema node, path) of every member of ``value`` that ``node`` constrains, or the
    problem when ``value`` is not the array or object ``node`` asks for, or lacks a key."""
    if isinstance(node, list):
        if not isinstance(value, list):
            return f"{where} must be an array, got {_json_kind(value)}"
        return [(item, node[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return f"{where or 'the document'} must be an object, got {_json_kind(value)}"
    members = []
    for key, sub in node.items():
        if key in value and key != "*":
            members.append((value[key], sub, _field(where, key)))
        elif key != "*" and not isinstance(sub, Maybe):
            return f"{_field(where, key)} is missing"
    if "*" in node:
        members += [(item, node["*"], _field(where, key)) for key, item in value.items() if key not in node]
    return members


# --------------------------------------------------------------------------------------------
# run directories: one writer at a time, result files as one set
# --------------------------------------------------------------------------------------------

LOCK_NAME = ".gpt2xl.lock"


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, *, name: str = "--run-dir") -> Iterator[Path]:
    """Hold ``run_dir``'s lock (an exclusive ``flock`` on ``run_dir/.gpt2xl.lock``, which holds the
    holder's pid) for the ``with`` block; OutputError at once, naming the holder, when another
    process holds it: two runs writing one directory would interleave their files.

    The lock file is removed on release, so a finished run leaves nothing behind; a killed one
    leaves an unlocked file that the next run takes over (the kernel drops a dead process's
    locks). Removing it races with a process that opened it just before: that process finds the
    file it locked gone from the directory and tries again on a new one.
    """
    path = run_dir / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise output_error(path, exc, what=name) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputError(
                f"{name} {run_dir} is being written by another gpt2xl run{pid}; wait for it to finish or pass "
                f"another {name}."
            ) from None
        except OSError as exc:
            os.close(fd)
            raise output_error(path, exc, what=name) from exc
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the file was released and removed between our open and our lock: take the new one
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            raise output_error(path, exc, what=name) from exc
        yield path
    finally:
        path.unlink(missing_ok=True)  # before the unlock: a waiter that opened this file retries
        os.close(fd)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Stage:
    """The staging directory of :func:`staged_files` (write the new files into ``directory``);
    ``committed`` lists the files of the set in the run directory once the block has ended."""

    directory: Path
    committed: list[Path] = field(default_factory=list)


@contextlib.contextmanager
def staged_files(
    run_dir: Path, *, manifest: str, owned: Sequence[str], keep: Sequence[str] = (), unlisted: Sequence[str] = (),
) -> Iterator[Stage]:
    """Write a set of result files into ``run_dir`` as one: the block writes every new file into
    a fresh staging directory inside ``run_dir`` (same file system, so moves are renames, and as
    writable as the run directory, which was checked before the run); when it ends normally,
    the set is committed:

    1. the old ``manifest`` is removed, so a reader never takes a half-moved set for a whole one;
    2. each staged file replaces its namesake in ``run_dir`` (a rename);
    3. files of the previous set that the new one lacks are removed: those the old manifest
       listed and those matching ``owned`` (glob patterns of the files this writer owns);
    4. the manifest is written last (atomically): name, bytes and sha256 of every file of the
       set, the staged ones and ``keep`` (files already in ``run_dir`` that belong to the set
       unchanged), except ``unlisted`` (moved with the set, but rewritten by other writers too).

    When the block raises, the staging directory is removed and ``run_dir`` is untouched. A kill
    during step 2 leaves no manifest: :func:`manifest_problems` then says so. Call it holding
    :func:`run_dir_lock`, which also makes the staging directories of a killed run safe to remove.
    """
    prefix = f".{Path(manifest).stem}-staging-"
    try:
        for leftover in run_dir.glob(f"{prefix}*"):
            shutil.rmtree(leftover)  # a killed run's: no live writer holds the lock
        stage = Stage(directory=Path(tempfile.mkdtemp(dir=run_dir, prefix=prefix)))
    except OSError as exc:
        raise output_error(run_dir, exc, what="the staging directory in") from exc
    try:
        yield stage
        stage.committed = _commit(stage.directory, run_dir, manifest=manifest, owned=owned, keep=keep,
                                  unlisted=unlisted)
    finally:
        shutil.rmtree(stage.directory, ignore_errors=True)  # empty after a commit; the new set after a failure


def _commit(
    staging: Path, run_dir: Path, *, manifest: str, owned: Sequence[str], keep: Sequence[str],
    unlisted: Sequence[str],
) -> list[Path]:
    staged = sorted(p.name for p in staging.iterdir())
    names = [*staged, *(k for k in keep if k not in staged)]
    listed = [n for n in names if n not in unlisted]
    entries = [{"name": n, "bytes": (staging / n if n in staged else run_dir / n).stat().st_size,
                "sha256": file_sha256(staging / n if n in staged else run_dir / n)} for n in listed]
    old = _manifest_names(run_dir / manifest)
    try:
        (run_dir / manifest).unlink(missing_ok=True)
        for n in staged:
            os.replace(staging / n, run_dir / n)
        for p in run_dir.iterdir():
            stale = p.name in old or any(fnmatch.fnmatchcase(p.name, pattern) for pattern in owned)
            if stale and p.name not in names and p.name != manifest and p.is_file():
                p.unlink()
    except OSError as exc:
        raise output_error(run_dir, exc, what="the result files in") from exc
    write_result(run_dir / manifest, kind="manifest", payload={"files": entries})
    return [run_dir / n for n in names]


def _manifest_names(path: Path) -> set[str]:
    """The file names an existing manifest lists (none when there is no readable one: the owned
    patterns then find the previous set)."""
    try:
        doc = read_result(path, kind="manifest")
    except ResultError:
        return set()
    files = doc.get("files")
    return {f["name"] for f in files if isinstance(f, dict) and isinstance(f.get("name"), str)} if isinstance(
        files, list) else set()


def manifest_problems(run_dir: Path, *, manifest: str) -> list[str]:
    """How ``run_dir`` departs from its manifest: no (readable) manifest, a listed file missing, or
    one whose size or sha256 differs; empty when every listed file matches."""
    path = run_dir / manifest
    if not path.exists():
        return [f"{path} is missing (a write was interrupted, or the files predate manifests)"]
    try:
        doc = read_result(path, kind="manifest")
    except ResultError as exc:
        return [str(exc)]
    problem = schema_problem(doc, {"files": [{"name": str, "bytes": int, "sha256": str}]})
    if problem is not None:
        return [f"{path}: {problem}"]
    problems = []
    for entry in doc["files"]:
        p = run_dir / entry["name"]
        if not p.is_file():
            problems.append(f"{p} is listed in {manifest} but missing")
        elif p.stat().st_size != entry["bytes"] or file_sha256(p) != entry["sha256"]:
            problems.append(f"{p} differs from the file {manifest} lists")
    return problems
