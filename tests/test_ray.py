"""`--ray`: the grid's shards and perplexity's windows on a local Ray cluster of 2 workers give
exactly the single process's eval.json, survive a killed worker, and a killed driver resumes.

One local cluster serves the whole module (started once: a few seconds); the in-process runs
join it, the CLI subprocesses join it by its address. Everything runs at one torch thread per
worker and in the single process: the identical-results rule of gpt2xl.distributed (workers
run the driver's thread count and kernel plan).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from gpt2xl.distributed import connect, worker_spec  # noqa: E402 (after the skip)
from gpt2xl.evaluation import Hooks, RunOptions, evaluate_run  # noqa: E402
from gpt2xl.grid import GridConfig, grid_shards, run_grid  # noqa: E402
from tests.conftest import REPO, SHARED_DATA, TINY_SHAKESPEARE  # noqa: E402

# 2 temperatures x 2 top-ks x 2 seeds over 6 prompts in batches of 3: 8 cells of 2 shards each.
GRID = GridConfig(dataset="tinyshakespeare", num_prompts=6, prompt_tokens=16, max_new_tokens=16, batch_size=3,
                  temperatures=(0.7, 1.0), top_ks=(0, 5), seeds=(0, 1), mauve=False)
SHARDS = len(grid_shards(GRID, GRID.num_prompts))
GRID_ARGS = ["--model", str(TINY_SHAKESPEARE), "--data-dir", str(SHARED_DATA), "--num-prompts", "6",
             "--prompt-tokens", "16", "--max-new-tokens", "16", "--batch-size", "3", "--temperatures", "0.7,1.0",
             "--top-ks", "0,5", "--seeds", "0,1", "--no-mauve", "--threads", "1"]
# What may differ between two runs of the same work: how long it took and where it ran.
VOLATILE = {"seconds", "total_seconds", "environment"}


def _stable(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


def _run_options(run_dir: Path | None, **ray: Any) -> RunOptions:
    return RunOptions(model=str(TINY_SHAKESPEARE), data_dir=SHARED_DATA, device="cpu", dtype="fp32", threads=1,
                      grid=GRID, run_dir=run_dir, ppl_datasets=("tinyshakespeare",), stride=64, ppl_batch_size=4,
                      ppl_max_tokens=1500, lambada_max_examples=0, **ray)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The module runs at one torch thread (as --threads 1 does); the process's count comes back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for 2 one-thread workers, started once for the module."""
    with connect("local", workers=2, threads=1, device="cpu") as c:
        yield c


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, Any]:
    """The single-process eval.json of `eval run` (perplexity and the grid) at one thread."""
    run_dir = tmp_path_factory.mktemp("single")
    evaluate_run(_run_options(run_dir))
    return json.loads((run_dir / "eval.json").read_text())


@pytest.mark.usefixtures("cluster")
def test_ray_run_gives_the_single_process_eval_json(single, tmp_path, capsys):
    # "local" in a process already connected to Ray joins that cluster (the module's) and leaves it up.
    outcome = evaluate_run(_run_options(tmp_path, ray="local", ray_workers=2), hooks=Hooks(progress=True))
    assert ray.is_initialized()
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert doc["environment"]["ray"]["workers"] == 2
    assert doc["environment"]["ray"]["worker_threads"] == 1
    assert outcome.doc["perplexity"][0]["num_windows"] > 4  # several batches of windows went to the workers
    assert _stable(doc) == _stable(single)  # tokens (examples), metrics, intervals, tests, perplexity: all equal
    assert len(list((tmp_path / "shards").glob("T*.json"))) == SHARDS
    # The grid's progress bar counts shards as the workers finish them, with an ETA.
    assert re.search(rf"grid: +100%.*{SHARDS}/{SHARDS} \[\d", capsys.readouterr().err)


@pytest.fixture(scope="class")
def driver() -> tuple[Any, list[Any]]:
    """The model as the single process loads it at one thread (its kernel plan is that thread
    count's), and the grid's prompts."""
    from gpt2xl.data import eval_split, load_corpus
    from gpt2xl.grid import grid_prompts
    from gpt2xl.weights import load_model

    split = eval_split(load_corpus(GRID.dataset, data_dir=SHARED_DATA))
    prompts = grid_prompts(split.token_ids, num_prompts=GRID.num_prompts, prompt_tokens=GRID.prompt_tokens,
                           continuation_tokens=GRID.max_new_tokens)
    return load_model(str(TINY_SHAKESPEARE)), prompts


@pytest.fixture(scope="class")
def pool(cluster, driver):
    """Two workers holding the driver's model, for the tests of one class."""
    loaded, _ = driver
    spec = worker_spec(model=str(TINY_SHAKESPEARE), device="cpu", dtype="fp32", threads=1,
                       plan=loaded.model.kernel_plan())
    with cluster.pool(spec) as workers:
        yield workers


class TestWorkers:
    def test_a_killed_worker_is_restarted_and_the_grid_comes_out_the_same(self, pool, driver, single):
        loaded, prompts = driver
        before = pool.pids()
        finished: list[str] = []

        def kill_once(result):
            if not finished:  # after the first shard, while the worker has more in flight
                os.kill(before[0], signal.SIGKILL)
            finished.append(result.shard.key)

        cells = run_grid(loaded.model, prompts, GRID, runner=pool.shard_runner(prompts, GRID), on_shard=kill_once)
        after = pool.pids()
        assert before[0] not in after  # Ray restarted the killed worker, and only that one
        assert before[1] in after
        assert sorted(finished) == sorted(s.key for s in grid_shards(GRID, GRID.num_prompts))
        got = [{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in cells]
        want = [{k: v for k, v in c.items() if k not in ("seconds", "intervals", "example_texts")}
                for c in single["grid"]["cells"]]
        assert got == want

    def test_perplexity_windows_on_workers_sum_to_the_single_process_nll(self, pool, driver):
        from gpt2xl.data import eval_split, load_corpus
        from gpt2xl.perplexity import sliding_window_nll

        model = driver[0].model
        ids = eval_split(load_corpus("tinyshakespeare", data_dir=SHARED_DATA)).token_ids[:2000]
        here = sliding_window_nll(model, ids, stride=48, batch_size=5)
        seen: list[tuple[int, int]] = []
        there = sliding_window_nll(model, ids, stride=48, batch_size=5, scorer=pool.score_spans,
                                   progress=lambda done, total: seen.append((done, total)))
        assert there == here  # the float64 NLL sum and the token count, exactly
        assert len(seen) > 1  # in several batches
        assert seen[-1] == (here.num_windows, here.num_windows)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpt2xl_app.cli", "eval", "grid", *args]


def test_a_killed_driver_resumes_with_only_the_unfinished_shards(cluster, single, tmp_path):
    address = cluster.ray.get_runtime_context().gcs_address  # the CLI joins the module's cluster by address
    shards = tmp_path / "shards"
    # One worker, so that the run lasts long enough to be killed in the middle.
    driver = subprocess.Popen(_cli("--run-dir", str(tmp_path), *GRID_ARGS, "--ray", address, "--ray-workers", "1",
                                   "--no-progress"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(shards.glob("T*.json"))) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    _, err = driver.communicate(timeout=60)
    finished = {p.name: p.stat().st_mtime_ns for p in shards.glob("T*.json")}
    assert 3 <= len(finished) < SHARDS, err.decode()
    for path in shards.iterdir():  # whole files under their names; at most a hidden temporary beside them
        assert path.name.startswith(".") or json.loads(path.read_text())
    assert not (tmp_path / "eval.json").exists()

    # The rerun is single-process: a Ray run's shards are the single process's, so either resumes the other.
    rerun = subprocess.run(_cli("--run-dir", str(tmp_path), *GRID_ARGS, "--resume", "--progress"), cwd=REPO,
                           capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"note: resumed {len(finished)} of {SHARDS} grid shards" in rerun.stderr
    # The bar starts at the resumed count and ends at all of them.
    assert re.search(rf"grid: .*{len(finished)}/{SHARDS} \[", rerun.stderr), rerun.stderr
    assert re.search(rf"grid: .*{SHARDS}/{SHARDS} \[", rerun.stderr), rerun.stderr
    assert all(shards.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in finished.items())
    assert len(list(shards.glob("T*.json"))) == SHARDS
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert _stable(doc["grid"]) == _stable(single["grid"])
    assert doc["model"] == single["model"]


def test_more_workers_than_the_cluster_holds_is_refused_and_the_cluster_stays(cluster):
    from gpt2xl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"room for 2 workers, fewer than the 3 asked for"), \
            connect("auto", workers=3, threads=1, device="cpu"):
        pytest.fail("a pool too large for the cluster was let through")
    assert cluster.ray.is_initialized()  # a cluster this call did not start is left as it was
