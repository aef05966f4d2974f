"""The fleet table: many ``bench.json`` files, from many machines (or runs), as one table.

One :class:`FleetRow` per measured engine of every file: (machine, device, dtype, sampler, model)
plus the case's batch, prompt and length, with the hardware it ran on, decode tok/s as the median
over its timed rounds ± their spread (as bench records it: the IQR from 4 rounds on, max − min for
2–3, none for 1), its roofline fraction and, for our samplers, the speed ratio over each peer
(llama.cpp, HF generate, HF generate with a static cache + compile) measured in the same file on
the same model, dtype, batch, prompt and length. Rows come from the throughput cases and from
every sampler of the interleaved ratio runs; the decode-cost-vs-length sweep (``scaling``) is left
out, it measures length, not hardware.

Files are read through the same checked reader as ``gpt2xl compare`` (:func:`gpt2xl_app.compare.load_bench`)
and a record is valid by the one rule of :func:`bench.records.invalid_reason`: an invalid one is a
row saying so, with its reason, never a number. Everything here returns data or text; the CLI
prints it, :mod:`gpt2xl_app.fleet_plot` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.records import RATIOS, SpreadKind, invalid_reason, is_rate, roofline_fraction, summarize
from gpt2xl.errors import ConfigError, ResultError
from gpt2xl_app.bench_report import SAMPLER_ORDER, doc_roofline_basis
from gpt2xl_app.compare import RatioEntry, load_bench, ratio_entries

BENCH_FILE = "bench.json"  # what a run directory holds
# The peer samplers a ratio column compares with: llama.cpp, HF generate eager, and on CUDA HF
# generate with a static cache and its own torch.compile (the compiled sampler's fair peer).
PEERS = {"llamacpp": "llama.cpp", "hf": "HF", "hf-compiled": "HF static+compile"}
FLEET_KINDS = ("throughput", "ratios")  # extra_info kinds that become rows ("scaling" is left out)
SPREAD_KINDS: tuple[SpreadKind, ...] = ("iqr", "min-max", "none")
SPREAD_NAMES = {"iqr": "IQR", "min-max": "max−min", "none": "none (1 round)"}
Measured = Literal["separate", "interleaved"]


@dataclass(frozen=True, kw_only=True)
class FleetRow:
    """One engine's decode speed on one machine. ``decode_tokens_per_s`` is None exactly when the
    record holds no valid measurement, and ``invalid`` then says why. ``low``/``high`` bound the
    spread (q1/q3 or min/max of the recorded rounds; None when the file keeps no rounds).
    ``vs_peer`` holds ``(peer, ratio)`` for each peer sampler of :data:`PEERS` measured alongside:
    this sampler's decode speed over the peer's (> 1: this one is faster)."""

    machine: str
    source: str  # the bench.json path, as given
    hardware: str  # CPU brand or GPU name
    features: str  # what decides its kernels: torch capability, dtype support, kernel build, threads
    device: str
    dtype: str
    model: str
    sampler: str
    batch_size: int
    prompt_len: int
    new_tokens: int
    measured: Measured  # separate throughput cases, or samplers taking turns within each round of one case
    rounds: int | None
    decode_tokens_per_s: float | None
    spread: float | None
    spread_kind: SpreadKind | None
    low: float | None = None
    high: float | None = None
    roofline_fraction: float | None = None
    vs_peer: tuple[tuple[str, float], ...] = ()
    invalid: str | None = None

    def __post_init__(self) -> None:
        for name in ("machine", "source", "hardware", "device", "dtype", "model", "sampler"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"FleetRow.{name} must be a non-empty string, got {getattr(self, name)!r}.")
        for name in ("batch_size", "prompt_len", "new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FleetRow.{name} must be an integer >= 1, got {value!r}.")
        if self.measured not in ("separate", "interleaved"):
            raise ValueError(f"FleetRow.measured must be separate or interleaved, got {self.measured!r}.")
        if (self.invalid is None) != is_rate(self.decode_tokens_per_s):
            raise ValueError("A FleetRow holds either a valid decode rate or the reason it has none, not both.")
        self._check_spread()
        self._check_ratios()

    def _check_spread(self) -> None:
        if self.spread is not None and not (math.isfinite(self.spread) and self.spread >= 0):
            raise ValueError(f"FleetRow.spread must be finite and >= 0, got {self.spread!r}.")
        if self.spread_kind is not None and self.spread_kind not in SPREAD_KINDS:
            raise ValueError(f"FleetRow.spread_kind must be one of {', '.join(SPREAD_KINDS)}, "
                             f"got {self.spread_kind!r}.")
        if (self.low is None) != (self.high is None) or (self.low is not None and not
                                                          (is_rate(self.low) and is_rate(self.high))):
            raise ValueError(f"FleetRow.low and high must both be positive rates or both None, got "
                             f"{self.low!r} and {self.high!r}.")

    def _check_ratios(self) -> None:
        if self.roofline_fraction is not None and not is_rate(self.roofline_fraction):
            raise ValueError(f"FleetRow.roofline_fraction must be > 0 and finite, got {self.roofline_fraction!r}.")
        peers = [peer for peer, _value in self.vs_peer]
        if len(set(peers)) != len(peers):
            raise ValueError(f"FleetRow.vs_peer names a peer twice: {peers}.")
        for peer, value in self.vs_peer:
            if peer not in PEERS or not is_rate(value):
                raise ValueError(f"FleetRow.vs_peer[{peer!r}] = {value!r}: the peer must be one of "
                                 f"{', '.join(PEERS)} and the ratio > 0 and finite.")

    def vs(self, peer: str) -> float | None:
        """This sampler's decode speed over ``peer``'s, or None when not measured alongside."""
        return dict(self.vs_peer).get(peer)

    @property
    def sort_key(self) -> tuple[Any, ...]:
        """Machine, device, dtype, sampler (in the report's engine order), then the rest."""
        rank = SAMPLER_ORDER.index(self.sampler) if self.sampler in SAMPLER_ORDER else len(SAMPLER_ORDER)
        return (self.machine, self.device, self.dtype, rank, self.sampler, self.model, self.batch_size,
                self.prompt_len, self.new_tokens, self.measured)


@dataclass(frozen=True, kw_only=True)
class FleetRun:
    """One file of the fleet: its label and where it came from."""

    machine: str
    source: str
    profile: str
    when: str
    software: str  # torch version and git commit
    notes: tuple[str, ...] = ()  # peers that did not run, a file with no row, ...


@dataclass(frozen=True, kw_only=True)
class Fleet:
    runs: tuple[FleetRun, ...]
    rows: tuple[FleetRow, ...]

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("A Fleet needs at least one run.")
        if [r.sort_key for r in self.rows] != sorted(r.sort_key for r in self.rows):
            raise ValueError("Fleet rows must be sorted by FleetRow.sort_key.")


# --- reading ------------------------------------------------------------------------------------------

def bench_path(path: str | Path) -> Path:
    """``path`` itself, or ``path/bench.json`` for a run directory."""
    path = Path(path)
    return path / BENCH_FILE if path.is_dir() else path


def run_labels(paths: Sequence[Path]) -> list[str]:
    """A short, distinct label per file: its run directory's name (``reports/run-bf16/bench.json``
    → ``run-bf16``), or its stem for any other file name (``gate-cpu-AVX2``); where two would
    read the same, as many parent folders as it takes to tell them apart."""
    parts = []
    for path in paths:
        absolute = path.resolve()
        named = absolute.parent if absolute.name == BENCH_FILE else absolute.with_suffix("")
        parts.append([named.name, *(p.name for p in named.parents if p.name)])
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(reversed(p[:d])) if d <= len(p) else str(path)
                  for p, d, path in zip(parts, depth, paths, strict=True)]
        clashing = {i for i, label in enumerate(labels) if labels.count(label) > 1}
        if not clashing:
            return labels
        for i in clashing:
            depth[i] += 1


def load_fleet(paths: Sequence[str | Path]) -> Fleet:
    """Read every file (a ``bench.json`` or a run directory holding one) and build the fleet.

    Raises ConfigError when no file is given or one is given twice, ResultError (naming the file
    and the field) when one is missing, unreadable or not a benchmark result, and ResultError
    when no file holds a throughput or interleaved case (an empty table would read as a report).
    """
    if not paths:
        raise ConfigError("--hardware needs at least one bench.json file or run directory, "
                          "e.g. gpt2xl compare --hardware reports/*/bench.json.")
    files = [bench_path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for f in files:
        first = seen.get(f.resolve())
        if first is not None:
            same = f"{f} is given twice" if str(first) == str(f) else f"{first} and {f} are the same file"
            raise ConfigError(f"{same}; pass each run once.")
        seen[f.resolve()] = f
    docs = [load_bench(f) for f in files]  # every file is checked before any row is built
    runs, rows = [], []
    for f, label, doc in zip(files, run_labels(files), docs, strict=True):
        machine = f"{(doc.get('machine_info') or {}).get('node') or '?'}/{label}"
        mine = doc_rows(doc, machine=machine, source=str(f))
        runs.append(_run(doc, machine=machine, source=str(f), has_rows=bool(mine)))
        rows += mine
    if not rows:
        raise ResultError(f"None of the {len(files)} file(s) holds a throughput or interleaved case to tabulate; "
                          "pass bench.json files made by python -m bench with a profile that measures them.")
    return Fleet(runs=tuple(runs), rows=tuple(sorted(rows, key=lambda r: r.sort_key)))


def _gpt2xl(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return (doc.get("machine_info") or {}).get("gpt2xl") or {}


def _run(doc: Mapping[str, Any], *, machine: str, source: str, has_rows: bool) -> FleetRun:
    g = _gpt2xl(doc)
    env = g.get("environment") or {}
    notes = []
    for name, peer in sorted((g.get("peers") or {}).items()):
        if peer.get("available") is False:
            notes.append(f"peer {PEERS.get(name, name)} not available: {peer.get('reason', 'no reason recorded')}")
    for bench in doc["benchmarks"]:
        info = bench["extra_info"]
        for sampler, reason in sorted((info.get("samplers_skipped") or {}).items()):
            notes.append(f"{sampler} not run in the interleaved {info['device']} {info['dtype']} rounds: {reason}")
    if not has_rows:
        notes.append("no throughput or interleaved case in this file (a scaling sweep only, or nothing ran)")
    return FleetRun(machine=machine, source=source, profile=str(g.get("profile") or "?"),
                    when=str(doc.get("datetime") or "?"),
                    software=f"torch {env.get('torch', '?')}, git {env.get('git_sha') or '?'}", notes=tuple(notes))


# Identity and machine fields an interleaved case shares with each of its samplers; the metrics
# (speeds, spreads, achieved bytes/s) are each sampler's own: the case's top level is the cached
# sampler's, and must not leak into the others' rows.
_CONTAINERS = ("samplers", "samplers_skipped", "ratios", "ratios_missing")
_SHARED = ("model", "device", "device_name", "dtype", "batch_size", "prompt_len", "new_tokens", "kernels", "threads")


def _records(info: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], Measured]]:
    """``(sampler, record, measured)`` for a throughput case, or for each sampler of an
    interleaved one (the case itself when it holds no samplers)."""
    if info["kind"] == "throughput" or not info.get("samplers"):
        return [(info["sampler"], info, "interleaved" if info["kind"] == "ratios" else "separate")]
    # The case's top level is its own sampler's record: under that sampler's entry it fills what an
    # older file kept only there (achieved bytes/s); it is never another sampler's.
    own = {k: v for k, v in info.items() if k not in _CONTAINERS}
    return [(sampler, {**{k: info.get(k) for k in _SHARED}, **(own if sampler == info["sampler"] else {}), **record},
             "interleaved")
            for sampler, record in info["samplers"].items()]


def doc_rows(doc: Mapping[str, Any], *, machine: str, source: str) -> list[FleetRow]:
    """The rows of one checked ``bench.json`` document (unsorted)."""
    basis = doc_roofline_basis(dict(doc))
    entries = ratio_entries(dict(doc))
    rows = []
    for bench in doc["benchmarks"]:
        info = bench["extra_info"]
        if info["kind"] not in FLEET_KINDS:
            continue
        for sampler, record, measured in _records(info):
            rows.append(_row(doc, record, sampler=sampler, measured=measured, machine=machine, source=source,
                             basis=basis, entries=entries))
    return rows


def _row(doc: Mapping[str, Any], record: Mapping[str, Any], *, sampler: str, measured: Measured, machine: str,
         source: str, basis: Mapping[str, Mapping[str, Any]], entries: Sequence[RatioEntry]) -> FleetRow:
    device = str(record["device"])
    hardware, features = _hardware(doc, record, device=device)
    rates = [float(v) for v in record.get("rounds_decode_tokens_per_s") or () if is_rate(v)]
    summary = summarize(rates)
    count = record.get("rounds")
    rounds = count if isinstance(count, int) and not isinstance(count, bool) else (len(rates) or None)
    common: dict[str, Any] = {
        "machine": machine, "source": source, "hardware": hardware, "features": features, "device": device,
        "dtype": str(record["dtype"]), "model": str(record["model"]), "sampler": sampler,
        "batch_size": record["batch_size"], "prompt_len": record["prompt_len"], "new_tokens": record["new_tokens"],
        "measured": measured, "rounds": rounds,
    }
    reason = invalid_reason(record)
    if reason is not None:
        return FleetRow(**common, decode_tokens_per_s=None, spread=None, spread_kind=None, invalid=reason)
    recorded_spread, recorded_kind = record.get("decode_tokens_per_s_spread"), record.get("spread_kind")
    if isinstance(recorded_spread, (int, float)) and recorded_kind in SPREAD_KINDS:
        spread, kind = float(recorded_spread), recorded_kind
    elif summary is not None:  # a file written before spreads were recorded: the same rule over its rounds
        spread, kind = summary.spread, summary.kind
    else:
        spread, kind = None, None
    group = (record["model"], device, record["dtype"], record["batch_size"], record["prompt_len"],
             record["new_tokens"])
    return FleetRow(
        **common, decode_tokens_per_s=float(record["decode_tokens_per_s"]), spread=spread, spread_kind=kind,
        low=summary.low if summary is not None and kind != "none" else None,
        high=summary.high if summary is not None and kind != "none" else None,
        roofline_fraction=roofline_fraction(record.get("achieved_bytes_per_s"),
                                            (basis.get(device) or {}).get("bytes_per_s")),
        vs_peer=_peer_ratios(entries, group=group, sampler=sampler, measured=measured))


def _peer_ratios(entries: Sequence[RatioEntry], *, group: tuple[Any, ...], sampler: str,
                 measured: Measured) -> tuple[tuple[str, float], ...]:
    """``(peer, ratio)`` pairs: the decode ratio of :data:`bench.records.RATIOS` with ``sampler`` over
    the peer, measured the same way (interleaved rounds or separate cases) on the same group."""
    source = "interleaved" if measured == "interleaved" else "cases"  # RatioEntry's name for separate cases
    out = {}
    for peer in PEERS:
        names = {n for n, d in RATIOS.items() if (d.numerator, d.denominator, d.metric) == (sampler, peer, "decode")}
        for e in entries:
            if e.name in names and e.group == group and e.source == source:
                out[peer] = e.value
    return tuple(out.items())


def _hardware(doc: Mapping[str, Any], record: Mapping[str, Any], *, device: str) -> tuple[str, str]:
    """(CPU brand or GPU name, what decides the kernels on it) as the file recorded them."""
    machine_info = doc.get("machine_info") or {}
    g = _gpt2xl(doc)
    env = g.get("environment") or {}
    if device.startswith("cuda"):
        gpus = env.get("gpus") or []
        name = str(record.get("device_name") or (gpus[0].get("name") if gpus else None) or "GPU (not recorded)")
        gpu = next((x for x in gpus if x.get("name") == name), gpus[0] if gpus else {})
        memory = gpu.get("memory_bytes")
        gpu_parts = [f"sm {gpu['capability']}" if gpu.get("capability") else "",
                     f"{memory / 1e9:.0f} GB" if is_rate(memory) else "",
                     f"CUDA {env['cuda_version']}" if env.get("cuda_version") else ""]
        return name, ", ".join(p for p in gpu_parts if p) or "—"
    brand = str(record.get("device_name") or env.get("cpu") or (machine_info.get("cpu") or {}).get("brand_raw")
                or "CPU (not recorded)")
    parts = [str(g.get("cpu_capability") or env.get("cpu_capability") or "capability ?")]
    dtype = str(record.get("dtype"))
    native = g.get("cpu_native") or {}
    if dtype in native:
        parts.append(f"{dtype} {'native' if native[dtype] else 'emulated'}")
    elif dtype != "fp32":  # an older file: show the flags that name the dtype, as recorded
        flags = g.get("cpu_flags") or env.get("cpu_flags") or (machine_info.get("cpu") or {}).get("flags") or []
        named = [f for f in flags if isinstance(f, str) and dtype in f]
        parts.append(" ".join(named) if named else f"no {dtype} CPU flag")
    kernels = (record.get("kernels") or {}).get("native") if isinstance(record.get("kernels"), dict) else None
    if kernels:
        parts.append(f"kernels {kernels}")
    threads = record.get("threads") or env.get("torch_threads")
    if threads:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return brand, ", ".join(parts)


# --- rendering ------------------------------------------------------------------------------------------

def spread_header(rows: Sequence[FleetRow]) -> str:
    """The decode column's header, naming the spreads its rows carry."""
    kinds = [k for k in SPREAD_KINDS if any(r.spread_kind == k for r in rows)]
    shown = [SPREAD_NAMES[k] for k in kinds if k != "none"]
    if not shown:
        return "decode tok/s (median; no spread: one round, or none recorded)"
    return f"decode tok/s (median ± {' or '.join(shown)} of rounds)"


def _number(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _decode_cell(row: FleetRow) -> str:
    if row.decode_tokens_per_s is None:
        return f"invalid: {row.invalid}"
    text = _number(row.decode_tokens_per_s)
    if row.spread is not None and row.spread_kind not in (None, "none"):
        text += f" ± {_number(row.spread)}"
    return text


def _cells(r: FleetRow) -> list[str]:
    return [
        r.machine, r.hardware, r.features, r.device, r.dtype, r.model, r.sampler,
        f"{r.batch_size}/{r.prompt_len}/{r.new_tokens}", r.measured, "—" if r.rounds is None else str(r.rounds),
        _decode_cell(r), "—" if r.roofline_fraction is None else f"{r.roofline_fraction:.0%}",
        *("—" if (v := r.vs(p)) is None else f"{v:.2f}×" for p in PEERS),
    ]


LEGEND = (
    "decode tok/s excludes prefill; ± is the spread over the timed rounds as bench recorded it "
    "(IQR = q3 − q1 from 4 rounds on, max − min for 2–3, none for 1; see the rounds column). "
    "roofline = achieved weight-read bytes/s ÷ that run's basis (its best bandwidth probe or engine). "
    "vs llama.cpp / vs HF / vs HF static+compile = this engine's decode tok/s over the peer's in the same file, "
    "same model, dtype, batch, prompt and length (> 1: faster; interleaved: median of per-round ratios); "
    "HF static+compile is HF generate with a static cache and its own torch.compile (CUDA)."
)


def format_fleet(fleet: Fleet) -> str:
    """The runs (what each machine label stands for), a legend, one Markdown table (padded for
    the console) and the notes of each run."""
    rows = fleet.rows
    lines = [f"Fleet: {len(fleet.runs)} run(s), {len(rows)} row(s)."]
    lines += [f"- {run.machine}: {run.source} (profile {run.profile}, {run.when}, {run.software})"
              for run in fleet.runs]
    lines += [LEGEND, ""]
    header = ["machine", "hardware", "features", "device", "dtype", "model", "sampler", "b/p/n", "measured",
              "rounds", spread_header(rows), "roofline", *(f"vs {name}" for name in PEERS.values())]
    table = [header, *(_cells(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        lines.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    invalid = sum(r.invalid is not None for r in rows)
    notes = [f"- {run.machine}: {note}" for run in fleet.runs for note in run.notes]
    if invalid:
        notes.insert(0, f"- {invalid} row(s) hold no valid measurement: shown as invalid with the reason, "
                        "never plotted")
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)
