"""Bad input to `gpt2xl eval …`: one `error:` line on stderr, exit 2, before any work.

One test (or one parametrized family) per class of bad input: option values outside their
domain, prompts that do not fit the context or the split, output locations that cannot be
written (before the run, and when a write fails half-way), malformed result files given to
`eval report`, batches too large for memory, and datasets that cannot be fetched offline. Where
the exit code and stderr matter the real CLI runs in a subprocess; the parametrized variants run
`cli.main()` in-process with the model loader and the dataset reader replaced by tripwires, which
proves that the failure came before any work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA, TINY_SHAKESPEARE

MODEL = str(TINY_SHAKESPEARE)
# A grid small enough to run in a second or two on the tiny model.
SMALL_GRID = ["--num-prompts", "2", "--prompt-tokens", "8", "--max-new-tokens", "4", "--batch-size", "2",
              "--temperatures", "0.7,1.3", "--top-ks", "0,5", "--no-progress"]


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ, GPT2XL_DATA_DIR=str(SHARED_DATA))
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpt2xl_app.cli", *args], cwd=REPO, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _assert_one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tripwires: reading a dataset or loading a model fails the test."""
    import gpt2xl.data
    import gpt2xl.weights

    def tripwire(*args: object, **_kwargs: object) -> None:
        pytest.fail(f"work started before the options were refused: {args}")

    monkeypatch.setattr(gpt2xl.data, "load_corpus", tripwire)
    monkeypatch.setattr(gpt2xl.weights, "load_model", tripwire)


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tripwire: loading a model fails the test (datasets may be read)."""
    import gpt2xl.weights

    def tripwire(*_args: object, **_kwargs: object) -> None:
        pytest.fail("the model was loaded before the options were refused")

    monkeypatch.setattr(gpt2xl.weights, "load_model", tripwire)


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `gpt2xl ARGS` in-process; assert exit 2 and one `error:` line; return that line."""
    from gpt2xl_app import cli

    monkeypatch.setenv("GPT2XL_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setattr(sys, "argv", ["gpt2xl", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert info.value.code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory (eval.json, CSV, plots, report.md) of a tiny grid, made once."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    result = _cli("eval", "grid", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID)
    assert result.returncode == 0, result.stderr
    return run_dir


# ------------------------------------------------------------------ 1. option values, checked before any work


def test_an_empty_list_item_fails_before_any_work(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    line = _assert_one_error_line(
        _cli("eval", "grid", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID, "--temperatures", "0.5,,1"),
        "--temperatures", "empty item",
    )
    assert "'0.5,,1'" in line
    assert not (run_dir / "eval.json").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--temperatures", "0.5,"], "--temperatures has an empty item"),
        (["--temperatures", "1,1.0"], "--temperatures lists '1.0' twice"),
        (["--temperatures", "nan"], "--temperatures: temperature must be a finite number >= 0"),
        (["--temperatures", "-0.5"], "--temperatures: temperature must be a finite number >= 0"),
        (["--top-ks", "0,,5"], "--top-ks has an empty item"),
        (["--top-ks", "-1"], "--top-ks: top-k"),
        (["--top-ks", "5,5"], "--top-ks lists '5' twice"),
        (["--seeds", str(2**64)], "--seeds: a seed must be an integer >= 0 and <= 9,223,372,036,854,775,807"),
        (["--seeds", "1,"], "--seeds has an empty item"),
        (["--threads", "0"], "--threads must be an integer >= 1"),
        (["--threads", str(10**6)], "--threads must be an integer >= 1 and <="),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--num-prompts", "0"], "--num-prompts must be an integer >= 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
        (["--dataset", "imdb"], "Unknown dataset 'imdb'"),
        (["--dtype", "fp8"], "Unknown dtype 'fp8'"),
    ],
)
@pytest.mark.usefixtures("no_work")
def test_grid_options_outside_their_domain(monkeypatch, capsys, tmp_path, args, needle) -> None:
    run_dir = tmp_path / "run"
    line = _main(monkeypatch, capsys, "eval", "grid", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID, *args)
    assert needle in line
    assert not run_dir.exists()  # refused before the run directory was even created


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "perplexity", "--stride", "0"], "--stride must be an integer >= 1"),
        (["eval", "perplexity", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["eval", "perplexity", "--max-tokens", "1"], "--max-tokens must be an integer >= 2"),
        (["eval", "perplexity", "--dataset", "lambada"], "gpt2xl eval lambada"),
        (["eval", "lambada", "--max-examples", "0"], "--max-examples must be an integer >= 1"),
        (["eval", "run", "--run-dir", "{tmp}/run", "--ppl-datasets", "tinyshakespeare,,wikitext2"],
         "--ppl-datasets has an empty item"),
        (["eval", "run", "--run-dir", "{tmp}/run", "--ppl-datasets", "wikitext2,wikitext2"],
         "--ppl-datasets lists 'wikitext2' twice"),
        (["eval", "run", "--run-dir", "{tmp}/run", "--ppl-datasets", "wikitext"], "--ppl-datasets: Unknown dataset"),
        (["eval", "run", "--run-dir", "{tmp}/run", "--ppl-datasets", "lambada"], "--lambada-max-examples"),
        (["eval", "run", "--run-dir", "{tmp}/run", "--ppl-max-tokens", "1"], "--ppl-max-tokens must be"),
        (["eval", "run", "--run-dir", "{tmp}/run", "--ppl-batch-size", "0"], "--ppl-batch-size must be"),
        (["eval", "run", "--run-dir", "{tmp}/run", "--lambada-max-examples", "-1"], "--lambada-max-examples must be"),
    ],
)
@pytest.mark.usefixtures("no_work")
def test_other_commands_options_outside_their_domain(monkeypatch, capsys, tmp_path, args, needle) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    line = _main(monkeypatch, capsys, *args, "-m", MODEL, "--no-progress")
    assert needle in line
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("no_load")
def test_a_stride_beyond_the_context_fails_before_loading(monkeypatch, capsys) -> None:
    line = _main(monkeypatch, capsys, "eval", "perplexity", "-m", MODEL, "--dataset", "tinyshakespeare",
                 "--stride", "1000", "--no-progress")
    assert "--stride 1,000 exceeds the model's context of 128 tokens" in line
    assert "--stride 128 or less" in line


# ------------------------------------------------------------------ 2. prompts against the context and the split


def test_a_grid_prompt_beyond_the_context_is_refused_with_what_fits(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _assert_one_error_line(
        _cli("eval", "grid", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID,
             "--prompt-tokens", "100", "--max-new-tokens", "100"),
        "does not fit the model's context of 128 tokens", "use --max-new-tokens 29 or fewer",
    )
    assert not (run_dir / "eval.json").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--prompt-tokens", "500"], "use --prompt-tokens 128 or fewer"),
        (["--num-prompts", "100000"], "the split holds 33,803; use --num-prompts 2,816 or fewer"),
        (["--prompt-tokens", "100", "--max-new-tokens", "29", "--num-prompts", "300"],
         "use --num-prompts 262 or fewer"),
    ],
)
@pytest.mark.usefixtures("no_load")
def test_grid_prompts_against_the_context_and_the_split(monkeypatch, capsys, tmp_path, args, needle) -> None:
    run_dir = tmp_path / "run"
    line = _main(monkeypatch, capsys, "eval", "grid", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID, *args)
    assert needle in line
    assert not (run_dir / "eval.json").exists()


# ------------------------------------------------------------------ 3. output locations


def test_a_run_dir_below_a_regular_file_fails_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    _assert_one_error_line(
        _cli("eval", "grid", "--run-dir", str(tmp_path / "file" / "run"), "-m", MODEL, *SMALL_GRID),
        "--run-dir", "a part of the path is a file",
    )


@pytest.mark.parametrize("where", ["file/out.json", "dir"])
@pytest.mark.usefixtures("no_work")
def test_an_unwritable_out_fails_before_any_work(monkeypatch, capsys, tmp_path, where) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    (tmp_path / "dir").mkdir()
    line = _main(monkeypatch, capsys, "eval", "perplexity", "-m", MODEL, "--dataset", "tinyshakespeare",
                 "--out", str(tmp_path / where))
    assert "--out" in line


def _cli_with_file_limit(
    args: list[str], *, limit: int, load_first: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`gpt2xl ARGS` in a subprocess whose files may not grow beyond ``limit`` bytes
    (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past it fails with EFBIG).

    The limit is set inside the child after its caches are warm (matplotlib's font list, and the
    kernel choices of ``load_first`` when given): those are written once per machine and are not
    what is under test, and with a limit from preexec_fn their first write would fail first.
    """
    script = "\n".join([
        "import resource, sys",
        "import gpt2xl_app.eval_report  # matplotlib's font cache",
        *([f"from gpt2xl.weights import load_model; load_model({load_first!r})"] if load_first else []),
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))",
        f"sys.argv = ['gpt2xl', *{args!r}]",
        "from gpt2xl_app.cli import main",
        "main()",
    ])
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300, check=False)


def test_a_write_past_the_file_size_limit_is_one_line_and_leaves_no_partial_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = _cli_with_file_limit(["eval", "grid", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID],
                                  limit=4096, load_first=MODEL)
    _assert_one_error_line(result, "Cannot write", "eval.json", "file size limit")
    # Only the finished grid shards (kept for --resume); the temporary file of the failed write is gone too.
    assert [p.name for p in run_dir.iterdir()] == ["shards"]
    assert all(json.loads(p.read_text()) for p in (run_dir / "shards").iterdir())


def test_a_png_write_past_the_file_size_limit_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(tiny_run / "eval.json", run_dir / "eval.json")
    result = _cli_with_file_limit(["eval", "report", str(run_dir)], limit=8192)
    _assert_one_error_line(result, "Cannot write", ".png", "file size limit")
    assert sorted(p.name for p in run_dir.iterdir()) == ["eval.json"]  # no half-written image


def test_a_run_dir_without_write_permission_fails_before_any_work(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes through permission bits; the ENOTDIR and file-size tests cover this class")
    run_dir = tmp_path / "locked"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    _assert_one_error_line(_cli("eval", "grid", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID),
                           "--run-dir", "permission denied")


def test_a_run_dir_another_run_is_writing_fails_before_any_work(tmp_path: Path) -> None:
    from gpt2xl.results import run_dir_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_dir_lock(run_dir):  # a run in progress
        result = _cli("eval", "grid", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID)
    _assert_one_error_line(result, f"--run-dir {run_dir} is being written by another gpt2xl run (pid {os.getpid()})",
                           "wait for it to finish or pass another --run-dir")
    assert list(run_dir.iterdir()) == []  # nothing written, and the holder's lock went with it


@pytest.mark.usefixtures("no_load")
def test_a_malformed_eval_json_in_the_run_dir_is_refused_not_overwritten(monkeypatch, capsys, tmp_path) -> None:
    (tmp_path / "eval.json").write_text('{"schema_version": 1, "kind": "eval", "model": 3}')
    line = _main(monkeypatch, capsys, "eval", "grid", "--run-dir", str(tmp_path), "-m", MODEL, *SMALL_GRID)
    assert f"{tmp_path / 'eval.json'} is not a usable eval result: dataset is missing" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


# ------------------------------------------------------------------ 4. malformed result files


def _mutated(doc: dict, change: str) -> dict:
    doc = json.loads(json.dumps(doc))
    if change == "cell without metrics":
        del doc["grid"]["cells"][0]["metrics"]
    elif change == "metric is a string":
        doc["grid"]["cells"][1]["metrics"]["distinct_2"] = "high"
    elif change == "grid without config":
        del doc["grid"]["config"]
    elif change == "cells is an object":
        doc["grid"]["cells"] = {}
    elif change == "seeds is a string":
        doc["seeds"] = "0"
    elif change == "model is a string":
        doc["model"] = "gpt2"
    elif change == "lambada result is a number":
        doc["lambada"] = {"note": "all", "result": 3}
    return doc


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("cell without metrics", "grid.cells[0].metrics is missing"),
        ("metric is a string", "grid.cells[1].metrics.distinct_2 must be a number, got the string 'high'"),
        ("grid without config", "grid.config is missing"),
        ("cells is an object", "grid.cells must be an array, got an object"),
        ("seeds is a string", "seeds must be an array"),
        ("model is a string", "model must be an object"),
        ("lambada result is a number", "lambada.result must be an object, got a number"),
    ],
)
def test_a_mistyped_eval_json_names_the_file_and_the_field(monkeypatch, capsys, tiny_run, tmp_path, change, field):
    doc = json.loads((tiny_run / "eval.json").read_text())
    (tmp_path / "eval.json").write_text(json.dumps(_mutated(doc, change)))
    line = _main(monkeypatch, capsys, "eval", "report", str(tmp_path))
    assert f"{tmp_path / 'eval.json'} is not a usable eval result: {field}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]  # nothing written


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("eval.json", "{not json", "eval.json is not valid JSON"),
        ("eval.json", "[1, 2]", "eval.json has schema_version None"),
        ("bench.json", "{not json", "bench.json is not valid JSON"),
        ("bench.json", '{"benchmarks": 3}', "bench.json is not a usable benchmark result"),
    ],
)
def test_a_malformed_result_file_is_one_line(monkeypatch, capsys, tiny_run, tmp_path, name, content, needle) -> None:
    shutil.copy(tiny_run / "eval.json", tmp_path / "eval.json")
    (tmp_path / name).write_text(content)
    line = _main(monkeypatch, capsys, "eval", "report", str(tmp_path))
    assert needle in line
    assert not (tmp_path / "report.md").exists()
    assert not list(tmp_path.glob("*.png"))


def test_eval_report_of_a_mistyped_file_through_the_cli(tiny_run: Path, tmp_path: Path) -> None:
    doc = _mutated(json.loads((tiny_run / "eval.json").read_text()), "metric is a string")
    (tmp_path / "eval.json").write_text(json.dumps(doc))
    _assert_one_error_line(_cli("eval", "report", str(tmp_path)),
                           "eval.json is not a usable eval result", "grid.cells[1].metrics.distinct_2")


def test_eval_report_re_renders_a_valid_run(tiny_run: Path, tmp_path: Path) -> None:
    # The schema accepts what the grid writes (the checks above would otherwise prove nothing).
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    (run_dir / "report.md").unlink()
    result = _cli("eval", "report", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "## Evaluation" in (run_dir / "report.md").read_text()


# ------------------------------------------------------------------ 5. memory


def test_a_perplexity_batch_too_large_for_memory_is_refused_before_loading(tmp_path: Path) -> None:
    # stride 1: 33,676 windows of 128 tokens; 100,000 at once would need terabytes of logits.
    line = _assert_one_error_line(
        _cli("eval", "perplexity", "-m", MODEL, "--dataset", "tinyshakespeare", "--stride", "1",
             "--batch-size", "100000", "--out", str(tmp_path / "ppl.json"), "--no-progress"),
        "--batch-size 100,000 (33,676 windows of 128 tokens at once) needs about",
        "GiB are available; use --batch-size",
    )
    assert not (tmp_path / "ppl.json").exists()
    assert int(line.rsplit("use --batch-size ", 1)[1].split()[0].replace(",", "")) >= 1


@pytest.mark.usefixtures("no_load")
def test_a_grid_batch_too_large_for_memory_is_refused_before_loading(monkeypatch, capsys, tmp_path) -> None:
    from gpt2xl import validation

    monkeypatch.setattr(validation, "available_memory_bytes", lambda device="cpu": 64 * 2**20)  # 64 MiB
    line = _main(monkeypatch, capsys, "eval", "grid", "--run-dir", str(tmp_path), "-m", MODEL, *SMALL_GRID,
                 "--num-prompts", "32", "--batch-size", "32")
    # the tiny model's 29 MiB of weights, then about 5 MiB per prompt of 12 tokens (fp32 logits)
    assert "--batch-size 32 (32 prompts of 12 tokens at once) needs about" in line
    assert "use --batch-size 7 or less" in line
    assert not (tmp_path / "eval.json").exists()


# ------------------------------------------------------------------ 6. offline


def test_no_data_dir_and_no_network_fails_within_3_s(tmp_path: Path) -> None:
    env = _env(GPT2XL_DATA_DIR=None, HF_HUB_OFFLINE=None, HF_DATASETS_OFFLINE=None,
               HF_ENDPOINT="https://hub.nonexistent.invalid", HF_HOME=str(tmp_path / "hf"))
    # Python startup: the interpreter and the modules the command imports before it reads data.
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import gpt2xl_app.cli, gpt2xl.weights, gpt2xl.data, huggingface_hub"],
                   cwd=REPO, env=env, check=True, timeout=120)
    startup = time.monotonic() - t0
    t0 = time.monotonic()
    result = _cli("eval", "perplexity", "-m", MODEL, "--dataset", "wikitext2", env=env, timeout=120)
    elapsed = time.monotonic() - t0
    _assert_one_error_line(result, "Cannot load 'wikitext2'", "--data-dir", "hub.nonexistent.invalid does not resolve")
    assert elapsed < startup + 3.0, f"{elapsed:.1f} s (startup {startup:.1f} s): {result.stderr}"


# ------------------------------------------------------------------ 7. the precision comparison (--dtypes)


@pytest.mark.parametrize(
    ("dtypes", "needle"),
    [
        ("fp32,fp32", "error: --dtypes lists 'fp32' twice."),
        ("xx", "error: --dtypes: Unknown dtype 'xx'; choose one of: fp32, fp16, bf16."),
        ("bf16", ("error: --dtypes must include fp32, the reference every other dtype is compared with; use "
                  "--dtypes fp32,bf16.")),
        ("fp32,,bf16", "error: --dtypes has an empty item"),
    ],
)
@pytest.mark.usefixtures("no_work")
def test_bad_dtypes_fail_before_any_work(monkeypatch, capsys, tmp_path, dtypes, needle) -> None:
    run_dir = tmp_path / "run"
    line = _main(monkeypatch, capsys, "eval", "run", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID,
                 "--dtypes", dtypes)
    assert line.startswith(needle), line
    assert not run_dir.exists()


def test_dtypes_without_fp32_through_the_cli(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _assert_one_error_line(_cli("eval", "run", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID, "--dtypes", "bf16"),
                           "--dtypes must include fp32")
    assert not run_dir.exists()


# ------------------------------------------------------------------ 8. Ray (--ray, --ray-workers) and resumed shards


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ray", "nowhere"], "--ray must be one of local, auto, HOST:PORT or ray://HOST:PORT"),
        (["--ray", "head:0"], "got 'head:0'"),
        (["--ray", "head:65536"], "got 'head:65536'"),
        (["--ray", "ray://"], "got 'ray://'"),
        (["--ray", ""], "got ''"),
        (["--ray", "local", "--ray-workers", "0"], "--ray-workers must be an integer >= 1"),
        (["--ray-workers", "2"], "--ray-workers needs --ray"),
        (["--ray", "local", "--ray-workers", "100000"], "--ray-workers 100000 exceeds the"),
    ],
)
@pytest.mark.usefixtures("no_work")
def test_bad_ray_options_fail_before_any_work(monkeypatch, capsys, tmp_path, args, needle) -> None:
    for command in ("grid", "run"):
        run_dir = tmp_path / command
        line = _main(monkeypatch, capsys, "eval", command, "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID, *args)
        assert needle in line
        assert not run_dir.exists()


@pytest.mark.usefixtures("no_load")
def test_a_ray_address_nobody_answers_fails_before_loading(monkeypatch, capsys, tmp_path) -> None:
    pytest.importorskip("ray")
    start = time.monotonic()
    line = _main(monkeypatch, capsys, "eval", "grid", "--run-dir", str(tmp_path), "-m", MODEL, *SMALL_GRID,
                 "--ray", "127.0.0.1:1")
    assert "--ray 127.0.0.1:1: no Ray cluster answers there" in line
    assert "ray start --head" in line
    assert time.monotonic() - start < 30  # Ray itself would retry for minutes
    assert not (tmp_path / "eval.json").exists()


def test_ray_not_installed_is_one_line_saying_how_to_install_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # sys.modules["ray"] = None makes `import ray` fail as it does where Ray is not installed.
    script = ("import sys; sys.modules['ray'] = None; from gpt2xl_app.cli import main; "
              f"sys.argv = ['gpt2xl', *{['eval', 'grid', '--run-dir', str(run_dir), '-m', MODEL, *SMALL_GRID]!r}, "
              "'--ray', 'local']; main()")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=300, check=False)
    _assert_one_error_line(result, "--ray needs Ray: pip install 'gpt2xl[ray]'")
    assert not run_dir.exists()


def test_a_damaged_shard_file_is_refused_on_resume(tiny_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    shard = min((run_dir / "shards").glob("T*.json"))
    shard.write_text('{"shard": {"temperature": 0.7}, "samples": []}')
    result = _cli("eval", "grid", "--run-dir", str(run_dir), "-m", MODEL, *SMALL_GRID, "--resume")
    _assert_one_error_line(result, f"{shard} is not a readable shard result", "delete it", "without --resume")
    assert json.loads((run_dir / "eval.json").read_text()) == json.loads((tiny_run / "eval.json").read_text())
