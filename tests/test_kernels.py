"""The native few-row kernel computes ``F.linear`` to rounding, for every shape it may meet
(rows 1-9 and prefill sizes, widths that do not fill a tile, lengths that do not fill a vector),
and the model routes calls to it by size. Skips with the build's reason where no compiler works."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2xl import kernels
from gpt2xl.model import DECODE_MAX_ROWS, PREFILL_MAX_ROWS, Projection

pytestmark = pytest.mark.skipif(kernels.native() is None, reason=f"native kernels: {kernels.unavailable_reason()}")

# (rows, out, in): decode rows, the 2-row and 4-row tiles' edges, a prefill, odd widths (a partial
# weight tile) and lengths that are not a multiple of the vector width (scalar tails).
SHAPES = [(1, 64, 64), (2, 72, 96), (3, 13, 40), (4, 8, 32), (5, 67, 128), (9, 33, 160), (16, 130, 100), (1, 7, 17)]


@pytest.mark.parametrize(("rows", "out", "inp"), SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_fp32_matches_linear(rows: int, out: int, inp: int, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(rows * 1000 + out)
    x, w = torch.randn(rows, inp, generator=g), torch.randn(out, inp, generator=g)
    b = torch.randn(out, generator=g) if with_bias else None
    torch.testing.assert_close(kernels.linear_small(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("rows", "out", "inp"), SHAPES + [(1, 40, 64), (3, 9, 96)])
def test_bf16_matches_fp32_accumulation(rows: int, out: int, inp: int) -> None:
    """bf16 in, fp32 accumulation, one rounding to bf16 at the end: within one bf16 ulp of the
    fp32 product of the same bf16 values (inputs of 32-multiple length take the dot-product path)."""
    g = torch.Generator().manual_seed(out)
    x = torch.randn(rows, inp, generator=g).bfloat16()
    w = torch.randn(out, inp, generator=g).bfloat16()
    b = torch.randn(out, generator=g).bfloat16()
    y = kernels.linear_small(x, w, b)
    ref = F.linear(x.float(), w.float(), b.float())
    assert y.dtype == torch.bfloat16 and y.shape == (rows, out)
    torch.testing.assert_close(y.float(), ref, rtol=2 ** -7, atol=1e-2)


def test_leading_dims_and_threads() -> None:
    """(B, T, C) inputs keep their leading shape; one thread and two give the same values."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 3, 48, generator=g), torch.randn(50, 48, generator=g), torch.randn(50, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.linear_small(x, w, b)
        torch.set_num_threads(2)
        two = kernels.linear_small(x, w, b)
    finally:
        torch.set_num_threads(before)
    assert one.shape == (2, 3, 50)
    torch.testing.assert_close(one, two, rtol=0, atol=0)  # each output is one thread's sum
    torch.testing.assert_close(one, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_projection_routes_by_rows() -> None:
    """Decode-sized calls run the decode kernel, prefill-sized the prefill kernel, larger ones
    F.linear; kernels_enabled=False (GPT.kernels_off) runs F.linear for all."""
    proj = Projection(32, 24)
    calls: list[int] = []
    original = kernels.linear_small

    def spy(x, w, b):  # noqa: ANN001, ANN202
        calls.append(x.numel() // x.shape[-1])
        return original(x, w, b)

    proj.decode_kernel, proj.prefill_kernel = "native", "linear"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "linear_small", spy)
        for rows in (1, DECODE_MAX_ROWS, DECODE_MAX_ROWS + 1, PREFILL_MAX_ROWS + 1):
            proj(torch.randn(rows, 32))
        assert calls == [1, DECODE_MAX_ROWS]
        proj.prefill_kernel = "native"
        proj(torch.randn(PREFILL_MAX_ROWS, 32))
        proj(torch.randn(PREFILL_MAX_ROWS + 1, 32))
        assert calls[-1] == PREFILL_MAX_ROWS
        proj.kernels_enabled = False
        proj(torch.randn(1, 32))
        assert len(calls) == 3


def test_unavailable_reason_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.DISABLE_ENV, "0")
    assert kernels._build.__wrapped__() == (None, f"disabled by {kernels.DISABLE_ENV}=0")


@pytest.mark.slow
def test_avx2_build_matches_linear(tmp_path) -> None:
    """The AVX2 + FMA path (the other CPU kind seen here: no AVX512, no AVX512-BF16, so bf16 is
    widened to fp32), built with -march=haswell in a child process, computes F.linear too."""
    import os
    import subprocess
    import sys

    script = (
        "import torch, torch.nn.functional as F\n"
        "from gpt2xl import kernels\n"
        "m = kernels.native(); assert m is not None, kernels.unavailable_reason()\n"
        "assert m.isa() == 'avx2+fma', m.isa()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for rows, out, inp in [(1, 67, 1600), (2, 33, 100), (16, 40, 64), (3, 9, 17)]:\n"
        "    x, w, b = torch.randn(rows, inp, generator=g), torch.randn(out, inp, generator=g), torch.randn(out, generator=g)\n"
        "    torch.testing.assert_close(kernels.linear_small(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-4)\n"
        "    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()\n"
        "    ref = F.linear(xb.float(), wb.float(), bb.float())\n"
        "    torch.testing.assert_close(kernels.linear_small(xb, wb, bb).float(), ref, rtol=2 ** -7, atol=2e-2)\n"
        "print('ok')\n"
    )
    env = {**os.environ, kernels.MARCH_ENV: "haswell", "GPT2XL_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-2000:]
