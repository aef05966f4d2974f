"""Ray workers: the grid's shards and perplexity's windows spread over actors that each hold the model.

``--ray ADDRESS`` on ``gpt2xl eval grid`` and ``gpt2xl eval run`` (see :mod:`gpt2xl.evaluation`):
``local`` starts a Ray cluster on this machine, sized for the workers, and stops it at the end (also
on an error or Ctrl-C); ``auto`` joins the cluster of this node (``ray start --head`` /
``ray start --address=...``), and ``HOST:PORT`` or ``ray://HOST:PORT`` joins the one there.

Each worker is an actor (:class:`GridWorker`) that loads the model ONCE, with the single process's
loader and options (spec, dtype, device, threads), holds it, and runs grid shards, each sent with its
batch of prompts (:func:`gpt2xl.grid.run_shard`, exactly what the single process runs per shard), and
batches of perplexity windows (:func:`gpt2xl.perplexity.score_spans`, the same batches). Resources: one GPU
per actor on CUDA, ``threads`` CPUs otherwise. A killed worker process is restarted by Ray
(``max_restarts``) and its calls are retried (``max_task_retries``); a worker that stays dead hands
its work to the others.

Identical results. A shard's random stream is its own (:func:`gpt2xl.grid.shard_seed`), but the
floats it samples from depend on how the matrix products round, and that depends on the torch
thread count in two ways: the kernel plan (:mod:`gpt2xl.autotune`) is tuned and cached per thread
count (on this project's 2-core test machine the tiny model's ``mlp.c_proj`` prefill runs the native
kernel at 2 threads and PyTorch's at 1), and MKL's fp32 GEMM itself splits small row counts
(5-7 and 9-11 rows here) differently over 1 and 2 threads, so its sums round differently; only the
native kernel (one thread per output row) is the same at any count (``split`` splits by it). Hence
the rule: every worker runs the DRIVER's thread count (``--threads``, else torch's default on the
driver) and the driver's kernel plan (tuned once on the driver, shipped to the workers, which load
with autotuning off and apply it). A worker on the same kind of host (CPU model, torch build; GPU model on CUDA) then
computes bit for bit what the single process computes. A local cluster of more worker threads than
cores (2 workers at the default 2 threads on 2 cores) runs its workers with passive OpenMP waiting
(:data:`PASSIVE_WAIT`), which changes how idle threads wait, not what any thread computes; or pass
``--threads`` to fit them (``--threads 1 --ray-workers 2`` on 2 cores equals a single-process
``--threads 1`` run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, overload

from tqdm.auto import tqdm

from gpt2xl.errors import ConfigError, DeviceError, GPT2XLError
from gpt2xl.grid import GridConfig, Prompt, Shard, ShardResult, ShardRunner
from gpt2xl.model import KernelPlan
from gpt2xl.perplexity import ProgressHook, ScoredSpan, span_batches
from gpt2xl.validation import check_int

INSTALL_HINT = "pip install 'gpt2xl[ray]'"
ADDRESS_FORMS = "local, auto, HOST:PORT or ray://HOST:PORT"
# A killed worker process is restarted this many times, and a call it was running is retried as
# often; a worker that dies more often than that hands its work to the others.
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 3
IN_FLIGHT_PER_WORKER = 2  # one running, one queued behind it: no idle gap between calls
CONNECT_PROBE_S = 5.0  # Ray itself retries an unreachable address for minutes
LOCAL_OBJECT_STORE_BYTES = 256 << 20  # shard results are small; Ray's default takes 30% of the RAM
# Environment variables the driver hands to its workers (the cache and data directories, the
# native kernels' switch, the Hugging Face cache, an OpenMP wait policy): a worker finds what the
# driver found.
FORWARDED_ENV_PREFIXES = ("GPT2XL_", "HF_", "OMP_WAIT_POLICY")
# OpenMP threads that wait for work by spinning take the cores from another process's threads: two
# 2-thread workers on 2 cores each ran a default-grid shard about 4x slower than one such process
# alone, with passive waiting about 1.4x slower (a quick check on a busy VM); same results either way.
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}

_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


def check_ray_address(value: object) -> str:
    """``value`` as a ``--ray`` address: ``local``, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``
    (port 1-65535); ConfigError otherwise."""
    if not isinstance(value, str):
        raise ConfigError(f"--ray must be one of {ADDRESS_FORMS}, got {value!r}.")
    if value in ("local", "auto"):
        return value
    match = _HOST_PORT.match(value.removeprefix("ray://"))
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise ConfigError(
            f"--ray must be one of {ADDRESS_FORMS} (e.g. 10.0.0.5:6379, the address `ray start --head` prints), "
            f"got {value!r}."
        )
    return value


def require_ray() -> ModuleType:
    """The ``ray`` module; ConfigError saying how to install it when it cannot be imported."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"--ray needs Ray: {INSTALL_HINT} (or pip install 'ray>=2.60,<3'), or run without --ray; "
            f"importing it failed: {exc}."
        ) from exc
    return ray


def check_local_workers(workers: int | None, *, device: str, threads: int | None) -> None:
    """ConfigError when ``--ray local`` asks for more workers than this machine has GPUs (on CUDA)
    or cores (one worker process per core at most; more only take turns on them)."""
    if workers is None:
        return
    if device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
        check_int(f"--ray-workers (one per GPU; {gpus} here)", workers, maximum=max(1, gpus))
        return
    cores = os.cpu_count() or 1
    if workers > cores:
        fit = f" (with --threads {threads}, {max(1, cores // threads)} share no core)" if threads else ""
        raise ConfigError(f"--ray-workers {workers} exceeds the {cores} cores of this machine (one worker process per "
                          f"core at most); use --ray-workers {cores} or fewer{fit}.")


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """What every worker loads, as the single process would: the model spec (a local directory
    made absolute, since a worker's working directory is not the driver's), device, dtype, torch
    threads, the driver's kernel plan (see the module docstring), and environment variables from
    the driver (:data:`FORWARDED_ENV_PREFIXES`)."""

    model: str
    device: str
    dtype: str
    threads: int
    plan: KernelPlan
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int("worker threads", self.threads)


def worker_spec(*, model: str, device: str, dtype: str, threads: int, plan: KernelPlan) -> WorkerSpec:
    """The :class:`WorkerSpec` of a driver that loaded ``model`` with these options."""
    path = Path(model).expanduser()
    spec = str(path.resolve()) if path.is_dir() else model
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    return WorkerSpec(model=spec, device=device, dtype=dtype, threads=threads, plan=dict(plan), env=env)


class _ShardPrompts(Sequence[Prompt]):
    """The grid's prompts ``[start, start + len(held))``, indexed as the grid indexes them: what
    :func:`gpt2xl.grid.run_shard` reads of the prompts for one shard (any other index is an
    IndexError, never another prompt)."""

    def __init__(self, start: int, held: Sequence[Prompt]) -> None:
        self.start = start
        self.held = tuple(held)

    def __len__(self) -> int:
        return self.start + len(self.held)

    @overload
    def __getitem__(self, index: int) -> Prompt: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Prompt]: ...

    def __getitem__(self, index: int | slice) -> Prompt | Sequence[Prompt]:
        if isinstance(index, slice):
            begin, end, step = index.indices(len(self))
            if step != 1 or begin < self.start:
                raise IndexError(f"prompts {index} of a shard that holds {self.start}..{len(self) - 1}")
            return self.held[begin - self.start : end - self.start]
        if not self.start <= index < len(self):
            raise IndexError(f"prompt {index} of a shard that holds {self.start}..{len(self) - 1}")
        return self.held[index - self.start]


class GridWorker:
    """A Ray actor's state: the model, loaded on the first call (and again after Ray restarts a
    killed worker). Loading happens in a call rather than in ``__init__`` so that a load error
    reaches the driver as the error it is (a WeightsError, say), not as a dead actor. The prompts
    come with each shard (its batch: a few hundred tokens), so a restarted worker needs nothing
    but its spec (Ray warns that constructor arguments kept in its object store may be lost on a
    restart)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self._model: Any = None

    def model(self) -> Any:
        if self._model is None:
            import torch

            from gpt2xl.weights import load_model

            torch.set_num_threads(self.spec.threads)
            # Ray shows a worker one GPU (CUDA_VISIBLE_DEVICES): the driver's cuda:N is its cuda.
            device = "cuda" if self.spec.device.startswith("cuda") else self.spec.device
            # Autotuning off, then the driver's plan: every worker runs the kernels the driver chose
            # (two workers tuning at once could each pick another one).
            loaded = load_model(self.spec.model, device=device, dtype=self.spec.dtype, seed=0, autotune="off")
            loaded.model.apply_kernel_plan(dict(self.spec.plan))
            self._model = loaded.model
        return self._model

    def ready(self) -> int:
        """Load the model (once); this worker's process id."""
        self.model()
        return os.getpid()

    def pid(self) -> int:
        return os.getpid()

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def run_shard(self, shard: Shard, cfg: GridConfig, prompts: Sequence[Prompt]) -> ShardResult:
        """:func:`gpt2xl.grid.run_shard` of ``shard``, whose prompts (the grid's ``[start, stop)``) are ``prompts``."""
        from gpt2xl.grid import run_shard

        return run_shard(self.model(), _ShardPrompts(shard.start, prompts), shard, cfg=cfg)

    def score_spans(self, spans: Sequence[tuple[Sequence[int], int]], batch_size: int) -> list[ScoredSpan]:
        from gpt2xl.perplexity import score_spans

        return score_spans(self.model(), spans, batch_size=batch_size)


@dataclass(frozen=True, kw_only=True)
class Cluster:
    """A connection to a Ray cluster: ``workers`` actors of ``threads`` CPU threads (or one GPU
    each) fit in it. ``started``: this process started it (``--ray local``) and stops it."""

    ray: ModuleType
    address: str
    workers: int
    threads: int
    gpu: bool
    started: bool
    oversubscribed: bool = False  # a local cluster of more worker threads than cores: waits are passive

    def describe(self) -> dict[str, object]:
        """What eval.json records of the run's workers (in ``environment``: it is where the run
        ran, not what it computed)."""
        return {"address": self.address, "started": self.started, "workers": self.workers,
                "worker_threads": self.threads, "passive_omp_wait": self.oversubscribed,
                "resources": "1 GPU per worker" if self.gpu else f"{self.threads} CPU per worker",
                "ray": self.ray.__version__}

    @contextlib.contextmanager
    def pool(self, spec: WorkerSpec) -> Iterator[WorkerPool]:
        """Start the workers, wait until each has loaded the model, and kill them when the block
        ends (however it ends)."""
        ray = self.ray
        resources: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1} if self.gpu else {"num_cpus": self.threads}
        actor_class = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES, **resources)(GridWorker)
        env = {**spec.env, **(PASSIVE_WAIT if self.oversubscribed else {})}
        runtime_env = {"env_vars": env} if env else None
        actors = [actor_class.options(runtime_env=runtime_env).remote(spec) for _ in range(self.workers)]
        try:
            pool = WorkerPool(ray=ray, actors=actors)
            _get(ray, [a.ready.remote() for a in actors])
            yield pool
        finally:
            if ray.is_initialized():  # else the workers went with the connection
                for actor in actors:
                    ray.kill(actor, no_restart=True)


def _probe(address: str) -> None:
    """ConfigError at once when nothing listens at ``address`` (HOST:PORT): Ray would retry for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_PROBE_S).close()
    except OSError as exc:
        raise ConfigError(
            f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with `ray start --head` "
            "on that node and pass the address it prints, or use --ray local."
        ) from exc


@contextlib.contextmanager
def connect(
    address: str, *, workers: int | None, threads: int, device: str, weight_bytes: int | None = None
) -> Iterator[Cluster]:
    """Connect to (``auto``, an address) or start (``local``) a Ray cluster for ``workers``
    workers of ``threads`` threads each on ``device`` (None: as many as fit: the cores // threads,
    or the GPUs), and leave it when the block ends: a cluster this call started is stopped, also
    on an error or Ctrl-C. In a process already connected to Ray (``ray.init`` called before),
    that connection is used and left running. ConfigError, before any worker starts, when the
    cluster cannot hold the workers or (``local`` on the CPU, given ``weight_bytes``) this
    machine's memory cannot hold a model copy per worker."""
    check_ray_address(address)
    ray = require_ray()
    gpu = device.startswith("cuda")
    connected = started = False
    try:
        if not ray.is_initialized():
            connected = True  # from here on, whatever ray.init left behind is shut down
            started = _init(ray, address, workers=workers, threads=threads, gpu=gpu, weight_bytes=weight_bytes)
        count = _fit_workers(ray, workers, threads=threads, gpu=gpu)
        yield Cluster(ray=ray, address=address, workers=count, threads=threads, gpu=gpu, started=started,
                      oversubscribed=started and not gpu and count * threads > (os.cpu_count() or 1))
    finally:
        if connected:
            ray.shutdown()  # a local cluster's processes go with it; a joined cluster keeps running


def _init(ray: ModuleType, address: str, *, workers: int | None, threads: int, gpu: bool,
          weight_bytes: int | None) -> bool:
    """``ray.init`` for :func:`connect`, quiet (no dashboard, no usage report, errors only);
    whether it started a local cluster."""
    from gpt2xl import validation

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves a user's machine
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address == "local":
        check_local_workers(workers, device="cuda" if gpu else "cpu", threads=threads)
        if gpu:
            import torch

            count = workers or torch.cuda.device_count()
            sizing: dict[str, Any] = {"num_cpus": count, "num_gpus": count}
        else:
            count = workers or max(1, (os.cpu_count() or 1) // threads)
            sizing = {"num_cpus": count * threads, "num_gpus": 0}
            if weight_bytes is not None:
                validation.check_memory(count * weight_bytes, what=f"{count} Ray workers (a model copy each)",
                                        hint="use fewer --ray-workers.")
        ray.init(address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 **sizing, **quiet)
        return True
    if address != "auto":
        _probe(address)
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as exc:
        raise ConfigError(
            f"--ray {address}: no running Ray cluster found; start one with `ray start --head` (and "
            "`ray start --address=HEAD:PORT` on the other nodes), or use --ray local."
        ) from exc
    except ValueError as exc:  # ray:// without Ray Client's packages
        raise ConfigError(f"--ray {address}: {exc}") from exc
    return False


def _fit_workers(ray: ModuleType, workers: int | None, *, threads: int, gpu: bool) -> int:
    """``workers``, or as many as the cluster holds; ConfigError when it cannot hold them."""
    total = ray.cluster_resources()
    if gpu:
        capacity, unit = int(total.get("GPU", 0)), "GPUs"
    else:
        capacity, unit = int(total.get("CPU", 0) // threads), f"CPUs (worker threads {threads})"
    if capacity < 1 or (workers is not None and workers > capacity):
        have = int(total.get("GPU", 0)) if gpu else int(total.get("CPU", 0))
        lower = "--ray-workers" if gpu else "--ray-workers or --threads"
        raise ConfigError(
            f"The Ray cluster has {have} {unit}, room for {capacity} workers, fewer than the {workers or 1} asked for; "
            f"add nodes (`ray start --address=HEAD:PORT` on each), or lower {lower}."
        )
    return workers or capacity


def _get(ray: ModuleType, refs: Any) -> Any:
    """``ray.get``, with an error a task raised re-raised as itself when it is one of ours (one
    line for the user); any other error keeps Ray's report, which holds the worker's traceback."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, GPT2XLError):
            raise exc.cause from None
        raise


class WorkerPool:
    """Started workers (see :meth:`Cluster.pool`) and what they run: grid shards
    (:meth:`shard_runner`) and perplexity windows (:meth:`score_spans`)."""

    def __init__(self, *, ray: ModuleType, actors: Sequence[Any]) -> None:
        self._ray = ray
        self.actors = list(actors)

    def pids(self) -> list[int]:
        """The workers' process ids (a test kills one)."""
        return list(_get(self._ray, [a.pid.remote() for a in self.actors]))

    def shard_runner(self, prompts: Sequence[Prompt], cfg: GridConfig) -> ShardRunner:
        """A :data:`gpt2xl.grid.ShardRunner` of the grid ``cfg`` on ``prompts`` on these workers:
        each shard goes out with its own prompts, results come back as they finish."""

        def run(shards: Sequence[Shard]) -> Iterator[ShardResult]:
            calls = [(s, cfg, tuple(prompts[s.start : s.stop])) for s in shards]
            for _, result in self._dispatch("run_shard", calls):
                yield result

        return run

    def score_spans(
        self,
        spans: Sequence[tuple[Sequence[int], int]],
        *,
        batch_size: int,
        progress: bool | ProgressHook = False,
        progress_desc: str = "scoring",
    ) -> list[ScoredSpan]:
        """:func:`gpt2xl.perplexity.score_spans` on the workers: the same batches
        (:func:`~gpt2xl.perplexity.span_batches`), one call each, the scores back in span order."""
        batches = span_batches(spans, batch_size=batch_size)
        results: list[ScoredSpan | None] = [None] * len(spans)
        done = 0
        with tqdm(total=len(spans), desc=progress_desc, unit="span", disable=progress is not True,
                  leave=False) as bar:
            calls = [([spans[i] for i in batch], batch_size) for batch in batches]
            for which, scored in self._dispatch("score_spans", calls):
                for i, s in zip(batches[which], scored, strict=True):
                    results[i] = s
                done += len(batches[which])
                bar.update(len(batches[which]))
                if callable(progress):
                    progress(done, len(spans))
        return [r for r in results if r is not None]

    def _dispatch(self, method: str, calls: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        """Run ``method(*args)`` for each of ``calls`` on the workers, at most
        :data:`IN_FLIGHT_PER_WORKER` at a time on each, and yield ``(index, result)`` as each
        finishes. A call whose worker died for good (after Ray's restarts and retries) goes to
        another worker; DeviceError when none is left."""
        ray = self._ray
        queue = deque(range(len(calls)))
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (call, worker)
        load = dict.fromkeys(range(len(self.actors)), 0)  # live workers -> calls in flight
        while queue or pending:
            while queue and load and min(load.values()) < IN_FLIGHT_PER_WORKER:
                worker = min(load, key=load.__getitem__)
                call = queue.popleft()
                pending[getattr(self.actors[worker], method).remote(*calls[call])] = (call, worker)
                load[worker] += 1
            if not pending:
                raise DeviceError(
                    f"Every Ray worker died (after {MAX_RESTARTS} restarts each); the finished grid shards are saved "
                    "in the run directory: check the workers' memory and rerun with --resume."
                )
            [ref], _ = ray.wait(list(pending), num_returns=1)
            call, worker = pending.pop(ref)
            try:
                result = _get(ray, ref)
            except ray.exceptions.RayActorError:
                load.pop(worker, None)  # dead for good: its other calls fail here too and are requeued
                queue.appendleft(call)
                continue
            if worker in load:
                load[worker] -= 1
            yield call, result

