"""Sessions: ``nox -s bench`` (the main job), ``nox -s tests``, ``nox -s eval``, ``nox -s lint``.

torch is installed first and pinned by ``GPT2XL_TORCH`` (default ``torch==2.13.0``, the CPU wheel
these machines carry); on a GPU host set e.g. ``GPT2XL_TORCH="torch==2.13.0 --index-url …cu128"``.
The project's own floor (``torch>=2.4``) is then already satisfied and pulls nothing more.
``GPT2XL_TORCH=system`` keeps the torch of the Python that runs nox (a GPU image's own build): the
session venvs see that Python's packages and nothing installs torch. A host with no network at all
runs ``tools/gpu_host_run.sh`` instead (README, "On a GPU host").

All sessions of one ``nox`` invocation share a run directory ``reports/<run-id>/`` (override
with ``GPT2XL_RUN_ID``), so ``nox -s bench eval`` yields one report joining both.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timezone
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True  # torch is 200 MB: install it once per session venv

ROOT = Path(__file__).resolve().parent
TORCH_SPEC = os.environ.get("GPT2XL_TORCH", "torch==2.13.0")
SYSTEM_TORCH = TORCH_SPEC == "system"
VENV_PARAMS = ["--system-site-packages"] if SYSTEM_TORCH else []
RUN_ID = os.environ.get("GPT2XL_RUN_ID") or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
SHARED = ROOT.parent / "shared"
DATA_DIR = os.environ.get("GPT2XL_DATA_DIR", str(SHARED / "data"))


PEERS = os.environ.get("GPT2XL_PEERS", "1") != "0"  # GPT2XL_PEERS=0: no llama.cpp build


def _install_torch(session: nox.Session) -> None:
    """torch first, so that the project's floor on it pulls nothing more."""
    if SYSTEM_TORCH:
        session.run("python", "-c", "import torch; print('torch', torch.__version__, 'from', torch.__file__)")
    else:
        session.install(*shlex.split(TORCH_SPEC))


def _install(session: nox.Session) -> None:
    _install_torch(session)
    session.install("-e", ".[dev]")
    if PEERS:
        # The llama.cpp peer (gpt2xl[peers]) compiles llama.cpp from source: ~6 min on 2 cores the
        # first time, then pip's wheel cache. Where it cannot build, its bench cases and tests
        # skip with the reason, so a failed build must not stop the session.
        session.run(
            "python", "-m", "pip", "install", "--quiet", "-e", ".[peers]",
            success_codes=[0, 1], env={"CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)},
        )


def _env() -> dict[str, str]:
    # HF_HUB_OFFLINE is left to the user; the loaders fail fast and clearly without network.
    return {"GPT2XL_DATA_DIR": DATA_DIR, "GPT2XL_RUN_ID": RUN_ID, "TOKENIZERS_PARALLELISM": "false"}


@nox.session(venv_params=VENV_PARAMS)
def tests(session: nox.Session) -> None:
    """Unit and parity tests (offline, a few minutes on 2 cores). Extra args go to pytest."""
    _install(session)
    # "python -m": with GPT2XL_TORCH=system a pytest of the host's Python is on the PATH as well
    session.run("python", "-m", "pytest", *(session.posargs or ["-q"]), env=_env())


@nox.session(default=False, venv_params=VENV_PARAMS)
def lint(session: nox.Session) -> None:
    """ruff and mypy over gpt2xl/, gpt2xl_app/ and bench/ (rules and paths: pyproject.toml).

    mypy reads torch's type information only, so any torch build will do (no GPU, no CUDA), and
    the llama.cpp peer is not built: its module is typed as missing where it is absent. The code
    base is not ``ruff format``-ed, so only ``ruff check`` runs.
    """
    _install_torch(session)
    session.install("-e", ".[dev]")
    failed = []
    for tool in ("ruff check", "mypy"):  # both run, so one CI log shows every finding
        try:
            session.run("python", "-m", *tool.split())
        except CommandFailed:
            failed.append(tool)
    if failed:
        session.error(f"{' and '.join(failed)} reported the findings above.")


@nox.session(default=False, venv_params=VENV_PARAMS)
def bench(session: nox.Session) -> None:
    """Throughput benchmarks → reports/<run-id>/bench.json, report.md and plots.

    Args after ``--`` go to ``python -m bench`` (see ``python -m bench --help``), e.g.
    ``nox -s bench -- --profile full --device cuda --dtype bf16``.
    """
    _install(session)
    session.run("python", "-m", "bench", "--run-dir", f"reports/{RUN_ID}", *session.posargs, env=_env())


@nox.session(default=False, venv_params=VENV_PARAMS)
def eval(session: nox.Session) -> None:  # shadows the builtin: the session's name is the command users type
    """Perplexity and the temperature x top-k grid → reports/<run-id>/eval.json, CSV, plots, report.

    Args after ``--`` go to ``gpt2xl eval run`` (see ``gpt2xl eval run --help``).
    """
    _install(session)
    session.run("gpt2xl", "eval", "run", "--run-dir", f"reports/{RUN_ID}", *session.posargs, env=_env())


@nox.session(default=False, venv_params=VENV_PARAMS)
def gate(session: nox.Session) -> None:
    """CI regression gate: speed ratios measured in one run (samplers interleaved round by round,
    one thread) against the baseline for this CPU kind, bench/baselines/gate-cpu-<kind>.json (kind:
    torch's CPU capability, e.g. AVX2, AVX512); where the kind has none, the floors and the run's
    validity only (the output says so). Absolute times are too noisy to gate on. Fails on a
    regression beyond 35%, a ratio below its floor, or a case with no valid measurement."""
    _install(session)
    out = f"reports/{RUN_ID}/gate"
    session.run("python", "-m", "bench", "--profile", "gate", "--device", "cpu", "--run-dir", out, env=_env())
    session.run(
        "gpt2xl", "compare", "bench/baselines", f"{out}/bench.json",
        # Ratios compress when a neighbour takes bandwidth (a fast memory-bound kernel loses more
        # than a slow one): under a competing process they measured 11-29% below the quiet
        # baseline. Hence 35%, plus absolute floors that hold under any load.
        "--ratios", "--max-slowdown", "35%", "--floor", "cached_vs_reference_decode=2",
        "--floor", "ours_vs_hf_decode=1", "--floor", "tuned_vs_plain_decode=0.9",
        env=_env(),
    )
