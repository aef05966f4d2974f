"""Benchmark profiles: which cases a run measures, as data.

A *case* is one (model, device, dtype, sampler, batch, prompt length, new tokens) point. The CPU
profiles are sized for a 2-core CPU box, where our gpt2-xl decodes about 5 tok/s in fp32 and 10
in bf16 and the quick profile measured in 9 min 19 s (README, "Measured here"):

- ``smoke``: ``random:tiny``, seconds; for tests of the pipeline itself.
- ``gate``: ``random:gpt2`` fp32, the samplers interleaved round by round so their RATIOS hold on
  a noisy shared machine; a few minutes. What CI compares against a baseline.
- ``quick`` (``nox -s bench`` default): gpt2-xl fp32 + bf16 (bf16 only where the CPU has native
  bf16 matmuls; emulated, it is skipped with the reason), batch 1, 16-token prompt, 32 new tokens
  (8 for the no-cache reference, ~3x slower on XL): ours with tuned kernels and with plain
  ``F.linear``, HF ``generate``, llama.cpp on the same weights (f32/bf16 and q8_0; skipped with
  the reason when not installed), plus the decode-cost-vs-length sweep on gpt2; about 10 minutes
  on a quiet 2-core machine.
- ``full``: adds fp16, batch 4, 128 new tokens, interleaved ratio runs and a longer sweep; tens
  of minutes.
- ``cuda``: one GPU only (no CPU case): gpt2-xl (the run's model) fp16, bf16 and fp32 at batch 1
  with reference, cached, compiled, HF eager and HF static cache + compile, and fp16 at batch 16
  (cached, compiled, HF, HF compiled); 16-token prompt, 64 new tokens. The most important cases
  (fp16 batch 1: compiled, HF, HF compiled) run first. Expected duration on one H100, an
  ESTIMATE, not a measurement: 5 to 9 minutes, dominated by its 8 compiles (our compiled step and
  HF's per dtype at batch 1, and both at fp16 batch 16: 30-90 s each for a 48-layer model); the
  eager cases take seconds each (HF eager ~15-25 ms/token, ours ~5-10 ms eager, ~1.5-2 ms
  compiled in fp16). Its time budget (``time_budget_s``, 360 s; ``python -m bench
  --time-budget``) stops STARTING cases after that, skipping the rest with the reason, so the
  run ends with its bench.json and report even when compiles run long.

CUDA cases are listed in every profile so that a machine without a GPU shows them as SKIPPED
with the reason, rather than silently measuring less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gpt2xl.dtypes import DTYPE_NAMES, check_dtype_name
from gpt2xl.errors import ConfigError
from gpt2xl.validation import parse_list

# "reference": the textbook loop, no KV cache; "cached": our KV-cached sampler with the kernels
# autotuned for this machine; "cached-plain": the same with the tuned kernels switched off (plain
# F.linear on the same storage: what tuning adds, same run); "compiled": static cache + a
# torch.compile'd step (CUDA graphs), measured on CUDA only (on CPU it compiles for ~20 s per shape
# and measured slower than eager); "hf": transformers' generate on the same weights (its default
# dynamic cache, eager); "hf-compiled": the same with a static cache, whose decoding forward
# generate compiles itself on CUDA (mode reduce-overhead: CUDA graphs; see bench.hf_baseline),
# the fair GPU peer of "compiled", measured on CUDA only like it;
# "llamacpp": llama.cpp (llama-cpp-python) on the same weights converted to GGUF, the type from the
# case dtype (fp32 -> f32, bf16 -> bf16, fp16 -> f16); "llamacpp-q8_0": the same quantized to q8_0.
SAMPLERS = ("reference", "cached", "cached-plain", "compiled", "hf", "hf-compiled", "llamacpp", "llamacpp-q8_0")
CUDA_ONLY_SAMPLERS = ("compiled", "hf-compiled")
# Samplers that torch.compile and capture CUDA graphs in their first calls: they get
# Profile.compile_warmup_rounds warm-up rounds, and a timed round that compiled is invalid.
COMPILED_SAMPLERS = ("compiled", "hf-compiled")
CPU_ONLY_SAMPLERS = ("llamacpp", "llamacpp-q8_0")
DEVICES = ("cpu", "cuda")
BETWEEN_PROBE_BYTES = 1 << 30  # probes between models: cheap, still far beyond any cache


@dataclass(frozen=True, kw_only=True)
class Case:
    """One throughput measurement. ``model`` None means "the run's --model"."""

    sampler: str
    device: str
    dtype: str
    batch_size: int
    prompt_len: int
    new_tokens: int
    model: str | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"Unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}.")
        if self.device not in DEVICES:
            raise ConfigError(f"Unknown device {self.device!r}; choose one of {', '.join(DEVICES)}.")
        check_dtype_name(self.dtype)
        for name in ("batch_size", "prompt_len", "new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Case.{name} must be >= 1, got {getattr(self, name)}.")

    def id(self, model: str) -> str:
        """The pytest id: stable across runs, so ``gpt2xl compare`` matches cases by it."""
        return (
            f"{model}-{self.device}-{self.dtype}-{self.sampler}"
            f"-b{self.batch_size}-p{self.prompt_len}-n{self.new_tokens}"
        )


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    description: str
    default_model: str | None  # None: the run's --model (pretrained gpt2-xl when cached)
    dtypes: dict[str, tuple[str, ...]]  # device -> dtypes measured on it
    # (sampler, batch, prompt_len, new_tokens) points of the main suite
    points: tuple[tuple[str, int, int, int], ...]
    rounds: int = 2
    warmup_rounds: int = 1
    # decode cost vs generated length: model, dtype, samplers, lengths (empty: no sweep)
    scaling_model: str | None = None
    scaling_dtype: str = "fp32"
    scaling_samplers: tuple[str, ...] = ("reference", "cached")
    scaling_new_tokens: tuple[int, ...] = ()
    scaling_rounds: int = 2
    # interleaved ratio measurement (gate): rounds of every sampler in turn (0: none)
    ratio_rounds: int = 0
    ratio_point: tuple[int, int, int] = (1, 16, 32)  # batch, prompt_len, new_tokens
    # the samplers taking turns in each interleaved round (CUDA adds "compiled")
    ratio_samplers: tuple[str, ...] = ("reference", "cached", "hf", "cached-plain", "llamacpp")
    # bandwidth probe buffer at the start and end of the run; None: 2 GiB on CPU (capped by free
    # RAM). Probes between models use at most BETWEEN_PROBE_BYTES.
    probe_bytes: int | None = None
    threads: int | None = None  # torch CPU threads; None: torch's default (one per core)
    # Skip bf16/fp16 CPU cases on CPUs without native instructions for them (emulated low
    # precision runs ~10x slower and would blow the time budget) unless --dtype names them.
    skip_emulated_cpu_dtypes: bool = False
    # More points for one dtype only, measured after ``points`` with that dtype's model loaded
    # (e.g. fp16 at batch 16): dtype -> (sampler, batch, prompt_len, new_tokens) points.
    extra_points: dict[str, tuple[tuple[str, int, int, int], ...]] = field(default_factory=dict)
    # Warm-up rounds of the COMPILED_SAMPLERS (compile and CUDA-graph capture happen in them, never
    # in a timed round); the other samplers get ``warmup_rounds``.
    compile_warmup_rounds: int = 2
    # Seconds after the run's start past which no further case starts (it is skipped with the
    # reason); None: no limit. A case already running finishes.
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.warmup_rounds < 0 or self.scaling_rounds < 1 or self.ratio_rounds < 0:
            raise ConfigError(f"Profile {self.name}: rounds must be >= 1 and warm-up rounds >= 0.")
        if self.compile_warmup_rounds < 1:
            # A compiled sampler's first call compiles (tens of seconds on CUDA): never a timed one.
            raise ConfigError(f"Profile {self.name}: compile_warmup_rounds must be >= 1, "
                              f"got {self.compile_warmup_rounds}.")
        if self.time_budget_s is not None and not (math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise ConfigError(f"Profile {self.name}: time_budget_s must be a positive number of seconds or None, "
                              f"got {self.time_budget_s!r}.")
        if not self.devices:
            raise ConfigError(f"Profile {self.name}: dtypes lists no dtype for any device; it would measure nothing.")
        extra = [p for points in self.extra_points.values() for p in points]
        samplers = [p[0] for p in (*self.points, *extra)] + [*self.scaling_samplers, *self.ratio_samplers]
        unknown = sorted({s for s in samplers if s not in SAMPLERS})
        if unknown:
            raise ConfigError(f"Profile {self.name}: unknown sampler(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(SAMPLERS)}.")
        check_dtype_name(self.scaling_dtype)
        for device, dtypes in self.dtypes.items():
            if device not in DEVICES:
                raise ConfigError(f"Profile {self.name}: unknown device {device!r}; choose from {', '.join(DEVICES)}.")
            for dtype in dtypes:
                check_dtype_name(dtype)
            _check_unique(self.name, f"dtypes of {device}", dtypes)
        # A repeated entry would give two cases one pytest id (and one bench.json name), so that
        # the second silently shadows the first in compare and the report: refuse it here.
        _check_unique(self.name, "points", self.points)
        measured = {dtype for dtypes in self.dtypes.values() for dtype in dtypes}
        for dtype, points in self.extra_points.items():
            check_dtype_name(dtype)
            if dtype not in measured:
                raise ConfigError(f"Profile {self.name}: extra_points names {dtype}, which no device of the profile "
                                  f"measures ({', '.join(sorted(measured))}); its points would never run.")
            _check_unique(self.name, f"points and extra_points of {dtype}", (*self.points, *points))
        for point in (*self.points, *extra):
            if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in point[1:]):
                raise ConfigError(f"Profile {self.name}: point {point!r} needs batch, prompt length and new tokens "
                                  "as integers >= 1.")
        _check_unique(self.name, "scaling_samplers", self.scaling_samplers)
        _check_unique(self.name, "scaling_new_tokens", self.scaling_new_tokens)
        _check_unique(self.name, "ratio_samplers", self.ratio_samplers)

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices this profile measures (those with at least one dtype), in DEVICES order."""
        return tuple(d for d in DEVICES if self.dtypes.get(d))

    def cases(self, *, devices: tuple[str, ...], dtypes: tuple[str, ...] | None) -> list[Case]:
        """Main-suite cases, grouped by (device, dtype) so each model is loaded once: ``points``
        in their order, then that dtype's ``extra_points``."""
        out = []
        for device in devices:
            for dtype in dtypes if dtypes is not None else self.dtypes.get(device, ()):
                for sampler, batch, prompt_len, new_tokens in (*self.points, *self.extra_points.get(dtype, ())):
                    if (sampler in CUDA_ONLY_SAMPLERS and device != "cuda") or (
                        sampler in CPU_ONLY_SAMPLERS and device != "cpu"
                    ):
                        continue
                    out.append(Case(sampler=sampler, device=device, dtype=dtype, batch_size=batch,
                                    prompt_len=prompt_len, new_tokens=new_tokens))
        return out

    def scaling_cases(self, *, devices: tuple[str, ...]) -> list[Case]:
        if not self.scaling_new_tokens or "cpu" not in devices:
            return []  # the sweep illustrates an algorithmic trend: one device shows it
        return [
            Case(sampler=s, device="cpu", dtype=self.scaling_dtype, batch_size=1, prompt_len=16, new_tokens=n,
                 model=self.scaling_model)
            for n in self.scaling_new_tokens
            for s in self.scaling_samplers
        ]

    def ratio_cases(self, *, devices: tuple[str, ...], dtypes: tuple[str, ...] | None) -> list[Case]:
        """One "cached" case per (device, dtype) standing for an interleaved run of every sampler
        available there (see ``bench.harness.measure_ratios``)."""
        if self.ratio_rounds == 0:
            return []
        batch, prompt_len, new_tokens = self.ratio_point
        return [
            Case(sampler="cached", device=device, dtype=dtype, batch_size=batch, prompt_len=prompt_len,
                 new_tokens=new_tokens)
            for device in devices
            for dtype in (dtypes if dtypes is not None else self.dtypes.get(device, ()))
        ]


def _check_unique(profile: str, what: str, values: tuple) -> None:
    repeated = sorted({repr(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(
            f"Profile {profile}: {what} lists {', '.join(repeated)} more than once; each case must be unique.")


def parse_dtypes(text: str, *, name: str = "--dtype") -> tuple[str, ...]:
    """A comma list of dtype names (``fp32,bf16``): an empty item, a repeat or an unknown name is
    a ConfigError naming ``name``."""
    return parse_list(text, name=name, item=check_dtype_name, what=f"dtypes ({', '.join(DTYPE_NAMES)})")


_CUDA_DTYPES = ("fp16", "bf16")

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="random:tiny, every sampler, a tiny sweep: seconds (tests the pipeline)",
        default_model="random:tiny",
        dtypes={"cpu": ("fp32", "bf16"), "cuda": _CUDA_DTYPES},
        points=tuple((s, 1, 8, 8) for s in SAMPLERS),
        rounds=1,
        warmup_rounds=0,
        scaling_model="random:tiny",
        scaling_new_tokens=(4, 8, 16),
        scaling_rounds=1,
        ratio_rounds=2,
        ratio_point=(1, 8, 8),
        probe_bytes=64 << 20,  # a smoke run tests the pipeline, not the machine
        # One thread: on a loaded machine, multi-threaded barriers make tiny ops 10x slower.
        threads=1,
    ),
    "gate": Profile(
        name="gate",
        description="random:gpt2 fp32, samplers interleaved per round: ratios for CI, a few minutes",
        default_model="random:gpt2",
        dtypes={"cpu": ("fp32",), "cuda": _CUDA_DTYPES},
        points=(),
        ratio_rounds=4,
        ratio_point=(1, 16, 24),
        probe_bytes=512 << 20,
        # One thread: ratios must hold on a shared CI machine, where idle-spinning OpenMP
        # barriers of a 2-thread run slow small ops (the cached decode) far more than big ones.
        # llama.cpp stays out of the gate: its ratio to ours depends on the CPU kind and on
        # llama.cpp's version, not on our code alone
        ratio_samplers=("reference", "cached", "hf", "cached-plain"),
        threads=1,
    ),
    "quick": Profile(
        name="quick",
        description=("gpt2-xl fp32 (+bf16 where the CPU has native bf16), batch 1, prompt 16, 32 new (reference: 8): "
                     "ours tuned and plain, HF, llama.cpp (+q8_0) when installed, then ours / llama.cpp / HF "
                     "interleaved, + sweep on gpt2: ~12 min"),
        default_model=None,
        dtypes={"cpu": ("fp32", "bf16"), "cuda": _CUDA_DTYPES},
        points=(("reference", 1, 16, 8), ("cached", 1, 16, 32), ("cached-plain", 1, 16, 32), ("compiled", 1, 16, 32),
                ("hf", 1, 16, 32), ("hf-compiled", 1, 16, 32), ("llamacpp", 1, 16, 32), ("llamacpp-q8_0", 1, 16, 32)),
        rounds=2,
        warmup_rounds=1,
        scaling_model="random:gpt2",
        scaling_new_tokens=(16, 32, 64, 128),
        scaling_rounds=1,
        # ours, llama.cpp and HF taking turns: the ratios the targets are judged on, taken in the
        # same minutes (this machine's bandwidth changes state from minute to minute)
        ratio_rounds=3,
        ratio_samplers=("cached", "llamacpp", "hf"),
        skip_emulated_cpu_dtypes=True,
    ),
    "full": Profile(
        name="full",
        description="gpt2-xl fp32/bf16/fp16, batch 1 and 4, 32 and 128 new, longer sweep: tens of minutes",
        default_model=None,
        dtypes={"cpu": ("fp32", "bf16", "fp16"), "cuda": ("fp32", "fp16", "bf16")},
        points=(
            ("reference", 1, 16, 16), ("cached", 1, 16, 32), ("cached-plain", 1, 16, 32), ("compiled", 1, 16, 32),
            ("hf", 1, 16, 32), ("hf-compiled", 1, 16, 32), ("llamacpp", 1, 16, 32), ("llamacpp-q8_0", 1, 16, 32),
            ("compiled", 1, 16, 128),
            ("cached", 1, 16, 128), ("hf", 1, 16, 128), ("llamacpp", 1, 16, 128),
            ("cached", 4, 16, 32), ("hf", 4, 16, 32),
            ("cached", 1, 128, 32), ("hf", 1, 128, 32), ("llamacpp", 1, 128, 32),
        ),
        rounds=3,
        warmup_rounds=1,
        scaling_model="random:gpt2",
        scaling_new_tokens=(16, 32, 64, 128, 256),
        scaling_rounds=2,
        ratio_rounds=3,
        ratio_point=(1, 16, 32),
    ),
    "cuda": Profile(
        name="cuda",
        description=("one GPU: gpt2-xl fp16/bf16/fp32 batch 1 (reference, cached, compiled, HF, HF static+compile) "
                     "and fp16 batch 16, prompt 16, 64 new; ~5-9 min on an H100 (estimate), budget 360 s"),
        default_model=None,
        # fp16 first: its batch-1 cases are the targets; one model load per dtype.
        dtypes={"cuda": ("fp16", "bf16", "fp32")},
        # The targets' three first (a run cut short still has them), then the eager baselines.
        points=(("compiled", 1, 16, 64), ("hf", 1, 16, 64), ("hf-compiled", 1, 16, 64), ("cached", 1, 16, 64),
                ("reference", 1, 16, 64)),
        extra_points={"fp16": (("compiled", 16, 16, 64), ("hf", 16, 16, 64), ("hf-compiled", 16, 16, 64),
                               ("cached", 16, 16, 64))},
        # GPU timings are stable from round to round: 3 timed rounds give a median and its range.
        rounds=3,
        warmup_rounds=1,
        compile_warmup_rounds=2,
        # No interleaved rounds: each would build (and compile) its own compiled samplers again.
        ratio_rounds=0,
        # The closing CPU probe (every run probes the CPU once) need not stream 2 GiB.
        probe_bytes=512 << 20,
        time_budget_s=360.0,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"Unknown benchmark profile {name!r}; choose one of: {', '.join(PROFILES)}.") from None


def local_xl_model() -> str:
    """``gpt2-xl`` (pretrained) when its weights are in the local Hugging Face cache, else
    ``random:gpt2-xl``: same shapes, and throughput does not depend on weight values. Looks at the
    cache only, so it never waits on the network."""
    from huggingface_hub import try_to_load_from_cache

    repo = "openai-community/gpt2-xl"
    have_config = isinstance(try_to_load_from_cache(repo, "config.json"), str)
    have_weights = any(
        isinstance(try_to_load_from_cache(repo, name), str) for name in ("model.safetensors", "pytorch_model.bin")
    )
    return "gpt2-xl" if have_config and have_weights else "random:gpt2-xl"
