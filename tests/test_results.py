"""Run directories: the lock (one writer at a time), result sets written as one (staging, commit,
manifest written last), and the manifest check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2xl.errors import OutputError
from gpt2xl.results import (
    LOCK_NAME,
    Maybe,
    file_sha256,
    manifest_problems,
    run_dir_lock,
    schema_problem,
    staged_files,
)

MANIFEST = "m.json"
OWNED = ("data.json", "plot_*.png")


def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


def _write_set(run_dir: Path, files: dict[str, bytes], **kw: object) -> list[Path]:
    with staged_files(run_dir, manifest=MANIFEST, owned=OWNED, **kw) as stage:  # type: ignore[arg-type]
        for name, data in files.items():
            (stage.directory / name).write_bytes(data)
    return stage.committed


def test_a_committed_set_replaces_the_previous_one_and_its_manifest_lists_every_file(tmp_path: Path) -> None:
    (tmp_path / "bench.json").write_text("{}")  # another writer's file: never touched
    _write_set(tmp_path, {"data.json": b"1", "plot_a.png": b"A", "plot_b.png": b"B", "report.md": b"r1"},
               unlisted=("report.md",))
    committed = _write_set(tmp_path, {"data.json": b"2", "plot_a.png": b"A2", "report.md": b"r2"},
                           unlisted=("report.md",))
    assert sorted(p.name for p in committed) == ["data.json", "plot_a.png", "report.md"]
    # plot_b.png belonged to the previous set only: removed; bench.json stays
    assert _files(tmp_path) == {"bench.json": b"{}", "data.json": b"2", MANIFEST: (tmp_path / MANIFEST).read_bytes(),
                                "plot_a.png": b"A2", "report.md": b"r2"}
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["kind"] == "manifest"
    assert manifest["files"] == [
        {"name": "data.json", "bytes": 1, "sha256": file_sha256(tmp_path / "data.json")},
        {"name": "plot_a.png", "bytes": 2, "sha256": file_sha256(tmp_path / "plot_a.png")},
    ]  # report.md moved with the set but not listed: other writers rewrite it
    assert manifest_problems(tmp_path, manifest=MANIFEST) == []


def test_a_failure_while_staging_leaves_the_previous_set_untouched_and_no_staging_dir(tmp_path: Path) -> None:
    _write_set(tmp_path, {"data.json": b"old", "plot_a.png": b"old plot"})
    before = _files(tmp_path)

    def write_then_fail() -> None:
        with staged_files(tmp_path, manifest=MANIFEST, owned=OWNED) as stage:
            (stage.directory / "data.json").write_bytes(b"new")
            raise RuntimeError("plot failed")

    with pytest.raises(RuntimeError, match="plot failed"):
        write_then_fail()
    assert _files(tmp_path) == before  # no staging directory either: it is hidden, but iterdir lists it
    assert manifest_problems(tmp_path, manifest=MANIFEST) == []


def test_kept_files_are_listed_unchanged_and_staging_leftovers_are_removed(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_bytes(b"kept")
    leftover = tmp_path / ".m-staging-killed"  # what a killed run leaves; safe to remove under the lock
    leftover.mkdir()
    (leftover / "data.json").write_bytes(b"half")
    _write_set(tmp_path, {"plot_a.png": b"A"}, keep=("data.json",))
    assert not leftover.exists()
    assert (tmp_path / "data.json").read_bytes() == b"kept"
    names = [f["name"] for f in json.loads((tmp_path / MANIFEST).read_text())["files"]]
    assert names == ["plot_a.png", "data.json"]
    assert manifest_problems(tmp_path, manifest=MANIFEST) == []


def test_manifest_problems_name_a_missing_manifest_a_missing_file_and_a_changed_one(tmp_path: Path) -> None:
    assert "is missing" in manifest_problems(tmp_path, manifest=MANIFEST)[0]
    _write_set(tmp_path, {"data.json": b"1", "plot_a.png": b"A"})
    (tmp_path / "data.json").write_bytes(b"2")  # same size, other bytes
    (tmp_path / "plot_a.png").unlink()
    problems = manifest_problems(tmp_path, manifest=MANIFEST)
    assert problems == [f"{tmp_path / 'data.json'} differs from the file {MANIFEST} lists",
                        f"{tmp_path / 'plot_a.png'} is listed in {MANIFEST} but missing"]


def test_a_commit_into_an_unwritable_run_dir_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OutputError, match="a part of the path is a file"), \
            staged_files(tmp_path / "file", manifest=MANIFEST, owned=OWNED):
        pytest.fail("the block must not run")


def test_the_lock_refuses_a_second_writer_naming_the_holder_and_is_gone_after_release(tmp_path: Path) -> None:
    import os

    with run_dir_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
        # flock conflicts between two opens of the file even within one process
        with pytest.raises(OutputError, match=rf"--run-dir {tmp_path} is being written by another gpt2xl run "
                                              rf"\(pid {os.getpid()}\); wait for it to finish or pass another"), \
                run_dir_lock(tmp_path):
            pytest.fail("a second holder got the lock")
    assert not (tmp_path / LOCK_NAME).exists()
    with run_dir_lock(tmp_path):  # free again
        pass


def test_a_lock_file_left_by_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("999999\n")  # nobody holds a lock on it: its process died
    with run_dir_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().strip() != "999999"
    assert not (tmp_path / LOCK_NAME).exists()


def test_schema_problem_names_the_first_departing_field() -> None:
    schema = {"a": [{"b": float, "c": Maybe(int)}], "*": Maybe(str)}
    assert schema_problem({"a": [{"b": 1.5}], "x": "s"}, schema) is None
    assert schema_problem({"a": [{"b": 1.5, "c": 2.5}]}, schema) == "a[0].c must be an integer, got a number"
    assert schema_problem({"a": [{"b": True}]}, schema) == "a[0].b must be a number, got a boolean"
    assert schema_problem({"a": [{}]}, schema) == "a[0].b is missing"
    assert schema_problem({"a": [], "x": 3}, schema) == "x must be a string, got a number"
    assert schema_problem([1], schema) == "the document must be an object, got an array"
