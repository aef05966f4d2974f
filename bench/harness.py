"""The throughput harness: per-run state, one runner per sampler, rounds and case metrics.

The pytest modules in ``bench/`` are thin: they ask :class:`BenchState` for the case's model and
call :func:`measure_case` or :func:`measure_ratios`. Everything a case records goes into
``benchmark.extra_info`` (pytest-benchmark's JSON stays the file format); the run's machine facts,
bandwidth probes and roofline basis go into ``machine_info["gpt2xl"]``.

- **State**: the options, the ONE loaded model (a 6 GB gpt2-xl is freed before the next loads, and
  any HF model or llama.cpp peer built on it goes with it), and the bandwidth probes: one before
  the first case of a device, one whenever the loaded model changes, one after the last case.
- **Runners**: a zero-argument call per sampler that generates exactly ``case.new_tokens`` tokens
  and returns a :class:`Round` (prefill and decode timed apart). A sampler that cannot run a case
  here raises :class:`SamplerUnavailable` with the reason, and the case is skipped with it.
- **Validity**: a round whose prefill or decode time is zero, negative or not finite is invalid,
  and so is a round of a compiled sampler during which ``torch.compile`` compiled a graph (its
  timing holds the compile); a case (or a sampler of an interleaved case) with no valid round is
  recorded with ``"valid": false`` and ``invalid_reason``; nothing divides by such a time.
- **Warm-up**: the compiled samplers (``bench.profiles.COMPILED_SAMPLERS``) get the profile's
  ``compile_warmup_rounds``: compiling and CUDA-graph capture happen there. Each case records how
  many warm-up rounds ran, each one's wall time, and ``compile_s_estimate`` = the first warm-up
  round's wall time minus the median timed round's (an estimate of the compile and capture cost).
- **Finite logits**: ``sampled_logits_finite`` says whether every sampled token came from finite
  logits: ours check every step and raise ``NumericalError`` (the case fails), HF's are checked by
  ``bench.hf_baseline.TokenTimes`` and recorded; None where it is not observed (llama.cpp).
- **Time budget**: past the profile's ``time_budget_s`` (or ``--time-budget``) no further case
  starts; each is skipped with the reason and listed in ``machine_info``.
- **Roofline**: each case records the weight bytes/s it achieved; once every case has run,
  :func:`finalize_roofline` takes the best of every probe and every engine as each device's basis,
  so no fraction exceeds 1.
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pytest
import torch

from bench.hf_baseline import HF_COMPILED, HF_EAGER, HFMode, build_hf_model, hf_generate_timed, hf_weight_layout
from bench.profiles import BETWEEN_PROBE_BYTES, COMPILED_SAMPLERS, Case, Profile
from bench.records import (
    RATIOS,
    engine_candidates,
    is_rate,
    probe_candidates,
    probe_summary,
    ratio_of,
    roofline_basis,
    roofline_fraction,
    summarize,
)
from gpt2xl.devices import (
    check_dtype_supported,
    cpu_has_native,
    cpu_name,
    device_name,
    kernel_cpu_flags,
    resolve_device,
    resolve_dtype,
)
from gpt2xl.environment import environment_info
from gpt2xl.errors import DeviceError
from gpt2xl.hardware import (
    cpu_peak_method,
    default_probe_bytes,
    measure_memory_bandwidth,
    peak_memory_bytes,
    reset_peak_memory,
)
from gpt2xl.sampling import GenerationOutput, SamplingConfig, generate, generate_reference, make_generator
from gpt2xl.static_decode import StaticDecoder, static_cache_len
from gpt2xl.weights import LoadedModel, load_model

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture
    from transformers import GPT2LMHeadModel

    from bench.llamacpp import LlamaCppRunner

TEMPERATURE = 0.8
TOP_K = 40
# llama.cpp runs the case's weights in the GGUF type of the case's dtype; "llamacpp-q8_0" in q8_0.
LLAMACPP_TYPES = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
GGUF_BYTES_PER_ELEMENT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 + an f16 scale
HF_MODES = {"hf": HF_EAGER, "hf-compiled": HF_COMPILED}  # the HF samplers and how each runs generate


class SamplerUnavailable(Exception):
    """This sampler cannot run this case here; the message is the skip reason."""


# --- rounds and case metrics -------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Round:
    """One timed generation: ``new_tokens`` per row for ``batch_size`` rows; decode covers the
    ``new_tokens - 1`` tokens after the first."""

    prefill_s: float
    decode_s: float
    new_tokens: int
    batch_size: int
    logits_finite: bool | None = None  # every sampled token came from finite logits (None: not observed)
    graphs_compiled: int | None = None  # torch.compile graphs compiled during it (None: not counted)
    step_s: tuple[float, ...] = ()  # each decode step's duration, where the runner sees them (HF)

    @property
    def invalid_reason(self) -> str | None:
        """Why no rate can be taken from this round, or None when it is valid."""
        if not is_rate(self.prefill_s):
            return f"prefill time {self.prefill_s!r} s is not positive and finite"
        if self.new_tokens < 2:
            return f"{self.new_tokens} new token(s): no decode step to time"
        if not is_rate(self.decode_s):
            return f"decode time {self.decode_s!r} s is not positive and finite"
        if self.graphs_compiled:
            return (f"torch.compile compiled {self.graphs_compiled} graph(s) during this round, so its time holds "
                    "the compile; give the sampler more warm-up rounds (compile_warmup_rounds)")
        return None

    @property
    def valid(self) -> bool:
        return self.invalid_reason is None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens/s after each row's first, over the batch (None for an invalid round)."""
        return self.batch_size * (self.new_tokens - 1) / self.decode_s if self.valid else None

    @property
    def tokens_per_s(self) -> float | None:
        """End-to-end tokens/s, prefill included (None for an invalid round)."""
        return self.batch_size * self.new_tokens / (self.prefill_s + self.decode_s) if self.valid else None

    def record(self) -> dict[str, Any]:
        """The round as a record for :func:`bench.records.ratio_of`."""
        return {"valid": self.valid, "prefill_s": self.prefill_s, "decode_tokens_per_s": self.decode_tokens_per_s,
                "tokens_per_s": self.tokens_per_s}


def sampler_record(rounds: list[Round], *, weight_bytes: int, batch_size: int) -> dict[str, Any]:
    """Medians and spreads over the valid rounds, the raw per-round values, and the weight bytes/s
    the decode achieved; ``valid: False`` with ``invalid_reason`` when no round is valid."""
    good = [r for r in rounds if r.valid]
    bad = [r.invalid_reason for r in rounds if not r.valid]
    rec: dict[str, Any] = {"rounds": len(good), "rounds_invalid": bad, "weight_bytes": weight_bytes}
    # A valid round has both rates; summarize() gives None exactly when there is no valid round.
    decode_rates = [rate for r in good if (rate := r.decode_tokens_per_s) is not None]
    e2e_rates = [rate for r in good if (rate := r.tokens_per_s) is not None]
    prefill = summarize([r.prefill_s for r in good])
    decode = summarize(decode_rates)
    e2e = summarize(e2e_rates)
    if prefill is None or decode is None or e2e is None:
        why = bad[0] if bad else "no timed round"
        rec.update(valid=False, invalid_reason=f"no valid round of {len(rounds)}: {why}", spread_kind=None,
                   prefill_s=None, prefill_s_spread=None, decode_s=None, decode_s_per_token=None,
                   decode_tokens_per_s=None, decode_tokens_per_s_spread=None, tokens_per_s=None,
                   tokens_per_s_spread=None, rounds_prefill_s=[], rounds_decode_tokens_per_s=[],
                   rounds_tokens_per_s=[], achieved_bytes_per_s=None)
        return rec
    decode_s = statistics.median(r.decode_s for r in good)
    rec.update(
        valid=True,
        invalid_reason=None,
        spread_kind=decode.kind,  # the same for every metric: it depends on the number of rounds
        prefill_s=prefill.median,
        prefill_s_spread=prefill.spread,
        decode_s=decode_s,
        decode_s_per_token=decode_s / (good[0].new_tokens - 1),
        decode_tokens_per_s=decode.median,
        decode_tokens_per_s_spread=decode.spread,
        tokens_per_s=e2e.median,
        tokens_per_s_spread=e2e.spread,
        rounds_prefill_s=[r.prefill_s for r in good],
        rounds_decode_tokens_per_s=decode_rates,
        rounds_tokens_per_s=e2e_rates,
        # Every decode step streams all weights once for the whole batch, so bandwidth scales
        # with steps/s (tokens/s / batch), not with tokens/s.
        achieved_bytes_per_s=weight_bytes * decode.median / batch_size,
    )
    return rec


def paired_ratios(timed: dict[str, list[Round]]) -> tuple[dict[str, float], dict[str, str]]:
    """Each ratio of :data:`bench.records.RATIOS` whose two samplers ran: the median over rounds
    of the per-round ratio (round i of one against round i of the other), over the rounds where
    both were valid. Returns (ratios, {name: why missing})."""
    ratios: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name, d in RATIOS.items():
        if d.numerator not in timed or d.denominator not in timed:
            continue
        # Interleaved: every round ran every sampler once, so the lists pair up one to one.
        pairs = zip(timed[d.numerator], timed[d.denominator], strict=True)
        values = [v for a, b in pairs if (v := ratio_of(name, a.record(), b.record())) is not None]
        if values:
            ratios[name] = statistics.median(values)
        else:
            missing[name] = f"no round in which both {d.numerator} and {d.denominator} had valid timings"
    return ratios, missing


def compile_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process, from ``torch._dynamo``'s counters
    (what ``torch._dynamo.utils.counters`` has kept since torch 2.0). Imported only when a
    compiled sampler runs: CPU runs never load the compiler."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))


@dataclass
class SamplerCalls:
    """Every call of one sampler's runner within a case, warm-up included: the Rounds, each
    call's wall time, and for a compiled sampler the graphs compiled during each call and the
    graph breaks counted over them all."""

    sampler: str
    run: Runner
    rounds: list[Round] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    graph_breaks: int | None = None

    def __call__(self) -> None:
        counted = self.sampler in COMPILED_SAMPLERS
        before = compile_counts() if counted else None
        t0 = time.perf_counter()
        r = self.run()
        self.wall_s.append(time.perf_counter() - t0)
        if before is not None:
            graphs, breaks = compile_counts()
            r = replace(r, graphs_compiled=graphs - before[0])
            self.graph_breaks = (self.graph_breaks or 0) + breaks - before[1]
        self.rounds.append(r)


def logits_finite_of(rounds: Sequence[Round]) -> bool | None:
    """False when any round saw a non-finite logit, True when every round saw only finite ones,
    None when some round did not observe it."""
    seen = [r.logits_finite for r in rounds]
    if False in seen:
        return False
    return True if seen and all(v is True for v in seen) else None


def compile_record(calls: SamplerCalls, warmup: int) -> dict[str, Any] | None:
    """What compiling cost a compiled sampler (None for the others): each warm-up round's wall
    time, the compile-and-capture estimate (first warm-up round − the median timed round), graphs
    compiled in the warm-up and in the timed rounds (the latter makes those rounds invalid), and
    graph breaks."""
    if calls.sampler not in COMPILED_SAMPLERS:
        return None
    warm, timed = calls.wall_s[:warmup], calls.wall_s[warmup:]
    return {
        "warmup_rounds": warmup,
        "warmup_round_s": warm,
        "compile_s_estimate": warm[0] - statistics.median(timed) if warm and timed else None,
        "graphs_compiled_warmup": sum(r.graphs_compiled or 0 for r in calls.rounds[:warmup]),
        "graphs_compiled_timed": sum(r.graphs_compiled or 0 for r in calls.rounds[warmup:]),
        "graph_breaks": calls.graph_breaks,
    }


# --- state: options, the one loaded model, probes ------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Options:
    profile: Profile
    model: str
    devices: tuple[str, ...]
    dtypes: tuple[str, ...] | None
    probe_bytes: int | None
    seed: int
    autotune: str = "cached"
    time_budget_s: float | None = None  # None: the profile's

    @property
    def budget_s(self) -> float | None:
        """Seconds after the run's start past which no case starts (None: no limit)."""
        return self.time_budget_s if self.time_budget_s is not None else self.profile.time_budget_s


@dataclass
class ModelEntry:
    """The loaded model of the current cases, and what was built on it (freed with it)."""

    key: tuple[str, str, str]  # (spec, device, dtype)
    loaded: LoadedModel
    load_s: float
    logits_finite: bool
    kernels: dict[str, Any] | None = None  # loaded.tuning.to_dict(): the autotuned plan
    hf: GPT2LMHeadModel | None = None  # transformers model sharing the weights, built on first use
    hf_layout: str | None = None  # the Conv1D layout HF ran with (kept when ``hf`` is dropped)
    peer: tuple[tuple[object, ...], LlamaCppRunner] | None = None  # (key, llama.cpp runner): one at a time

    def drop_peer(self) -> None:
        """Close and forget the llama.cpp runner (it may map gigabytes of GGUF)."""
        if self.peer is not None:
            runner = self.peer[1]
            self.peer = None
            runner.close()
            gc.collect()


def peers_info() -> dict[str, Any]:
    """What each peer engine is (version, build), or why it is unavailable."""
    try:
        from bench.llamacpp import PeerUnavailable, peer_info
    except ImportError as exc:
        return {"llamacpp": {"available": False, "reason": f"bench.llamacpp is not importable ({exc})"}}
    try:
        return {"llamacpp": {"available": True, **peer_info()}}
    except PeerUnavailable as exc:
        return {"llamacpp": {"available": False, "reason": str(exc)}}


class BenchState:
    """Per-run state: options, the bandwidth probes and the single loaded model."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.profile = options.profile
        self.seed = options.seed
        self.probes: list[dict[str, Any]] = []  # BandwidthProbe.to_dict() + "label", in order
        self.entry: ModelEntry | None = None
        self.weights: dict[str, dict[str, object]] = {}  # "spec device dtype" -> LoadedModel.provenance()
        self._finished = False
        self.started = time.monotonic()  # at collection: the run's start, for the time budget
        self.budget_skipped: list[str] = []  # case ids skipped because the time budget was spent

    def check_budget(self, case: Case) -> None:
        """Skip ``case`` (before its model loads) when the run's time budget is spent."""
        budget = self.options.budget_s
        elapsed = time.monotonic() - self.started
        if budget is not None and elapsed > budget:
            self.budget_skipped.append(case.id(case.model or self.options.model))
            pytest.skip(f"the time budget of {budget:.0f} s is spent ({elapsed:.0f} s since the run started): "
                        "later cases do not start; raise it with python -m bench --time-budget SECONDS")

    def probe(self, device: torch.device, label: str) -> dict[str, Any]:
        """Measure ``device``'s bandwidth now (call with no model in memory where possible: the
        probe's two buffers plus a 6 GB model would crowd a small machine). The first and last
        probes of a device use the full buffer; those between models a cheaper one."""
        full = self.options.probe_bytes if device.type == "cpu" else None
        first = not any(p["device"].split(":")[0] == device.type for p in self.probes)
        nbytes = full if first or label == "end" else min(full or default_probe_bytes(device), BETWEEN_PROBE_BYTES)
        record = {"label": label, **measure_memory_bandwidth(device=device, nbytes=nbytes).to_dict()}
        self.probes.append(record)
        return record

    def free(self) -> None:
        if self.entry is not None:
            self.entry.drop_peer()
            self.entry = None
            gc.collect()  # drop the old weights (and HF / llama.cpp models on them) before the next load

    def model_for(self, case: Case) -> ModelEntry:
        """The loaded model for ``case`` (after freeing the previous one and probing the bandwidth,
        when the model changes). Skips the test, with the reason, when the device or dtype cannot
        run here."""
        spec = case.model or self.options.model
        try:
            device = resolve_device(case.device)
            dtype = resolve_dtype(case.dtype)
            check_dtype_supported(device, dtype)
        except DeviceError as exc:
            pytest.skip(str(exc))
        if (
            self.profile.skip_emulated_cpu_dtypes
            and self.options.dtypes is None
            and device.type == "cpu"
            and not cpu_has_native(dtype)
        ):
            pytest.skip(
                f"this CPU ({cpu_name()}) has no native {case.dtype} matmul instructions: torch emulates "
                f"{case.dtype}, which runs slower than fp32; measure it anyway with --dtype {case.dtype}"
            )
        key = (spec, case.device, case.dtype)
        if self.entry is None or self.entry.key != key:
            self.free()
            seen = any(p["device"].split(":")[0] == device.type for p in self.probes)
            self.probe(device, f"{'between' if seen else 'start'}, before {spec} {case.device} {case.dtype}")
            self.entry = self._load(key)
            self.weights[" ".join(key)] = self.entry.loaded.provenance()
        return self.entry

    def _load(self, key: tuple[str, str, str]) -> ModelEntry:
        spec, device, dtype = key
        t0 = time.perf_counter()
        loaded = load_model(spec, device=device, dtype=dtype, seed=self.seed, autotune=self.options.autotune)
        load_s = time.perf_counter() - t0
        # One untimed forward: first-call kernel setup, and the fp16/bf16 overflow check.
        with torch.inference_mode():
            g = torch.Generator().manual_seed(self.seed)
            prompt = torch.randint(0, loaded.config.vocab_size, (1, 16), generator=g)
            logits = loaded.model(prompt.to(loaded.device))
        return ModelEntry(key=key, loaded=loaded, load_s=load_s, logits_finite=bool(torch.isfinite(logits).all()),
                          kernels=loaded.tuning.to_dict())

    def finish(self) -> None:
        """The closing probes, once every model is freed (a neighbour's load in the middle of the
        run would otherwise go unrecorded). Every run probes the CPU at least once."""
        if self._finished:
            return
        self._finished = True
        self.free()
        devices = {p["device"].split(":")[0] for p in self.probes} | {"cpu"}
        for name in sorted(devices):
            self.probe(torch.device(name), "end")

    def machine_info(self) -> dict[str, Any]:
        return {
            "environment": environment_info(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": kernel_cpu_flags(),
            "cpu_native": {"bf16": cpu_has_native(torch.bfloat16), "fp16": cpu_has_native(torch.float16)},
            "bandwidth_probes": self.probes,
            "bandwidth_summary": probe_summary(self.probes),
            "peers": peers_info(),
            "autotune": self.options.autotune,
            "peak_memory_method": {"cpu": cpu_peak_method(), "cuda": "torch.cuda.max_memory_allocated after a reset"},
            "profile": self.profile.name,
            "profile_description": self.profile.description,
            "warmup_rounds": {"default": self.profile.warmup_rounds, "compiled": self.profile.compile_warmup_rounds},
            "time_budget": {"budget_s": self.options.budget_s, "skipped": self.budget_skipped},
            "model": self.options.model,
            "weights": self.weights,
            "seed": self.seed,
        }


def finalize_roofline(doc: dict[str, Any]) -> None:
    """Once the run is over: each device's roofline basis (the best of every probe and every
    engine's achieved rate in ``doc``, with its source) into ``machine_info["gpt2xl"]``, and each
    case's (and interleaved sampler's) ``roofline_fraction`` against it. Idempotent."""
    g = doc.setdefault("machine_info", {}).setdefault("gpt2xl", {})
    infos = [b.get("extra_info") or {} for b in doc.get("benchmarks", [])]
    basis = roofline_basis([*probe_candidates(g.get("bandwidth_probes") or []), *engine_candidates(infos)])
    g["roofline_basis"] = basis
    for info in infos:
        device = info.get("device")
        value = basis[device].get("bytes_per_s") if isinstance(device, str) and device in basis else None
        info["roofline_basis_bytes_per_s"] = value
        for rec in (info, *(info.get("samplers") or {}).values()):
            rec["roofline_fraction"] = roofline_fraction(rec.get("achieved_bytes_per_s"), value)


# --- runners -------------------------------------------------------------------------------------

Runner = Callable[[], Round]


def make_prompts(case: Case, *, vocab_size: int, seed: int) -> list[list[int]]:
    """Random token ids (throughput does not depend on which tokens), same length every row."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (case.batch_size, case.prompt_len), generator=g).tolist()


def _checked(sampler: str, case: Case, r: Round) -> Round:
    if r.new_tokens != case.new_tokens:
        raise RuntimeError(f"{sampler} produced {r.new_tokens} tokens, expected {case.new_tokens}")
    return r


def _ours(entry: ModelEntry, case: Case, seed: int, *, sampler: str,
          loop: Callable[..., GenerationOutput] = generate, plain: bool = False,
          static: StaticDecoder | None = None) -> Runner:
    loaded = entry.loaded
    prompts = make_prompts(case, vocab_size=loaded.config.vocab_size, seed=seed)
    cfg = SamplingConfig(max_new_tokens=case.new_tokens, temperature=TEMPERATURE, top_k=TOP_K, stop_at_eot=False)
    options = {"static": static} if static is not None else {}

    def run() -> Round:
        with loaded.model.kernels_off() if plain else nullcontext():
            out = loop(loaded.model, prompts, cfg, generator=make_generator(seed, loaded.device), **options)
        # Both loops check every step's logits and raise NumericalError at the first non-finite
        # one (the case then fails): a call that returned sampled from finite logits only.
        return _checked(sampler, case, Round(prefill_s=out.prefill_s, decode_s=out.decode_s, new_tokens=out.steps,
                                             batch_size=out.batch_size, logits_finite=True))

    return run


def reference_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    return _ours(entry, case, seed, sampler="reference", loop=generate_reference)


def cached_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    return _ours(entry, case, seed, sampler="cached")


def cached_plain_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    """Ours with every projection on plain ``F.linear`` over the same storage (``kernels_off``)."""
    if not entry.loaded.model.kernels_active():
        raise SamplerUnavailable(f"the tuned kernel plan for {case.device} {case.dtype} with {torch.get_num_threads()} "
                                 "thread(s) is already plain F.linear: cached-plain would repeat the cached case")
    return _ours(entry, case, seed, sampler="cached-plain", plain=True)


def compiled_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    """One decoder for every round: compiling and graph capture happen once."""
    loaded = entry.loaded
    if loaded.device.type != "cuda":
        raise SamplerUnavailable("the compiled sampler is measured on CUDA only")
    max_len = static_cache_len(case.prompt_len + case.new_tokens - 1, loaded.config.block_size)
    static = StaticDecoder(loaded.model, batch_size=case.batch_size, max_len=max_len, compile="reduce-overhead")
    return _ours(entry, case, seed, sampler="compiled", static=static)


def hf_runner(entry: ModelEntry, case: Case, seed: int, *, sampler: str = "hf") -> Runner:
    """HF ``generate`` on the case's weights, in the sampler's :data:`HF_MODES` mode. The HF model
    is built once per loaded model and shared by both HF samplers: ``generate`` keeps its compiled
    forward on it, so every round (and a later batch size) reuses the compile."""
    mode: HFMode = HF_MODES[sampler]
    if mode.compile and entry.loaded.device.type != "cuda":
        raise SamplerUnavailable(
            "HF static cache + compile is measured on CUDA only: generate compiles its decoding forward on CUDA "
            "(CUDA graphs); elsewhere it would run eagerly, the hf case again")
    if entry.hf is None:
        entry.hf = build_hf_model(entry.loaded.model)
        entry.hf_layout = hf_weight_layout(entry.hf)
    hf = entry.hf
    prompts = make_prompts(case, vocab_size=entry.loaded.config.vocab_size, seed=seed)

    def run() -> Round:
        t = hf_generate_timed(hf, prompts, new_tokens=case.new_tokens, temperature=TEMPERATURE, top_k=TOP_K, seed=seed,
                              mode=mode)
        return _checked(sampler, case, Round(prefill_s=t.prefill_s, decode_s=t.decode_s, new_tokens=t.new_tokens,
                                             batch_size=t.batch_size, logits_finite=t.logits_finite,
                                             step_s=t.step_s))

    return run


def hf_compiled_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    return hf_runner(entry, case, seed, sampler="hf-compiled")


def llamacpp_weight_type(sampler: str, dtype: str) -> str:
    return "q8_0" if sampler == "llamacpp-q8_0" else LLAMACPP_TYPES[dtype]


def llamacpp_runner(entry: ModelEntry, case: Case, seed: int, *, sampler: str = "llamacpp") -> Runner:
    """llama.cpp on the case's weights (``bench.llamacpp``), batch 1 on the CPU. The peer model is
    kept on ``entry`` (one at a time), so it is dropped with the case's model."""
    if case.device != "cpu":
        raise SamplerUnavailable("llama.cpp is measured on the CPU only")
    if case.batch_size != 1:
        raise SamplerUnavailable(
            f"llama.cpp runs batch 1 only in this harness; batch {case.batch_size} is not measured"
        )
    try:
        from bench.llamacpp import PeerUnavailable, make_llamacpp_runner
    except ImportError as exc:
        raise SamplerUnavailable(f"the llama.cpp peer is not available in this build (bench.llamacpp: {exc})") from None
    weight_type = llamacpp_weight_type(sampler, case.dtype)
    prompt = make_prompts(case, vocab_size=entry.loaded.config.vocab_size, seed=seed)[0]
    key = (weight_type, tuple(prompt), case.new_tokens, seed, torch.get_num_threads())
    if entry.peer is None or entry.peer[0] != key:
        # A peer maps gigabytes: drop the previous one, and HF's weight copies (an interleaved run's
        # HF runner keeps its own reference), before loading it.
        entry.hf = None
        entry.drop_peer()
        try:
            runner = make_llamacpp_runner(
                entry.loaded.model, prompt, new_tokens=case.new_tokens, temperature=TEMPERATURE, top_k=TOP_K,
                seed=seed, weight_type=weight_type, threads=torch.get_num_threads(),
            )
        except PeerUnavailable as exc:
            raise SamplerUnavailable(f"llama.cpp ({weight_type}): {exc}") from None
        entry.peer = (key, runner)
    peer = entry.peer[1]

    def run() -> Round:
        r = peer()
        return _checked(sampler, case, Round(prefill_s=r.prefill_s, decode_s=r.decode_s, new_tokens=len(r.tokens),
                                             batch_size=1))

    return run


def llamacpp_q8_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    return llamacpp_runner(entry, case, seed, sampler="llamacpp-q8_0")


RUNNERS: dict[str, Callable[[ModelEntry, Case, int], Runner]] = {
    "reference": reference_runner,
    "cached": cached_runner,
    "cached-plain": cached_plain_runner,
    "compiled": compiled_runner,
    "hf": hf_runner,
    "hf-compiled": hf_compiled_runner,
    "llamacpp": llamacpp_runner,
    "llamacpp-q8_0": llamacpp_q8_runner,
}


def make_runner(entry: ModelEntry, case: Case, *, seed: int, sampler: str | None = None) -> Runner:
    """A zero-argument call that generates exactly ``case.new_tokens`` tokens with ``sampler``
    (default: the case's). Raises SamplerUnavailable with the reason when it cannot run here."""
    return RUNNERS[sampler or case.sampler](entry, case, seed)


def weight_bytes_of(entry: ModelEntry, sampler: str, case: Case) -> tuple[int, str]:
    """Bytes one decode step of ``sampler`` reads, and where the number comes from. Ours and HF
    read our parameters; llama.cpp its GGUF tensors (the runner's ``weight_bytes`` when it has
    one, else our element count x the GGUF type's bytes per element)."""
    ours = entry.loaded.model.weight_bytes()
    if not sampler.startswith("llamacpp"):
        return ours, "our model's parameters"
    info = peer_case_info(entry)
    if is_rate(info.get("gguf_bytes")):
        return int(info["gguf_bytes"]), f"the {info.get('gguf_type', '')} GGUF file llama.cpp mapped"
    weight_type = llamacpp_weight_type(sampler, case.dtype)
    elements = ours // torch.empty((), dtype=entry.loaded.dtype).element_size()
    per = GGUF_BYTES_PER_ELEMENT.get(weight_type, 4.0)
    return int(elements * per), f"estimated: {elements} elements x {per:g} B ({weight_type})"


def peer_case_info(entry: ModelEntry) -> dict[str, Any]:
    """The current llama.cpp runner's own record (GGUF path, type and bytes, versions), or {}."""
    return dict(entry.peer[1].info()) if entry.peer is not None else {}


def _identity(state: BenchState, entry: ModelEntry, case: Case) -> dict[str, Any]:
    loaded = entry.loaded
    return {
        "model": entry.key[0],
        "weights_label": loaded.source.label,
        "weights_random": loaded.source.is_random,
        "device": case.device,
        "device_name": device_name(loaded.device),
        "dtype": case.dtype,
        "batch_size": case.batch_size,
        "prompt_len": case.prompt_len,
        "new_tokens": case.new_tokens,
        "temperature": TEMPERATURE,
        "top_k": TOP_K,
        "weight_layout": getattr(loaded, "layout", None),
        "autotune": state.options.autotune,
        "kernels": entry.kernels,
        "tuning_s": (entry.kernels or {}).get("tuning_s"),
        "logits_finite": entry.logits_finite,
        "load_s": entry.load_s,
        "threads": torch.get_num_threads(),
    }


def case_metrics(entry: ModelEntry, case: Case, calls: SamplerCalls, *, warmup: int) -> dict[str, Any]:
    """One sampler's record for ``case`` from its calls (the first ``warmup`` of them warm-up; see
    :func:`sampler_record` for the timed ones), with its weight bytes, whether it ran our tuned
    kernels, whether its logits stayed finite, the warm-up and compile record, and how HF ran."""
    sampler = calls.sampler
    timed = calls.rounds[warmup:]
    weight_bytes, source = weight_bytes_of(entry, sampler, case)
    rec = sampler_record(timed, weight_bytes=weight_bytes, batch_size=case.batch_size)
    rec["weight_bytes_source"] = source
    rec["kernels_used"] = sampler in ("reference", "cached", "compiled") and entry.kernels is not None
    rec["warmup_rounds"] = warmup
    rec["sampled_logits_finite"] = logits_finite_of(calls.rounds)
    compiled = compile_record(calls, warmup)
    rec["compile"] = compiled
    rec["compile_s_estimate"] = compiled["compile_s_estimate"] if compiled is not None else None
    rec["hf_weight_layout"] = entry.hf_layout if sampler in HF_MODES else None
    rec["hf_generate"] = rec["decode_step_s_median"] = rec["decode_step_s_max"] = None
    if sampler in HF_MODES:
        mode = HF_MODES[sampler]
        # HF sizes a static cache to the call's max_length (prompt + new tokens) and keeps the
        # largest length any earlier call on the model used.
        rec["hf_generate"] = {**mode.record(),
                              "static_cache_len": case.prompt_len + case.new_tokens if mode.static_cache else None}
        steps = [s for r in timed if r.valid for s in r.step_s]
        # A step far above the median is a compile or a CUDA-graph (re-)capture inside the timing.
        rec["decode_step_s_median"] = statistics.median(steps) if steps else None
        rec["decode_step_s_max"] = max(steps) if steps else None
    if sampler.startswith("llamacpp"):
        rec["gguf_type"] = llamacpp_weight_type(sampler, case.dtype)
        rec["peer"] = peer_case_info(entry)
    return rec


def _require_finite(entry: ModelEntry, case: Case) -> None:
    if not entry.logits_finite:
        pytest.fail(f"{case.dtype} logits of {entry.key[0]} on {case.device} contain NaN/inf")


def _warn_invalid(entry: ModelEntry, case: Case, sampler: str, rec: dict[str, Any]) -> None:
    if not rec["valid"]:
        warnings.warn(f"{case.id(entry.key[0])} {sampler}: invalid ({rec['invalid_reason']})", stacklevel=3)


def warmup_for(profile: Profile, sampler: str, warmup_rounds: int) -> int:
    """A compiled sampler's warm-up rounds: at least the profile's compile_warmup_rounds."""
    return max(warmup_rounds, profile.compile_warmup_rounds) if sampler in COMPILED_SAMPLERS else warmup_rounds


def measure_case(benchmark: BenchmarkFixture, state: BenchState, case: Case, *, rounds: int, warmup_rounds: int,
                 kind: str = "throughput") -> dict[str, Any]:
    """Load (or reuse) the model, time ``case`` with pytest-benchmark, record its metrics."""
    state.check_budget(case)
    entry = state.model_for(case)
    _require_finite(entry, case)
    try:
        run = make_runner(entry, case, seed=state.seed)
    except SamplerUnavailable as exc:
        pytest.skip(str(exc))
    warmup = warmup_for(state.profile, case.sampler, warmup_rounds)
    calls = SamplerCalls(sampler=case.sampler, run=run)
    benchmark.group = f"{entry.key[0]} {case.device} {case.dtype}"
    reset_peak_memory(entry.loaded.device)
    benchmark.pedantic(calls, rounds=rounds, warmup_rounds=warmup, iterations=1)
    peak = peak_memory_bytes(entry.loaded.device)
    metrics = {"kind": kind, "sampler": case.sampler, **_identity(state, entry, case),
               **case_metrics(entry, case, calls, warmup=warmup), "peak_memory_bytes": peak}
    benchmark.extra_info.update(metrics)
    _warn_invalid(entry, case, case.sampler, metrics)
    return metrics


def ratio_samplers(profile: Profile, case: Case) -> list[str]:
    """The samplers an interleaved run takes in turn, in order (those that cannot run are left out
    with their reason): the profile's, plus both compiled samplers on CUDA."""
    return [*profile.ratio_samplers, *(["compiled", "hf-compiled"] if case.device == "cuda" else [])]


def measure_ratios(benchmark: BenchmarkFixture, state: BenchState, case: Case) -> dict[str, Any]:
    """Every available sampler in turn within every round, so a neighbour's load hits them alike:
    the paired per-round ratios are what a gate on a shared machine can rely on. The case's
    top-level metrics are the cached sampler's; ``samplers`` holds each one's record."""
    state.check_budget(case)
    entry = state.model_for(case)
    _require_finite(entry, case)
    calls: dict[str, SamplerCalls] = {}
    skipped: dict[str, str] = {}
    for sampler in ratio_samplers(state.profile, case):
        try:
            run = make_runner(entry, case, seed=state.seed, sampler=sampler)
            calls[sampler] = SamplerCalls(sampler=sampler, run=run)
        except SamplerUnavailable as exc:
            skipped[sampler] = str(exc)

    def one_round() -> None:
        for sampler_calls in calls.values():
            sampler_calls()

    benchmark.group = f"{entry.key[0]} {case.device} {case.dtype} ratios"
    reset_peak_memory(entry.loaded.device)
    # Every sampler runs in every round, so all get the warm-up the most demanding one needs.
    warmup = max(warmup_for(state.profile, s, 1) for s in calls) if calls else 1
    benchmark.pedantic(one_round, rounds=state.profile.ratio_rounds, warmup_rounds=warmup, iterations=1)
    peak = peak_memory_bytes(entry.loaded.device)
    ratios, missing = paired_ratios({s: c.rounds[warmup:] for s, c in calls.items()})
    samplers = {s: case_metrics(entry, case, c, warmup=warmup) for s, c in calls.items()}
    metrics = {"kind": "ratios", "sampler": "cached", **_identity(state, entry, case), **samplers["cached"],
               "peak_memory_bytes": peak, "samplers": samplers, "samplers_skipped": skipped, "ratios": ratios,
               "ratios_missing": missing}
    benchmark.extra_info.update(metrics)
    for sampler, rec in samplers.items():
        _warn_invalid(entry, case, sampler, rec)
    return metrics
