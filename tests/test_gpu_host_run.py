"""tools/gpu_host_run.sh refuses bad arguments with one ``error:`` line and exit 2, before it
creates its output folder or runs anything. (Its phases ran end to end on the CPU with
``--dry-run``, README "On a GPU host"; too slow for the suite.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "tools" / "gpu_host_run.sh"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("args", "message"), [
    ((), "OUT_DIR is missing"),
    (("--bogus", "{out}"), "unknown option --bogus"),
    (("{out}", "{out}2"), "one OUT_DIR only"),
    (("--wheels", "{empty}", "{out}"), "holds no .whl files"),
    (("--shared", "{empty}", "{out}"), "has no models/ folder"),
])
def test_bad_arguments_are_one_error_line_and_create_nothing(tmp_path: Path, args: tuple[str, ...], message: str):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    proc = _run(*(a.format(out=out, empty=empty) for a in args))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert not out.exists()


def test_help_names_every_option():
    proc = _run("--help")
    assert proc.returncode == 0
    for option in ("--wheels", "--shared", "--dry-run", "OUT_DIR", "GPT2XL_TESTS_S"):
        assert option in proc.stdout
