"""Random option strings against every command: the exit status is 0 or 2, never a traceback.

Property-based (hypothesis): each example draws a subset of a command's options, each with a
value from a pool of edge cases (zero, negative, subnormal, huge, NaN, empty, stray commas,
non-numbers, random text), around a run that is small when the options are valid (tiny models, a
few tokens). Commands run in-process through the same entry points as the console scripts, so an
exception that is not a user error escapes ``main`` and fails the test with its traceback;
``python -m bench`` runs with its pytest child replaced by a stub, which checks that option
validation either refuses at once (2) or hands pytest valid options.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .conftest import SHARED_DATA, TINY_SHAKESPEARE

EDGE_NUMBERS = (
    "0", "-1", "1", "2", "3", "0.5", "-0.0", "1e-320", "5e-324", "1e-45", "1e308", "1e309", "nan", "inf",
    "-inf", "18446744073709551616", "9223372036854775808", "-9223372036854775809", "99999999999", "0x10",
    "1_0", "1.5", "abc", "", " ", ",", "1,", ",1", "1,,2", "1,1", "٣",
)
VALUE = st.one_of(st.sampled_from(EDGE_NUMBERS), st.text(max_size=8))
LIST = st.one_of(
    VALUE,
    st.lists(st.sampled_from(EDGE_NUMBERS), min_size=1, max_size=3).map(",".join),
)
# Example counts come from the hypothesis profile (tests/conftest.py): "ci" by default,
# `pytest --hypothesis-profile deep tests/test_cli_fuzz.py` for a long random hunt.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def options(table: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
    """Some of ``table``'s options, each with a drawn value, as argv items."""
    return st.lists(st.sampled_from(sorted(table)), unique=True, max_size=len(table)).flatmap(
        lambda names: st.tuples(*(table[n] for n in names)).map(
            lambda values: [item for name, value in zip(names, values) for item in (name, value)]
        )
    )


def invoke_gpt2xl(argv: list[str]) -> tuple[int, str]:
    """Run ``gpt2xl argv`` in this process; (exit status, stderr). Other exceptions propagate."""
    from gpt2xl_app.cli import main

    threads = torch.get_num_threads()
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
                mock.patch.object(sys, "argv", ["gpt2xl", *argv]):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        torch.set_num_threads(threads)  # --threads must not leak into the next example
    return code, err.getvalue()


def assert_clean(code: int, stderr: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    event(f"exit status {code}")  # --hypothesis-show-statistics: how often the options were valid
    assert code in allowed, stderr
    assert "Traceback" not in stderr
    if code == 2:
        errors = [line for line in stderr.splitlines() if line.startswith("error:") or line.startswith("Error:")]
        assert errors, stderr


GENERATE = {
    "--max-new-tokens": VALUE, "--temperature": VALUE, "--top-k": VALUE, "--seed": VALUE,
    "--num-samples": VALUE, "--dtype": st.sampled_from(["fp32", "bf16", "fp16", "int8", ""]),
    "--autotune": st.sampled_from(["off", "cached", "bogus"]), "--device": st.sampled_from(["cpu", "cuda", "tpu"]),
}


@FUZZ
@given(prompt=st.text(max_size=20), argv=options(GENERATE))
def test_generate_never_shows_a_traceback(prompt: str, argv: list[str]) -> None:
    code, stderr = invoke_gpt2xl(["generate", prompt, "--model", "random:tiny", "--autotune", "off", *argv])
    assert_clean(code, stderr)


# --ray addresses that fail fast: malformed, or a port nothing listens on (refused at once). A
# valid address would start or join a Ray cluster, seconds per example (tests/test_ray.py runs those).
# (No random text: one that named a listening port would make Ray wait minutes for a cluster there.)
RAY = st.sampled_from(["nowhere", "host:0", "127.0.0.1:1", "ray://127.0.0.1:1", "", " ", "ray://", "auto:1",
                       "[::1]:99999", "local:6379", "LOCAL", "1,2"])
EVAL_GRID = {
    "--temperatures": LIST, "--top-ks": LIST, "--seeds": LIST, "--num-prompts": VALUE,
    "--prompt-tokens": VALUE, "--max-new-tokens": VALUE, "--batch-size": VALUE, "--threads": VALUE,
    "--dtype": st.sampled_from(["fp32", "bf16", "x"]), "--ray": RAY, "--ray-workers": VALUE,
}


@FUZZ
@given(argv=options(EVAL_GRID))
def test_eval_grid_never_shows_a_traceback(tmp_path_factory: pytest.TempPathFactory, argv: list[str]) -> None:
    run_dir = tmp_path_factory.mktemp("fuzz-grid")
    small = ["--num-prompts", "2", "--prompt-tokens", "4", "--max-new-tokens", "3", "--temperatures", "1.0",
             "--top-ks", "0", "--seeds", "0"]  # valid defaults the drawn options override (click: last wins)
    code, stderr = invoke_gpt2xl(["eval", "grid", "--run-dir", str(run_dir), "--model", str(TINY_SHAKESPEARE),
                                  "--data-dir", str(SHARED_DATA), "--no-progress", *small, *argv])
    assert_clean(code, stderr)


EVAL_PPL = {
    "--stride": VALUE, "--batch-size": VALUE, "--max-tokens": VALUE, "--threads": VALUE,
    "--dataset": st.sampled_from(["tinyshakespeare", "wikitext2", "lambada", "nope", ""]),
}


@FUZZ
@given(argv=options(EVAL_PPL))
def test_eval_perplexity_never_shows_a_traceback(argv: list[str]) -> None:
    code, stderr = invoke_gpt2xl(["eval", "perplexity", "--model", str(TINY_SHAKESPEARE), "--dataset",
                                  "tinyshakespeare", "--data-dir", str(SHARED_DATA), "--max-tokens", "300",
                                  "--no-progress", *argv])
    assert_clean(code, stderr)


@pytest.fixture(scope="module")
def bench_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two copies of the committed AVX2 gate baseline: a real bench.json, compared with itself."""
    baseline = Path(__file__).resolve().parents[1] / "bench" / "baselines" / "gate-cpu-AVX2.json"
    folder = tmp_path_factory.mktemp("fuzz-compare")
    old, new = folder / "old.json", folder / "new.json"
    old.write_text(baseline.read_text())
    new.write_text(baseline.read_text())
    return old, new


COMPARE = {
    "--max-slowdown": st.one_of(VALUE, st.sampled_from(["10%", "-5%", "100%", "nan%", "%"])),
    "--metric": st.sampled_from(["decode_tokens_per_s", "prefill_s", "peak_memory_bytes", "bogus", ""]),
    "--floor": st.one_of(
        VALUE,
        st.tuples(st.sampled_from(["cached_vs_reference_decode", "ours_vs_hf_decode", "typo_decode", ""]),
                  VALUE).map("=".join),
    ),
    "--ratios": st.just("--ratios"),
}


@FUZZ
@given(argv=options(COMPARE))
def test_compare_never_shows_a_traceback(bench_pair: tuple[Path, Path], argv: list[str]) -> None:
    argv = [a for a in argv if a != "--ratios"] + (["--ratios"] if "--ratios" in argv else [])  # a flag, no value
    old, new = bench_pair
    code, stderr = invoke_gpt2xl(["compare", str(old), str(new), *argv])
    assert_clean(code, stderr, allowed=(0, 1, 2))  # 1: a regression or a floor missed, by design


BENCH = {
    "--threads": VALUE, "--probe-bytes": VALUE, "--seed": VALUE, "--dtype": LIST,
    "--profile": st.sampled_from(["quick", "gate", "full", "nope"]),
    "--model": st.sampled_from(["random:tiny", "random:gpt2-xl", "random:nope", "/nonexistent/model", ""]),
    "--autotune": st.sampled_from(["off", "cached", "fresh", "x"]),
    "--device": st.sampled_from(["cpu", "cuda", "all", "gpu"]),
}


@FUZZ
@given(argv=options(BENCH))
def test_bench_options_never_show_a_traceback(tmp_path_factory: pytest.TempPathFactory, argv: list[str]) -> None:
    from bench.__main__ import main

    run_dir = tmp_path_factory.mktemp("fuzz-bench")
    started: list[list[str]] = []

    def pytest_stub(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        started.append(cmd)
        (run_dir / "bench.json").write_text(json.dumps({"benchmarks": []}))
        return subprocess.CompletedProcess(cmd, 0)

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
            mock.patch("subprocess.run", pytest_stub):
        try:
            code = main(["--run-dir", str(run_dir), "--no-report", *argv])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    assert_clean(code, err.getvalue())
    assert (code == 0) == bool(started), err.getvalue()  # pytest starts only with valid options


EVAL_RUN = {
    "--ppl-datasets": st.one_of(LIST, st.sampled_from(["tinyshakespeare", "wikitext2,tinyshakespeare", "lambada", ""])),
    "--stride": VALUE, "--ppl-batch-size": VALUE, "--ppl-max-tokens": VALUE, "--lambada-max-examples": VALUE,
    "--temperatures": LIST, "--top-ks": LIST, "--seeds": LIST, "--num-prompts": VALUE, "--max-new-tokens": VALUE,
    "--ray": RAY, "--ray-workers": VALUE,
    "--dtypes": st.one_of(LIST, st.sampled_from(["fp32", "fp32,bf16", "bf16", "fp32,fp32", "fp32,xx"])),
}


@FUZZ
@given(argv=options(EVAL_RUN))
def test_eval_run_never_shows_a_traceback(tmp_path_factory: pytest.TempPathFactory, argv: list[str]) -> None:
    run_dir = tmp_path_factory.mktemp("fuzz-run")
    small = ["--ppl-datasets", "tinyshakespeare", "--ppl-max-tokens", "200", "--num-prompts", "2",
             "--prompt-tokens", "4", "--max-new-tokens", "3", "--temperatures", "1.0", "--top-ks", "0"]
    code, stderr = invoke_gpt2xl(["eval", "run", "--run-dir", str(run_dir), "--model", str(TINY_SHAKESPEARE),
                                  "--data-dir", str(SHARED_DATA), "--no-progress", *small, *argv])
    assert_clean(code, stderr)


EVAL_LAMBADA = {"--batch-size": VALUE, "--max-examples": VALUE, "--threads": VALUE, "--dtype": VALUE}


@FUZZ
@given(argv=options(EVAL_LAMBADA))
def test_eval_lambada_never_shows_a_traceback(argv: list[str]) -> None:
    code, stderr = invoke_gpt2xl(["eval", "lambada", "--model", str(TINY_SHAKESPEARE), "--data-dir", str(SHARED_DATA),
                                  "--max-examples", "5", "--no-progress", *argv])
    assert_clean(code, stderr)


@FUZZ
@given(command=st.sampled_from([["eval", "report"], ["bench-report"]]), name=st.text(max_size=12))
def test_report_commands_never_show_a_traceback(
    tmp_path_factory: pytest.TempPathFactory, command: list[str], name: str
) -> None:
    folder = tmp_path_factory.mktemp("fuzz-report")
    code, stderr = invoke_gpt2xl([*command, str(folder / name) if name else name])
    assert_clean(code, stderr)
