"""pytest plumbing of the throughput suite: options, case parametrization, one model in memory at
a time, and the machine facts (environment + a bandwidth probe) stored in the benchmark JSON.

Only collected when ``bench/`` is (``python -m bench`` or ``pytest bench``); ``pytest tests/``
never sees it. Nothing is loaded at collection time: models load in the ``bench_env`` fixture.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from bench.profiles import Case, Profile, default_model, get_profile
from gpt2xl.devices import check_dtype_supported, cpu_has_native, cpu_name, resolve_device, resolve_dtype
from gpt2xl.environment import environment_info
from gpt2xl.errors import DeviceError
from gpt2xl.hardware import BandwidthProbe, cpu_peak_method, measure_memory_bandwidth
from gpt2xl.weights import LoadedModel, load_model

_STATE_KEY = pytest.StashKey["BenchState"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpt2xl-bench", "gpt2xl throughput benchmarks")
    group.addoption("--bench-profile", default="quick", help="smoke, gate, quick (default) or full")
    group.addoption("--bench-model", default=None,
                    help="model spec; default: the profile's, else pretrained gpt2-xl if cached, else random:gpt2-xl")
    group.addoption("--bench-device", default="all", help="cpu, cuda or all (default; absent CUDA is skipped)")
    group.addoption("--bench-dtype", default=None, help="comma list (fp32,bf16,fp16); default: the profile's per device")
    group.addoption("--bench-probe-bytes", type=int, default=None,
                    help="bytes of the bandwidth probe buffer (default: 2 GiB on CPU, capped by free RAM)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="torch CPU threads (default: the profile's, else torch's default)")
    group.addoption("--bench-seed", type=int, default=0, help="seed of random weights, prompts and sampling")


@dataclass
class _Entry:
    key: tuple[str, str, str]
    loaded: LoadedModel
    load_s: float
    logits_finite: bool
    hf: Any = None  # transformers model sharing the weights, built on first use


@dataclass
class BenchState:
    """Per-session state: options, the probe (measured once) and the single loaded model."""

    profile: Profile
    model: str
    devices: tuple[str, ...]
    dtypes: tuple[str, ...] | None
    probe_bytes: int | None
    seed: int
    probes: dict[str, BandwidthProbe] = field(default_factory=dict)
    entry: _Entry | None = None
    weights: dict[str, dict[str, object]] = field(default_factory=dict)  # spec -> source.to_dict()

    def probe(self, device: torch.device) -> BandwidthProbe:
        """The device's bandwidth, measured once per session, with no model in memory if possible
        (the probe's two buffers plus a 6 GB model would crowd a small machine)."""
        name = device.type
        if name not in self.probes:
            self.free()
            self.probes[name] = measure_memory_bandwidth(device=device, nbytes=self.probe_bytes if name == "cpu" else None)
        return self.probes[name]

    def free(self) -> None:
        if self.entry is not None:
            self.entry = None
            gc.collect()  # drop the old weights before the next model allocates its own

    def model_for(self, case: Case) -> _Entry:
        """The loaded model for ``case`` (loading it, after freeing the previous one, if needed).
        Skips the test, with the reason, when the device or dtype cannot run here."""
        spec = case.model or self.model
        try:
            device = resolve_device(case.device)
            dtype = resolve_dtype(case.dtype)
            check_dtype_supported(device, dtype)
        except DeviceError as exc:
            pytest.skip(str(exc))
        if (
            self.profile.skip_emulated_cpu_dtypes
            and self.dtypes is None
            and device.type == "cpu"
            and not cpu_has_native(dtype)
        ):
            pytest.skip(
                f"this CPU ({cpu_name()}) has no native {case.dtype} matmul instructions: torch emulates "
                f"{case.dtype}, which runs slower than fp32; measure it anyway with --dtype {case.dtype}"
            )
        self.probe(device)
        key = (spec, case.device, case.dtype)
        if self.entry is None or self.entry.key != key:
            self.free()
            t0 = time.perf_counter()
            loaded = load_model(spec, device=case.device, dtype=case.dtype, seed=self.seed)
            load_s = time.perf_counter() - t0
            # One untimed forward: first-call kernel setup, and the fp16/bf16 overflow check.
            with torch.inference_mode():
                prompt = torch.randint(0, loaded.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(self.seed))
                logits = loaded.model(prompt.to(loaded.device))
            self.entry = _Entry(key=key, loaded=loaded, load_s=load_s, logits_finite=bool(torch.isfinite(logits).all()))
            self.weights[spec] = loaded.source.to_dict()
        return self.entry


def _state(config: pytest.Config) -> BenchState:
    state = config.stash.get(_STATE_KEY, None)
    if state is None:
        profile = get_profile(config.getoption("--bench-profile"))
        model = config.getoption("--bench-model") or profile.default_model or default_model()
        device_opt = config.getoption("--bench-device")
        devices = ("cpu", "cuda") if device_opt == "all" else (device_opt,)
        dtype_opt = config.getoption("--bench-dtype")
        dtypes = tuple(d.strip() for d in dtype_opt.split(",") if d.strip()) if dtype_opt else None
        state = BenchState(profile=profile, model=model, devices=devices, dtypes=dtypes,
                           probe_bytes=config.getoption("--bench-probe-bytes") or profile.probe_bytes, seed=config.getoption("--bench-seed"))
        threads = config.getoption("--bench-threads") or profile.threads
        if threads:
            torch.set_num_threads(threads)
        config.stash[_STATE_KEY] = state
    return state


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``bench_case`` from the profile; which list depends on the test's ``bench_kind``."""
    if "bench_case" not in metafunc.fixturenames:
        return
    state = _state(metafunc.config)
    kind = getattr(metafunc.function, "bench_kind", "throughput")
    if kind == "throughput":
        cases = state.profile.cases(devices=state.devices, dtypes=state.dtypes)
    elif kind == "scaling":
        cases = state.profile.scaling_cases(devices=state.devices)
    elif kind == "ratios":
        cases = state.profile.ratio_cases(devices=state.devices, dtypes=state.dtypes)
    else:
        raise ValueError(f"unknown bench_kind {kind!r}")
    if not cases:  # one visible skip with the reason, instead of pytest's anonymous NOTSET
        reason = f"profile {state.profile.name!r} has no {kind} cases for devices {', '.join(state.devices)}"
        metafunc.parametrize("bench_case", [pytest.param(None, marks=pytest.mark.skip(reason=reason))], ids=[f"no-{kind}-cases"])
        return
    metafunc.parametrize("bench_case", cases, ids=[c.id(c.model or state.model) for c in cases])


@pytest.fixture(scope="session")
def bench_env(pytestconfig: pytest.Config) -> BenchState:
    state = _state(pytestconfig)
    yield state
    state.free()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Environment facts plus the run's bandwidth probes and benchmark settings."""
    state = _state(config)
    if "cpu" not in state.probes:  # e.g. every case was skipped: still record the CPU's roofline
        state.probe(torch.device("cpu"))
    # Measured again now that the models are freed: a neighbour's load at the start of the run
    # would otherwise skew every roofline fraction without a trace. Cases use the start probe.
    end_probes = {}
    if state.entry is None and "cpu" in state.probes:
        end_probes["cpu"] = measure_memory_bandwidth(device="cpu", nbytes=state.probes["cpu"].nbytes).to_dict()
    machine_info["gpt2xl"] = {
        "environment": environment_info(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bandwidth": {name: probe.to_dict() for name, probe in state.probes.items()},
        "bandwidth_end": end_probes,
        "peak_memory_method": {"cpu": cpu_peak_method(), "cuda": "torch.cuda.max_memory_allocated after a reset"},
        "profile": state.profile.name,
        "profile_description": state.profile.description,
        "model": state.model,
        "weights": state.weights,
        "seed": state.seed,
    }
