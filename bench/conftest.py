"""pytest plumbing of the throughput suite: options, the ``bench_kind`` marker that picks a test's
case list, the run's state, and the machine facts stored in the benchmark JSON. The harness itself
(state, runners, rounds, metrics) is ``bench.harness``.

Only collected when ``bench/`` is (``python -m bench`` or ``pytest bench``); ``pytest tests/``
never sees it. Nothing is loaded at collection time: models load when a case first asks for one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from bench.harness import BenchState, Options, finalize_roofline
from bench.profiles import get_profile, local_xl_model, parse_dtypes
from gpt2xl.autotune import MODES as AUTOTUNE_MODES

_STATE_KEY = pytest.StashKey[BenchState]()
BENCH_KINDS = ("throughput", "scaling", "ratios")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpt2xl-bench", "gpt2xl throughput benchmarks")
    group.addoption("--bench-profile", default="quick", help="smoke, gate, quick (default), full or cuda")
    group.addoption("--bench-model", default=None,
                    help="model spec; default: the profile's, else pretrained gpt2-xl if cached, else random:gpt2-xl")
    group.addoption("--bench-device", default="all", help="cpu, cuda or all (default; absent CUDA is skipped)")
    group.addoption("--bench-dtype", default=None,
                    help="comma list (fp32,bf16,fp16); default: the profile's per device")
    group.addoption("--bench-probe-bytes", type=int, default=None,
                    help="bytes of the first and last CPU bandwidth probes (default: 2 GiB, capped by free RAM)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="torch CPU threads (default: the profile's, else torch's default)")
    group.addoption("--bench-seed", type=int, default=0, help="seed of random weights, prompts and sampling")
    group.addoption("--bench-autotune", default="cached", choices=AUTOTUNE_MODES,
                    help="kernel choices: off (plain plan), cached (default: tune once per machine), fresh (re-tune)")
    group.addoption("--bench-time-budget", type=float, default=None,
                    help="seconds after the start past which no case starts (default: the profile's)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"bench_kind(kind): which case list parametrizes bench_case ({', '.join(BENCH_KINDS)})"
    )


def _state(config: pytest.Config) -> BenchState:
    state = config.stash.get(_STATE_KEY, None)
    if state is None:
        profile = get_profile(config.getoption("--bench-profile"))
        device_opt = config.getoption("--bench-device")
        dtype_opt = config.getoption("--bench-dtype")
        options = Options(
            profile=profile,
            model=config.getoption("--bench-model") or profile.default_model or local_xl_model(),
            devices=("cpu", "cuda") if device_opt == "all" else (device_opt,),
            dtypes=parse_dtypes(dtype_opt, name="--bench-dtype") if dtype_opt else None,
            probe_bytes=config.getoption("--bench-probe-bytes") or profile.probe_bytes,
            seed=config.getoption("--bench-seed"),
            autotune=config.getoption("--bench-autotune"),
            time_budget_s=config.getoption("--bench-time-budget"),
        )
        threads = config.getoption("--bench-threads") or profile.threads
        if threads:
            torch.set_num_threads(threads)
        state = config.stash[_STATE_KEY] = BenchState(options)
    return state


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``bench_case`` from the profile; the test's ``bench_kind`` marker picks the list."""
    if "bench_case" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("bench_kind")
    if marker is None or len(marker.args) != 1 or marker.args[0] not in BENCH_KINDS:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid} takes bench_case: mark it @pytest.mark.bench_kind(KIND), "
            f"KIND one of {', '.join(BENCH_KINDS)}"
        )
    kind = marker.args[0]
    state = _state(metafunc.config)
    profile, options = state.profile, state.options
    if kind == "throughput":
        cases = profile.cases(devices=options.devices, dtypes=options.dtypes)
    elif kind == "scaling":
        cases = profile.scaling_cases(devices=options.devices)
    else:
        cases = profile.ratio_cases(devices=options.devices, dtypes=options.dtypes)
    if not cases:  # one visible skip with the reason, instead of pytest's anonymous NOTSET
        reason = f"profile {profile.name!r} has no {kind} cases for devices {', '.join(options.devices)}"
        skipped = pytest.param(None, marks=pytest.mark.skip(reason=reason))
        metafunc.parametrize("bench_case", [skipped], ids=[f"no-{kind}-cases"])
        return
    metafunc.parametrize("bench_case", cases, ids=[c.id(c.model or options.model) for c in cases])


@pytest.fixture(scope="session")
def bench_env(pytestconfig: pytest.Config) -> Iterator[BenchState]:
    state = _state(pytestconfig)
    yield state
    state.free()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Environment facts, every bandwidth probe (the closing ones taken now, with the models
    freed), the peers and the run's settings."""
    state = _state(config)
    state.finish()
    machine_info["gpt2xl"] = state.machine_info()


def pytest_benchmark_update_json(output_json: dict[str, Any]) -> None:  # pluggy passes the arguments named
    """Every case has run: the roofline basis and each case's fraction of it."""
    finalize_roofline(output_json)
