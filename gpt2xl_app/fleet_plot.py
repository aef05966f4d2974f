"""The fleet plot: one PNG of horizontal bars, decode tok/s of every valid fleet row with its
spread as an error bar, grouped by machine and coloured by dtype. Drawn from the rows only
(:class:`gpt2xl_app.fleet.FleetRow`), rendered in memory and written in one atomic step."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from gpt2xl.errors import ResultError
from gpt2xl.results import write_bytes_atomic
from gpt2xl_app.fleet import FleetRow

DTYPE_COLORS = {"fp32": "C0", "bf16": "C1", "fp16": "C2"}
BAR_INCHES = 0.26  # height per bar: labels of 8-point text stay legible
LOG_SCALE_ABOVE = 30.0  # fastest / slowest bar beyond which the axis is logarithmic


def _error(row: FleetRow) -> tuple[float, float]:
    """(below, above) the median: to q1/q3 or min/max of the rounds where the file kept them,
    half the recorded spread either side where it kept only the spread, none for one round."""
    median = row.decode_tokens_per_s or 0.0
    if row.low is not None and row.high is not None:
        return max(median - row.low, 0.0), max(row.high - median, 0.0)
    half = (row.spread or 0.0) / 2
    return half, half


def write_fleet_plot(rows: Sequence[FleetRow], path: Path) -> Path:
    """Draw the valid rows of ``rows`` (in their order, machine by machine) into ``path``; an
    invalid row is left out, never drawn as 0. ResultError when no row is valid, OutputError
    (one sentence) when the PNG cannot be written."""
    valid = [(r, r.decode_tokens_per_s) for r in rows if r.decode_tokens_per_s is not None]
    if not valid:
        raise ResultError("No fleet row holds a valid decode rate, so there is nothing to plot; drop --plot "
                          "or pass runs that measured something.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[float, FleetRow, float]] = []  # (y position, row, decode tok/s)
    headers: list[tuple[float, str]] = []  # a machine's name (and hardware) on the row above its bars
    y = 0.0
    for machine in dict.fromkeys(r.machine for r, _rate in valid):
        mine = [(r, rate) for r, rate in valid if r.machine == machine]
        hardware = " + ".join(dict.fromkeys(f"{r.hardware} ({r.features})" for r, _rate in mine))
        headers.append((y, f"{machine}: {hardware}"))
        y += 1
        for r, rate in mine:
            bars.append((y, r, rate))
            y += 1
        y += 0.4  # a gap between machines
    fig, ax = plt.subplots(figsize=(10, max(2.5, BAR_INCHES * y + 1.4)))
    dtypes = list(dict.fromkeys(r.dtype for _y, r, _rate in bars))
    extra = iter(f"C{i}" for i in range(3, 10))
    colors = {d: DTYPE_COLORS.get(d) or next(extra, "C9") for d in dtypes}
    for dtype in dtypes:
        ax.barh([pos for pos, r, _rate in bars if r.dtype == dtype],
                [rate for _pos, r, rate in bars if r.dtype == dtype], height=0.8, color=colors[dtype], label=dtype)
    spread = [(pos, rate, _error(r)) for pos, r, rate in bars if any(_error(r))]  # one round: no error bar at all
    if spread:
        ax.errorbar([rate for _pos, rate, _e in spread], [pos for pos, _rate, _e in spread],
                    xerr=[[e[0] for *_x, e in spread], [e[1] for *_x, e in spread]], fmt="none", ecolor="black",
                    capsize=2, linewidth=1)
    rates = [rate for _pos, _r, rate in bars]
    if max(rates) / min(rates) > LOG_SCALE_ABOVE:  # a tiny model beside gpt2-xl: linear bars would hide one
        ax.set_xscale("log")
    ax.set_yticks([pos for pos, _r, _rate in bars],
                  [f"{r.sampler} · {r.device} {r.dtype} · {r.model} b{r.batch_size}/p{r.prompt_len}/"
                   f"n{r.new_tokens}{' (interleaved)' if r.measured == 'interleaved' else ''}"
                   for _pos, r, _rate in bars], fontsize=7)
    for pos, text in headers:
        ax.text(0.005, pos, text, transform=ax.get_yaxis_transform(), ha="left", va="center", fontsize=8,
                fontweight="bold")
    ax.set_ylim(y - 0.4, -1)  # the first machine on top, as in the table
    ax.set_xlabel("decode tokens/s (excl. prefill), median; error bar: IQR (≥ 4 rounds) or min–max (2–3)"
                  + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_title("Fleet: decode throughput by machine (colour = dtype; invalid cases left out)")
    ax.legend(title="dtype", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # the legend sits outside the axes
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())
